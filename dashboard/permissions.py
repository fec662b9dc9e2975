"""Who may put which metric patterns on a dashboard, and telling open share sockets that access changed.

The rule (docs/security.md, "Panel patterns"): staff and superusers read
every source, so any pattern is theirs to save. Anyone else may add a key or
glob to a dashboard only when it cannot match a key of any existing source
they may not read, now or when that source gets new metrics (this refuses
`lab.*` when a restricted source `lab.secret` exists, and `*` whenever any
source is restricted). A glob across sources, such as a fleet's
`iot.*.temperature`, is allowed: sources created later are never widened by
it, because every reader applies their own rights and a share link applies
its creator's rights at the time of use (ShareLink.grant).

Patterns already on the dashboard are not checked again, so an editor can
move, resize and retitle panels that someone with more rights made.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save

from dashboard.exceptions import PulseboardError
from dashboard.layout import all_values, expand
from dashboard.models import Dashboard, Panel, ShareLink, Source

GLOB_CHARS = "*?["


class PatternNotAllowed(PulseboardError):
    """A panel names a key or glob that reaches metrics the saving user may not read."""

    code = "pattern_not_allowed"
    status = 403


# --- Globs as small automata ---------------------------------------------------
# fnmatch's language: '*' any run, '?' one character, '[...]' / '[!...]' a
# set, anything else (and a '[' without its ']') literal.


def _tokens(pattern: str) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if not out or out[-1][0] != "star":
                out.append(("star", None))
        elif c == "?":
            out.append(("one", None))
        elif c == "[":
            j = i + 1
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                out.append(("lit", c))
            else:
                body = pattern[i + 1 : j]
                negated = body.startswith("!")
                out.append(("set", (negated, _set_chars(body[1:] if negated else body))))
                i = j
        else:
            out.append(("lit", c))
        i += 1
    return out


def _set_chars(body: str) -> tuple[set[str], list[tuple[str, str]]]:
    chars: set[str] = set()
    ranges: list[tuple[str, str]] = []
    i = 0
    while i < len(body):
        if i + 2 < len(body) and body[i + 1] == "-":
            ranges.append((body[i], body[i + 2]))
            i += 3
        else:
            chars.add(body[i])
            i += 1
    return chars, ranges


def _accepts(token: tuple[str, Any], ch: str) -> bool:
    kind, arg = token
    if kind == "lit":
        return arg == ch
    if kind == "one":
        return True
    negated, (chars, ranges) = arg
    inside = ch in chars or any(lo <= ch <= hi for lo, hi in ranges)
    return inside != negated


def _closure(tokens: list[tuple[str, Any]], states: Iterable[int]) -> set[int]:
    out: set[int] = set()
    for i in states:
        while True:
            out.add(i)
            if i < len(tokens) and tokens[i][0] == "star":
                i += 1
            else:
                break
    return out


def can_match_under(pattern: str, prefix: str) -> bool:
    """Return whether the glob matches some key that starts with `prefix` and goes on past it."""
    tokens = _tokens(pattern)
    states = _closure(tokens, [0])
    for ch in prefix:
        moved = {i + 1 for i in states if i < len(tokens) and tokens[i][0] != "star" and _accepts(tokens[i], ch)}
        stay = {i for i in states if i < len(tokens) and tokens[i][0] == "star"}
        states = _closure(tokens, moved | stay)
        if not states:
            return False
    # Any state short of the end still has a token (or a '*') that can take one more character.
    return any(i < len(tokens) for i in states)


def literal_prefix(pattern: str) -> str:
    """Return the text before the first wildcard."""
    cut = min((pattern.index(c) for c in GLOB_CHARS if c in pattern), default=len(pattern))
    return pattern[:cut]


# --- The check -------------------------------------------------------------------


def reads_everything(user) -> bool:
    return getattr(user, "share_link", None) is None and bool(user.is_staff or user.is_superuser)


def pattern_problem(pattern: str, readable: set[str], unreadable: list[str]) -> str | None:
    """Return why a pattern reaches metrics the user may not read, or None when it stays within them.

    `readable` is unused by the rule itself; it is kept so callers state whose rights apply.
    """
    for slug in unreadable:
        if can_match_under(pattern, slug + "."):
            return f"it can match metrics of source {slug!r}, which you may not read"
    return None


def check_patterns(user, panels: Iterable[tuple[int, str, list[Any]]], already: set[str] = frozenset()) -> None:
    """Refuse the first pattern that reaches beyond what the user may read; raise PatternNotAllowed naming it.

    `panels` is (index, title, patterns) per panel as the user sent them;
    patterns in `already` (on the dashboard before this save) are not
    checked, nor are malformed entries (the layout schema refuses those).
    """
    if reads_everything(user):
        return
    todo = [
        (index, title, position, pattern)
        for index, title, patterns in panels
        if isinstance(patterns, list)
        for position, pattern in enumerate(patterns)
        if isinstance(pattern, str) and pattern and pattern not in already
    ]
    if not todo:
        return
    readable = set(Source.objects.visible_to(user).values_list("slug", flat=True))
    unreadable = list(Source.objects.exclude(slug__in=readable).values_list("slug", flat=True))
    for index, title, position, pattern in todo:
        problem = pattern_problem(pattern, readable, unreadable)
        if problem is not None:
            raise PatternNotAllowed(
                f"panel {index} ({str(title)[:80]!r}): you may not add the pattern {pattern!r}: {problem}",
                field=f"panels[{index}].metrics[{position}]",
            )


def check_layout(user, dashboard: Dashboard | None, specs: Any, variables: Any = None) -> None:
    """Check the patterns of a layout posted to /api/v1/dashboards/<slug>/layout (or imported) before it is saved.

    Board variables are checked at "All" (`iot.$device.temperature` as
    `iot.*.temperature`), which covers every choice of their pickers; the
    posted `variables` (None: the board's own) expand the new patterns, the
    board's stored ones the patterns already there.
    """
    if not isinstance(specs, list):
        return  # the layout schema answers this
    stored = dashboard.variables if dashboard is not None and dashboard.pk is not None else None
    before = all_values(stored)
    after = all_values(stored if variables is None else variables)
    already = {expand(p, before) for p in stored_patterns(dashboard)}

    def expanded(patterns: Any) -> Any:
        if not isinstance(patterns, list):
            return patterns
        return [expand(p, after) if isinstance(p, str) else p for p in patterns]

    check_patterns(
        user,
        ((i, s.get("title", ""), expanded(s.get("metrics"))) for i, s in enumerate(specs) if isinstance(s, dict)),
        already,
    )


def stored_patterns(dashboard: Dashboard | None) -> set[str]:
    """Return every pattern on the dashboard's saved panels."""
    if dashboard is None or dashboard.pk is None:
        return set()
    out: set[str] = set()
    for patterns in Panel.objects.filter(dashboard=dashboard).values_list("metrics", flat=True):
        if isinstance(patterns, list):
            out.update(p for p in patterns if isinstance(p, str))
    return out


# --- Telling open share sockets ------------------------------------------------------
# A share socket re-checks its grant every SHARE_RECHECK_S (dashboard/live/client.py);
# a change saved in this process wakes the sockets of this process at once.

_wakeups: dict[asyncio.AbstractEventLoop, asyncio.Event] = {}
_wakeups_lock = threading.Lock()


def access_changed_event() -> asyncio.Event:
    """Return the event the running loop's share sockets wait on; it is set when access may have changed."""
    loop = asyncio.get_running_loop()
    with _wakeups_lock:
        event = _wakeups.get(loop)
        if event is None:
            event = _wakeups[loop] = asyncio.Event()
        return event


def _fire(loop: asyncio.AbstractEventLoop) -> None:
    with _wakeups_lock:
        event = _wakeups.pop(loop, None)
    if event is not None:
        event.set()


def notify_access_changed() -> None:
    """Wake every share socket of this process to re-check its grant (after the current transaction commits)."""

    def wake() -> None:
        with _wakeups_lock:
            loops = list(_wakeups)
        for loop in loops:
            if loop.is_closed():
                with _wakeups_lock:
                    _wakeups.pop(loop, None)
                continue
            try:
                loop.call_soon_threadsafe(_fire, loop)
            except RuntimeError:  # closed between the check and the call
                pass

    transaction.on_commit(wake)


def _changed(sender, **kwargs) -> None:
    notify_access_changed()


def connect_signals() -> None:
    """Wake share sockets when anything their grant depends on changes (called from DashboardConfig.ready)."""
    user_model = get_user_model()
    for model in (user_model, ShareLink, Panel, Source, Group):
        post_save.connect(_changed, sender=model, dispatch_uid=f"pulseboard-access-{model.__name__}-save")
        post_delete.connect(_changed, sender=model, dispatch_uid=f"pulseboard-access-{model.__name__}-delete")
    for through in (user_model.groups.through, Source.viewer_groups.through):
        m2m_changed.connect(_changed, sender=through, dispatch_uid=f"pulseboard-access-{through.__name__}")
