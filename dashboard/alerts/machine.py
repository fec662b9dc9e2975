"""The alert state machine as pure functions: whether a sample breaches a rule, the next state, the words, who hears.

No database, no I/O: storage (dashboard/alerts/storage.py) and the actions
(dashboard/actions.py) feed these the rule and the state they saw, and store
what comes out. States: ok -> pending (the condition holds, waiting `for_s`)
-> firing; firing -> resolved when the condition stops holding; pending ->
ok; any -> nodata when the metric is silent for `nodata_s` (the no-data job).
Notifications go out on firing, nodata and resolved, unless silenced; a
pending alert that never fired resolves quietly.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from dashboard.models import AlertInstance, AlertRule
from dashboard.timeutil import US

State = AlertInstance.State
Condition = AlertRule.Condition

NOTIFY_STATES = {State.FIRING, State.NODATA, State.RESOLVED}
ACTIVE_STATES = (State.PENDING, State.FIRING, State.NODATA)
RULE_DISABLED = "rule disabled"
RULE_DELETED = "rule deleted"


@dataclass(slots=True)
class CachedRule:
    """What the state machine reads of a rule (the enabled rules are kept in memory in this shape)."""

    id: int
    name: str
    pattern: str
    condition: str
    threshold: float | None
    threshold_high: float | None
    for_us: int
    nodata_s: int
    severity: str

    @classmethod
    def from_model(cls, rule: AlertRule) -> CachedRule:
        return cls(
            rule.id,
            rule.name,
            rule.metric_pattern,
            rule.condition,
            rule.threshold,
            rule.threshold_high,
            rule.for_s * US,
            rule.nodata_s,
            rule.severity,
        )


@dataclass(slots=True)
class CachedInstance:
    """The state of one (rule, metric) pair as this process last saw it stored."""

    id: int
    state: str
    pending_since_ts: int | None


def breaches(rule: CachedRule, value: float, previous: tuple[int, float] | None, ts: int) -> bool | None:
    """Return whether a sample breaches the rule, or None when it cannot tell (a rate rule's first sample)."""
    if rule.condition == Condition.ABOVE:
        return rule.threshold is not None and value > rule.threshold
    if rule.condition == Condition.BELOW:
        return rule.threshold is not None and value < rule.threshold
    if rule.condition == Condition.OUTSIDE:
        low, high = rule.threshold, rule.threshold_high
        return (low is not None and value < low) or (high is not None and value > high)
    if rule.condition == Condition.RATE:
        if previous is None or ts <= previous[0] or rule.threshold is None:
            return None
        per_s = (value - previous[1]) / ((ts - previous[0]) / US)
        return abs(per_s) > rule.threshold
    if rule.condition == Condition.NODATA:
        return False  # a sample is the opposite of no data
    return None


def next_state(rule: CachedRule, inst: CachedInstance, breach: bool, ts: int) -> tuple[str, int | None]:
    """Return the (state, pending_since_ts) an instance moves to on one evaluated sample."""
    if breach:
        if inst.state == State.FIRING:
            return State.FIRING, inst.pending_since_ts
        if inst.state == State.PENDING:
            since = inst.pending_since_ts if inst.pending_since_ts is not None else ts
            return (State.FIRING if ts - since >= rule.for_us else State.PENDING), since
        return (State.FIRING if rule.for_us == 0 else State.PENDING), ts
    if inst.state in (State.FIRING, State.NODATA):
        return State.RESOLVED, None
    if inst.state == State.PENDING:
        return State.OK, None
    return inst.state, None  # ok and resolved stay as they are


def retired_state(state: str) -> str:
    """Return where an active instance goes when its rule is switched off: pending back to ok, else resolved."""
    return State.OK if state == State.PENDING else State.RESOLVED


def retired_message(key: str, reason: str) -> str:
    """Return the text of an alert ended because its rule was disabled or deleted."""
    return f"{key}: {reason}, alert resolved"


def notifies(from_state: str, to_state: str, silenced_until: datetime | None, now: datetime) -> bool:
    """Return whether a change is sent to the rule's targets: firing, nodata, resolved; never while silenced."""
    silenced = silenced_until is not None and silenced_until > now
    return (
        to_state in NOTIFY_STATES and not silenced and not (to_state == State.RESOLVED and from_state == State.PENDING)
    )


def targets(webhook_url: str, email_to: str) -> list[tuple[str, str]]:
    """Return a rule's notification targets as (transport kind, address), webhook first."""
    found = [("webhook", webhook_url)] if webhook_url else []
    return found + [("email", a.strip()) for a in email_to.splitlines() if a.strip()]


def describe(rule: CachedRule | AlertRule, key: str, unit: str, state: str, value: float | None) -> str:
    """Return the one-line text an operator reads in the banner, the webhook and the email."""
    shown = "no value" if value is None else f"{value:g}{' ' + unit if unit else ''}"
    condition = rule.condition
    threshold = rule.threshold
    if state == State.NODATA:
        return f"{key} has sent no data for {rule.nodata_s} s"
    if state in (State.RESOLVED, State.OK):
        return f"{key} is back to normal ({shown})"
    what = {
        Condition.ABOVE: f"above {threshold:g}" if threshold is not None else "above",
        Condition.BELOW: f"below {threshold:g}" if threshold is not None else "below",
        Condition.OUTSIDE: f"outside {rule.threshold}…{rule.threshold_high}",
        Condition.RATE: f"changing faster than {threshold:g}/s" if threshold is not None else "changing fast",
        Condition.NODATA: "silent",
    }.get(condition, condition)
    for_s = rule.for_us // US if isinstance(rule, CachedRule) else rule.for_s
    tail = f" for {for_s} s" if for_s and state == State.FIRING else ""
    return f"{key} is {shown}, {what}{tail}"
