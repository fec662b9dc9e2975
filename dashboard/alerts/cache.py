"""This process's memory of the alert rules and states, so a batch that matches no rule costs a lookup per metric.

The writer evaluates rules after every commit. Enabled rules are loaded at
first use and after a change made in this process (AlertRule's signals call
`rule_changed`); changes made in another process are picked up by a reload
in the background every RULES_REFRESH_S while the cached rules serve. The
state of each (rule, metric) pair is cached too, so only a state change
touches the database.
"""

from __future__ import annotations

import logging
import time

from asgiref.sync import sync_to_async

from dashboard.alerts import storage, transports
from dashboard.alerts.machine import CachedInstance, CachedRule
from dashboard.models import AlertRule, glob_matches

log = logging.getLogger(__name__)

RULES_REFRESH_S = 5.0  # changes made in another process's admin are picked up this late
MAX_TRACKED = 100_000  # (rule, metric) states cached per process; beyond this the cache is rebuilt from the DB


class _Cache:
    """Enabled rules, which rules each key matches, the state of each instance and the previous sample per key."""

    def __init__(self) -> None:
        self.rules: list[CachedRule] | None = None
        self.loaded_at = 0.0
        self.generation = 0  # bumped by every rule change: a reload started before it is discarded
        self.refreshing = False
        self.by_key: dict[str, list[CachedRule]] = {}
        self.instances: dict[tuple[int, int], CachedInstance] = {}
        self.previous: dict[int, tuple[int, float]] = {}  # metric id -> (ts, value), for rate rules

    def clear(self) -> None:
        self.rules = None
        self.generation += 1
        self.by_key.clear()
        self.instances.clear()
        self.previous.clear()


_cache = _Cache()


def clear_cache() -> None:
    """Forget cached rules and states (after rule edits, and between tests)."""
    _cache.clear()


def rule_changed(sender: object = None, **kwargs: object) -> None:
    """Drop the cached rules after a rule is saved or deleted here (a Django signal receiver)."""
    _cache.rules = None
    _cache.generation += 1
    _cache.by_key.clear()


def rules_for(key: str) -> list[CachedRule]:
    """Return the cached enabled rules whose pattern matches a metric key."""
    found = _cache.by_key.get(key)
    if found is None:
        found = _cache.by_key[key] = [r for r in _cache.rules or () if glob_matches(r.pattern, key)]
    return found


async def instance(rule_id: int, metric_id: int) -> CachedInstance:
    """Return the state of a (rule, metric) pair as last seen, read from the database (made if new) on a miss."""
    found = _cache.instances.get((rule_id, metric_id))
    if found is None:
        found = await sync_to_async(storage.load_instance)(rule_id, metric_id)
        adopt(rule_id, metric_id, found)
    return found


def adopt(rule_id: int, metric_id: int, seen: CachedInstance) -> None:
    """Remember the state of a pair as stored (after this process's change, or the row that won a race)."""
    if len(_cache.instances) > MAX_TRACKED:
        _cache.instances.clear()
    _cache.instances[(rule_id, metric_id)] = seen


def previous(metric_id: int) -> tuple[int, float] | None:
    """Return the last evaluated (ts, value) of a metric, which a rate rule compares with."""
    return _cache.previous.get(metric_id)


def set_previous(metric_id: int, sample: tuple[int, float]) -> None:
    _cache.previous[metric_id] = sample


@sync_to_async
def _load_rules() -> list[CachedRule]:
    return [CachedRule.from_model(r) for r in AlertRule.objects.filter(enabled=True)]


async def ensure_rules() -> list[CachedRule]:
    """Return the enabled rules: loaded now the first time and after a change made here, else reloaded in the background.

    Reloading stale rules in the writer's evaluation put a thread hop into
    one commit every RULES_REFRESH_S, and so a spike into live latency; the
    cached rules serve until the reload is in.
    """
    for _ in range(3):  # again if a rule changed while loading
        if _cache.rules is not None:
            break
        await _reload_rules()
    if _cache.rules is not None and time.monotonic() - _cache.loaded_at > RULES_REFRESH_S and not _cache.refreshing:
        _cache.refreshing = True
        transports.spawn(_reload_rules(in_background=True))
    return _cache.rules or []


async def _reload_rules(in_background: bool = False) -> None:
    generation = _cache.generation
    try:
        rules = await _load_rules()
    except Exception:
        if not in_background:
            raise
        log.warning("reloading alert rules failed; the cached rules stay in use", exc_info=True)
        return
    finally:
        if in_background:
            _cache.refreshing = False
    if generation != _cache.generation:
        return  # a rule changed meanwhile: the next call loads again
    if _cache.rules is None or rules != _cache.rules:
        _cache.by_key.clear()
        _cache.instances.clear()  # a changed rule restarts from what the database says
    _cache.rules = rules
    _cache.loaded_at = time.monotonic()
    if rules and not transports.client_ready():
        transports.spawn(transports.webhook_client())  # ready before the first webhook is due
