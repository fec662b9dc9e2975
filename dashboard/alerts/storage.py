"""The stored side of alerts: state rows changed only from the state last seen, events, and notification rows.

Several server processes may evaluate the same metric: every change is a
conditional UPDATE (`WHERE state = <the state we saw>`). The process that
loses the race reloads the row and re-evaluates, so each change is stored,
published and notified exactly once. These functions run on a thread (sync
ORM); dashboard/actions.py calls them, then publishes and notifies.

A rule switched off ends its alerts (`end_instance`); a rule being deleted
takes its rows with it (foreign keys cascade), so its resolved notices are
built in memory (`detached_end`) and not recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from dashboard import events
from dashboard.alerts.machine import (
    ACTIVE_STATES,
    CachedInstance,
    CachedRule,
    State,
    describe,
    notifies,
    retired_message,
    retired_state,
    targets,
)
from dashboard.models import AlertEvent, AlertInstance, AlertRule, Metric, NotificationDelivery
from dashboard.timeutil import US


@dataclass(slots=True)
class DetachedDelivery:
    """A notification with no row behind it (its rule is being deleted): sent from memory, attempts not recorded."""

    channel: str
    target: str
    payload: dict
    id: int = 0


@dataclass(slots=True)
class Change:
    """One stored state change, ready to publish and notify."""

    event: events.AlertState
    # Created with their event, rule and metric loaded; DetachedDelivery for a deleted rule.
    deliveries: list[NotificationDelivery | DetachedDelivery]


def load_instance(rule_id: int, metric_id: int) -> CachedInstance:
    """Return the stored state of a (rule, metric) pair, making its row (ok) the first time."""
    inst, _ = AlertInstance.objects.get_or_create(rule_id=rule_id, metric_id=metric_id)
    return CachedInstance(inst.id, inst.state, inst.pending_since_ts)


def apply(
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
    evaluate a rule it has not yet seen disabled); ending a disabled rule's
    alert passes rule_enabled=False. Leaving pending for firing, `since`
    becomes the firing time and pending_since_ts keeps when it began.
    """
    now = timezone.now()
    with transaction.atomic():
        fields: dict = {"state": to_state, "pending_since_ts": pending_since_ts, "last_value": value, "last_ts": ts}
        if to_state != State.PENDING:
            fields["since"] = now
        if to_state in (State.OK, State.RESOLVED):
            fields.update(acknowledged_by=None, acknowledged_at=None)
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
        if notifies(seen.state, to_state, inst.silenced_until, now):
            for channel, target in targets(rule.webhook_url, rule.email_to):
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


# --- Rules switched off ------------------------------------------------------------


def active_instances(rule: AlertRule) -> list[AlertInstance]:
    """Return a rule's pending, firing and no-data instances, each with its rule and metric loaded."""
    found = list(
        AlertInstance.objects.filter(rule_id=rule.pk, state__in=ACTIVE_STATES).select_related(
            "metric", "acknowledged_by"
        )
    )
    for inst in found:
        inst.rule = rule
    return found


def end_instance(rule: AlertRule, inst: AlertInstance, reason: str) -> Change | None:
    """Resolve one active instance of a disabled rule (pending goes back to ok, quietly) and store the event."""
    seen = CachedInstance(inst.id, inst.state, inst.pending_since_ts)
    for _ in range(3):  # the stream may move it meanwhile: resolve whatever active state it is in now
        if seen.state not in ACTIVE_STATES:
            return None
        message = retired_message(inst.metric.key, reason)
        result = apply(
            rule.id,
            inst.metric_id,
            seen,
            retired_state(seen.state),
            None,
            inst.last_value,
            inst.last_ts,
            message=message,
            rule_enabled=False,
        )
        if isinstance(result, Change):
            return result
        seen = result
    return None


def detached_end(rule: AlertRule, inst: AlertInstance, reason: str) -> Change:
    """Return the resolved state and notices of an instance whose rule is being deleted (nothing is stored)."""
    now = timezone.now()
    from_state = inst.state
    inst.state = retired_state(from_state)
    message = retired_message(inst.metric.key, reason)
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
    if notifies(from_state, inst.state, inst.silenced_until, now):
        deliveries = [
            DetachedDelivery(channel, target, payload) for channel, target in targets(rule.webhook_url, rule.email_to)
        ]
    return Change(state_event(inst, event), deliveries)


def rules_left_active() -> list[AlertRule]:
    """Return disabled rules that still have active instances (disabled without a signal: QuerySet.update, SQL)."""
    ids = AlertInstance.objects.filter(state__in=ACTIVE_STATES, rule__enabled=False).values_list("rule_id", flat=True)
    return list(AlertRule.objects.filter(pk__in=set(ids)))


def silent_instances(now: int) -> list[tuple[CachedRule, int, CachedInstance, float | None]]:
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


# --- Notification rows -------------------------------------------------------------


def payload(delivery: NotificationDelivery) -> dict:
    """Return the JSON a webhook receives (and an email is written from) for one stored delivery."""
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


def load_delivery(delivery_id: int) -> tuple[NotificationDelivery, dict]:
    delivery = NotificationDelivery.objects.select_related("event__rule", "event__metric").get(pk=delivery_id)
    return delivery, payload(delivery)


def record_attempt(delivery_id: int, ok: bool, error: str, final: bool) -> None:
    """Count one attempt at a delivery; mark it sent, or failed after the last attempt."""
    fields: dict = {"attempts": F("attempts") + 1, "last_error": error[:2000]}
    if ok:
        fields.update(status="sent", delivered_at=timezone.now())
    elif final:
        fields["status"] = "failed"
    NotificationDelivery.objects.filter(pk=delivery_id).update(**fields)


def claim_stale_deliveries(stale_after_s: float, limit: int = 50) -> list[int]:
    """Take over deliveries left pending longer than stale_after_s (their process stopped); return their ids."""
    now = timezone.now()
    cutoff: datetime = now - timedelta(seconds=stale_after_s)
    claimed = []
    pending = NotificationDelivery.objects.filter(status="pending", created__lt=cutoff)
    for delivery_id in pending.values_list("id", flat=True)[:limit]:
        # Claim by restarting its clock: another process now sees a fresh row and leaves it alone.
        if NotificationDelivery.objects.filter(pk=delivery_id, status="pending", created__lt=cutoff).update(
            created=now
        ):
            claimed.append(delivery_id)
    return claimed
