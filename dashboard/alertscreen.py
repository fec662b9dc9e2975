"""The alerts screen (issue #13 item 8): rules with their state and instances, history, and a rule editor.

Views read; every change goes through the actions `save_rule` and
`delete_rule` below (validated by dashboard/alertrules.py's one form). Their
save and delete pass through AlertRule's signals, which run the one action
for a rule switched off, `alerts.retire_rule`: it resolves, notifies and
pushes the alerts of a rule that is disabled or deleted (not called here a
second time). Acknowledge and silence use the existing
/api/v1/alerts/<instance>/ack and /silence endpoints (dashboard/pages.py).

Every JSON error has the one shape of dashboard.api.error_response. Writes
need the session's CSRF token (header X-CSRFToken) and the AlertRule model
permissions (add, change, delete); rules are listed to a user only when they
match a metric that user may read.
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.exceptions import RequestDataTooBig
from django.core.paginator import EmptyPage, Paginator
from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods

from dashboard.alertrules import (
    EMPTY_MATCH_CODE,
    UNREADABLE_MATCH_CODE,
    AlertRuleForm,
    matching_keys,
    preview,
    readable_keys,
)
from dashboard.api import error_response
from dashboard.exceptions import BadRequest, NotAuthenticated, PayloadTooLarge, PulseboardError
from dashboard.models import AlertEvent, AlertInstance, AlertRule, Metric
from dashboard.pages import Forbidden, NotFound
from dashboard.timeutil import US

ACTIVE_STATES = (AlertInstance.State.PENDING, AlertInstance.State.FIRING, AlertInstance.State.NODATA)
HISTORY_PER_PAGE = 20  # events per history page; ?per_page= up to HISTORY_MAX_PER_PAGE
HISTORY_MAX_PER_PAGE = 200
PREVIEW_MAX_PATTERN = 200  # the model's max_length for metric_pattern
MAX_RULE_BODY_BYTES = 64 * 1024  # a rule is a few hundred bytes; its longest field (email_to) a few KB
MAX_EXACT_INT = 2**53  # JSON integers beyond a float's exact range are no threshold or duration anyone means


class InvalidRule(BadRequest):
    """A rule written in the alerts screen does not validate; names the first bad field (and close keys)."""

    code = "invalid_rule"

    def __init__(self, message: str, *, field: str, errors: dict[str, list[str]], suggestions: list[str]) -> None:
        super().__init__(message, field=field)
        self.errors = errors
        self.suggestions = suggestions

    def as_dict(self) -> dict:
        body = super().as_dict()
        body["errors"] = self.errors
        if self.suggestions:
            body["suggestions"] = self.suggestions
        return body


class PatternMatchesNothing(InvalidRule):
    """The rule's metric pattern matches no metric the author may read, and they did not allow that."""

    code = "pattern_matches_nothing"  # alertrules.EMPTY_MATCH_CODE


class PatternMatchesUnreadable(InvalidRule):
    """The rule's metric pattern also matches a metric the author may not read (its notifications would show it)."""

    code = "pattern_matches_unreadable"  # alertrules.UNREADABLE_MATCH_CODE


# --- Rights ---------------------------------------------------------------------


def _signed_in(request: HttpRequest) -> None:
    if not request.user.is_authenticated or getattr(request.user, "share_link", None) is not None:
        raise NotAuthenticated("sign in at /accounts/login/ first")


def rights(user) -> dict[str, bool]:
    """Return what the user may do on the alerts screen (the server checks again on every write)."""
    person = getattr(user, "is_authenticated", False) and getattr(user, "share_link", None) is None
    return {
        "can_operate": bool(person and (user.is_staff or user.has_perm("dashboard.change_alertinstance"))),
        "can_add": bool(person and user.has_perm("dashboard.add_alertrule")),
        "can_change": bool(person and user.has_perm("dashboard.change_alertrule")),
        "can_delete": bool(person and user.has_perm("dashboard.delete_alertrule")),
    }


def _require(user, perm: str, what: str) -> None:
    if not user.has_perm(f"dashboard.{perm}_alertrule"):
        raise Forbidden(f"you may not {what} alert rules; ask an administrator for the '{perm} alert rule' permission")


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


def visible_rules(user) -> list[tuple[AlertRule, list[str]]]:
    """Return (rule, the readable keys it matches) for every rule the user may see.

    A rule is visible when its pattern matches a metric the user may read;
    a rule that matches no metric at all yet is visible to those who may
    add or change rules (so its author does not lose it).
    """
    return [(rule, matched) for rule, matched, _ in _rules_with_reach(user)]


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


def _visible_rule(user, pk: int, *, to_change: bool = False) -> AlertRule:
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


# --- Writing (the actions) ---------------------------------------------------------


def _form_error(form: AlertRuleForm) -> InvalidRule:
    errors = {name: [str(m) for m in messages] for name, messages in form.errors.items()}
    field = next(iter(errors))
    cls = InvalidRule
    if form.has_error("metric_pattern", EMPTY_MATCH_CODE):
        cls = PatternMatchesNothing
    elif form.has_error("metric_pattern", UNREADABLE_MATCH_CODE):
        cls = PatternMatchesUnreadable
    message = f"{field}: {errors[field][0]}" if field != "__all__" else errors[field][0]
    return cls(message, field=field, errors=errors, suggestions=form.suggestions)


def save_rule(user, data: dict[str, Any], rule: AlertRule | None = None) -> AlertRule:
    """Validate and store a new or changed rule (a partial change keeps the other fields).

    A change reads the rule again inside its transaction (locked on
    PostgreSQL) and writes only the fields it was given: two people changing
    one rule at once (one disables it, the other moves its threshold) keep
    both changes, where saving every field from a copy read earlier put the
    first one back. Saving a rule with enabled off resolves its active
    alerts, notifies and pushes them (`alerts.retire_rule`, run by
    AlertRule's post_save signal).
    """
    _form_data(data)  # unknown fields and wrong types are refused before they are merged
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
        form = AlertRuleForm(_form_data(merged), instance=rule, user=user)
        if not form.is_valid():
            raise _form_error(form)
        if rule is None:
            return form.save()
        changed = form.save(commit=False)
        changed.save(update_fields=[name for name in AlertRuleForm.Meta.fields if name in data])
        return changed


def delete_rule(rule: AlertRule) -> None:
    """Delete a rule; its active alerts are resolved, notified and pushed (`alerts.retire_rule`, on pre_delete)."""
    with transaction.atomic():
        rule.delete()


def _form_data(data: dict[str, Any]) -> dict[str, Any]:
    """Turn JSON values into what a Django form reads (None -> '', booleans as booleans)."""
    unknown = set(data) - set(AlertRuleForm.Meta.fields) - {"allow_empty_match"}
    if unknown:
        name = sorted(unknown)[0]
        raise BadRequest(f"unknown field {name!r}", field=name)
    out: dict[str, Any] = {}
    for name, value in data.items():
        if value is None:
            out[name] = ""
        elif name in ("enabled", "allow_empty_match"):
            if not isinstance(value, bool):
                raise BadRequest(f"{name} must be true or false", field=name)
            if value:
                out[name] = "on"
        elif isinstance(value, dict | list):
            raise BadRequest(f"{name} must be a plain value", field=name)
        else:
            out[name] = value
    return out


def _json_body(request: HttpRequest) -> dict[str, Any]:
    length = request.headers.get("Content-Length", "")
    if length.isascii() and length.isdigit() and int(length) > MAX_RULE_BODY_BYTES:
        raise PayloadTooLarge(f"a rule's body is at most {MAX_RULE_BODY_BYTES} bytes", field="body")
    try:
        raw = request.body
    except RequestDataTooBig:  # no Content-Length (chunked): Django's own limit stops the read
        raise PayloadTooLarge(f"a rule's body is at most {MAX_RULE_BODY_BYTES} bytes", field="body") from None
    if len(raw) > MAX_RULE_BODY_BYTES:
        raise PayloadTooLarge(f"a rule's body is at most {MAX_RULE_BODY_BYTES} bytes", field="body")
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, RecursionError):  # RecursionError: thousands of nested '['
        raise BadRequest("the body is not valid JSON", field="body") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", field="body")
    for name, value in body.items():
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_EXACT_INT:
            raise BadRequest(f"{name} is out of range", field=name)  # float() of 10**400 raises OverflowError
        if isinstance(value, str) and not value.isascii():
            try:
                value.encode()
            except UnicodeEncodeError:  # a lone surrogate (JSON "\ud800") cannot be stored
                raise BadRequest(f"{name} is not valid Unicode text", field=name) from None
    return body


# --- Views -----------------------------------------------------------------------


@login_required
def alerts_page(request: HttpRequest) -> HttpResponse:
    """The alerts screen: every visible rule live, its history, and (by permission) the editor."""
    payload = rules_payload(request.user)
    payload["conditions"] = [[value, label] for value, label in AlertRule.Condition.choices]
    payload["severities"] = [[value, label] for value, label in AlertRule.Severity.choices]
    return render(request, "dashboard/alerts.html", {"config": payload})


@require_http_methods(["GET", "POST"])
def rule_collection(request: HttpRequest) -> JsonResponse:
    """GET: the visible rules with state and active instances; POST: create a rule (add permission)."""
    try:
        _signed_in(request)
        if request.method == "GET":
            return JsonResponse(rules_payload(request.user))
        _require(request.user, "add", "create")
        rule = save_rule(request.user, _json_body(request))
    except PulseboardError as exc:
        return error_response(exc)
    return JsonResponse(_one(request.user, rule), status=201)


@require_http_methods(["GET", "PATCH", "DELETE"])
def rule_detail(request: HttpRequest, pk: int) -> JsonResponse:
    """GET one rule; PATCH some of its fields (change permission); DELETE it (delete permission)."""
    try:
        _signed_in(request)
        if request.method == "PATCH":
            _require(request.user, "change", "change")
        elif request.method == "DELETE":
            _require(request.user, "delete", "delete")
        rule = _visible_rule(request.user, pk, to_change=request.method != "GET")
        if request.method == "PATCH":
            rule = save_rule(request.user, _json_body(request), rule)
        elif request.method == "DELETE":
            delete_rule(rule)
            return JsonResponse({"deleted": pk})
    except PulseboardError as exc:
        return error_response(exc)
    return JsonResponse(_one(request.user, rule))


def _one(user, rule: AlertRule) -> dict[str, Any]:
    for body in rules_payload(user)["rules"]:
        if body["id"] == rule.id:
            return body
    # Saved on metrics the author may not read (allowed for a pattern matching nothing yet that
    # now matches another's metrics): answer what was stored, without instances.
    return _rule_json(rule, [], 0, "", rights(user)["can_change"], timezone.now())


@require_GET
def rule_history(request: HttpRequest, pk: int) -> JsonResponse:
    """GET ?page=1&per_page=20: a rule's state changes on metrics the user may read, newest first."""
    try:
        _signed_in(request)
        rule = _visible_rule(request.user, pk)
        page_number = _positive(request.GET.get("page", "1"), "page")
        per_page = _positive(request.GET.get("per_page", str(HISTORY_PER_PAGE)), "per_page")
        if per_page > HISTORY_MAX_PER_PAGE:
            raise BadRequest(f"per_page is at most {HISTORY_MAX_PER_PAGE}", field="per_page")
        events = (
            AlertEvent.objects.filter(rule=rule, metric__in=Metric.objects.visible_to(request.user))
            .select_related("metric")
            .order_by("-at", "-id")
        )
        paginator = Paginator(events, per_page)
        try:
            page = paginator.page(page_number)
        except EmptyPage:
            raise BadRequest(
                f"page {page_number} is past the last page ({paginator.num_pages})", field="page"
            ) from None
    except PulseboardError as exc:
        return error_response(exc)
    return JsonResponse(
        {
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
    )


def _positive(text: str, field: str) -> int:
    # isdigit() alone lets '²' through to int() (a 500), and int() refuses over 4,300 digits.
    if not (text.isascii() and text.isdigit()) or len(text) > 9 or int(text) < 1:
        raise BadRequest(f"{field} must be a whole number from 1 to 999999999", field=field)
    return int(text)


@require_GET
def rule_preview(request: HttpRequest) -> JsonResponse:
    """GET ?pattern=iot.*.temperature: how many metrics the user may read it matches, the first keys, suggestions."""
    try:
        _signed_in(request)
        pattern = request.GET.get("pattern", "")
        if len(pattern) > PREVIEW_MAX_PATTERN:
            raise BadRequest(f"a pattern has at most {PREVIEW_MAX_PATTERN} characters", field="pattern")
    except PulseboardError as exc:
        return error_response(exc)
    return JsonResponse(preview(pattern, request.user))
