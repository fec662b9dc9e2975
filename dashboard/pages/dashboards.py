"""Dashboards: the list, one dashboard's page, and the JSON API the page calls (issue #6; #13 items 5 and 7).

    POST   /api/v1/dashboards/<slug>/layout    {"panels", "variables"?}: replace the panels (editors)
    POST   /api/v1/preferences                 {"timezone"}: the viewer's time zone
    GET    /api/v1/dashboards                  boards the user may view, with what they may do
    POST   /api/v1/dashboards                  {"title", "description"?, "slug"?} -> 201, owner = the user
    GET    /api/v1/dashboards/<slug>           one board
    PATCH  /api/v1/dashboards/<slug>           {"title"?, "description"?}
    DELETE /api/v1/dashboards/<slug>           -> {"deleted": slug}
    POST   /api/v1/dashboards/<slug>/duplicate {"title"?} -> 201
    GET    /api/v1/dashboards/<slug>/export    the board file (dashboard/layout.py BoardFile) as a download
    POST   /api/v1/dashboards/import[?replace=1]  body: a board file -> 201 (200 when replaced)

Writes need a signed-in user and the CSRF token (header X-CSRFToken); rights
are in dashboard/boards.py and checked here, on the server, whatever the page
shows. Every error has the one shape of dashboard.api.error_response; a
refused import names the field (`panels[2].metrics`) and changes nothing.
"""

from __future__ import annotations

import json

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from dashboard import boards, panels, permissions
from dashboard.api import error_response
from dashboard.exceptions import BadRequest, Forbidden, NotFound, PayloadTooLarge, PulseboardError
from dashboard.models import Dashboard
from dashboard.pages.http import json_body, signed_in

MAX_IMPORT_BYTES = 2 * 1024 * 1024  # a 60-panel board is ~30 KB; anything near this is not a board file


def _visible(request: HttpRequest, slug: str) -> Dashboard:
    board = Dashboard.objects.visible_to(request.user).filter(slug=slug).first()
    if board is None:
        raise NotFound(f"no dashboard {slug!r} that you may view")
    return board


def _may_create(request: HttpRequest) -> None:
    if not boards.may_create(request.user):
        raise Forbidden("you may not add dashboards; ask an administrator for the 'add dashboard' permission")


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
        signed_in(request)
        board = _visible(request, slug)
        if not board.can_edit(request.user):
            raise Forbidden("you may view this dashboard but not edit it; ask its owner for editor rights")
        body = json_body(request)
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
        signed_in(request)
        zone = panels.set_timezone(request.user, json_body(request).get("timezone"))
    except PulseboardError as exc:
        return error_response(exc)
    return JsonResponse({"timezone": zone})


# --- The dashboards API ----------------------------------------------------------------


@require_http_methods(["GET", "POST"])
def board_collection(request: HttpRequest) -> JsonResponse:
    """GET the boards the user may view; POST a new empty board owned by the user."""
    try:
        signed_in(request)
        if request.method == "POST":
            _may_create(request)
            body = json_body(request)
            board = boards.create_board(request.user, body.get("title"), body.get("description", ""), body.get("slug"))
            return JsonResponse(boards.summary(board, request.user), status=201)
    except PulseboardError as exc:
        return error_response(exc)
    found = Dashboard.objects.visible_to(request.user).select_related("owner")
    return JsonResponse(
        {"can_create": boards.may_create(request.user), "dashboards": [boards.summary(b, request.user) for b in found]}
    )


@require_http_methods(["GET", "PATCH", "DELETE"])
def board_detail(request: HttpRequest, slug: str) -> JsonResponse:
    """GET one board; PATCH its title/description (its editors); DELETE it (an editor who owns it or may delete)."""
    try:
        signed_in(request)
        board = _visible(request, slug)
        if request.method == "PATCH":
            if not board.can_edit(request.user):
                raise Forbidden("you may view this dashboard but not edit it; ask its owner for editor rights")
            body = json_body(request)
            boards.rename_board(board, body.get("title"), body.get("description"))
        elif request.method == "DELETE":
            if not boards.may_delete(request.user, board):
                raise Forbidden("only its owner, or an editor with the 'delete dashboard' permission, may delete it")
            boards.delete_board(board)
            return JsonResponse({"deleted": slug})
    except PulseboardError as exc:
        return error_response(exc)
    return JsonResponse(boards.summary(board, request.user))


@require_POST
def board_duplicate(request: HttpRequest, slug: str) -> JsonResponse:
    """POST {"title"?}: a copy of the board (panels, variables, groups) owned by the user."""
    try:
        signed_in(request)
        board = _visible(request, slug)
        _may_create(request)
        copy = boards.duplicate_board(board, request.user, json_body(request).get("title"))
    except PulseboardError as exc:
        return error_response(exc)
    return JsonResponse(boards.summary(copy, request.user), status=201)


@require_GET
def board_export(request: HttpRequest, slug: str) -> HttpResponse:
    """GET: the board as a JSON file of the one layout schema, as `manage.py exportdashboard` writes it."""
    try:
        signed_in(request)
        board = _visible(request, slug)
    except PulseboardError as exc:
        return error_response(exc)
    text = json.dumps(panels.export_board(board), indent=2, ensure_ascii=False) + "\n"
    response = HttpResponse(text, content_type="application/json; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{board.slug}.json"'
    return response


@require_POST
def board_import(request: HttpRequest) -> JsonResponse:
    """POST a board file: a new board owned by the user, or with ?replace=1 the board of that slug (its editors)."""
    try:
        signed_in(request)
        _may_create(request)
        if len(request.body) > MAX_IMPORT_BYTES:
            raise PayloadTooLarge(f"a board file is at most {MAX_IMPORT_BYTES // 1024} KiB", field="body")
        data = json_body(request)
        replace = request.GET.get("replace") == "1"
        slug = data.get("slug")
        if isinstance(slug, str) and slug in boards.RESERVED_SLUGS:
            raise BadRequest(f"the slug {slug!r} is reserved: rename it in the file", field="slug")
        existing = Dashboard.objects.filter(slug=slug).first() if isinstance(slug, str) else None
        if existing is not None and replace and not existing.can_edit(request.user):
            raise Forbidden(f"you may not edit the dashboard {slug!r}, so you may not replace it")
        # As for a layout saved in the page: no pattern reaching sources the importer may not read.
        permissions.check_layout(request.user, existing if replace else None, data.get("panels"), data.get("variables"))
        board, created = panels.import_board(data, replace=replace, owner=request.user)
    except PulseboardError as exc:
        return error_response(exc)
    return JsonResponse(boards.summary(board, request.user), status=201 if created else 200)
