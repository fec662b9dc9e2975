"""The one schema of a dashboard layout: what a panel may hold and where it may sit.

The admin form, the layout API (POST /api/v1/dashboards/<slug>/layout), the
demo dashboards command and the page configuration all check panels here, so
a panel refused by one is refused by all, with the same message naming the
panel's index and field (`panels[2].metrics`).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec

GRID_COLUMNS = 12  # the dashboard grid is 12 columns wide; rows are ROW_PX tall (pulseboard.css)
MAX_ROW = 500  # y of the lowest panel: far below any screen, bounds the page height
MAX_PANEL_H = 12  # rows
MAX_PANELS = 60
MAX_METRICS = 20  # patterns per panel; each resolves to at most panels.MAX_KEYS_PER_PANEL keys

Text = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Color = Annotated[str, msgspec.Meta(min_length=1, max_length=40)]


class Threshold(msgspec.Struct, forbid_unknown_fields=True):
    """From this value up, the panel draws values in this colour."""

    value: float
    color: Color


class PanelOptions(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Display options of a panel; every one may be left out."""

    unit: Annotated[str, msgspec.Meta(max_length=20)] | None = None
    thresholds: Annotated[list[Threshold], msgspec.Meta(max_length=20)] = []
    decimals: Annotated[int, msgspec.Meta(ge=0, le=10)] | None = None
    min: float | None = None
    max: float | None = None
    field: Literal["avg", "min", "max", "last"] | None = None
    bucket_s: Annotated[int, msgspec.Meta(ge=1, le=86400)] | None = None
    stale_s: Annotated[float, msgspec.Meta(gt=0, le=86400)] | None = None
    sparkline: bool | None = None


class PanelSpec(msgspec.Struct, forbid_unknown_fields=True):
    """One panel of a layout: a title, a kind, the metrics it draws (keys or globs) and its grid cell."""

    title: Text
    metrics: Annotated[list[Text], msgspec.Meta(min_length=1, max_length=MAX_METRICS)]
    kind: Literal["timeseries", "stat", "table", "candlestick"] = "timeseries"
    options: PanelOptions = msgspec.field(default_factory=PanelOptions)
    x: Annotated[int, msgspec.Meta(ge=0, le=GRID_COLUMNS - 1)] = 0
    y: Annotated[int, msgspec.Meta(ge=0, le=MAX_ROW)] = 0
    w: Annotated[int, msgspec.Meta(ge=1, le=GRID_COLUMNS)] = 6
    h: Annotated[int, msgspec.Meta(ge=1, le=MAX_PANEL_H)] = 4
    id: int | None = None


class LayoutError(ValueError):
    """A panel breaks the schema: `field` names where (`panels[1].metrics`), `message` says what is wrong."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(f"{field}: {message}")
        self.message = message
        self.field = field
        part = field.split(".", 1)
        self.panel_field = part[1].split(".")[0].split("[")[0] if len(part) > 1 else "panels"


# What each field must be, in the operator's words; added to the schema's own message.
HINTS = {
    "title": "a title of 1-200 characters",
    "metrics": 'a list of 1-20 metric keys or globs, e.g. ["iot.*.temperature"]',
    "kind": "one of timeseries, stat, table, candlestick",
    "options": "an object with any of unit, thresholds [{value, color}], decimals, min, max, field, bucket_s, "
    "stale_s, sparkline",
    "x": f"a whole number from 0 to {GRID_COLUMNS - 1}",
    "y": f"a whole number from 0 to {MAX_ROW}",
    "w": f"a whole number from 1 to {GRID_COLUMNS}",
    "h": f"a whole number from 1 to {MAX_PANEL_H}",
}

_AT = re.compile(r" - at `\$([^`]*)`$")


def _field_of(path: str) -> str:
    """'.options.thresholds[0].value' -> 'options.thresholds[0].value'."""
    return path.lstrip(".")


def check_panel(spec: Any, index: int = 0) -> PanelSpec:
    """Return one panel spec as a PanelSpec or raise LayoutError naming `panels[index].<field>`."""
    where = f"panels[{index}]"
    if not isinstance(spec, dict):
        raise LayoutError("each panel must be a JSON object", where)
    try:
        panel = msgspec.convert(spec, PanelSpec)
    except msgspec.ValidationError as exc:
        text = str(exc)
        match = _AT.search(text)
        message = _AT.sub("", text)
        path = _field_of(match.group(1)) if match else ""
        if message.startswith("Object contains unknown field"):
            # `$.options` for an unknown option, `$` for an unknown panel field: name the field itself
            unknown = re.search(r"`([^`]+)`", message)
            path = (path + "." if path else "") + (unknown.group(1) if unknown else "")
        if message.startswith("Object missing required field"):
            missing = re.search(r"`([^`]+)`", message)
            path = (path + "." if path else "") + (missing.group(1) if missing else "")
        top = re.split(r"[.\[]", path)[0]
        if top in HINTS:
            message = f"{message}: {top} must be {HINTS[top]}"
        raise LayoutError(message, f"{where}.{path}" if path else where) from None
    if not panel.title.strip():
        raise LayoutError("a panel needs a title that is not blank", f"{where}.title")
    if any(not m.strip() for m in panel.metrics):
        raise LayoutError("a metric key or glob may not be blank", f"{where}.metrics")
    if panel.x + panel.w > GRID_COLUMNS:
        raise LayoutError(f"x + w must be at most {GRID_COLUMNS} (the grid's columns)", f"{where}.x")
    panel.title = panel.title.strip()
    return panel


def overlap(a: PanelSpec, b: PanelSpec) -> bool:
    """Whether two panels share a grid cell."""
    return a.x < b.x + b.w and b.x < a.x + a.w and a.y < b.y + b.h and b.y < a.y + a.h


def check_layout(specs: Any) -> list[PanelSpec]:
    """Return a whole layout as PanelSpecs or raise LayoutError: bad panels, too many, or two in one cell."""
    if not isinstance(specs, list) or len(specs) > MAX_PANELS:
        raise LayoutError(f"panels must be a list of at most {MAX_PANELS} panels", "panels")
    panels = [check_panel(spec, i) for i, spec in enumerate(specs)]
    check_overlaps(panels)
    return panels


def check_overlaps(panels: list[PanelSpec]) -> None:
    """Raise LayoutError on the later of two panels that share a grid cell."""
    for j, b in enumerate(panels):
        for a in panels[:j]:
            if overlap(a, b):
                raise LayoutError(
                    f"panel {b.title!r} overlaps panel {a.title!r}: move one of them to free cells",
                    f"panels[{j}].y",
                )


def as_fields(panel: PanelSpec) -> dict[str, Any]:
    """Return the Panel model fields of a checked spec."""
    return {
        "title": panel.title,
        "kind": panel.kind,
        "metrics": list(panel.metrics),
        "options": msgspec.to_builtins(panel.options),
        "x": panel.x,
        "y": panel.y,
        "w": panel.w,
        "h": panel.h,
    }


FORMAT_VERSION = 1  # of an exported dashboard file; a file of another version is refused


class BoardFile(msgspec.Struct, forbid_unknown_fields=True):
    """A whole dashboard as exported and imported: its identity and its panels (the same PanelSpec)."""

    slug: Annotated[str, msgspec.Meta(pattern=r"^[-a-zA-Z0-9_]{1,100}$")]
    title: Text
    panels: list[Any]
    description: Annotated[str, msgspec.Meta(max_length=2000)] = ""
    pulseboard_dashboard: int = FORMAT_VERSION


def check_board(data: Any) -> tuple[BoardFile, list[PanelSpec]]:
    """Return an exported dashboard's header and checked panels, or raise LayoutError naming the field."""
    if not isinstance(data, dict):
        raise LayoutError("a dashboard file is a JSON object", "dashboard")
    try:
        board = msgspec.convert(data, BoardFile)
    except msgspec.ValidationError as exc:
        text = str(exc)
        match = _AT.search(text)
        raise LayoutError(_AT.sub("", text), _field_of(match.group(1)) if match else "dashboard") from None
    if board.pulseboard_dashboard != FORMAT_VERSION:
        raise LayoutError(
            f"this file is format {board.pulseboard_dashboard}; only {FORMAT_VERSION} is read", "pulseboard_dashboard"
        )
    for i, spec in enumerate(board.panels):
        if isinstance(spec, dict) and "id" in spec:
            raise LayoutError("an exported panel has no id (ids belong to one installation)", f"panels[{i}].id")
    return board, check_layout(board.panels)


def stored_error(panel: Any) -> str | None:
    """Return why a Panel row already in the database breaks the schema, or None when it is sound."""
    spec = {
        "title": panel.title,
        "kind": panel.kind,
        "metrics": panel.metrics,
        "options": panel.options if panel.options is not None else {},
        "x": panel.x,
        "y": panel.y,
        "w": panel.w,
        "h": panel.h,
    }
    try:
        check_panel(spec)
    except LayoutError as exc:
        return f"{exc.panel_field}: {exc.message}"
    return None
