"""Where an ingest request's time goes: µs per sample per stage, from py-spy samples of the server process.

`python bench/ingest.py --stages` runs one extra pass per database and
endpoint at batch 5,000 with `py-spy record --idle --threads` attached to
Daphne (root only: py-spy reads another process's memory), then sorts every
stack sample into a stage by the functions on it (STAGE_RULES). Two kinds of
time come out, and the table says which is which:

* the writer thread's wall time (COPY or INSERT, rollups, latest values,
  counters, commit, its own Python): the writer is one thread with one
  connection, so this is the serial chain that bounds throughput, and
  waiting for the database is part of it;
* the event loop's and the parsing threads' time (HTTP, decode, validate,
  publish), which includes waiting for the GIL while another thread holds it.

The group-commit wait is not a stack: it is the writer's own histogram
(pulseboard_write_wait_seconds, read from /metrics), shown as its mean per
request and as its sum over the requests divided by the samples.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_RATE_HZ = 250  # py-spy samples per second and thread: ±2 % on a 1-2 s run of 200,000 samples

# Printed in this order; "idle" is counted but not printed.
STAGES = (
    "HTTP (Daphne, handler, body, response)",
    "decode",
    "validate",
    "keys and minute buckets, on the parsing thread (storage.prepare)",
    "group-commit wait (mean per request)",
    "writer: keys, de-duplication, outcomes (Python)",
    "writer: COPY / INSERT into dashboard_sample",
    "writer: rollups",
    "writer: latest values",
    "writer: token and source counters",
    "writer: commit",
    "publish (after commit)",
    "alerts (after commit)",
)
WRITER_STAGES = {s for s in STAGES if s.startswith("writer:")}


def _line_of(path: str, needle: str) -> int:
    """Return the 1-based line of `needle` in a repository file, so rules survive edits elsewhere in it."""
    for number, text in enumerate((ROOT / path).read_text().splitlines(), start=1):
        if needle in text:
            return number
    return -1


def _has(frames: list[str], *names: str) -> bool:
    return any(f.split(" (", 1)[0] in names for f in frames)


def _in_file(frames: list[str], path: str) -> bool:
    return any(f"({path}:" in f for f in frames)


def writer_stage(frames: list[str]) -> str:
    """Return the stage of one writer-thread stack (frames root first); "idle" when it waits for jobs."""
    if not _has(frames, "Writer._store", "_store_on_writer_thread"):
        return "idle"
    if _has(frames, "_count"):
        return "writer: token and source counters"
    if _has(frames, "update_latest", "fold_latest"):
        return "writer: latest values"
    if _has(frames, "_copy", "_insert_by_values", "insert_rows", "copy_rows", "pack_rows") or _has(
        frames, "insert_by_copy.<locals>.<listcomp>"
    ):
        return "writer: COPY / INSERT into dashboard_sample"
    if _in_file(frames, "dashboard/rollups.py") or _has(frames, "insert_by_copy", "fold_rollups"):
        return "writer: rollups"
    if _has(frames, "Atomic.__exit__", "BaseDatabaseWrapper.commit", "BaseDatabaseWrapper._commit"):
        return "writer: commit"
    return "writer: keys, de-duplication, outcomes (Python)"


def _decode_lines() -> set[tuple[str, int]]:
    return {
        ("readings_from_json", _line_of("dashboard/validation.py", "_plain_batch.decode(body)")),
        ("parse_json_batch", _line_of("dashboard/api.py", 'text = body.decode("utf-8")')),
    }


def parse_stage(frames: list[str], decode_lines: set[tuple[str, int]]) -> str | None:
    """Return the stage of a stack inside a request's parsing (on the loop or a worker thread), else None."""
    for frame in frames:
        name, _, where = frame.partition(" (")
        line = int(where.rstrip(")").rpartition(":")[2] or -1) if ":" in where else -1
        if (name, line) in decode_lines:
            return "decode"
    if _has(frames, "_parse_plain", "parse_line", "_parse_one", "parse_body"):
        return "decode"  # the line-protocol parser checks as it reads: its time is all here
    if _has(frames, "prepare") and _in_file(frames, "dashboard/storage.py"):
        return "keys and minute buckets, on the parsing thread (storage.prepare)"
    if _has(frames, "readings_from_json", "readings_from_dicts", "reading_from_dict", "check_scope"):
        return "validate"
    if _has(frames, "parse_json_batch"):
        return "decode"
    if _has(frames, "read_body", "raw_body", "decode_body", "gunzip"):
        return "HTTP (Daphne, handler, body, response)"
    return None


IDLE_LEAVES = ("select", "EpollSelector.select", "_worker", "Condition.wait", "Event.wait", "SimpleQueue.get")


def classify(thread: str, frames: list[str], decode_lines: set[tuple[str, int]]) -> str:
    """Return the stage of one stack sample of a thread; "idle" for a thread waiting for work."""
    if "pulseboard-writer" in thread:
        return writer_stage(frames)
    leaf = frames[-1].split(" (", 1)[0] if frames else ""
    stage = parse_stage(frames, decode_lines)
    if stage is not None:
        return stage
    if _has(frames, "publish_inserted"):
        return "publish (after commit)"
    if _in_file(frames, "dashboard/alerts.py"):
        return "alerts (after commit)"
    if _has(frames, "ingest") and _in_file(frames, "dashboard/actions.py"):
        return "validate"
    if leaf in IDLE_LEAVES or not frames:
        return "idle"
    if "MainThread" in thread:
        return "HTTP (Daphne, handler, body, response)"
    return "idle"  # background threads (retention, the sync thread between token look-ups)


def read_raw(path: Path) -> Callable[[], collections.Counter]:
    """Return a function that reads py-spy's raw (collapsed) output into Counter[(thread, stage)]."""
    decode_lines = _decode_lines()
    pattern = re.compile(r"^(thread \(\d+\)(?:: [^;]*)?);(.*) (\d+)$")

    def load() -> collections.Counter:
        counts: collections.Counter = collections.Counter()
        for line in path.read_text().splitlines():
            match = pattern.match(line)
            if not match:
                continue
            thread, stack, n = match.group(1), match.group(2), int(match.group(3))
            counts[(thread, classify(thread, stack.split(";"), decode_lines))] += n
        return counts

    return load


def per_sample_us(counts: collections.Counter, samples: int) -> dict[str, float]:
    """Return µs per stored sample for each stage, summed over threads."""
    out: dict[str, float] = collections.defaultdict(float)
    for (_, stage), n in counts.items():
        out[stage] += n / SAMPLE_RATE_HZ / samples * 1e6
    return out


def histogram_mean(metrics_text: str, name: str) -> tuple[float, int]:
    """Return (sum, count) of a Prometheus histogram from /metrics text."""
    total = count = 0.0
    for line in metrics_text.splitlines():
        if line.startswith(f"{name}_sum"):
            total = float(line.split()[-1])
        elif line.startswith(f"{name}_count"):
            count = float(line.split()[-1])
    return total, int(count)
