"""The keys a live connection holds, shared by every connection that holds the same ones.

A fleet board is many viewers of one glob: 1,000 sockets on `fleet.*` hold
the same 1,000 keys. Kept per socket as dicts (key -> cursor, key -> newest
delivered, source id -> keys), each held key cost 56-67 B of Python objects
and 130-183 B of RSS (bench/connmem.py), so 1,000 viewers of a 10,000-key
fleet needed well over a gigabyte for what is one set of keys.

Here the set itself is a `KeySet`: immutable, interned by content (sessions
that reach the same keys, in any order and through any requests, get the
same object), mapping each key to its position and each source to its keys.
A session keeps only its own timestamps, as two `array('q')` aligned with
its KeySet's positions: 16 B per held key, the only per-socket part.
Positions are shared int objects, so even a KeySet used by one socket costs
no int per key.
"""

from __future__ import annotations

import weakref
from array import array
from collections.abc import Iterable, Iterator, MutableMapping
from typing import Any

MASK = (1 << 64) - 1

_positions: list[int] = []  # 0, 1, 2, ... as shared int objects (a position above 256 would be a new int each)


def positions(start: int, count: int) -> list[int]:
    """Return the shared int objects start .. start + count - 1."""
    end = start + count
    if end > len(_positions):
        _positions.extend(range(len(_positions), max(end, 2 * len(_positions))))
    return _positions[start:end]


class KeySet:
    """An immutable set of held metric keys: key -> position, source id -> its keys; shared, never changed in place.

    `fingerprint` is (count, sum of key hashes, xor of key hashes), kept
    incrementally, so finding an equal set among the live ones costs the
    keys added, not the keys held; a candidate is then checked key by key.
    """

    __slots__ = ("slot", "sources", "fingerprint", "parent", "__weakref__")

    def __init__(
        self,
        slot: dict[str, int],
        sources: dict[int, tuple[str, ...]],
        fingerprint: tuple[int, int, int],
        parent: KeySet | None = None,
    ) -> None:
        self.slot = slot  # key -> position in the sessions' timestamp arrays
        self.sources = sources  # source id -> its keys here (the hub iterates it)
        self.fingerprint = fingerprint
        # The set this one was made from by appending keys: its positions are the same, so a session
        # moving from it keeps its arrays and extends them.
        self.parent = weakref.ref(parent) if parent is not None else None

    def __len__(self) -> int:
        return len(self.slot)

    def __contains__(self, key: object) -> bool:
        return key in self.slot

    def __iter__(self) -> Iterator[str]:
        return iter(self.slot)

    def __repr__(self) -> str:
        return f"<KeySet of {len(self.slot)} keys over {len(self.sources)} sources>"


EMPTY = KeySet({}, {}, (0, 0, 0))
NO_TIMESTAMPS = array("q")  # shared by sessions holding nothing; nothing is ever written to it (no positions)

# Every KeySet some session holds, by fingerprint; a set nobody holds any more goes with its last session.
_live: weakref.WeakValueDictionary[tuple[int, int, int], KeySet] = weakref.WeakValueDictionary()


def _fingerprint(base: tuple[int, int, int], keys: Iterable[str], sign: int) -> tuple[int, int, int]:
    count, total, mixed = base
    for key in keys:
        h = hash(key) & MASK
        count += sign
        total = (total + sign * h) & MASK
        mixed ^= h
    return count, total, mixed


def _equal(candidate: KeySet, keys: Iterable[str], count: int) -> bool:
    slot = candidate.slot
    return len(slot) == count and all(key in slot for key in keys)


def extended(base: KeySet, fresh: dict[str, int]) -> KeySet:
    """Return the KeySet of `base` plus `fresh` (key -> its source id, none of them in base), shared if it exists."""
    fresh = {key: source_id for key, source_id in fresh.items() if key not in base.slot}
    if not fresh:
        return base
    fingerprint = _fingerprint(base.fingerprint, fresh, 1)
    known = _live.get(fingerprint)
    if known is not None and _equal(known, fresh, fingerprint[0]) and all(key in known.slot for key in base.slot):
        return known
    slot = dict(base.slot)
    slot.update(zip(fresh, positions(len(slot), len(fresh)), strict=True))
    grouped: dict[int, list[str]] = {}
    for key, source_id in fresh.items():
        grouped.setdefault(source_id, []).append(key)
    sources = dict(base.sources)
    for source_id, keys in grouped.items():
        sources[source_id] = (*sources.get(source_id, ()), *keys)
    made = KeySet(slot, sources, fingerprint, base)
    _live[fingerprint] = made
    return made


def reduced(base: KeySet, gone: set[str]) -> KeySet:
    """Return the KeySet of `base` without the keys in `gone`, shared if it exists."""
    gone = {key for key in gone if key in base.slot}
    if not gone:
        return base
    if len(gone) == len(base.slot):
        return EMPTY
    fingerprint = _fingerprint(base.fingerprint, gone, -1)
    keep = [key for key in base.slot if key not in gone]
    known = _live.get(fingerprint)
    if known is not None and _equal(known, keep, len(keep)):
        return known
    sources: dict[int, tuple[str, ...]] = {}
    for source_id, keys in base.sources.items():
        rest = tuple(key for key in keys if key not in gone)
        if rest:
            sources[source_id] = rest
    made = KeySet(dict(zip(keep, positions(0, len(keep)), strict=True)), sources, fingerprint)
    _live[fingerprint] = made
    return made


def moved(old: KeySet, values: array, new: KeySet) -> array:
    """Return a session's timestamps (aligned with `old`) aligned with `new`; keys new to it get 0."""
    if new is old:
        return values
    if not new.slot:
        return NO_TIMESTAMPS
    parent = new.parent() if new.parent is not None else None
    if parent is old:  # new = old + keys appended: same positions, more of them
        out = array("q", values) if values is NO_TIMESTAMPS else values  # the shared empty one stays empty
        out.frombytes(bytes(8 * (len(new.slot) - len(out))))
        return out
    out = array("q", bytes(8 * len(new.slot)))
    where = new.slot
    for key, i in old.slot.items():
        j = where.get(key)
        if j is not None:
            out[j] = values[i]
    return out


class Timestamps(MutableMapping[str, int]):
    """A session's cursors or delivered timestamps as a mapping key -> µs, over its KeySet and one array.

    For code outside the hot path (the replay, the SSE id, tests); the
    session's delivery loop reads the KeySet and the arrays directly. With
    `present_if_zero` false (delivered), a key whose timestamp is 0 is absent,
    as a key nothing was delivered for was absent from the dict it replaces.
    """

    __slots__ = ("_owner", "_field", "_present_if_zero")

    def __init__(self, owner: Any, field: str, present_if_zero: bool) -> None:
        self._owner = owner
        self._field = field
        self._present_if_zero = present_if_zero

    def _parts(self) -> tuple[dict[str, int], array]:
        owner = self._owner
        return owner.keyset.slot, getattr(owner, self._field)

    def __getitem__(self, key: str) -> int:
        slot, values = self._parts()
        value = values[slot[key]]
        if not value and not self._present_if_zero:
            raise KeyError(key)
        return value

    def __setitem__(self, key: str, value: int) -> None:
        """Set the timestamp of a held key; one not held (unsubscribed meanwhile) is ignored."""
        slot, values = self._parts()
        i = slot.get(key)
        if i is not None:
            values[i] = value

    def __delitem__(self, key: str) -> None:
        raise TypeError("timestamps go with their keys: unsubscribe the key instead")

    def __contains__(self, key: object) -> bool:
        slot, values = self._parts()
        i = slot.get(key)  # type: ignore[call-overload]
        return i is not None and (self._present_if_zero or values[i] != 0)

    def __iter__(self) -> Iterator[str]:
        slot, values = self._parts()
        if self._present_if_zero:
            return iter(list(slot))
        return iter([key for key, i in slot.items() if values[i]])

    def __len__(self) -> int:
        slot, values = self._parts()
        if self._present_if_zero:
            return len(slot)
        return len(values) - values.count(0)

    def __repr__(self) -> str:
        return repr(dict(self.items()))
