"""Alerting on the stream: rules evaluated as samples are committed, a periodic no-data check, notifications.

The writer calls `evaluate` with the rows of each committed batch. Rules live
in an in-process cache (reloaded on change in this process, and every
RULES_REFRESH_S for changes made in other processes), so a batch that matches
no rule costs a dictionary lookup per metric. The state of each (rule,
metric) pair is cached too; only a state change touches the database.

Several server processes may evaluate the same metric: every change is a
conditional UPDATE (`WHERE state = <the state we saw>`). The process that
loses the race reloads the row and re-evaluates, so each change is stored,
published and notified exactly once.

States: ok -> pending (condition holds, waiting `for_s`) -> firing; firing ->
resolved when the condition stops holding; pending -> ok; any -> nodata when
the metric is silent for `nodata_s` (checked by `nodata_loop`).
Notifications (webhook, email) go out on firing, nodata and resolved, off the
hot path, with retries and exponential backoff; each attempt is recorded.

Switching a rule off ends its alerts: `retire_rule` resolves every active
instance ("rule disabled" / "rule deleted"), notifies through the rule's own
targets and publishes the state to open pages. It runs from Django signals on
AlertRule (post_save with enabled off, pre_delete) because they are the one
hook that the admin's save and delete, its bulk delete action, `rule.save()`
and `QuerySet.delete()` all pass through; `QuerySet.update(enabled=False)` and
raw SQL send no signal, so `nodata_loop` also retires what a disabled rule
left active, within NODATA_CHECK_S. A deleted rule's events and deliveries are
deleted with it (foreign keys cascade), so its resolved notices are sent from
memory and not recorded.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import ssl
import time
import weakref
from dataclasses import dataclass
from datetime import timedelta
from functools import partial

import httpx
from asgiref.sync import SyncToAsync, async_to_sync, sync_to_async
from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.db.models.signals import post_delete, post_save, pre_delete
from django.utils import timezone

from dashboard import events, fastpaths
from dashboard.models import AlertEvent, AlertInstance, AlertRule, Metric, NotificationDelivery, glob_matches
from dashboard.timeutil import US, now_us

log = logging.getLogger(__name__)

RULES_REFRESH_S = 5.0  # changes made in another process's admin are picked up this late
NODATA_CHECK_S = 5.0  # how often the periodic check looks for silent metrics
WEBHOOK_TIMEOUT_S = 5.0
BACKOFF_BASE_S = 1.0  # webhook retries wait 1, 2, 4, 8 ... seconds
NOTIFY_STATES = {AlertInstance.State.FIRING, AlertInstance.State.NODATA, AlertInstance.State.RESOLVED}
ACTIVE_STATES = (AlertInstance.State.PENDING, AlertInstance.State.FIRING, AlertInstance.State.NODATA)
MAX_TRACKED = 100_000  # (rule, metric) states cached per process; beyond this the cache is rebuilt from the DB
RULE_DISABLED = "rule disabled"
RULE_DELETED = "rule deleted"

State = AlertInstance.State
Condition = AlertRule.Condition


@dataclass(slots=True)
class CachedRule:
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
    id: int
    state: str
    pending_since_ts: int | None


class _Cache:
    """Enabled rules, which rules each key matches, the state of each instance and the previous sample per key."""

    def __init__(self) -> None:
        self.rules: list[CachedRule] | None = None
        self.loaded_at = 0.0
        self.generation = 0  # bumped by every rule change: a reload started before it is discarded
        self.refreshing = False
        self.by_key: dict[str, list[CachedRule]] = {}
        self.instances: dict[tuple[int, int], CachedInstance] = {}
        self.previous: dict[int, tuple[int, float]] = {}  # metric id -> (ts, value), for rate rules

    def clear(self) -> None:
        self.rules = None
        self.generation += 1
        self.by_key.clear()
        self.instances.clear()
        self.previous.clear()

    def rules_for(self, key: str) -> list[CachedRule]:
        found = self.by_key.get(key)
        if found is None:
            found = self.by_key[key] = [r for r in self.rules or () if glob_matches(r.pattern, key)]
        return found


_cache = _Cache()


def clear_cache() -> None:
    """Forget cached rules and states (after rule edits, and between tests)."""
    _cache.clear()


def _rule_changed(sender, **kwargs) -> None:
    _cache.rules = None
    _cache.generation += 1
    _cache.by_key.clear()


def _rule_saved(sender, instance: AlertRule, raw: bool = False, **kwargs) -> None:
    _rule_changed(sender)
    if not instance.enabled and not raw:  # raw: loaddata, whose instances come from the same fixture
        retire_rule(instance, RULE_DISABLED)


def _rule_deleting(sender, instance: AlertRule, **kwargs) -> None:
    retire_rule(instance, RULE_DELETED)


post_save.connect(_rule_saved, sender=AlertRule, dispatch_uid="alerts-rule-saved")
pre_delete.connect(_rule_deleting, sender=AlertRule, dispatch_uid="alerts-rule-deleting")
post_delete.connect(_rule_changed, sender=AlertRule, dispatch_uid="alerts-rule-deleted")


@sync_to_async
def _load_rules() -> list[CachedRule]:
    return [CachedRule.from_model(r) for r in AlertRule.objects.filter(enabled=True)]


async def _ensure_rules() -> list[CachedRule]:
    """Return the enabled rules: loaded now the first time and after a change made here, else reloaded in the background.

    The writer evaluates rules after every commit. Reloading stale rules
    there put a thread hop into one commit every RULES_REFRESH_S, and so a
    spike into live latency; the cached rules serve until the reload is in.
    """
    for _ in range(3):  # again if a rule changed while loading
        if _cache.rules is not None:
            break
        await _reload_rules()
    if _cache.rules is not None and time.monotonic() - _cache.loaded_at > RULES_REFRESH_S and not _cache.refreshing:
        _cache.refreshing = True
        _spawn(_reload_rules(in_background=True))
    return _cache.rules or []


async def _reload_rules(in_background: bool = False) -> None:
    generation = _cache.generation
    try:
        rules = await _load_rules()
    except Exception:
        if not in_background:
            raise
        log.warning("reloading alert rules failed; the cached rules stay in use", exc_info=True)
        return
    finally:
        if in_background:
            _cache.refreshing = False
    if generation != _cache.generation:
        return  # a rule changed meanwhile: the next call loads again
    if _cache.rules is None or rules != _cache.rules:
        _cache.by_key.clear()
        _cache.instances.clear()  # a changed rule restarts from what the database says
    _cache.rules = rules
    _cache.loaded_at = time.monotonic()
    if rules and asyncio.get_running_loop() not in _clients:
        _spawn(_client())  # ready before the first webhook is due


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
    for_s = getattr(rule, "for_us", None)
    for_s = for_s // US if for_s is not None else getattr(rule, "for_s", 0)
    tail = f" for {for_s} s" if for_s and state == State.FIRING else ""
    return f"{key} is {shown}, {what}{tail}"


@dataclass(slots=True)
class Change:
    """One stored state change, ready to publish and notify."""

    event: events.AlertState
    # Created with their event, rule and metric loaded; DetachedDelivery for a deleted rule.
    deliveries: list[NotificationDelivery | DetachedDelivery]


@dataclass(slots=True)
class DetachedDelivery:
    """A notification with no row behind it (its rule is being deleted): sent from memory, attempts not recorded."""

    channel: str
    target: str
    payload: dict
    id: int = 0


def _targets(rule: AlertRule) -> list[tuple[str, str]]:
    targets = [("webhook", rule.webhook_url)] if rule.webhook_url else []
    return targets + [("email", a.strip()) for a in rule.email_to.splitlines() if a.strip()]


def _notifies(inst: AlertInstance, from_state: str, to_state: str, now) -> bool:
    silenced = inst.silenced_until is not None and inst.silenced_until > now
    return (
        to_state in NOTIFY_STATES and not silenced and not (to_state == State.RESOLVED and from_state == State.PENDING)
    )


def _load_instance(rule_id: int, metric_id: int) -> CachedInstance:
    inst, _ = AlertInstance.objects.get_or_create(rule_id=rule_id, metric_id=metric_id)
    return CachedInstance(inst.id, inst.state, inst.pending_since_ts)


def _apply(
    rule_id: int,
    metric_id: int,
    seen: CachedInstance,
    to_state: str,
    pending_since_ts: int | None,
    value: float | None,
    ts: int | None,
    *,
    message: str | None = None,
    rule_enabled: bool = True,
) -> Change | CachedInstance:
    """Store one state change if the row is still in the state we saw; else return the row as it is now.

    A change from the stream needs the rule still enabled (another process may
    evaluate a rule it has not yet seen disabled); retire_rule passes
    rule_enabled=False for the change that ends a disabled rule's alert.
    """
    now = timezone.now()
    with transaction.atomic():
        fields: dict = {"state": to_state, "pending_since_ts": pending_since_ts, "last_value": value, "last_ts": ts}
        if to_state != State.PENDING:
            fields["since"] = now
        if to_state in (State.OK, State.RESOLVED):
            fields.update(acknowledged_by=None, acknowledged_at=None)
        if seen.state == State.PENDING and to_state == State.FIRING:
            pass  # 'since' becomes the firing time; pending_since_ts keeps when it began
        moved = AlertInstance.objects.filter(pk=seen.id, state=seen.state, rule__enabled=rule_enabled).update(**fields)
        if not moved:
            inst = AlertInstance.objects.filter(pk=seen.id).first()
            if inst is None:  # its rule was deleted meanwhile
                return CachedInstance(seen.id, seen.state, seen.pending_since_ts)
            return CachedInstance(inst.id, inst.state, inst.pending_since_ts)
        inst = AlertInstance.objects.select_related("rule", "metric", "acknowledged_by").get(pk=seen.id)
        rule, metric = inst.rule, inst.metric
        if message is None:
            message = describe(rule, metric.key, metric.unit, to_state, value)
        event = AlertEvent.objects.create(
            rule=rule, metric=metric, from_state=seen.state, to_state=to_state, value=value, at=now, message=message
        )
        deliveries: list[NotificationDelivery | DetachedDelivery] = []
        if _notifies(inst, seen.state, to_state, now):
            for channel, target in _targets(rule):
                deliveries.append(NotificationDelivery.objects.create(event=event, channel=channel, target=target))
    return Change(state_event(inst, event), deliveries)


def state_event(inst: AlertInstance, event: AlertEvent | None = None) -> events.AlertState:
    """Return the live event that tells browsers about an instance (after a change, an ack or a silence)."""
    # Without a change (a page load, an ack, a silence) `at` is when the current state began, so the
    # banner's "since" never moves to the click time.
    at = event.at if event is not None else inst.since
    return events.AlertState(
        rule=inst.rule_id,
        rule_name=inst.rule.name,
        metric=inst.metric.key,
        state=inst.state,
        previous=event.from_state if event is not None else inst.state,
        severity=inst.rule.severity,
        value=inst.last_value,
        at=int(at.timestamp() * US),
        message=event.message
        if event is not None
        else describe(inst.rule, inst.metric.key, inst.metric.unit, inst.state, inst.last_value),
        instance=inst.id,
        acknowledged_by=inst.acknowledged_by.get_username() if inst.acknowledged_by_id else "",
        silenced_until=int(inst.silenced_until.timestamp() * US) if inst.silenced_until else 0,
        source=inst.metric.source_id,
    )


async def _move(
    rule: CachedRule, metric_id: int, inst: CachedInstance, to: str, since: int | None, value: float | None, ts: int
) -> Change | None:
    """Try a change; on a lost race adopt the stored state and return None."""
    result = await sync_to_async(_apply)(rule.id, metric_id, inst, to, since, value, ts)
    if isinstance(result, CachedInstance):
        _cache.instances[(rule.id, metric_id)] = result
        return None
    inst.state, inst.pending_since_ts = to, since
    return result


async def evaluate(inserted: list[tuple]) -> list[Change]:
    """Evaluate enabled rules against freshly committed rows [(metric ref, ts, value)]; publish and notify changes."""
    if not inserted:
        return []
    rules = await _ensure_rules()
    if not rules:
        return []
    by_metric: dict[int, tuple[object, list[tuple[int, float]]]] = {}
    for ref, ts, value in inserted:
        if _cache.rules_for(ref.key):
            by_metric.setdefault(ref.id, (ref, []))[1].append((ts, value))
    changes: list[Change] = []
    for metric_id, (ref, samples) in by_metric.items():
        samples.sort()
        for rule in _cache.rules_for(ref.key):
            inst = _cache.instances.get((rule.id, metric_id))
            if inst is None:
                if len(_cache.instances) > MAX_TRACKED:
                    _cache.instances.clear()
                inst = _cache.instances[(rule.id, metric_id)] = await sync_to_async(_load_instance)(rule.id, metric_id)
            previous = _cache.previous.get(metric_id)
            for ts, value in samples:
                breach = breaches(rule, value, previous, ts)
                previous = (ts, value)
                if breach is None:
                    continue
                for _ in range(3):  # a lost race re-evaluates against the stored state
                    inst = _cache.instances[(rule.id, metric_id)]
                    to, since = next_state(rule, inst, breach, ts)
                    if to == inst.state and since == inst.pending_since_ts:
                        break
                    change = await _move(rule, metric_id, inst, to, since, value, ts)
                    if change is not None:
                        changes.append(change)
                        break
        if samples:
            _cache.previous[metric_id] = samples[-1]
    for change in changes:
        await _announce(change)
    return changes


async def _announce(change: Change) -> None:
    await events.publish(events.ALERTS_GROUP, change.event)
    for delivery in change.deliveries:
        _spawn(deliver(delivery))


# --- Rules switched off ------------------------------------------------------------


def _retired_message(key: str, reason: str) -> str:
    return f"{key}: {reason}, alert resolved"


def _end_instance(rule: AlertRule, inst: AlertInstance, reason: str) -> Change | None:
    """Resolve one active instance of a disabled rule (pending goes back to ok, quietly) and store the event."""
    seen = CachedInstance(inst.id, inst.state, inst.pending_since_ts)
    for _ in range(3):  # the stream may move it meanwhile: resolve whatever active state it is in now
        if seen.state not in ACTIVE_STATES:
            return None
        to = State.OK if seen.state == State.PENDING else State.RESOLVED
        message = _retired_message(inst.metric.key, reason)
        result = _apply(
            rule.id, inst.metric_id, seen, to, None, inst.last_value, inst.last_ts, message=message, rule_enabled=False
        )
        if isinstance(result, Change):
            return result
        seen = result
    return None


def _detached_end(rule: AlertRule, inst: AlertInstance, reason: str) -> Change:
    """Return the resolved state and notices of an instance whose rule is being deleted (nothing is stored)."""
    now = timezone.now()
    from_state = inst.state
    inst.state = State.OK if from_state == State.PENDING else State.RESOLVED
    message = _retired_message(inst.metric.key, reason)
    event = AlertEvent(
        rule=rule,
        metric=inst.metric,
        from_state=from_state,
        to_state=inst.state,
        value=inst.last_value,
        at=now,
        message=message,
    )
    payload = {
        "rule": rule.name,
        "rule_id": rule.id,
        "metric": inst.metric.key,
        "state": inst.state,
        "previous": from_state,
        "severity": rule.severity,
        "value": inst.last_value,
        "at": now.isoformat(),
        "message": message,
        "event_id": None,
    }
    deliveries: list[NotificationDelivery | DetachedDelivery] = []
    if _notifies(inst, from_state, inst.state, now):
        deliveries = [DetachedDelivery(channel, target, payload) for channel, target in _targets(rule)]
    return Change(state_event(inst, event), deliveries)


def retire_rule(rule: AlertRule, reason: str) -> list[Change]:
    """End every active alert of a rule that was disabled or is being deleted; publish and notify after commit.

    The one action for a rule switched off, whatever the path (admin, ORM,
    the no-data loop's sweep): each firing or no-data instance becomes
    resolved with the reason, a pending one goes back to ok; the events are
    published to open pages and the rule's webhook and emails are notified.
    On delete nothing is stored (the rows cascade away with the rule).
    """
    deleting = reason == RULE_DELETED
    changes: list[Change] = []
    with transaction.atomic():
        active = AlertInstance.objects.filter(rule_id=rule.pk, state__in=ACTIVE_STATES).select_related(
            "metric", "acknowledged_by"
        )
        for inst in active:
            inst.rule = rule
            change = _detached_end(rule, inst, reason) if deleting else _end_instance(rule, inst, reason)
            if change is not None:
                changes.append(change)
        if changes:
            transaction.on_commit(partial(_announce_from_sync, changes))
    return changes


def _on_server_loop() -> bool:
    """Return whether this sync code runs on behalf of a long-lived event loop (a server's, a test's)."""
    # The same test async_to_sync makes to choose the loop it runs on.
    loop = getattr(SyncToAsync.threadlocal, "main_event_loop", None)
    pid = getattr(SyncToAsync.threadlocal, "main_event_loop_pid", None)
    return loop is not None and pid == os.getpid() and loop.is_running()


def _announce_from_sync(changes: list[Change]) -> None:
    # Inside a server, async_to_sync runs on the server's loop and deliveries go on in the background;
    # from a plain script it runs on a private loop that ends on return, so deliveries finish first.
    async_to_sync(_announce_all)(changes, not _on_server_loop())


async def _announce_all(changes: list[Change], wait: bool) -> None:
    for change in changes:
        if not wait:
            await _announce(change)
            continue
        await events.publish(events.ALERTS_GROUP, change.event)
        await asyncio.gather(*(deliver(d) for d in change.deliveries), return_exceptions=True)


def _rules_left_active() -> list[AlertRule]:
    ids = AlertInstance.objects.filter(state__in=ACTIVE_STATES, rule__enabled=False).values_list("rule_id", flat=True)
    return list(AlertRule.objects.filter(pk__in=set(ids)))


async def retire_disabled_rules() -> list[Change]:
    """Resolve what rules disabled without a signal (QuerySet.update, raw SQL, another tool) left active."""
    changes: list[Change] = []
    for rule in await sync_to_async(_rules_left_active)():
        changes += await sync_to_async(_retire_quietly)(rule)
    return changes


def _retire_quietly(rule: AlertRule) -> list[Change]:
    return retire_rule(rule, RULE_DISABLED)


_tasks: set[asyncio.Task] = set()


def _spawn(coro) -> None:
    """Run a notification off the hot path; keep a reference so the task is not collected mid-flight."""
    # A fresh context: spawned from inside async_to_sync (a rule disabled in the admin), the task
    # would inherit that request thread's executor, which is gone by the time it calls sync_to_async.
    task = asyncio.get_running_loop().create_task(coro, context=contextvars.Context())
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


async def drain() -> None:
    """Wait for notifications in flight (tests, shutdown)."""
    while _tasks:
        await asyncio.gather(*list(_tasks), return_exceptions=True)


# --- No data -------------------------------------------------------------------


def _silent_instances(now: int) -> list[tuple[CachedRule, int, CachedInstance, float | None]]:
    """Return (rule, metric id, instance, last value) for every enabled rule's metric silent longer than nodata_s."""
    found = []
    for rule in AlertRule.objects.filter(enabled=True):
        cached = CachedRule.from_model(rule)
        cutoff = now - rule.nodata_s * US
        for metric in Metric.objects.matching(rule.metric_pattern).only("id", "last_ts", "last_value"):
            if metric.last_ts is not None and metric.last_ts >= cutoff:
                continue
            inst, _ = AlertInstance.objects.get_or_create(rule=rule, metric=metric)
            if inst.state != State.NODATA:
                found.append(
                    (cached, metric.id, CachedInstance(inst.id, inst.state, inst.pending_since_ts), metric.last_value)
                )
    return found


async def check_nodata(now: int | None = None) -> list[Change]:
    """Move instances of silent metrics to nodata; return the changes (published and notified)."""
    now = now_us() if now is None else now
    changes = []
    for rule, metric_id, inst, value in await sync_to_async(_silent_instances)(now):
        change = await _move(rule, metric_id, inst, State.NODATA, None, value, now)
        if change is not None:
            cached = _cache.instances.get((rule.id, metric_id))
            if cached is not None:
                cached.state, cached.pending_since_ts = State.NODATA, None
            changes.append(change)
            await _announce(change)
    return changes


async def nodata_loop() -> None:
    """Background job: look for silent metrics every NODATA_CHECK_S (safe in several processes at once).

    It also resumes notifications left pending by a process that stopped mid-way.
    """
    from dashboard.logthrottle import FailureLog

    failures = FailureLog(log, f"no-data check (every {NODATA_CHECK_S:.0f} s)")  # one traceback per outage
    while True:
        await asyncio.sleep(NODATA_CHECK_S)
        try:
            await retire_disabled_rules()
            await check_nodata()
            await retry_stale_deliveries()
        except Exception as exc:
            failures.failure(exc)
        else:
            failures.success()


# --- Operators -------------------------------------------------------------------


def can_operate(user, inst: AlertInstance) -> bool:
    """Return whether a user may acknowledge or silence an alert: staff or the change permission, and may read it."""
    if not getattr(user, "is_authenticated", False) or getattr(user, "share_link", None) is not None:
        return False
    if not (user.is_staff or user.has_perm("dashboard.change_alertinstance")):
        return False
    return Metric.objects.visible_to(user).filter(pk=inst.metric_id).exists()


def acknowledge(inst: AlertInstance, user) -> events.AlertState:
    """Record who acknowledged an active alert; the acknowledgement ends when the alert resolves."""
    AlertInstance.objects.filter(pk=inst.pk).update(acknowledged_by=user, acknowledged_at=timezone.now())
    inst.refresh_from_db()
    return state_event(inst)


def silence(inst: AlertInstance, duration_s: int) -> events.AlertState:
    """Mute notifications of an instance for a while (0 lifts the silence); state changes are still recorded."""
    until = timezone.now() + timedelta(seconds=duration_s) if duration_s > 0 else None
    AlertInstance.objects.filter(pk=inst.pk).update(silenced_until=until)
    inst.refresh_from_db()
    return state_event(inst)


def active_for(user) -> list[events.AlertState]:
    """Return the live events of every pending, firing or no-data alert the user may read."""
    visible = Metric.objects.visible_to(user)
    instances = (
        AlertInstance.objects.filter(state__in=ACTIVE_STATES, rule__enabled=True, metric__in=visible)
        .select_related("rule", "metric", "acknowledged_by")
        .order_by("-since")[:200]
    )
    result = []
    for inst in instances:
        event = AlertEvent.objects.filter(rule_id=inst.rule_id, metric_id=inst.metric_id).first()
        result.append(state_event(inst, event if event and event.to_state == inst.state else None))
    return result


# --- Notifications ---------------------------------------------------------------


def _payload(delivery: NotificationDelivery) -> dict:
    event = delivery.event
    return {
        "rule": event.rule.name,
        "rule_id": event.rule_id,
        "metric": event.metric.key,
        "state": event.to_state,
        "previous": event.from_state,
        "severity": event.rule.severity,
        "value": event.value,
        "at": event.at.isoformat(),
        "message": event.message,
        "event_id": event.id,
    }


def _load_delivery(delivery_id: int) -> tuple[NotificationDelivery, dict]:
    delivery = NotificationDelivery.objects.select_related("event__rule", "event__metric").get(pk=delivery_id)
    return delivery, _payload(delivery)


def _record(delivery_id: int, ok: bool, error: str, final: bool) -> None:
    from django.db.models import F

    fields: dict = {"attempts": F("attempts") + 1, "last_error": error[:2000]}
    if ok:
        fields.update(status="sent", delivered_at=timezone.now())
    elif final:
        fields["status"] = "failed"
    NotificationDelivery.objects.filter(pk=delivery_id).update(**fields)


def _send_email(delivery: NotificationDelivery, payload: dict) -> None:
    subject = f"[Pulseboard {payload['severity']}] {payload['rule']}: {payload['state']}"
    body = f"{payload['message']}\n\nRule: {payload['rule']}\nMetric: {payload['metric']}\nState: {payload['previous']} -> {payload['state']}\nAt: {payload['at']}\n"
    send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [delivery.target])


_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = weakref.WeakKeyDictionary()


def _prepare_tls() -> ssl.SSLContext:
    """Load the CA certificates and the modules httpx imports on its first request (slow: keep off the loop)."""
    fastpaths.warm_imports()
    import anyio.streams.tls  # noqa: F401

    return ssl.create_default_context()


async def _client() -> httpx.AsyncClient:
    """Return the event loop's webhook client: one connection pool, created once.

    Loading the CA certificates takes a few hundred milliseconds of CPU; it runs
    on a thread so it never stalls the loop that serves ingest and live sockets.
    """
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        context = await loop.run_in_executor(None, _prepare_tls)
        client = _clients.get(loop)  # another notification may have made it meanwhile
        if client is None:
            client = _clients[loop] = httpx.AsyncClient(
                timeout=WEBHOOK_TIMEOUT_S, headers={"User-Agent": "Pulseboard"}, verify=context
            )
    return client


def stale_after_s() -> float:
    """Return how long a delivery may stay pending before it counts as abandoned: a full retry series and a minute."""
    attempts = settings.PULSEBOARD["NOTIFY_ATTEMPTS"]
    backoff = settings.PULSEBOARD["NOTIFY_BACKOFF_S"] * (2 ** (attempts - 1) - 1)
    return backoff + attempts * WEBHOOK_TIMEOUT_S + 60


def _claim_stale_deliveries(limit: int = 50) -> list[int]:
    now = timezone.now()
    cutoff = now - timedelta(seconds=stale_after_s())
    claimed = []
    for delivery_id in NotificationDelivery.objects.filter(status="pending", created__lt=cutoff).values_list(
        "id", flat=True
    )[:limit]:
        # Claim by restarting its clock: another process now sees a fresh row and leaves it alone.
        if NotificationDelivery.objects.filter(pk=delivery_id, status="pending", created__lt=cutoff).update(
            created=now
        ):
            claimed.append(delivery_id)
    return claimed


async def retry_stale_deliveries() -> list[int]:
    """Send again the notifications a stopped process left pending; return their ids."""
    claimed = await sync_to_async(_claim_stale_deliveries)()
    for delivery_id in claimed:
        log.warning("resuming notification %d left pending by a stopped process", delivery_id)
        _spawn(deliver(delivery_id))
    return claimed


async def deliver(delivery: NotificationDelivery | DetachedDelivery | int) -> None:
    """Send one notification, retrying with exponential backoff; record every attempt and the outcome."""
    attempts = settings.PULSEBOARD["NOTIFY_ATTEMPTS"]
    if isinstance(delivery, int):
        delivery, payload = await sync_to_async(_load_delivery)(delivery)
    elif isinstance(delivery, DetachedDelivery):
        payload = delivery.payload
    else:
        payload = _payload(delivery)
    delivery_id = delivery.id

    async def record(ok: bool, error: str, final: bool) -> None:
        if not isinstance(delivery, DetachedDelivery):
            await sync_to_async(_record)(delivery_id, ok, error, final)

    for attempt in range(attempts):
        final = attempt == attempts - 1
        try:
            if delivery.channel == "webhook":
                response = await (await _client()).post(delivery.target, json=payload)
                if response.status_code >= 300:
                    raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
            else:
                await sync_to_async(_send_email)(delivery, payload)
        except Exception as exc:
            await record(False, f"attempt {attempt + 1}: {exc}", final)
            if final:
                log.warning(
                    "notification %d to %s failed after %d attempts: %s", delivery_id, delivery.target, attempts, exc
                )
                return
            await asyncio.sleep(settings.PULSEBOARD["NOTIFY_BACKOFF_S"] * 2**attempt)
            continue
        await record(True, "", final)
        return
