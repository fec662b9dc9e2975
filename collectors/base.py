"""The one small base class every collector subclasses.

A collector knows how to sample one kind of source and yields batches of
Readings; it knows nothing about where they go. The runner (collectors/runner.py)
drives it, backs off when it raises, and hands its batches to a sink.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any, ClassVar

from collectors.reading import Reading

__all__ = ["Collector", "Reading", "slugify_key"]


def slugify_key(text: str) -> str:
    """Return text reduced to the metric key charset (lower case, '-' for anything else)."""
    slug = re.sub(r"[^a-z0-9_.:-]+", "-", text.lower()).strip("-.:")
    return slug or "unnamed"


class Collector:
    """Base class: subclasses set `kind` and implement `batches()`."""

    kind: ClassVar[str] = ""
    default_interval_s: ClassVar[float] = 1.0

    def __init__(self, name: str | None = None, interval_s: float | None = None, **options: Any) -> None:
        self.name = name or self.kind
        self.interval_s = float(interval_s if interval_s is not None else self.default_interval_s)
        if self.interval_s <= 0:
            raise ValueError(f"{self.name}: interval_s must be positive")
        self.options = options
        self.errors = 0  # readings or payloads this collector could not turn into readings

    def health(self) -> dict[str, float]:
        """Return counters the agent reports as its own readings, collector.<name>.<counter> (docs/ingest.md)."""
        return {"errors": self.errors}

    def batches(self) -> AsyncIterator[list[Reading]]:
        """Yield lists of readings forever; raise to have the runner back off and call again."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"
