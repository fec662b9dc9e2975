"""The one schema of a dashboard layout: what a panel may hold, where it may sit, and the board's variables.

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
MAX_COLORS = 40  # one per series: panels.MAX_KEYS_PER_PANEL
MAX_VARIABLES = 10  # pickers in one top bar
VARIABLE_REF = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")  # `$device` in a metric pattern

Text = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Color = Annotated[str, msgspec.Meta(min_length=1, max_length=40)]


class Threshold(msgspec.Struct, forbid_unknown_fields=True):
    """From this value up, the panel draws values in this colour."""

    value: float
    color: Color


LegendValue = Literal["latest", "min", "max"]


class LegendOptions(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """What a time-series panel's legend shows: whether it is shown at all, and which value columns."""

    show: bool = True
    values: Annotated[list[LegendValue], msgspec.Meta(max_length=3)] = msgspec.field(
        default_factory=lambda: ["latest", "min", "max"]
    )


class PanelOptions(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Display options of a panel; every one may be left out.

    thresholds: dashed lines on charts, the colour of a stat's value and background;
    min/max: the value axis range (a chart never autoscales past them);
    decimals: digits after the point in legends, stats and tables;
    colors: one colour per series, in the order the panel's series are listed.
    """

    unit: Annotated[str, msgspec.Meta(max_length=20)] | None = None
    thresholds: Annotated[list[Threshold], msgspec.Meta(max_length=20)] = []
    decimals: Annotated[int, msgspec.Meta(ge=0, le=10)] | None = None
    min: float | None = None
    max: float | None = None
    field: Literal["avg", "min", "max", "last"] | None = None
    bucket_s: Annotated[int, msgspec.Meta(ge=1, le=86400)] | None = None
    stale_s: Annotated[float, msgspec.Meta(gt=0, le=86400)] | None = None
    sparkline: bool | None = None
    colors: Annotated[list[Color], msgspec.Meta(max_length=MAX_COLORS)] = []
    legend: LegendOptions | None = None


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
    "stale_s, sparkline, colors [color, ...], legend {show, values: [latest, min, max]}",
    "x": f"a whole number from 0 to {GRID_COLUMNS - 1}",
    "y": f"a whole number from 0 to {MAX_ROW}",
    "w": f"a whole number from 1 to {GRID_COLUMNS}",
    "h": f"a whole number from 1 to {MAX_PANEL_H}",
}

_AT = re.compile(r" - at `\$([^`]*)`$")


def _field_of(path: str) -> str:
    """'.options.thresholds[0].value' -> 'options.thresholds[0].value'."""
    return path.lstrip(".")


def _located(exc: msgspec.ValidationError) -> tuple[str, str]:
    """Return a schema error's message and the path of the field at fault ('options.thresholds[0].value')."""
    text = str(exc)
    match = _AT.search(text)
    message = _AT.sub("", text)
    path = _field_of(match.group(1)) if match else ""
    if message.startswith(("Object contains unknown field", "Object missing required field")):
        # `$.options` for an unknown option, `$` for an unknown panel field: name the field itself
        named = re.search(r"`([^`]+)`", message)
        path = (path + "." if path else "") + (named.group(1) if named else "")
    return message, path


def check_panel(spec: Any, index: int = 0) -> PanelSpec:
    """Return one panel spec as a PanelSpec or raise LayoutError naming `panels[index].<field>`."""
    where = f"panels[{index}]"
    if not isinstance(spec, dict):
        raise LayoutError("each panel must be a JSON object", where)
    try:
        panel = msgspec.convert(spec, PanelSpec)
    except msgspec.ValidationError as exc:
        message, path = _located(exc)
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
    opts = panel.options
    if opts.min is not None and opts.max is not None and opts.min >= opts.max:
        raise LayoutError("min must be below max (they are the value axis range)", f"{where}.options.min")
    if opts.legend is not None and len(set(opts.legend.values)) != len(opts.legend.values):
        raise LayoutError("each legend value may be listed once", f"{where}.options.legend.values")
    panel.title = panel.title.strip()
    return panel


def overlap(a: PanelSpec, b: PanelSpec) -> bool:
    """Whether two panels share a grid cell."""
    return a.x < b.x + b.w and b.x < a.x + a.w and a.y < b.y + b.h and b.y < a.y + a.h


def check_layout(specs: Any, variables: list[Variable] | None = None) -> list[PanelSpec]:
    """Return a whole layout as PanelSpecs or raise LayoutError: bad panels, too many, or two in one cell.

    With the board's variables, a pattern naming an undeclared `$name` is refused too.
    """
    if not isinstance(specs, list) or len(specs) > MAX_PANELS:
        raise LayoutError(f"panels must be a list of at most {MAX_PANELS} panels", "panels")
    panels = [check_panel(spec, i) for i, spec in enumerate(specs)]
    check_overlaps(panels)
    if variables is not None:
        declared = {v.name for v in variables}
        for i, panel in enumerate(panels):
            for pattern in panel.metrics:
                for name in VARIABLE_REF.findall(pattern):
                    if name not in declared:
                        raise LayoutError(
                            f"{pattern!r} uses ${name}, which the board does not declare (declared: "
                            f"{', '.join('$' + n for n in sorted(declared)) or 'none'})",
                            f"panels[{i}].metrics",
                        )
    return panels


class Variable(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A board variable: `$name` in panel patterns takes one value of the source slugs matching `glob`.

    The value of a source is its slug without the glob's literal leading
    segments (glob `iot.*`, source `iot.boiler-1`: `boiler-1`); "All" stands
    for the rest of the glob itself (`*`), so `iot.$device.temperature` is
    `iot.*.temperature`.
    """

    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,31}$")]
    glob: Text
    label: Annotated[str, msgspec.Meta(max_length=40)] = ""

    def prefix(self) -> str:
        """The glob's leading dot-separated segments without a wildcard, with their dot ('iot.')."""
        kept = []
        for part in self.glob.split("."):
            if any(c in part for c in "*?["):
                break
            kept.append(part + ".")
        return "".join(kept)

    def all_value(self) -> str:
        return self.glob[len(self.prefix()) :]

    def value_of(self, slug: str) -> str:
        return slug[len(self.prefix()) :]


def check_variables(data: Any) -> list[Variable]:
    """Return a board's variables or raise LayoutError naming `variables[i].field`."""
    if data is None:
        return []
    if not isinstance(data, list) or len(data) > MAX_VARIABLES:
        raise LayoutError(f"variables must be a list of at most {MAX_VARIABLES} variables", "variables")
    found: list[Variable] = []
    for i, item in enumerate(data):
        where = f"variables[{i}]"
        if not isinstance(item, dict):
            raise LayoutError("each variable is an object {name, glob, label}", where)
        try:
            var = msgspec.convert(item, Variable)
        except msgspec.ValidationError as exc:
            message, path = _located(exc)
            if path == "name":
                message += ": name is letters, digits and _ (not starting with a digit), at most 32"
            raise LayoutError(message, f"{where}.{path}" if path else where) from None
        if not any(c in var.glob for c in "*?["):
            raise LayoutError("the glob needs a wildcard, e.g. iot.* (its matches are the choices)", f"{where}.glob")
        if not var.all_value():
            raise LayoutError("the glob's last segment needs a wildcard, e.g. iot.*", f"{where}.glob")
        if any(v.name == var.name for v in found):
            raise LayoutError(f"${var.name} is declared twice", f"{where}.name")
        found.append(var)
    return found


def all_values(stored: Any) -> dict[str, str]:
    """Return {name: its glob's "All" pattern} of a board's stored variables; none when they break the schema."""
    try:
        return {v.name: v.all_value() for v in check_variables(stored)}
    except LayoutError:
        return {}


def expand(pattern: str, values: dict[str, str]) -> str:
    """Replace each declared `$name` of a pattern by its chosen value; an undeclared one stays as written."""
    return VARIABLE_REF.sub(lambda m: values.get(m.group(1), m.group(0)), pattern)


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
    variables: list[Any] = []
    pulseboard_dashboard: int = FORMAT_VERSION


def check_board(data: Any) -> tuple[BoardFile, list[Variable], list[PanelSpec]]:
    """Return an exported dashboard's header, variables and checked panels, or raise LayoutError naming the field."""
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
    variables = check_variables(board.variables)
    return board, variables, check_layout(board.panels, variables)


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
