"""Held keys shared across connections (dashboard/heldkeys.py): one KeySet per distinct set, 16 B per key per socket."""

from __future__ import annotations

import gc
import tracemalloc
from array import array

from dashboard import heldkeys
from dashboard.heldkeys import EMPTY, NO_TIMESTAMPS, KeySet, Timestamps, extended, moved, reduced


class Holder:
    """The fields a session keeps: its KeySet and its two timestamp arrays."""

    def __init__(self) -> None:
        self.keyset: KeySet = EMPTY
        self.cursor_ts: array = NO_TIMESTAMPS
        self.delivered_ts: array = NO_TIMESTAMPS
        self.cursors = Timestamps(self, "cursor_ts", present_if_zero=True)
        self.delivered = Timestamps(self, "delivered_ts", present_if_zero=False)

    def add(self, fresh: dict[str, int], cursors: dict[str, int]) -> None:
        new = extended(self.keyset, fresh)
        self.cursor_ts = moved(self.keyset, self.cursor_ts, new)
        self.delivered_ts = moved(self.keyset, self.delivered_ts, new)
        self.keyset = new
        for key, cursor in cursors.items():
            self.cursors[key] = cursor

    def remove(self, gone: set[str]) -> None:
        new = reduced(self.keyset, gone)
        self.cursor_ts = moved(self.keyset, self.cursor_ts, new)
        self.delivered_ts = moved(self.keyset, self.delivered_ts, new)
        self.keyset = new


def fleet(n: int, per_source: int = 10) -> dict[str, int]:
    return {f"hk.dev-{i // per_source:05d}.m{i % per_source}": 1 + i // per_source for i in range(n)}


def test_sessions_holding_the_same_keys_share_one_key_set_whatever_the_order_they_came_in() -> None:
    keys = fleet(30)
    first, second, third = Holder(), Holder(), Holder()
    first.add(keys, {})
    second.add(dict(reversed(keys.items())), {})
    items = list(keys.items())
    third.add(dict(items[:10]), {})
    third.add(dict(items[10:]), {})
    assert first.keyset is second.keyset is third.keyset
    assert set(first.keyset.sources) == {1, 2, 3}
    assert sorted(first.keyset.sources[2]) == [f"hk.dev-00001.m{i}" for i in range(10)]


def test_timestamps_follow_their_keys_when_the_set_grows_shrinks_and_is_reordered() -> None:
    keys = fleet(20)
    items = list(keys.items())
    other = Holder()
    other.add(dict(reversed(items[:15])), {})  # the set the holder will reach, with other positions
    holder = Holder()
    holder.add(dict(items[:10]), {key: 100 + n for n, key in enumerate(list(keys)[:10])})
    holder.delivered["hk.dev-00000.m3"] = 77
    holder.add(dict(items[10:15]), {key: 200 for key in list(keys)[10:15]})
    assert holder.keyset is other.keyset
    assert holder.cursors["hk.dev-00000.m4"] == 104 and holder.cursors["hk.dev-00001.m2"] == 200
    assert dict(holder.delivered) == {"hk.dev-00000.m3": 77}
    holder.remove({"hk.dev-00000.m0", "hk.dev-00001.m4", "not-held"})
    assert len(holder.cursors) == 13 and "hk.dev-00000.m0" not in holder.cursors
    assert holder.cursors["hk.dev-00000.m9"] == 109 and holder.delivered["hk.dev-00000.m3"] == 77
    assert sorted(holder.keyset.sources[2]) == [f"hk.dev-00001.m{i}" for i in range(4)]
    holder.remove(set(holder.keyset))
    assert holder.keyset is EMPTY and holder.cursor_ts is NO_TIMESTAMPS and len(NO_TIMESTAMPS) == 0


def test_a_key_not_held_is_absent_and_setting_it_changes_nothing() -> None:
    holder = Holder()
    holder.add(fleet(3), {})
    holder.cursors["elsewhere"] = 5
    assert "elsewhere" not in holder.cursors and holder.cursors.get("elsewhere") is None
    assert holder.delivered.get("hk.dev-00000.m1", 0) == 0 and len(holder.delivered) == 0
    assert list(holder.cursors) == list(fleet(3))


def test_a_key_set_nobody_holds_any_more_is_forgotten() -> None:
    holder = Holder()
    holder.add({"hk.gone.m0": 9, "hk.gone.m1": 9}, {})
    fingerprint = holder.keyset.fingerprint
    assert heldkeys._live.get(fingerprint) is holder.keyset
    holder.remove({"hk.gone.m0", "hk.gone.m1"})
    gc.collect()
    assert heldkeys._live.get(fingerprint) is None


def test_a_second_socket_holding_the_same_ten_thousand_keys_costs_sixteen_bytes_a_key() -> None:
    keys = fleet(10_000)
    first = Holder()
    first.add(keys, {key: 1_700_000_000_000_000 for key in keys})
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        second = Holder()
        second.add(dict(reversed(keys.items())), {})
        for key in keys:
            second.cursors[key] = 1_700_000_000_000_000
        second.delivered["hk.dev-00000.m0"] = 1_700_000_000_000_001
        gc.collect()
        per_key = (tracemalloc.get_traced_memory()[0] - before) / len(keys)
    finally:
        tracemalloc.stop()
    assert second.keyset is first.keyset
    print(f"a second socket holding the same 10,000 keys: {per_key:.1f} B per key")
    assert per_key < 20
