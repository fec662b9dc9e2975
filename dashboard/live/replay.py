"""Back-fill: what the database holds past a connection's cursors, sent before live data flows."""

from __future__ import annotations

import asyncio
import logging

from django.db import connection

from dashboard.keyindex import (
    run_db,
)
from dashboard.live.frames import data_frame, encode_fragment
from dashboard.live.protocol import MAX_FRAME_SAMPLES, MAX_REPLAY_POINTS, MAX_REPLAY_TOTAL, REPLAY_CHUNK, encode
from dashboard.live.session import NO_KEYS
from dashboard.live.subscriptions import subscribe_gate

log = logging.getLogger(__name__)


def _samples_past(cursors: dict[int, int], limit: int) -> dict[int, tuple[list[int], list[float], bool]]:
    """Return, per metric id, its newest `limit` samples past its cursor, oldest first, and whether more were skipped.

    One query per REPLAY_CHUNK metrics, not one per metric (a 1,000-key
    subscribe made 1,000 queries).
    """
    empty: tuple[list[int], list[float], bool] = ([], [], False)
    out = dict.fromkeys(cursors, empty)
    # A client's cursor may be any integer; the column is 64-bit.
    cursors = {mid: max(-(2**63), min(cursor, 2**63 - 1)) for mid, cursor in cursors.items()}
    items = sorted(cursors.items())
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # The plan's estimated cost makes PostgreSQL JIT-compile it: ~100 ms per 1,000 metrics, for a
            # query that then runs in ~15 ms. This connection serves only the key index's threads.
            cursor.execute("SET jit = off")
        for start in range(0, len(items), REPLAY_CHUNK):
            chunk = items[start : start + REPLAY_CHUNK]
            if connection.vendor == "postgresql":
                # An index scan per metric that stops after limit + 1 rows.
                cursor.execute(
                    "SELECT m.id, s.ts, s.value FROM unnest(%s::bigint[], %s::bigint[]) AS m(id, cursor) "
                    "CROSS JOIN LATERAL (SELECT ts, value FROM dashboard_sample WHERE metric_id = m.id "
                    "AND ts > m.cursor ORDER BY ts DESC LIMIT %s) AS s ORDER BY m.id, s.ts",
                    [[m for m, _ in chunk], [c for _, c in chunk], limit + 1],
                )
            else:
                # The newest limit + 1 rows past the chunk's oldest cursor hold the newest past each one's own.
                cursor.execute(
                    "SELECT metric_id, ts, value FROM (SELECT metric_id, ts, value, ROW_NUMBER() OVER "
                    "(PARTITION BY metric_id ORDER BY ts DESC) AS n FROM dashboard_sample "
                    f"WHERE metric_id IN ({','.join(['%s'] * len(chunk))}) AND ts > %s) WHERE n <= %s "
                    "ORDER BY metric_id, ts",
                    [*(m for m, _ in chunk), min(c for _, c in chunk), limit + 1],
                )
            rows = cursor.fetchall()
            i, n = 0, len(rows)
            while i < n:  # rows come grouped by metric, oldest first
                metric_id = rows[i][0]
                j = i + 1
                while j < n and rows[j][0] == metric_id:
                    j += 1
                own = cursors[metric_id]
                ts = [r[1] for r in rows[i:j] if r[1] > own]
                if ts:
                    values = [r[2] for r in rows[j - len(ts) : j]]
                    cut = len(ts) > limit
                    out[metric_id] = (ts[-limit:], values[-limit:], cut) if cut else (ts, values, False)
                i = j
    return out


async def load_samples(cursors: dict[int, int]) -> dict[int, tuple[list[int], list[float], bool]]:
    """Return, per metric id, samples newer than its cursor (the newest ones, oldest first, and whether more were cut).

    At most MAX_REPLAY_POINTS per metric and MAX_REPLAY_TOTAL in all, read
    on the key index's threads, not on the thread ingest shares.
    """
    if not cursors:
        return {}
    limit = max(1, min(MAX_REPLAY_POINTS, MAX_REPLAY_TOTAL // len(cursors)))
    # Through the subscribe gate too: replays read one after another, and each is encoded on the loop
    # as its rows arrive, instead of a storm's rows arriving together.
    async with subscribe_gate():
        return await run_db(_samples_past, cursors, limit)


NOTHING_REPLAYED: frozenset[int] = frozenset()  # shared by every key whose replay found nothing


class Replaying:
    """LiveClient's part that back-fills keys: on subscribe, on a live glob's new metric, after a loss."""

    __slots__ = ()

    async def _replay(self, keys: set[str]) -> None:
        """Send what the database holds past each key's cursor, then let live data for those keys flow.

        The hub follows the keys first (its ledger), so at the seam each
        sample goes out exactly once: held live samples the replay sent are
        dropped by timestamp, and replayed samples the hub has not delivered
        yet are remembered (the session's seam) and dropped when they come.
        """
        replayed: dict[str, set[int]] = {}
        try:
            key_of = {self.metrics[k]: k for k in keys if k in self.metrics}
            keyset = self.session.keyset
            source_of = {k: source_id for k in keys if (source_id := keyset.source_of(k)) is not None}
            await self.hub.track(
                self.session,
                {key: (metric_id, source_of[key]) for metric_id, key in key_of.items() if key in source_of},
            )
            cursors = {metric_id: self.session.cursors[key] for metric_id, key in key_of.items()}
            rows = await load_samples(cursors)
            fragments: list = []
            filled, truncated = 0, []
            for n, (metric_id, (ts, values, cut)) in enumerate(rows.items(), 1):
                if n % 256 == 0:
                    await asyncio.sleep(0)  # a 10,000-key replay is encoded in slices: ingest runs between them
                key = key_of[metric_id]
                replayed[key] = set(ts) if ts else NOTHING_REPLAYED  # a 10,000-key replay made 10,000 empty sets
                if cut:
                    truncated.append(key)
                if ts:
                    fragments.append(encode_fragment(key, ts, values))
                    self.session.cursors[key] = max(self.session.cursors[key], ts[-1])
                    filled += len(ts)
            chunk: list = []
            samples = 0
            for fragment in [*fragments, None]:
                if chunk and (fragment is None or samples + fragment.count > MAX_FRAME_SAMPLES):
                    newest = {f.key: f.last_ts for f in chunk}
                    await self.session.send_data(data_frame([f.json for f in chunk], replay=True), newest)
                    chunk, samples = [], 0
                if fragment is not None:
                    chunk.append(fragment)
                    samples += fragment.count
            if truncated:
                await self.transport.send_text(
                    encode(
                        {
                            "type": "lag",
                            "truncated": truncated,
                            "message": "older samples were skipped; use /api/v1/series for them",
                        }
                    )
                )
        finally:
            # Keys whose replay never ran (an error) fall back to the cursor; the rest drop exactly what was sent.
            seam = {key: self.hub.unseen(key, ts) for key, ts in replayed.items() if ts}
            self.session.release(keys, replayed if replayed.keys() >= keys else None, seam)

    def _on_gap(self, keys: set[str]) -> None:
        """Back-fill keys whose live samples were lost (layer gap or a shed buffer)."""
        keys = keys & set(self.metrics) - self._gap_keys
        if not keys:
            return
        self._gap_keys = self._gap_keys | keys
        self.session.hold(keys)
        self.session.send_now(encode({"type": "lag", "metrics": sorted(keys), "dropped": self.session.dropped}))

        async def refill() -> None:
            await asyncio.sleep(0.2)  # let the in-flight batches land first
            try:
                await self._replay(keys)
            finally:
                self._gap_keys = self._gap_keys - keys or NO_KEYS  # an empty frozenset is 216 B of its own

        self._spawn(refill())
