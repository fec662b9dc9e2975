"""What the alerts screen and the banner show: rules with their state and instances, history, who may do what.

Pure reading (the changes are actions in dashboard/actions.py; the views are
dashboard/pages/alerts.py). Rules are listed to a user only when they match
a metric that user may read; a rule that matches nothing yet is listed to
those who may add or change rules, so its author does not lose it.
"""

from __future__ import annotations

from typing import Any

from django.core.paginator import EmptyPage, Paginator
from django.utils import timezone

from dashboard import events
from dashboard.alerts.forms import matching_keys, readable_keys
from dashboard.alerts.machine import ACTIVE_STATES
from dashboard.alerts.storage import state_event
from dashboard.exceptions import BadRequest, Forbidden, NotFound
from dashboard.models import AlertEvent, AlertInstance, AlertRule, Metric
from dashboard.timeutil import US

HISTORY_PER_PAGE = 20  # events per history page; ?per_page= up to HISTORY_MAX_PER_PAGE
HISTORY_MAX_PER_PAGE = 200
BANNER_MAX = 200  # active alerts the banner lists, newest first; more is no longer a banner

# --- Rights ---------------------------------------------------------------------


def rights(user) -> dict[str, bool]:
    """Return what the user may do on the alerts screen (the server checks again on every write)."""
    person = getattr(user, "is_authenticated", False) and getattr(user, "share_link", None) is None
    return {
        "can_operate": bool(person and (user.is_staff or user.has_perm("dashboard.change_alertinstance"))),
        "can_add": bool(person and user.has_perm("dashboard.add_alertrule")),
        "can_change": bool(person and user.has_perm("dashboard.change_alertrule")),
        "can_delete": bool(person and user.has_perm("dashboard.delete_alertrule")),
    }


def require(user, perm: str, what: str) -> None:
    """Raise Forbidden unless the user has the AlertRule model permission `perm` (add, change, delete)."""
    if not user.has_perm(f"dashboard.{perm}_alertrule"):
        raise Forbidden(f"you may not {what} alert rules; ask an administrator for the '{perm} alert rule' permission")


def can_operate(user, inst: AlertInstance) -> bool:
    """Return whether a user may acknowledge or silence an alert: staff or the change permission, and may read it."""
    if not getattr(user, "is_authenticated", False) or getattr(user, "share_link", None) is not None:
        return False
    if not (user.is_staff or user.has_perm("dashboard.change_alertinstance")):
        return False
    return Metric.objects.visible_to(user).filter(pk=inst.metric_id).exists()


def operable(user, pk: int) -> AlertInstance:
    """Return an alert instance the user may read and operate, else raise NotFound or Forbidden."""
    inst = AlertInstance.objects.select_related("rule", "metric").filter(pk=pk).first()
    if inst is None or not Metric.objects.visible_to(user).filter(pk=inst.metric_id).exists():
        raise NotFound(f"no alert {pk} that you may read")
    if not can_operate(user, inst):
        raise Forbidden("only operators (staff, or the 'change alert instance' permission) may do this")
    return inst


# --- Reading ---------------------------------------------------------------------


def condition_text(rule: AlertRule, unit: str = "") -> str:
    """Return a rule's condition in words: 'above 28 °C for 30 s'."""

    def num(value: float | None) -> str:
        return "?" if value is None else f"{value:g}{' ' + unit if unit else ''}"

    Condition = AlertRule.Condition
    if rule.condition == Condition.NODATA:
        return f"no data for {rule.nodata_s} s"
    text = {
        Condition.ABOVE: f"above {num(rule.threshold)}",
        Condition.BELOW: f"below {num(rule.threshold)}",
        Condition.OUTSIDE: f"outside {num(rule.threshold)} … {num(rule.threshold_high)}",
        Condition.RATE: f"changing faster than {num(rule.threshold)}/s",
    }.get(rule.condition, rule.condition)
    return text + (f" for {rule.for_s} s" if rule.for_s else "")


def _us(moment) -> int:
    return int(moment.timestamp() * US)


def instance_since_us(inst: AlertInstance) -> int:
    """Return when an instance entered its state (µs): a pending one since its first breaching sample."""
    if inst.state == AlertInstance.State.PENDING and inst.pending_since_ts is not None:
        return inst.pending_since_ts
    return _us(inst.since)


def rule_state(rule: AlertRule, instances: list[AlertInstance], now) -> str:
    """Return ok, pending, firing, silenced or disabled for a rule, from the instances the viewer may read."""
    if not rule.enabled:
        return "disabled"
    firing = [i for i in instances if i.state in (AlertInstance.State.FIRING, AlertInstance.State.NODATA)]
    if firing:
        silenced = all(i.silenced_until is not None and i.silenced_until > now for i in firing)
        return "silenced" if silenced else "firing"
    if any(i.state == AlertInstance.State.PENDING for i in instances):
        return "pending"
    return "ok"


def _instance_json(inst: AlertInstance) -> dict[str, Any]:
    return {
        "id": inst.id,
        "metric": inst.metric.key,
        "unit": inst.metric.unit,
        "state": inst.state,
        "value": inst.last_value,
        "since": instance_since_us(inst),
        "acknowledged_by": inst.acknowledged_by.get_username() if inst.acknowledged_by_id else "",
        "silenced_until": _us(inst.silenced_until) if inst.silenced_until else 0,
    }


def _rule_json(rule: AlertRule, instances: list[AlertInstance], matched: int, unit: str, can_change: bool, now) -> dict:
    body: dict[str, Any] = {
        "id": rule.id,
        "name": rule.name,
        "metric_pattern": rule.metric_pattern,
        "condition": rule.condition,
        "condition_text": condition_text(rule, unit),
        "threshold": rule.threshold,
        "threshold_high": rule.threshold_high,
        "for_s": rule.for_s,
        "nodata_s": rule.nodata_s,
        "severity": rule.severity,
        "enabled": rule.enabled,
        "state": rule_state(rule, instances, now),
        "matches": matched,
        "instances": [_instance_json(i) for i in instances],
    }
    if can_change:  # notification targets may carry secrets (webhook tokens): editors only
        body.update(webhook_url=rule.webhook_url, email_to=rule.email_to)
    return body


def _rules_with_reach(user) -> list[tuple[AlertRule, list[str], bool]]:
    """Return (rule, readable keys it matches, whether it also matches a metric the user may not read)."""
    keys = readable_keys(user)
    every_key = keys if user.is_staff or user.is_superuser else readable_keys(None)
    editor = user.has_perm("dashboard.add_alertrule") or user.has_perm("dashboard.change_alertrule")
    found = []
    for rule in AlertRule.objects.order_by("name", "id"):
        matched = matching_keys(rule.metric_pattern, keys)
        if not matched and not editor:
            continue
        wider = every_key is not keys and len(matching_keys(rule.metric_pattern, every_key)) > len(matched)
        if not matched and wider:
            continue  # it watches metrics this user may not read
        found.append((rule, matched, wider))
    return found


def rules_payload(user) -> dict[str, Any]:
    """Return the alerts screen's data: the visible rules with their state and active instances, and the rights."""
    reach = _rules_with_reach(user)
    found = [(rule, keys) for rule, keys, _ in reach]
    wider = {rule.id for rule, _, beyond in reach if beyond}
    can = rights(user)
    instances: dict[int, list[AlertInstance]] = {rule.id: [] for rule, _ in found}
    active = (
        AlertInstance.objects.filter(
            rule_id__in=list(instances), state__in=ACTIVE_STATES, metric__in=Metric.objects.visible_to(user)
        )
        .select_related("metric", "acknowledged_by")
        .order_by("metric__key")
    )
    for inst in active:
        instances[inst.rule_id].append(inst)
    # The unit of the first matching metric reads the threshold in the operator's terms ("above 28 °C").
    firsts = {keys[0] for _, keys in found if keys}
    units = dict(Metric.objects.filter(key__in=firsts).values_list("key", "unit"))
    now = timezone.now()
    return {
        "rules": [
            _rule_json(
                rule,
                instances[rule.id],
                len(keys),
                units.get(keys[0], "") if keys else "",
                can["can_change"] and rule.id not in wider,
                now,
            )
            for rule, keys in found
        ],
        **can,
    }


def visible_rule(user, pk: int, *, to_change: bool = False) -> AlertRule:
    """Return a rule the user may see; to change or delete it, it must watch only metrics they may read."""
    for rule, _, wider in _rules_with_reach(user):
        if rule.pk == pk:
            if to_change and wider:
                raise Forbidden(
                    f"alert rule {pk} also watches metrics you may not read; only someone who may read them all "
                    "can change or delete it"
                )
            return rule
    raise NotFound(f"no alert rule {pk} that you may see")


def rule_body(user, rule: AlertRule) -> dict[str, Any]:
    """Return one rule as the screen lists it (after a create or a change)."""
    for body in rules_payload(user)["rules"]:
        if body["id"] == rule.id:
            return body
    # Saved on metrics the author may not read (allowed for a pattern matching nothing yet that
    # now matches another's metrics): answer what was stored, without instances.
    return _rule_json(rule, [], 0, "", rights(user)["can_change"], timezone.now())


def history(user, rule: AlertRule, page_number: int, per_page: int) -> dict[str, Any]:
    """Return one page of a rule's state changes on metrics the user may read, newest first."""
    if per_page > HISTORY_MAX_PER_PAGE:
        raise BadRequest(f"per_page is at most {HISTORY_MAX_PER_PAGE}", field="per_page")
    found = (
        AlertEvent.objects.filter(rule=rule, metric__in=Metric.objects.visible_to(user))
        .select_related("metric")
        .order_by("-at", "-id")
    )
    paginator = Paginator(found, per_page)
    try:
        page = paginator.page(page_number)
    except EmptyPage:
        raise BadRequest(f"page {page_number} is past the last page ({paginator.num_pages})", field="page") from None
    return {
        "rule": rule.id,
        "page": page.number,
        "pages": paginator.num_pages,
        "total": paginator.count,
        "events": [
            {
                "id": e.id,
                "metric": e.metric.key,
                "unit": e.metric.unit,
                "from_state": e.from_state,
                "to_state": e.to_state,
                "value": e.value,
                "at": _us(e.at),
                "message": e.message,
            }
            for e in page.object_list
        ],
    }


def active_for(user) -> list[events.AlertState]:
    """Return the live events of every pending, firing or no-data alert the user may read (the banner)."""
    visible = Metric.objects.visible_to(user)
    instances = (
        AlertInstance.objects.filter(state__in=ACTIVE_STATES, rule__enabled=True, metric__in=visible)
        .select_related("rule", "metric", "acknowledged_by")
        .order_by("-since")[:BANNER_MAX]
    )
    result = []
    for inst in instances:
        event = AlertEvent.objects.filter(rule_id=inst.rule_id, metric_id=inst.metric_id).first()
        result.append(state_event(inst, event if event and event.to_state == inst.state else None))
    return result
