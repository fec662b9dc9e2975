"""Held keys shared across connections (dashboard/live/heldkeys.py): one KeySet per distinct set, 16 B per key per socket."""

from __future__ import annotations

import gc
import tracemalloc

from dashboard.live import heldkeys
from dashboard.live.heldkeys import EMPTY, NO_TIMESTAMPS, HeldKeys


class Holder(HeldKeys):
    """The fields a session keeps for its keys."""

    __slots__ = ("keyset", "cursor_ts", "delivered_ts")

    def __init__(self) -> None:
        self.init_keys()

    def add(self, fresh: dict[str, int], cursors: dict[str, int]) -> None:  # type: ignore[override]
        self.take(fresh, lambda key: cursors.get(key, 0))

    def remove(self, gone: set[str]) -> None:  # type: ignore[override]
        self.drop(gone)


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


def test_the_session_methods_keep_their_meaning_over_a_shared_set() -> None:
    holder = Holder()
    HeldKeys.add_keys(holder, 7, ["hk.s7.a", "hk.s7.b"], [50, 2**70])  # a client's cursor may be any integer
    HeldKeys.add(holder, 8, "hk.s8.a", -5)
    assert dict(holder.cursors) == {"hk.s7.a": 50, "hk.s7.b": 2**63 - 1, "hk.s8.a": 0}
    HeldKeys.add_keys(holder, 7, ["hk.s7.a"], [40])  # an older cursor does not move a held key's back
    assert holder.cursors["hk.s7.a"] == 50
    assert not HeldKeys.remove_keys(holder, 7, {"hk.s7.a"})
    assert HeldKeys.remove(holder, "hk.s8.a") == 8 and HeldKeys.remove(holder, "hk.s8.a") is None
    assert dict(holder.sources) == {7: ("hk.s7.b",)}
    assert HeldKeys.remove_keys(holder, 7, {"hk.s7.b"}) and holder.keyset is EMPTY


def test_the_same_keys_of_other_sources_are_another_set() -> None:
    """A metric deleted and created again under another source (or a test's fresh database) must not share."""
    first, second = Holder(), Holder()
    first.add({"hk.moved.m0": 1, "hk.moved.m1": 1}, {})
    second.add({"hk.moved.m0": 2, "hk.moved.m1": 1}, {})
    assert first.keyset is not second.keyset
    assert dict(second.sources) == {2: ("hk.moved.m0",), 1: ("hk.moved.m1",)}
    assert second.keyset.source_of("hk.moved.m0") == 2 and second.keyset.source_of("nothing") is None


def test_cursors_compare_and_update_like_the_dicts_they_replace() -> None:
    holder = Holder()
    holder.add({"hk.u.m0": 3, "hk.u.m1": 3}, {})
    assert holder.cursors.keys() >= {"hk.u.m0"} and not holder.cursors.keys() >= {"hk.u.m0", "hk.u.m9"}
    holder.cursors.update({"hk.u.m0": 10, "hk.u.m9": 11})
    holder.delivered.update([("hk.u.m1", 12)])
    assert dict(holder.cursors) == {"hk.u.m0": 10, "hk.u.m1": 0} and set(holder.delivered.keys()) == {"hk.u.m1"}
