"""The alerts screen and the banner's endpoints: rules, their history and preview, acknowledge and silence.

    GET    /alerts/                               the screen (rules live, history, the editor by permission)
    GET    /api/v1/alert-rules                    visible rules with state and active instances; POST creates
    GET    /api/v1/alert-rules/preview?pattern=   what a pattern matches among readable metrics, suggestions
    GET    /api/v1/alert-rules/<id>               one rule; PATCH changes some fields; DELETE
    GET    /api/v1/alert-rules/<id>/history       its state changes, newest first, paged
    GET    /api/v1/alerts                         active alerts, as the live `alert` frames carry them
    POST   /api/v1/alerts/<instance>/ack          acknowledge in the operator's name
    POST   /api/v1/alerts/<instance>/silence      {"duration_s"}: mute notifications (0 lifts it)

Views read (dashboard/alerts/screen.py) and call the actions
(dashboard/actions.py) for every change; they never publish. Writes need the
session's CSRF token (header X-CSRFToken) and the AlertRule model
permissions (add, change, delete), or for ack and silence staff or the
'change alert instance' permission. Every JSON error has the one shape of
dashboard.api.error_response.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from dashboard import actions
from dashboard.alerts import screen
from dashboard.alerts.forms import preview
from dashboard.api import error_response
from dashboard.exceptions import BadRequest, PulseboardError
from dashboard.models import AlertInstance, AlertRule
from dashboard.pages.http import json_body, signed_in

MAX_SILENCE_S = 7 * 86400  # a week: a longer silence is a rule to disable, not an alert to mute
PREVIEW_MAX_PATTERN = 200  # the model's max_length for metric_pattern
MAX_RULE_BODY_BYTES = 64 * 1024  # a rule is a few hundred bytes; its longest field (email_to) a few KB
MAX_EXACT_INT = 2**53  # JSON integers beyond a float's exact range are no threshold or duration anyone means


def _rule_body(request: HttpRequest) -> dict[str, Any]:
    """Return a rule's JSON body: small, with numbers a float holds exactly and text that can be stored."""
    body = json_body(request, MAX_RULE_BODY_BYTES, "a rule's body")
    for name, value in body.items():
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_EXACT_INT:
            raise BadRequest(f"{name} is out of range", field=name)  # float() of 10**400 raises OverflowError
        if isinstance(value, str) and not value.isascii():
            try:
                value.encode()
            except UnicodeEncodeError:  # a lone surrogate (JSON "\ud800") cannot be stored
                raise BadRequest(f"{name} is not valid Unicode text", field=name) from None
    return body


def _positive(text: str, field: str) -> int:
    # isdigit() alone lets '²' through to int() (a 500), and int() refuses over 4,300 digits.
    if not (text.isascii() and text.isdigit()) or len(text) > 9 or int(text) < 1:
        raise BadRequest(f"{field} must be a whole number from 1 to 999999999", field=field)
    return int(text)


# --- The screen and its rules ------------------------------------------------------


@login_required
def alerts_page(request: HttpRequest) -> HttpResponse:
    """The alerts screen: every visible rule live, its history, and (by permission) the editor."""
    payload = screen.rules_payload(request.user)
    payload["conditions"] = [[value, label] for value, label in AlertRule.Condition.choices]
    payload["severities"] = [[value, label] for value, label in AlertRule.Severity.choices]
    return render(request, "dashboard/alerts.html", {"config": payload})


@require_http_methods(["GET", "POST"])
def rule_collection(request: HttpRequest) -> JsonResponse:
    """GET: the visible rules with state and active instances; POST: create a rule (add permission)."""
    try:
        signed_in(request)
        if request.method == "GET":
            return JsonResponse(screen.rules_payload(request.user))
        screen.require(request.user, "add", "create")
        rule = actions.save_alert_rule(request.user, _rule_body(request))
    except PulseboardError as exc:
        return error_response(exc)
    return JsonResponse(screen.rule_body(request.user, rule), status=201)


@require_http_methods(["GET", "PATCH", "DELETE"])
def rule_detail(request: HttpRequest, pk: int) -> JsonResponse:
    """GET one rule; PATCH some of its fields (change permission); DELETE it (delete permission)."""
    try:
        signed_in(request)
        if request.method == "PATCH":
            screen.require(request.user, "change", "change")
        elif request.method == "DELETE":
            screen.require(request.user, "delete", "delete")
        rule = screen.visible_rule(request.user, pk, to_change=request.method != "GET")
        if request.method == "PATCH":
            rule = actions.save_alert_rule(request.user, _rule_body(request), rule)
        elif request.method == "DELETE":
            actions.delete_alert_rule(rule)
            return JsonResponse({"deleted": pk})
    except PulseboardError as exc:
        return error_response(exc)
    return JsonResponse(screen.rule_body(request.user, rule))


@require_GET
def rule_history(request: HttpRequest, pk: int) -> JsonResponse:
    """GET ?page=1&per_page=20: a rule's state changes on metrics the user may read, newest first."""
    try:
        signed_in(request)
        rule = screen.visible_rule(request.user, pk)
        page_number = _positive(request.GET.get("page", "1"), "page")
        per_page = _positive(request.GET.get("per_page", str(screen.HISTORY_PER_PAGE)), "per_page")
        return JsonResponse(screen.history(request.user, rule, page_number, per_page))
    except PulseboardError as exc:
        return error_response(exc)


@require_GET
def rule_preview(request: HttpRequest) -> JsonResponse:
    """GET ?pattern=iot.*.temperature: how many metrics the user may read it matches, the first keys, suggestions."""
    try:
        signed_in(request)
        pattern = request.GET.get("pattern", "")
        if len(pattern) > PREVIEW_MAX_PATTERN:
            raise BadRequest(f"a pattern has at most {PREVIEW_MAX_PATTERN} characters", field="pattern")
    except PulseboardError as exc:
        return error_response(exc)
    return JsonResponse(preview(pattern, request.user))


# --- Active alerts: the banner, acknowledge, silence --------------------------------


@require_GET
def active_alerts(request: HttpRequest) -> JsonResponse:
    """GET: pending, firing and no-data alerts the user may read, as the live `alert` frames carry them."""
    try:
        signed_in(request)
    except PulseboardError as exc:
        return error_response(exc)
    found = screen.active_for(request.user)
    return JsonResponse({"alerts": [{**e.as_message(), "type": "alert"} for e in found]})


def _operable(request: HttpRequest, pk: int) -> AlertInstance:
    signed_in(request)
    return screen.operable(request.user, pk)


@require_POST
async def acknowledge_alert(request: HttpRequest, pk: int) -> JsonResponse:
    """POST: acknowledge an alert in the operator's name; every open page shows it at once."""
    try:
        await request.auser()
        inst = await sync_to_async(_operable)(request, pk)
        event = await actions.acknowledge_alert(inst, request.user)
    except PulseboardError as exc:
        return error_response(exc)
    return JsonResponse({**event.as_message(), "type": "alert"})


@require_POST
async def silence_alert(request: HttpRequest, pk: int) -> JsonResponse:
    """POST {"duration_s": 3600}: mute an alert's notifications for a while (0 lifts the silence)."""
    try:
        await request.auser()
        inst = await sync_to_async(_operable)(request, pk)
        duration = json_body(request).get("duration_s", 3600)
        if isinstance(duration, bool) or not isinstance(duration, int) or not 0 <= duration <= MAX_SILENCE_S:
            raise BadRequest(
                f"duration_s must be a whole number of seconds from 0 to {MAX_SILENCE_S}", field="duration_s"
            )
        event = await actions.silence_alert(inst, duration)
    except PulseboardError as exc:
        return error_response(exc)
    return JsonResponse({**event.as_message(), "type": "alert"})
