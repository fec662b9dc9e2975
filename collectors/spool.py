"""A bounded, durable FIFO of readings in a SQLite file: what the agent holds until the server has them.

Readings are committed (fsync'd) before the collector that produced them gets
control back, read in insertion order, and deleted only after the server
judged them sample by sample (docs/ingest.md, "What the agent deletes"), so
neither a server outage nor an agent crash or restart loses them. A batch
the server refuses as a whole moves, in one transaction, to the
`dead_letter` table of the same file with the reason; `runcollectors
--requeue-dead` sends those again. When a bound is reached the oldest
readings are dropped and counted: fresh data is worth more than stale data
when something has to go.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from collectors.reading import Reading

log = logging.getLogger("collectors.spool")

DEFAULT_MAX_READINGS = 1_000_000  # about 100-200 MB of SQLite at ~150 bytes a reading
T = TypeVar("T")


def reading_to_json(reading: Reading) -> dict[str, Any]:
    """Return a reading as one JSON sample of the ingest API (precision "us"), omitting empty fields."""
    out: dict[str, Any] = {"source": reading.source, "metric": reading.metric, "ts": reading.ts, "value": reading.value}
    if reading.unit:
        out["unit"] = reading.unit
    if reading.kind:
        out["kind"] = reading.kind
    if reading.source_kind:
        out["source_kind"] = reading.source_kind
    if reading.labels:
        out["labels"] = reading.labels
    return out


def reading_from_json(data: dict[str, Any]) -> Reading:
    return Reading(
        source=data["source"],
        metric=data["metric"],
        ts=int(data["ts"]),
        value=data["value"],
        unit=data.get("unit", ""),
        kind=data.get("kind", ""),
        source_kind=data.get("source_kind", ""),
        labels=data.get("labels", {}),
    )


class Spool:
    """Append, peek in order, delete through an id; every call runs on one thread that owns the connection."""

    def __init__(self, path: Path | str, max_readings: int = DEFAULT_MAX_READINGS) -> None:
        if max_readings < 1:
            raise ValueError("spool_max_readings must be at least 1")
        self.path = Path(path)
        self.max_readings = max_readings
        self.dropped = 0  # readings dropped at a bound since this process started
        self.dead = 0  # readings in the dead-letter table
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agent-spool")
        self._db: sqlite3.Connection | None = None
        self.depth = self._executor.submit(self._open).result()

    # --- On the spool thread -------------------------------------------------
    def _open(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None)
        # WAL + FULL: a commit is on disk when it returns, and appends do not block reads.
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        # AUTOINCREMENT: ids never go back, even after the table was emptied, so order survives restarts.
        db.execute("CREATE TABLE IF NOT EXISTS spool (id INTEGER PRIMARY KEY AUTOINCREMENT, reading TEXT NOT NULL)")
        db.execute(
            "CREATE TABLE IF NOT EXISTS dead_letter (id INTEGER PRIMARY KEY AUTOINCREMENT,"
            " reading TEXT NOT NULL, reason TEXT NOT NULL, failed_at REAL NOT NULL)"
        )
        self._db = db
        self.dead = db.execute("SELECT COUNT(*) FROM dead_letter").fetchone()[0]
        return db.execute("SELECT COUNT(*) FROM spool").fetchone()[0]

    def _append(self, rows: list[str]) -> int:
        db = self._db
        assert db is not None
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("INSERT INTO spool (reading) VALUES (?)", [(row,) for row in rows])
            depth = self.depth + len(rows)
            overflow = max(0, depth - self.max_readings)
            if overflow:
                db.execute(
                    "DELETE FROM spool WHERE id IN (SELECT id FROM spool ORDER BY id LIMIT ?)",
                    (overflow,),
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.depth = depth - overflow
        return overflow

    def _peek(self, limit: int) -> list[tuple[int, str]]:
        assert self._db is not None
        return self._db.execute("SELECT id, reading FROM spool ORDER BY id LIMIT ?", (limit,)).fetchall()

    def _delete_through(self, last_id: int) -> None:
        assert self._db is not None
        self._db.execute("DELETE FROM spool WHERE id <= ?", (last_id,))
        self.depth = self._db.execute("SELECT COUNT(*) FROM spool").fetchone()[0]

    def _bury_through(self, last_id: int, reason: str) -> int:
        """Move every reading up to last_id to the dead letters; return how many old dead letters the bound dropped."""
        db = self._db
        assert db is not None
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "INSERT INTO dead_letter (reading, reason, failed_at) SELECT reading, ?, ? FROM spool WHERE id <= ? ORDER BY id",
                (reason, time.time(), last_id),
            )
            db.execute("DELETE FROM spool WHERE id <= ?", (last_id,))
            dead = db.execute("SELECT COUNT(*) FROM dead_letter").fetchone()[0]
            overflow = max(0, dead - self.max_readings)
            if overflow:
                db.execute(
                    "DELETE FROM dead_letter WHERE id IN (SELECT id FROM dead_letter ORDER BY id LIMIT ?)", (overflow,)
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.dead = dead - overflow
        self.depth = db.execute("SELECT COUNT(*) FROM spool").fetchone()[0]
        return overflow

    def _peek_dead(self, limit: int) -> list[tuple[int, str]]:
        assert self._db is not None
        return self._db.execute("SELECT id, reading FROM dead_letter ORDER BY id LIMIT ?", (limit,)).fetchall()

    def _delete_dead_through(self, last_id: int) -> None:
        assert self._db is not None
        self._db.execute("DELETE FROM dead_letter WHERE id <= ?", (last_id,))
        self.dead = self._db.execute("SELECT COUNT(*) FROM dead_letter").fetchone()[0]

    def _dead_reasons(self) -> list[tuple[str, int]]:
        assert self._db is not None
        self.dead = self._db.execute("SELECT COUNT(*) FROM dead_letter").fetchone()[0]
        return self._db.execute("SELECT reason, COUNT(*) FROM dead_letter GROUP BY reason ORDER BY MIN(id)").fetchall()

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # --- From the event loop -------------------------------------------------
    async def _call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def append(self, readings: list[Reading]) -> int:
        """Store readings durably; return how many of the oldest were dropped to stay within the bound."""
        if not readings:
            return 0
        rows = [json.dumps(reading_to_json(r), separators=(",", ":")) for r in readings]
        overflow = await self._call(self._append, rows)
        if overflow:
            self.dropped += overflow
            log.error(
                "spool full (%d readings): dropped the %d oldest, %d dropped since start; is the server reachable?",
                self.max_readings,
                overflow,
                self.dropped,
            )
        return overflow

    async def peek(self, limit: int) -> tuple[int, list[Reading]]:
        """Return (id of the last one, the oldest `limit` readings) without removing them; (0, []) when empty."""
        rows = await self._call(self._peek, limit)
        if not rows:
            return 0, []
        return rows[-1][0], [reading_from_json(json.loads(text)) for _, text in rows]

    async def delete_through(self, last_id: int) -> None:
        """Forget every reading up to and including `last_id` (the server has them)."""
        await self._call(self._delete_through, last_id)

    async def bury_through(self, last_id: int, reason: str) -> None:
        """Move every reading up to and including `last_id` to the dead letters, with the server's reason."""
        overflow = await self._call(self._bury_through, last_id, reason)
        if overflow:
            self.dropped += overflow
            log.error(
                "dead letters full (%d readings): dropped the %d oldest; requeue them with runcollectors --requeue-dead",
                self.max_readings,
                overflow,
            )

    async def peek_dead(self, limit: int) -> tuple[int, list[Reading]]:
        """Return (id of the last one, the oldest `limit` dead letters); (0, []) when there are none."""
        rows = await self._call(self._peek_dead, limit)
        if not rows:
            return 0, []
        return rows[-1][0], [reading_from_json(json.loads(text)) for _, text in rows]

    async def delete_dead_through(self, last_id: int) -> None:
        """Forget every dead letter up to and including `last_id` (the server has judged them now)."""
        await self._call(self._delete_dead_through, last_id)

    async def dead_reasons(self) -> list[tuple[str, int]]:
        """Return (reason, count) of the dead letters, oldest reason first."""
        return await self._call(self._dead_reasons)

    def close(self) -> None:
        """Close the database file and the spool thread."""
        self._executor.submit(self._close).result()
        self._executor.shutdown(wait=True)
