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
from collections.abc import Callable, Iterable, Iterator, KeysView, Mapping, MutableMapping
from typing import Any

MASK = (1 << 64) - 1
TS_MAX = 2**63 - 1  # µs: what an array('q') holds; a client's cursor may be any integer


def clamp(ts: int) -> int:
    """Return a timestamp as a held cursor: 0 for nothing yet (as before, cursors never went below 0), int64 at most."""
    return 0 if ts < 0 else (TS_MAX if ts > TS_MAX else ts)


_positions: list[int] = []  # 0, 1, 2, ... as shared int objects (a position above 256 would be a new int each)


def positions(start: int, count: int) -> list[int]:
    """Return the shared int objects start .. start + count - 1."""
    end = start + count
    if end > len(_positions):
        _positions.extend(range(len(_positions), max(end, 2 * len(_positions))))
    return _positions[start:end]


class KeySet:
    """An immutable set of held metric keys: key -> position, source id -> its keys; shared, never changed in place.

    Two sets are equal when they hold the same keys of the same sources (a
    metric deleted and created again under another source is another key
    here). `fingerprint` is (count, sum and xor of a hash of each key and its
    source), kept incrementally, so finding an equal set among the live ones
    costs the keys added, not the keys held; a candidate is then checked key
    by key.
    """

    __slots__ = ("slot", "source_ids", "fingerprint", "parent", "__weakref__")

    def __init__(
        self,
        slot: dict[str, int],
        source_ids: array,
        fingerprint: tuple[int, int, int],
        parent: KeySet | None = None,
    ) -> None:
        self.slot = slot  # key -> position in the sessions' timestamp arrays
        self.source_ids = source_ids  # position -> the key's source id
        self.fingerprint = fingerprint
        # The set this one was made from by appending keys: its positions are the same, so a session
        # moving from it keeps its arrays and extends them.
        self.parent = weakref.ref(parent) if parent is not None else None

    @property
    def sources(self) -> dict[int, tuple[str, ...]]:
        """Source id -> its keys here, made when asked (a subscribe's replay, a socket closing).

        Not kept: for a set one socket holds alone, a dict of tuples per
        source was up to 85 B a key (one key per source).
        """
        grouped: dict[int, list[str]] = {}
        source_ids = self.source_ids
        for key, i in self.slot.items():
            grouped.setdefault(source_ids[i], []).append(key)
        return {source_id: tuple(keys) for source_id, keys in grouped.items()}

    def source_of(self, key: str) -> int | None:
        i = self.slot.get(key)
        return None if i is None else self.source_ids[i]

    def __len__(self) -> int:
        return len(self.slot)

    def __contains__(self, key: object) -> bool:
        return key in self.slot

    def __iter__(self) -> Iterator[str]:
        return iter(self.slot)

    def __repr__(self) -> str:
        return f"<KeySet of {len(self.slot)} keys over {len(set(self.source_ids))} sources>"


EMPTY = KeySet({}, array("q"), (0, 0, 0))
NO_TIMESTAMPS = array("q")  # shared by sessions holding nothing; nothing is ever written to it (no positions)
SOURCE_MIX = 0x9E3779B97F4A7C15  # spreads source ids over 64 bits before they join a key's hash

# Every KeySet some session holds, by fingerprint; a set nobody holds any more goes with its last session.
_live: weakref.WeakValueDictionary[tuple[int, int, int], KeySet] = weakref.WeakValueDictionary()


def _fingerprint(base: tuple[int, int, int], pairs: Iterable[tuple[str, int]], sign: int) -> tuple[int, int, int]:
    count, total, mixed = base
    for key, source_id in pairs:
        h = (hash(key) ^ (source_id * SOURCE_MIX)) & MASK
        count += sign
        total = (total + sign * h) & MASK
        mixed ^= h
    return count, total, mixed


def _holds(candidate: KeySet, pairs: Iterable[tuple[str, int]]) -> bool:
    """Return whether the candidate holds each key, of the same source."""
    slot, source_ids = candidate.slot, candidate.source_ids
    for key, source_id in pairs:
        i = slot.get(key)
        if i is None or source_ids[i] != source_id:
            return False
    return True


def _pairs(keyset: KeySet) -> Iterator[tuple[str, int]]:
    source_ids = keyset.source_ids
    return ((key, source_ids[i]) for key, i in keyset.slot.items())


def _register(made: KeySet) -> KeySet:
    _live[made.fingerprint] = made
    return made


def extended(base: KeySet, fresh: dict[str, int]) -> KeySet:
    """Return the KeySet of `base` plus `fresh` (key -> its source id; keys base holds are skipped), shared if it exists."""
    fresh = {key: source_id for key, source_id in fresh.items() if key not in base.slot}
    if not fresh:
        return base
    fingerprint = _fingerprint(base.fingerprint, fresh.items(), 1)
    known = _live.get(fingerprint)
    if (
        known is not None
        and len(known.slot) == fingerprint[0]
        and _holds(known, fresh.items())
        and _holds(known, _pairs(base))
    ):
        return known
    slot = dict(base.slot)
    slot.update(zip(fresh, positions(len(slot), len(fresh)), strict=True))
    source_ids = array("q", base.source_ids)
    source_ids.extend(fresh.values())
    return _register(KeySet(slot, source_ids, fingerprint, base))


def reduced(base: KeySet, gone: set[str]) -> KeySet:
    """Return the KeySet of `base` without the keys in `gone`, shared if it exists."""
    gone = {key for key in gone if key in base.slot}
    if not gone:
        return base
    if len(gone) == len(base.slot):
        return EMPTY
    fingerprint = _fingerprint(base.fingerprint, ((key, base.source_of(key) or 0) for key in gone), -1)
    keep = [(key, source_id) for key, source_id in _pairs(base) if key not in gone]
    known = _live.get(fingerprint)
    if known is not None and len(known.slot) == len(keep) and _holds(known, keep):
        return known
    slot = dict(zip((key for key, _ in keep), positions(0, len(keep)), strict=True))
    return _register(KeySet(slot, array("q", (source_id for _, source_id in keep)), fingerprint))


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
            values[i] = clamp(value)

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

    def keys(self) -> KeysView[str]:
        """The held keys as the KeySet's own dict view (set comparisons at C speed), or those with a timestamp."""
        if self._present_if_zero:
            return self._owner.keyset.slot.keys()
        return KeysView(self)

    def update(self, other: Any = (), /, **kwargs: int) -> None:
        """Set many timestamps at once; keys not held are ignored, as by __setitem__."""
        slot, values = self._parts()
        pairs = other.items() if isinstance(other, Mapping) else other
        for key, value in [*pairs, *kwargs.items()]:
            i = slot.get(key)
            if i is not None:
                values[i] = clamp(value)

    def __repr__(self) -> str:
        return repr(dict(self.items()))


class HeldKeys:
    """A session's part that holds its keys: a shared KeySet, and its own cursor and delivered timestamp per key.

    `cursors` and `delivered` read like the dicts they replace (key -> µs);
    `sources` is source id -> keys, made when asked from the KeySet.
    The delivery loop reads `keyset.slot`, `cursor_ts` and `delivered_ts`.
    """

    __slots__ = ()

    keyset: KeySet
    cursor_ts: array
    delivered_ts: array

    def init_keys(self) -> None:
        self.keyset = EMPTY
        self.cursor_ts = NO_TIMESTAMPS
        self.delivered_ts = NO_TIMESTAMPS

    @property
    def cursors(self) -> Timestamps:
        """Held key -> newest ts delivered or promised (its history replay starts after it)."""
        return Timestamps(self, "cursor_ts", present_if_zero=True)

    @property
    def delivered(self) -> Timestamps:
        """Held key -> newest ts handed to the transport (keys nothing was delivered for are absent)."""
        return Timestamps(self, "delivered_ts", present_if_zero=False)

    @property
    def sources(self) -> Mapping[int, tuple[str, ...]]:
        """Source id -> the held keys of it."""
        return self.keyset.sources

    def _move_to(self, new: KeySet) -> None:
        old = self.keyset
        if new is not old:
            self.cursor_ts = moved(old, self.cursor_ts, new)
            self.delivered_ts = moved(old, self.delivered_ts, new)
            self.keyset = new

    def take(self, fresh: Mapping[str, int], cursor_of: Callable[[str], int]) -> None:
        """Hold keys (key -> its source id) with their cursors; a key already held keeps the newer cursor."""
        self._move_to(extended(self.keyset, dict(fresh)))
        slot, values = self.keyset.slot, self.cursor_ts
        for key in fresh:
            i = slot[key]
            ts = clamp(cursor_of(key))
            if ts > values[i]:
                values[i] = ts

    def drop(self, gone: Iterable[str]) -> list[int]:
        """Stop holding keys; return the ids of the sources of which no key is held any more."""
        old = self.keyset
        new = reduced(old, set(gone))
        if new is old:
            return []
        self._move_to(new)
        return list(set(old.source_ids).difference(new.source_ids))

    def add(self, source_id: int, key: str, cursor: int) -> None:
        self.take({key: source_id}, lambda _key: cursor)

    def add_keys(self, source_id: int, keys: list[str], cursors: list[int]) -> None:
        """Subscribe to several keys of one source at once."""
        of = dict(zip(keys, cursors, strict=True))
        self.take(dict.fromkeys(keys, source_id), of.__getitem__)

    def remove_keys(self, source_id: int, keys: set[str]) -> bool:
        """Forget several keys of one source; return whether the session no longer wants any key of it."""
        self.drop(keys)
        return source_id not in self.keyset.source_ids

    def remove(self, key: str) -> int | None:
        """Forget a key; return its source id when the session no longer wants any key of that source."""
        emptied = self.drop((key,))
        return emptied[0] if emptied else None
