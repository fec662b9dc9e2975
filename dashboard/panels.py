"""Dashboards as data: the page configuration of a dashboard and saving a layout edited in the page.

A panel names metrics by key or glob; the page gets them resolved to the
keys the viewer may read (with units), so the live subscription and the
history API (which takes keys) see the same series.
"""

from __future__ import annotations

import zoneinfo
from typing import Any

import msgspec
from django.db import transaction

from dashboard import layout
from dashboard.exceptions import BadRequest
from dashboard.models import Dashboard, Metric, Panel, Source, UserPreference, glob_matches

MAX_KEYS_PER_PANEL = 40  # a chart with more lines than this is unreadable; also bounds history requests


def resolve(patterns: list[str], user) -> list[dict[str, Any]]:
    """Return the readable metrics matching keys or globs, in pattern order, at most MAX_KEYS_PER_PANEL.

    `interval_s` is the source's expected reporting interval: the page's gap
    rule starts from it until a series has enough samples to measure its own.
    """
    visible = Metric.objects.visible_to(user)
    found: dict[str, dict[str, Any]] = {}
    for pattern in patterns:
        for metric in visible.matching(pattern).select_related("source").order_by("key"):
            found.setdefault(
                metric.key,
                {
                    "key": metric.key,
                    "unit": metric.unit,
                    "name": metric.name,
                    "source": metric.source.slug,
                    "interval_s": metric.source.expected_interval_s,
                },
            )
            if len(found) >= MAX_KEYS_PER_PANEL:
                return list(found.values())
    return list(found.values())


def panel_config(panel: Panel, user, values: dict[str, str] | None = None) -> dict[str, Any]:
    """Return what the page needs to draw one panel; a panel that breaks the layout schema carries `error`.

    A broken panel (saved before the schema, or written straight into the
    database) is drawn by the page as one panel-level error; the rest of the
    board is unaffected.
    """
    error = layout.stored_error(panel)
    if error is not None:
        cell = {k: getattr(panel, k) for k in ("x", "y", "w", "h")}
        if not all(isinstance(v, int) for v in cell.values()) or cell["w"] < 1 or cell["h"] < 1:
            cell = {"x": 0, "y": 0, "w": 6, "h": 2}
        cell["w"] = min(cell["w"], layout.GRID_COLUMNS)
        cell["x"] = min(cell["x"], layout.GRID_COLUMNS - cell["w"])
        cell["h"] = min(cell["h"], layout.MAX_PANEL_H)
        return {
            "id": panel.id,
            "title": str(panel.title),
            "kind": "broken",
            "error": error,
            "metrics": [],
            "options": {},
            "series": [],
            **cell,
        }
    expanded = [layout.expand(m, values or {}) for m in panel.metrics]
    return {
        "id": panel.id,
        "title": panel.title,
        "kind": panel.kind,
        "metrics": panel.metrics,
        "options": panel.options,
        "x": panel.x,
        "y": panel.y,
        "w": panel.w,
        "h": panel.h,
        # `$device` replaced by the viewer's choice here, on the server: the series (and so the live
        # subscription and history) are the expanded patterns resolved with the viewer's rights.
        "series": resolve(expanded, user),
        # The same patterns, which the page also subscribes to as globs, so that a device created
        # after the page opened joins the panel (the server's `subscribed` delta, docs/protocol.md).
        "patterns": expanded,
        "max_series": MAX_KEYS_PER_PANEL,
    }


ALL = "All"  # a variable's choice that stands for its whole glob


def board_variables(dashboard: Dashboard, user, chosen: Any = None) -> list[dict[str, Any]]:
    """Return the board's variables for one viewer: the values they may read and the current choice.

    `chosen` maps a name to the value asked for (the page's ?var-<name>=);
    a value the viewer may not read, or none, is "All" (the glob itself).
    A stored list that breaks the schema gives no variables (its panels'
    `$name` then match nothing) rather than a broken page.
    """
    try:
        declared = layout.check_variables(dashboard.variables)
    except layout.LayoutError:
        return []
    sources = list(Source.objects.visible_to(user).order_by("slug").values_list("slug", flat=True))
    out = []
    for var in declared:
        values = [var.value_of(slug) for slug in sources if glob_matches(var.glob, slug)]
        asked = chosen.get(var.name) if isinstance(chosen, dict) else None
        current = asked if isinstance(asked, str) and asked in values else ALL
        out.append(
            {
                "name": var.name,
                "label": var.label or var.name,
                "glob": var.glob,
                "values": values,
                "current": current,
                "pattern": var.all_value() if current == ALL else current,
            }
        )
    return out


def dashboard_config(dashboard: Dashboard, user, chosen: Any = None) -> dict[str, Any]:
    """Return the page configuration of a dashboard for one viewer (`chosen`: variable values asked for)."""
    variables = board_variables(dashboard, user, chosen)
    values = {v["name"]: v["pattern"] for v in variables}
    return {
        "slug": dashboard.slug,
        "title": dashboard.title,
        "description": dashboard.description,
        "can_edit": dashboard.can_edit(user),
        "variables": variables,
        "panels": [panel_config(p, user, values) for p in dashboard.panels.all()],
        "dashboards": list(Dashboard.objects.visible_to(user).values_list("slug", flat=True)),
    }


def share_config(dashboard: Dashboard, principal, secret: str, chosen: Any = None) -> dict[str, Any]:
    """Return the page configuration of a shared dashboard: the same panels, read through the share link only."""
    variables = board_variables(dashboard, principal, chosen)
    values = {v["name"]: v["pattern"] for v in variables}
    return {
        "slug": dashboard.slug,
        "title": dashboard.title,
        "description": dashboard.description,
        "can_edit": False,
        "can_operate_alerts": False,
        "variables": variables,
        "panels": [panel_config(p, principal, values) for p in dashboard.panels.all()],
        "dashboards": [],
        "share": {"socket": f"/ws/share/{secret}/", "series": f"/share/{secret}/series"},
    }


def chosen_values(query) -> dict[str, str]:
    """Return the variable choices of a page URL: ?var-device=boiler-1 -> {"device": "boiler-1"}."""
    return {k[4:]: v for k, v in query.items() if k.startswith("var-") and isinstance(v, str)}


def save_layout(dashboard: Dashboard, specs: Any, variables: Any = None) -> None:
    """Replace the dashboard's panels with the edited list: update by id, create new ones, delete the missing.

    The whole layout is checked against dashboard.layout first (fields, grid,
    overlaps, `$name` declared); a refusal names the panel and field
    (`panels[2].metrics`) and changes nothing. `variables` None keeps the
    board's own; a list replaces them.
    """
    try:
        declared = layout.check_variables(dashboard.variables if variables is None else variables)
        checked = layout.check_layout(specs, declared)
    except layout.LayoutError as exc:
        raise BadRequest(exc.message, field=exc.field) from None
    with transaction.atomic():
        if variables is not None:
            dashboard.variables = [msgspec.to_builtins(v) for v in declared]
        existing = {p.id: p for p in dashboard.panels.select_for_update()}
        kept: set[int] = set()
        for spec in checked:
            panel = existing.get(spec.id) if spec.id is not None else None
            if panel is None:
                panel = Panel(dashboard=dashboard)
            for name, value in layout.as_fields(spec).items():
                setattr(panel, name, value)
            panel.save()
            kept.add(panel.id)
        dashboard.panels.exclude(id__in=kept).delete()
        dashboard.save(update_fields=["updated", "variables"])


def export_board(dashboard: Dashboard) -> dict[str, Any]:
    """Return a dashboard as the JSON file `importdashboard` reads (dashboard/layout.py's BoardFile)."""
    return {
        "pulseboard_dashboard": layout.FORMAT_VERSION,
        "slug": dashboard.slug,
        "title": dashboard.title,
        "description": dashboard.description,
        "variables": _stored_variables(dashboard),
        "panels": [
            layout.as_fields(layout.check_panel(_stored_spec(p), i)) for i, p in enumerate(dashboard.panels.all())
        ],
    }


def _stored_variables(dashboard: Dashboard) -> list[dict[str, Any]]:
    try:
        return [msgspec.to_builtins(v) for v in layout.check_variables(dashboard.variables)]
    except layout.LayoutError:
        return []


def _stored_spec(panel: Panel) -> dict[str, Any]:
    fields = ("title", "kind", "metrics", "options", "x", "y", "w", "h")
    return {name: getattr(panel, name) for name in fields} | {"options": panel.options or {}}


def import_board(data: Any, *, replace: bool = False, owner=None) -> tuple[Dashboard, bool]:
    """Create (or with replace, overwrite) a dashboard from an exported file; return it and whether it was new.

    The whole file is checked first (layout.check_board); a refusal names the
    field (`panels[2].metrics`) and changes nothing. Viewer and editor groups
    and the owner are not part of the file: a new board has none (or `owner`,
    who imported it in the page), a replaced board keeps its own.
    """
    try:
        header, variables, checked = layout.check_board(data)
    except layout.LayoutError as exc:
        raise BadRequest(exc.message, field=exc.field) from None
    with transaction.atomic():
        board = Dashboard.objects.select_for_update().filter(slug=header.slug).first()
        if board is not None and not replace:
            raise BadRequest(f"a dashboard {header.slug!r} exists; import with replace to overwrite it", field="slug")
        created = board is None
        if created:
            board = Dashboard(slug=header.slug, owner=owner)
        board.title, board.description = header.title, header.description
        board.variables = [msgspec.to_builtins(v) for v in variables]
        board.save()
        board.panels.all().delete()
        Panel.objects.bulk_create([Panel(dashboard=board, **layout.as_fields(spec)) for spec in checked])
    return board, created


def valid_timezone(name: Any) -> str:
    """Return a time zone choice ('browser', 'UTC' or an IANA name) or raise BadRequest."""
    if name in ("browser", "UTC"):
        return name
    if not isinstance(name, str) or name not in zoneinfo.available_timezones():
        raise BadRequest("timezone must be 'browser', 'UTC' or an IANA zone such as Europe/Berlin", field="timezone")
    return name


def set_timezone(user, name: Any) -> str:
    """Remember the viewer's time zone for every page."""
    zone = valid_timezone(name)
    UserPreference.objects.update_or_create(user=user, defaults={"timezone": zone})
    return zone


def timezone_of(user) -> str:
    """Return the viewer's chosen time zone ('browser' until they pick one)."""
    if not getattr(user, "is_authenticated", False) or getattr(user, "pk", None) is None:
        return "browser"
    pref = UserPreference.objects.filter(user=user).values_list("timezone", flat=True).first()
    return pref or "browser"
