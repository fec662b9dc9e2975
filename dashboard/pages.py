"""Operator dashboards (issue #6): the list, the dashboard page, and the JSON endpoints the page posts to.

Every POST needs a signed-in user and the CSRF token (header X-CSRFToken);
rights are checked here, on the server, whatever the page shows. Errors use
the one JSON error shape of dashboard.api.error_response.
"""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET, require_POST

from dashboard import alerts, boards, events, panels, permissions
from dashboard.api import error_response
from dashboard.exceptions import BadRequest, NotAuthenticated, PayloadTooLarge, PulseboardError
from dashboard.models import AlertInstance, Dashboard, Metric

MAX_SILENCE_S = 7 * 86400
KIOSK_ROTATE_MIN_S = 10  # faster rotation than this leaves no time to read a board


class Forbidden(PulseboardError):
    """The user is signed in but may not change this dashboard or alert."""

    code = "forbidden"
    status = 403


class NotFound(PulseboardError):
    """The dashboard or alert does not exist or the user may not read it."""

    code = "not_found"
    status = 404


def _json_body(request: HttpRequest) -> dict[str, Any]:
    try:
        raw = request.body
    except RequestDataTooBig:  # Django's DATA_UPLOAD_MAX_MEMORY_SIZE; its own answer is an HTML 400
        raise PayloadTooLarge(f"the body is over {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes", field="body") from None
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, RecursionError):  # RecursionError: thousands of nested '['
        raise BadRequest("the body is not valid JSON", field="body") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", field="body")
    return body


def _signed_in(request: HttpRequest) -> None:
    if not request.user.is_authenticated or getattr(request.user, "share_link", None) is not None:
        raise NotAuthenticated("sign in at /accounts/login/ first")


@login_required
def dashboard_list(request: HttpRequest) -> HttpResponse:
    """Every dashboard the user may view."""
    found = Dashboard.objects.visible_to(request.user).prefetch_related("panels")
    rows = [(board, boards.rights(request.user, board)) for board in found]
    return render(
        request,
        "dashboard/dashboard_list.html",
        {"rows": rows, "dashboards": found, "can_create": boards.may_create(request.user)},
    )


@login_required
def dashboard_page(request: HttpRequest, slug: str) -> HttpResponse:
    """One dashboard: its panels live or over a history range; ?kiosk=1 for a wall screen."""
    board = get_object_or_404(Dashboard.objects.visible_to(request.user), slug=slug)
    config = panels.dashboard_config(board, request.user, panels.chosen_values(request.GET))
    config.update(boards.rights(request.user, board))
    config["can_operate_alerts"] = request.user.is_staff or request.user.has_perm("dashboard.change_alertinstance")
    kiosk = request.GET.get("kiosk") == "1"
    return render(request, "dashboard/dashboard.html", {"board": board, "config": config, "kiosk": kiosk})


@require_POST
def save_layout(request: HttpRequest, slug: str) -> JsonResponse:
    """POST {"panels": [...]}: replace the dashboard's panels (editors only); answer the new page configuration."""
    try:
        _signed_in(request)
        board = Dashboard.objects.visible_to(request.user).filter(slug=slug).first()
        if board is None:
            raise NotFound(f"no dashboard {slug!r} that you may view")
        if not board.can_edit(request.user):
            raise Forbidden("you may view this dashboard but not edit it; ask its owner for editor rights")
        body = _json_body(request)
        specs = body.get("panels")
        # Through a share link a panel is read with its creator's rights, so an
        # editor may only add patterns within what the editor may read.
        permissions.check_layout(request.user, board, specs, body.get("variables"))
        panels.save_layout(board, specs, body.get("variables"))
    except PulseboardError as exc:
        return error_response(exc)
    return JsonResponse(panels.dashboard_config(board, request.user, body.get("chosen")))


@require_POST
def save_preferences(request: HttpRequest) -> JsonResponse:
    """POST {"timezone": "Europe/Berlin"}: remember the viewer's time zone."""
    try:
        _signed_in(request)
        zone = panels.set_timezone(request.user, _json_body(request).get("timezone"))
    except PulseboardError as exc:
        return error_response(exc)
    return JsonResponse({"timezone": zone})


@require_GET
def active_alerts(request: HttpRequest) -> JsonResponse:
    """GET: pending, firing and no-data alerts the user may read, as the live `alert` frames carry them."""
    try:
        _signed_in(request)
    except PulseboardError as exc:
        return error_response(exc)
    found = alerts.active_for(request.user)
    return JsonResponse({"alerts": [{**e.as_message(), "type": "alert"} for e in found]})


def _operable(request: HttpRequest, pk: int) -> AlertInstance:
    _signed_in(request)
    inst = AlertInstance.objects.select_related("rule", "metric").filter(pk=pk).first()
    if inst is None or not Metric.objects.visible_to(request.user).filter(pk=inst.metric_id).exists():
        raise NotFound(f"no alert {pk} that you may read")
    if not alerts.can_operate(request.user, inst):
        raise Forbidden("only operators (staff, or the 'change alert instance' permission) may do this")
    return inst


@require_POST
async def acknowledge_alert(request: HttpRequest, pk: int) -> JsonResponse:
    """POST: acknowledge an alert in the operator's name; every open page shows it at once."""
    from asgiref.sync import sync_to_async

    try:
        await request.auser()
        inst = await sync_to_async(_operable)(request, pk)
        event = await sync_to_async(alerts.acknowledge)(inst, request.user)
    except PulseboardError as exc:
        return error_response(exc)
    await events.publish(events.ALERTS_GROUP, event)
    return JsonResponse({**event.as_message(), "type": "alert"})


@require_POST
async def silence_alert(request: HttpRequest, pk: int) -> JsonResponse:
    """POST {"duration_s": 3600}: mute an alert's notifications for a while (0 lifts the silence)."""
    from asgiref.sync import sync_to_async

    try:
        await request.auser()
        inst = await sync_to_async(_operable)(request, pk)
        duration = _json_body(request).get("duration_s", 3600)
        if isinstance(duration, bool) or not isinstance(duration, int) or not 0 <= duration <= MAX_SILENCE_S:
            raise BadRequest(
                f"duration_s must be a whole number of seconds from 0 to {MAX_SILENCE_S}", field="duration_s"
            )
        event = await sync_to_async(alerts.silence)(inst, duration)
    except PulseboardError as exc:
        return error_response(exc)
    await events.publish(events.ALERTS_GROUP, event)
    return JsonResponse({**event.as_message(), "type": "alert"})
