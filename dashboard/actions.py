"""The actions: the only code that changes state and publishes it (Zulip's zerver/actions/).

Ingest: collectors in-process, HTTP agents, the line-protocol endpoint and
the MQTT bridge all end in `ingest`. It validates each reading on its own (a
bad one never costs its neighbours), hands the good ones to the process
writer (group commit, then publish), counts every outcome, and reports per
reading. A metric the writer creates is announced to the other processes
(`announce_metric`) once it is committed.

Alerts: evaluating committed rows, the no-data check, acknowledging,
silencing, saving and deleting rules, and ending the alerts of a rule that
is switched off. Each stores its change first and publishes the
`alert.state` event once, after the commit (a change made inside a
transaction publishes from `transaction.on_commit`); notifications go out
off the hot path (dashboard/alerts/transports.py). Views never publish.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from asgiref.sync import SyncToAsync, async_to_sync, sync_to_async
from django.db import transaction
from django.db.models.signals import post_delete, post_save, pre_delete

from dashboard import events, stats
from dashboard.alerts import cache, machine, storage, transports
from dashboard.alerts.forms import AlertRuleForm, form_data, form_error
from dashboard.alerts.machine import RULE_DELETED, RULE_DISABLED, CachedInstance, State
from dashboard.alerts.storage import Change
from dashboard.exceptions import InvalidReading, NotFound
from dashboard.models import AgentToken, AlertInstance, AlertRule
from dashboard.storage import Prepared
from dashboard.storage import prepare as prepare_rows
from dashboard.timeutil import now_us
from dashboard.validation import Reading, Rejection, check_reading
from dashboard.writer import Bookkeeping, Writer


@dataclass
class IngestResult:
    """The answer to one ingest call: counts and each rejected reading with its position and reason."""

    accepted: int = 0
    duplicates: int = 0
    rejected: list[Rejection] = field(default_factory=list)

    def as_dict(self, position: str = "index") -> dict:
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": [r.as_dict(position) for r in self.rejected],
        }


def prepare(items: Sequence[Reading | Rejection]) -> Prepared | None:
    """Work out a parsed batch's keys for the writer (storage.prepare), on the thread that parsed it.

    Only a batch of nothing but Readings: that is the one ingest() hands to
    the writer as it is.
    """
    if set(map(type, items)) <= {Reading}:
        return prepare_rows(items)  # type: ignore[arg-type]
    return None


async def ingest(
    items: Sequence[Reading | Rejection],
    *,
    token: AgentToken | None = None,
    checked: bool = False,
    prepared: Prepared | None = None,
) -> IngestResult:
    """Validate, store (durably) and publish readings; items that are already Rejections are reported as given.

    The position of each item in `items` is the index reported for it.
    `checked` says the readings were built by dashboard.validation's parsers
    (readings_from_json, readings_from_dicts), which apply check_reading's
    rules: they are not checked a second time (a sixth of the Python time of
    a 5,000-sample request). `prepared` is prepare(items), made where the
    items were parsed. Raises StorageUnavailable when the database cannot
    take the batch.
    """
    result = IngestResult()
    good: list[Reading] = []
    positions: Sequence[int] = []
    now = now_us()
    if checked and set(map(type, items)) <= {Reading}:  # the common batch: nothing to sort out, item by item
        good, positions = list(items), range(len(items))  # type: ignore[arg-type]
    else:
        prepared = None  # it covers every item, and some are not going to the writer
        positions = []
        for index, item in enumerate(items):
            if isinstance(item, Rejection):
                item.index = index
                result.rejected.append(item)
                continue
            try:
                good.append(item if checked else check_reading(item, now))
                positions.append(index)
            except InvalidReading as exc:
                result.rejected.append(Rejection(index, exc.field, exc.message, exc.code))

    bookkeeping = None
    if token is not None or result.rejected:
        by_source: dict[str, int] = {}
        for rejection in result.rejected:
            item = items[rejection.index]
            if isinstance(item, Reading):
                by_source[item.source] = by_source.get(item.source, 0) + 1
        bookkeeping = Bookkeeping(token.pk if token else None, len(result.rejected), by_source)
    outcomes = await Writer.get().write(good, bookkeeping, prepared)
    result.accepted, result.duplicates = outcomes.count("new"), outcomes.count("duplicate")
    if result.accepted + result.duplicates != len(outcomes):  # some refused by the writer: say which
        for position, outcome in zip(positions, outcomes, strict=True):
            if outcome != "new" and outcome != "duplicate":
                result.rejected.append(Rejection(position, outcome.field, outcome.message, outcome.code))
    result.rejected.sort(key=lambda r: r.index)

    stats.INGEST_ACCEPTED.inc(result.accepted)
    stats.INGEST_DUPLICATES.inc(result.duplicates)
    for rejection in result.rejected:
        stats.INGEST_REJECTED.labels(rejection.code).inc()
    return result


def announce_metric(row: tuple) -> None:
    """Publish `metric.created` for a metric this process committed (a row of dashboard.keyindex.ROW_FIELDS).

    Called on the event loop by the key index once the metric's transaction
    committed and this process's index took it in (keyindex.note_created):
    every other process's index and live globs take it in now, their poll
    (keyindex.POLL_S) being the fallback if the layer loses it. Not awaited:
    it joins this loop's outbox ahead of the sample batch that created the
    metric.
    """
    events.publish_soon(events.METRICS_GROUP, events.MetricCreated(*row))


# --- Alerts: the stream ------------------------------------------------------------


async def evaluate_alerts(inserted: list[tuple]) -> list[Change]:
    """Evaluate enabled rules against freshly committed rows [(metric ref, ts, value)]; store, publish, notify.

    The writer calls this after each commit, batch after batch: a rule's
    state depends on the order of its samples.
    """
    if not inserted or not await cache.ensure_rules():
        return []
    by_metric: dict[int, tuple[Any, list[tuple[int, float]]]] = {}
    for ref, ts, value in inserted:
        if cache.rules_for(ref.key):
            by_metric.setdefault(ref.id, (ref, []))[1].append((ts, value))
    changes: list[Change] = []
    for metric_id, (ref, samples) in by_metric.items():
        samples.sort()
        for rule in cache.rules_for(ref.key):
            previous = cache.previous(metric_id)
            for ts, value in samples:
                breach = machine.breaches(rule, value, previous, ts)
                previous = (ts, value)
                if breach is None:
                    continue
                for _ in range(3):  # a lost race re-evaluates against the stored state
                    inst = await cache.instance(rule.id, metric_id)
                    to, since = machine.next_state(rule, inst, breach, ts)
                    if to == inst.state and since == inst.pending_since_ts:
                        break
                    change = await _move(rule.id, metric_id, inst, to, since, value, ts)
                    if change is not None:
                        changes.append(change)
                        break
        cache.set_previous(metric_id, samples[-1])
    for change in changes:
        await _announce(change)
    return changes


async def check_nodata(now: int | None = None) -> list[Change]:
    """Move the alerts of metrics silent for their rule's nodata_s to nodata; publish and notify each change."""
    now = now_us() if now is None else now
    changes = []
    for rule, metric_id, inst, value in await sync_to_async(storage.silent_instances)(now):
        change = await _move(rule.id, metric_id, inst, State.NODATA, None, value, now)
        if change is not None:
            changes.append(change)
            await _announce(change)
    return changes


async def _move(
    rule_id: int, metric_id: int, seen: CachedInstance, to: str, since: int | None, value: float | None, ts: int
) -> Change | None:
    """Store a change from the state seen; on a lost race adopt the stored state and return None."""
    result = await sync_to_async(storage.apply)(rule_id, metric_id, seen, to, since, value, ts)
    if isinstance(result, CachedInstance):
        cache.adopt(rule_id, metric_id, result)
        return None
    cache.adopt(rule_id, metric_id, CachedInstance(seen.id, to, since))
    return result


async def _announce(change: Change) -> None:
    """Publish a stored change to every open page and send its notifications in the background."""
    await events.publish(events.ALERTS_GROUP, change.event)
    for delivery in change.deliveries:
        transports.spawn(transports.deliver(delivery))


# --- Alerts: operators ---------------------------------------------------------------


async def acknowledge_alert(inst: AlertInstance, user) -> events.AlertState:
    """Record who acknowledged an active alert and tell every open page (the acknowledgement ends on resolve)."""
    event = await sync_to_async(storage.acknowledge)(inst, user)  # committed when it returns (autocommit)
    await events.publish(events.ALERTS_GROUP, event)
    return event


async def silence_alert(inst: AlertInstance, duration_s: int) -> events.AlertState:
    """Mute an alert's notifications for duration_s (0 lifts the silence) and tell every open page."""
    event = await sync_to_async(storage.silence)(inst, duration_s)
    await events.publish(events.ALERTS_GROUP, event)
    return event


def save_alert_rule(user, data: dict[str, Any], rule: AlertRule | None = None) -> AlertRule:
    """Validate and store a new or changed rule (a partial change keeps the other fields).

    A change reads the rule again inside its transaction (locked on
    PostgreSQL) and writes only the fields it was given: two people changing
    one rule at once (one disables it, the other moves its threshold) keep
    both changes, where saving every field from a copy read earlier put the
    first one back. Saving a rule with enabled off ends its alerts
    (`retire_rule`, run by AlertRule's post_save signal).
    """
    form_data(data)  # unknown fields and wrong types are refused before they are merged
    with transaction.atomic():
        if rule is not None:
            try:
                rule = AlertRule.objects.select_for_update().get(pk=rule.pk)
            except AlertRule.DoesNotExist:
                raise NotFound(f"no alert rule {rule.pk} that you may see") from None
        # Fields left out keep their value (a change) or take the model's default (a new rule).
        merged = {name: getattr(rule or AlertRule(), name) for name in AlertRuleForm.Meta.fields}
        merged.update(data)
        if rule is not None and merged["metric_pattern"] == rule.metric_pattern:
            # Disabling a rule whose metrics are gone must not fail on its (unchanged) pattern.
            merged["allow_empty_match"] = True
        form = AlertRuleForm(form_data(merged), instance=rule, user=user)
        if not form.is_valid():
            raise form_error(form)
        if rule is None:
            return form.save()
        changed = form.save(commit=False)
        changed.save(update_fields=[name for name in AlertRuleForm.Meta.fields if name in data])
        return changed


def delete_alert_rule(rule: AlertRule) -> None:
    """Delete a rule; its active alerts end (`retire_rule`, on pre_delete)."""
    with transaction.atomic():
        rule.delete()


# --- Alerts: rules switched off ---------------------------------------------------------


def retire_rule(rule: AlertRule, reason: str) -> list[Change]:
    """End every active alert of a rule that was disabled or is being deleted; publish and notify after commit.

    The one action for a rule switched off, whatever the path (admin, ORM,
    the no-data job's sweep): each firing or no-data instance becomes
    resolved with the reason, a pending one goes back to ok; the events are
    published to open pages and the rule's webhook and emails are notified.
    On delete nothing is stored (the rows cascade away with the rule), so
    its notices are sent from memory and not recorded.

    It runs from Django signals on AlertRule (post_save with enabled off,
    pre_delete): the admin's save and delete, its bulk delete action,
    `rule.save()` and `QuerySet.delete()` all pass through them.
    `QuerySet.update(enabled=False)` and raw SQL send no signal, so the
    no-data job also retires what a disabled rule left active
    (`retire_disabled_rules`).
    """
    end = storage.detached_end if reason == RULE_DELETED else storage.end_instance
    changes: list[Change] = []
    with transaction.atomic():
        for inst in storage.active_instances(rule):
            change = end(rule, inst, reason)
            if change is not None:
                changes.append(change)
        if changes:
            transaction.on_commit(partial(_announce_from_sync, changes))
    return changes


async def retire_disabled_rules() -> list[Change]:
    """Resolve what rules disabled without a signal (QuerySet.update, raw SQL, another tool) left active."""
    changes: list[Change] = []
    for rule in await sync_to_async(storage.rules_left_active)():
        changes += await sync_to_async(retire_rule)(rule, RULE_DISABLED)
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
        await asyncio.gather(*(transports.deliver(d) for d in change.deliveries), return_exceptions=True)


def _rule_saved(sender: type[AlertRule], instance: AlertRule, raw: bool = False, **kwargs: Any) -> None:
    cache.rule_changed()
    if not instance.enabled and not raw:  # raw: loaddata, whose instances come from the same fixture
        retire_rule(instance, RULE_DISABLED)


def _rule_deleting(sender: type[AlertRule], instance: AlertRule, **kwargs: Any) -> None:
    retire_rule(instance, RULE_DELETED)


def connect_signals() -> None:
    """Connect AlertRule's signals to the rule cache and to `retire_rule` (from DashboardConfig.ready)."""
    post_save.connect(_rule_saved, sender=AlertRule, dispatch_uid="alerts-rule-saved")
    pre_delete.connect(_rule_deleting, sender=AlertRule, dispatch_uid="alerts-rule-deleting")
    post_delete.connect(cache.rule_changed, sender=AlertRule, dispatch_uid="alerts-rule-deleted")
