"""Redis Cluster runs a script or a transaction only on keys of one hash slot: every key set the product touches
together, built from the key layout module, lies in one slot, whatever the prefix and the view key."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from freshviews.core.keys import Keys

#: View keys of every shape a template can give (parameters of every kind, the longest a key may be, characters
#: a hash tag cares about).
VIEW_KEYS = ["item/1", "color/red", "leaderboard/eu-west", "player/123456789", "a" * 256, "x}y", "{z}"]


@pytest.mark.parametrize("prefix", ["fv", "shop-cache", "a.b"])
@pytest.mark.parametrize("view_key", VIEW_KEYS)
def test_every_key_set_a_script_or_transaction_touches_is_in_one_slot(prefix: str, view_key: str) -> None:
    keys = Keys(prefix)
    sets = keys.atomic_sets(view_key)
    for operation, touched in sets.items():
        slots = {key_slot(key.encode()) for key in touched}
        assert len(slots) == 1, f"{operation}: {touched} span slots {sorted(slots)}"
    # The sets name the keys the code uses (a renamed key would have to be renamed here too).
    assert (keys.changes, keys.dead_letters) in sets.values()
    assert (keys.value(view_key), keys.issued(view_key)) in sets.values()


def test_a_key_and_its_companions_share_the_slot_of_the_view_key_itself() -> None:
    # What makes the whole per-key family one slot: the braces around the view key in every one of its names.
    keys = Keys()
    for view_key in VIEW_KEYS[:5]:
        slot = key_slot(f"{{{view_key}}}".encode())
        assert {
            key_slot(k.encode()) for k in (keys.value(view_key), keys.issued(view_key), keys.failure(view_key))
        } == {slot}


def test_the_change_log_is_where_its_dead_letters_are_and_views_spread_over_the_slots() -> None:
    keys = Keys()
    assert key_slot(keys.changes.encode()) == key_slot(keys.dead_letters.encode()) == key_slot(b"changes")
    # Views do not pile onto one slot (one master): a thousand keys land in hundreds of slots.
    assert len({key_slot(keys.value(f"item/{n}").encode()) for n in range(1000)}) > 900
