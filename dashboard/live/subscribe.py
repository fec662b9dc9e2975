"""LiveClient's handling of subscribe and unsubscribe messages, and of new metrics matching followed globs."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

import msgspec
from django.conf import settings

from dashboard import stats
from dashboard.keyindex import (
    MAX_PATTERN_CHARS,
    KeyIndex,
    MetricEntry,
    glob_regex,
    grants_of,
    is_glob,
    reader_of,
    run_db,
)
from dashboard.live import protocol
from dashboard.live.protocol import (
    MAX_GLOBS,
    MAX_LIVE_GLOBS,
    MAX_PATTERNS,
    Subscribe,
    Unsubscribe,
    encode,
    error_frame,
)
from dashboard.live.subscriptions import LiveGlobs, subscribe_gate
from dashboard.timeutil import US, now_us

log = logging.getLogger(__name__)


class Subscribing:
    """LiveClient's part that resolves patterns against the key index and holds what fits."""

    __slots__ = ()

    async def subscribe(self, message: Subscribe) -> None:
        """Subscribe to keys or globs; send history (or what was missed since the given cursors), then live."""
        history_s = message.history_s
        if history_s is msgspec.UNSET:
            history_s = settings.PULSEBOARD["HISTORY_ON_SUBSCRIBE_S"]
        if message.max_rate is not None:
            self.session.max_rate = message.max_rate
        async with subscribe_gate():
            new = await self._subscribe(message.id, message.metrics, message.since or {}, history_s)
        await self._replay(new)

    async def _subscribe(
        self, request_id: Any, patterns: list[str], since: dict[str, int], history_s: float
    ) -> set[str]:
        """Apply the limits first, resolve against the key index, hold what fits, and say what did not.

        Return the new keys, which wait for their history (`_replay`).

        Every step is bounded before any work: repeats count once, at most
        MAX_PATTERNS patterns and MAX_GLOBS globs a message, no pattern
        longer than a key; no pattern reaches the database.
        """
        patterns = list(dict.fromkeys(patterns))
        errors: list[str] = []
        if len(patterns) > MAX_PATTERNS:
            errors.append(
                self._pattern_error(
                    "too_many_patterns",
                    patterns[MAX_PATTERNS:],
                    request_id,
                    f"a subscribe may name {MAX_PATTERNS} distinct keys or globs; these were not looked at",
                )
            )
            patterns = patterns[:MAX_PATTERNS]
        # No key is longer than MAX_PATTERN_CHARS: a longer pattern names nothing, whatever it holds.
        unknown = [p for p in patterns if len(p) > MAX_PATTERN_CHARS]
        if unknown:
            patterns = [p for p in patterns if len(p) <= MAX_PATTERN_CHARS]
        globs = [p for p in patterns if is_glob(p)]
        room = MAX_LIVE_GLOBS - len(set(self._globs or ()) - set(globs))
        allowed = min(MAX_GLOBS, max(0, room))
        if len(globs) > allowed:
            skipped = set(globs[allowed:])
            errors.append(
                self._pattern_error(
                    "too_many_globs",
                    globs[allowed:],
                    request_id,
                    f"a subscribe may carry {MAX_GLOBS} globs, and a connection follow {MAX_LIVE_GLOBS}; "
                    "these were not looked at",
                )
            )
            patterns = [p for p in patterns if p not in skipped]
            globs = globs[:allowed]

        index = KeyIndex.get()
        await index.ready()
        reader, fresh = await run_db(grants_of, self.user)
        self._reader = reader
        matched: list[tuple[str, list[MetricEntry]]] = []
        forbidden: list[str] = []
        for n, pattern in enumerate(patterns, 1):
            if is_glob(pattern):
                entries = await index.match(pattern)
            else:
                entry = index.by_key.get(pattern)
                entries = [entry] if entry is not None else []
            restricted = index.restricted if fresh is None else fresh
            readable = [e for e in entries if reader.may_read(e, restricted)]
            if readable:
                matched.append((pattern, readable))
            else:
                (forbidden if entries else unknown).append(pattern)
            if n % 2_000 == 0:
                await asyncio.sleep(0)  # 10,000 keys in one message: let ingest run between slices
        if unknown:
            errors.append(
                self._pattern_error(
                    "unknown_metric", unknown, request_id, "no metric matches these; list them at /api/v1/metrics"
                )
            )
        if forbidden:
            errors.append(self._pattern_error("forbidden", forbidden, request_id, "you may not read these"))

        if globs:
            registry = LiveGlobs.get()
            if self._globs is None:
                self._globs = {}
            for glob in globs:
                self._globs[glob] = (request_id, history_s)
                registry.add(glob, self)

        start = now_us() - int(history_s * US)
        new, named, error = self._take(matched, request_id, lambda key: since.get(key, start))
        if error is not None:
            errors.append(error)
        for frame in errors:
            await self.transport.send_text(frame)
        await self._hold(new)
        await self.transport.send_text(
            '{"type":"subscribed","id":' + json.dumps(request_id) + ',"metrics":[' + ",".join(named) + "]}"
        )
        return set(new)

    @staticmethod
    def _pattern_error(code: str, patterns: list[str], request_id: Any, message: str, **extra: Any) -> str:
        """One error frame for every pattern refused for one reason: `metric` names the first, `metrics` all."""
        return error_frame(code, message, id=request_id, metric=patterns[0], metrics=patterns, **extra)

    def _take(
        self, matched: list[tuple[str, list[MetricEntry]]], request_id: Any, cursor_of: Callable[[str], int]
    ) -> tuple[dict[str, MetricEntry], list[str], str | None]:
        """Hold what fits under protocol.MAX_SUBSCRIPTIONS, in pattern order; return the new keys, the entries to list, the cut.

        No await between choosing and holding: a live-glob extension running
        beside a subscribe cannot add a key twice.
        """
        held = self.session.keyset.slot
        room = protocol.MAX_SUBSCRIPTIONS - len(held)
        new: dict[str, MetricEntry] = {}
        named: dict[str, str] = {}
        cut: list[str] = []
        left_out = 0
        for pattern, entries in matched:
            whole = True
            for entry in entries:
                key = entry.key
                if key in held or key in new:
                    named[key] = entry.meta
                elif len(new) < room:
                    new[key] = entry
                    named[key] = entry.meta
                else:
                    left_out += 1
                    whole = False
            if not whole:
                cut.append(pattern)
        session = self.session
        session.hold(set(new))
        # One step for all of them: the session moves to the KeySet of its old keys and these (shared).
        session.take({key: entry.source_id for key, entry in new.items()}, cursor_of)
        stats.SUBSCRIPTIONS.inc(len(new))
        error = None
        if cut:
            error = self._pattern_error(
                "too_many_subscriptions",
                cut,
                request_id,
                f"a connection may hold {protocol.MAX_SUBSCRIPTIONS} metrics: {left_out} matched by these were left out; "
                "narrow the globs, unsubscribe some, or open another connection",
                keys_left_out=left_out,
                limit=protocol.MAX_SUBSCRIPTIONS,
            )
        return new, list(named.values()), error

    async def _hold(self, new: dict[str, MetricEntry]) -> None:
        """Make the hub route the new keys' sources to this connection (their keys are held until replayed)."""
        for source_id in dict.fromkeys(entry.source_id for entry in new.values()):
            await self.hub.join(self.session, source_id)

    def offer_new(self, by_glob: dict[str, list[MetricEntry]]) -> None:
        """Take in metrics created after this connection's globs were made (called by LiveGlobs)."""
        if self.session.closed:
            return
        self._spawn(self._extend(by_glob))

    async def _extend(self, by_glob: dict[str, list[MetricEntry]]) -> None:
        """Subscribe to new metrics of followed globs the reader may read, within the key limit; announce them."""
        globs = self._globs or {}
        by_glob = {glob: entries for glob, entries in by_glob.items() if glob in globs}
        if not by_glob or self._reader is None:
            return
        async with subscribe_gate():
            new = await self._extend_now(by_glob)
        if new:
            await self._replay(new)

    async def _extend_now(self, by_glob: dict[str, list[MetricEntry]]) -> set[str]:
        globs = self._globs or {}  # again: the glob may have been unsubscribed while this waited at the gate
        reader = self._reader
        if reader.metric_ids is not None:
            # A share link's grant is the database's answer now (a panel glob may cover the new metric).
            reader = self._reader = await run_db(reader_of, self.user)
        restricted = KeyIndex.get().restricted
        matched = [
            (glob, readable)
            for glob, entries in by_glob.items()
            if glob in globs and (readable := [e for e in entries if reader.may_read(e, restricted)])
        ]
        if not matched:
            return set()
        now = now_us()
        cursors: dict[str, int] = {}
        for glob, entries in matched:
            history_s = globs[glob][1]
            for entry in entries:
                cursors.setdefault(entry.key, now - int(history_s * US))
        request_id = globs[matched[0][0]][0]
        new, _named, error = self._take(matched, request_id, cursors.__getitem__)
        if error is not None:
            await self.transport.send_text(error)
        if not new:
            return set()
        await self._hold(new)
        await self.transport.send_text(
            '{"type":"subscribed","id":'
            + json.dumps(request_id)
            + ',"globs":'
            + json.dumps([glob for glob, _ in matched])
            + ',"metrics":['
            + ",".join(entry.meta for entry in new.values())
            + "]}"
        )
        return set(new)

    async def unsubscribe(self, message: Unsubscribe) -> None:
        """Stop following keys and globs; answer with the keys that went."""
        patterns = list(dict.fromkeys(message.metrics))
        globs = [p for p in patterns if is_glob(p)]
        if len(patterns) > MAX_PATTERNS or len(globs) > MAX_GLOBS:
            raise ValueError(f"unsubscribe takes at most {MAX_PATTERNS} keys or globs, {MAX_GLOBS} of them globs")
        exact = [p for p in patterns if not is_glob(p)]
        tests = [glob_regex(g).match for g in globs if len(g) <= MAX_PATTERN_CHARS]
        gone_set = {k for k in exact if k in self.metrics}
        if tests:
            keys = list(self.metrics)
            for start in range(0, len(keys), 2_000):
                gone_set.update(k for k in keys[start : start + 2_000] if any(t(k) for t in tests))
                await asyncio.sleep(0)
        if self._globs:
            # A followed glob ends when it is named, or when an unsubscribe glob matches its text.
            registry = LiveGlobs.get()
            for glob in [g for g in self._globs if g in patterns or any(t(g) for t in tests)]:
                del self._globs[glob]
                registry.discard(glob, self)
        gone = [k for k in self.metrics if k in gone_set]
        for source_id in self.session.drop(gone_set):  # the sources of which no key is held any more
            await self.hub.leave(self.session, source_id)
        stats.SUBSCRIPTIONS.dec(len(gone))
        await self.transport.send_text(encode({"type": "unsubscribed", "id": message.id, "metrics": gone}))
