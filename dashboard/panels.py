"""Dashboards as data: the page configuration of a dashboard and saving a layout edited in the page.

A panel names metrics by key or glob; the page gets them resolved to the
keys the viewer may read (with units), so the live subscription and the
history API (which takes keys) see the same series.
"""

from __future__ import annotations

import zoneinfo
from typing import Any

from django.db import transaction

from dashboard.exceptions import BadRequest
from dashboard.models import Dashboard, Metric, Panel, UserPreference

GRID_COLUMNS = 12  # the dashboard grid is 12 columns wide; rows are ROW_PX tall (pulseboard.css)
MAX_PANELS = 60
MAX_KEYS_PER_PANEL = 40  # a chart with more lines than this is unreadable; also bounds history requests
OPTION_KEYS = {"unit", "thresholds", "decimals", "min", "max", "field", "bucket_s", "stale_s", "sparkline"}


def resolve(patterns: list[str], user) -> list[dict[str, str]]:
    """Return the readable metrics matching keys or globs, in pattern order, at most MAX_KEYS_PER_PANEL."""
    visible = Metric.objects.visible_to(user)
    found: dict[str, dict[str, str]] = {}
    for pattern in patterns:
        for metric in visible.matching(pattern).select_related("source").order_by("key"):
            found.setdefault(
                metric.key, {"key": metric.key, "unit": metric.unit, "name": metric.name, "source": metric.source.slug}
            )
            if len(found) >= MAX_KEYS_PER_PANEL:
                return list(found.values())
    return list(found.values())


def panel_config(panel: Panel, user) -> dict[str, Any]:
    """Return what the page needs to draw one panel."""
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
        "series": resolve(panel.metrics, user),
    }


def dashboard_config(dashboard: Dashboard, user) -> dict[str, Any]:
    """Return the page configuration of a dashboard for one viewer."""
    return {
        "slug": dashboard.slug,
        "title": dashboard.title,
        "can_edit": dashboard.can_edit(user),
        "panels": [panel_config(p, user) for p in dashboard.panels.all()],
        "dashboards": list(Dashboard.objects.visible_to(user).values_list("slug", flat=True)),
    }


def _number(spec: dict, name: str, low: int, high: int, default: int) -> int:
    value = spec.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadRequest(f"panel {name} must be a whole number from {low} to {high}", field=name)
    return value


def clean_panel(spec: Any) -> dict[str, Any]:
    """Return the model fields of one panel spec sent by the editor; raise BadRequest naming what is wrong."""
    if not isinstance(spec, dict):
        raise BadRequest("each panel must be a JSON object", field="panels")
    title = spec.get("title")
    if not isinstance(title, str) or not title.strip() or len(title) > 200:
        raise BadRequest("a panel needs a title of 1-200 characters", field="title")
    kind = spec.get("kind", Panel.Kind.TIMESERIES)
    if kind not in Panel.Kind.values:
        raise BadRequest(f"kind must be one of {', '.join(Panel.Kind.values)}", field="kind")
    metrics = spec.get("metrics")
    if (
        not isinstance(metrics, list)
        or not metrics
        or len(metrics) > 20
        or not all(isinstance(m, str) and 0 < len(m) <= 200 for m in metrics)
    ):
        raise BadRequest("metrics must be a list of 1-20 metric keys or globs", field="metrics")
    options = spec.get("options", {})
    if not isinstance(options, dict) or set(options) - OPTION_KEYS:
        raise BadRequest(f"options may only hold {', '.join(sorted(OPTION_KEYS))}", field="options")
    w = _number(spec, "w", 1, GRID_COLUMNS, 6)
    return {
        "title": title.strip(),
        "kind": kind,
        "metrics": metrics,
        "options": options,
        "x": _number(spec, "x", 0, GRID_COLUMNS - w, 0),
        "y": _number(spec, "y", 0, 500, 0),
        "w": w,
        "h": _number(spec, "h", 1, 12, 4),
    }


def save_layout(dashboard: Dashboard, specs: Any) -> None:
    """Replace the dashboard's panels with the edited list: update by id, create new ones, delete the missing."""
    if not isinstance(specs, list) or len(specs) > MAX_PANELS:
        raise BadRequest(f"panels must be a list of at most {MAX_PANELS} panels", field="panels")
    cleaned = [(spec.get("id") if isinstance(spec, dict) else None, clean_panel(spec)) for spec in specs]
    with transaction.atomic():
        existing = {p.id: p for p in dashboard.panels.select_for_update()}
        kept: set[int] = set()
        for panel_id, fields in cleaned:
            panel = existing.get(panel_id) if isinstance(panel_id, int) else None
            if panel is None:
                panel = Panel(dashboard=dashboard)
            for name, value in fields.items():
                setattr(panel, name, value)
            panel.save()
            kept.add(panel.id)
        dashboard.panels.exclude(id__in=kept).delete()
        dashboard.save(update_fields=["updated"])


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
