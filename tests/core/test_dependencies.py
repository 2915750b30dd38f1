"""Declared dependencies: which keys a batch of changes affects, resolved from the changes' own values."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from freshviews.core import PK, Change, Choice, Int, On, Operation, Params, Registry, View
from freshviews.core.dependencies import InvalidChangeError, resolve

COLORS = ("red", "green", "blue")


async def _compute(_ctx: Any, **_params: Any) -> dict[str, Any]:
    return {}


async def _every_item(_ctx: Any) -> list[Params]:
    return [{"id": i} for i in (1, 2, 3)]


async def _every_color(_ctx: Any) -> list[Params]:
    return [{"color": c} for c in COLORS]


class Batches:
    """An ``affected`` function that records every batch it is given."""

    def __init__(self, answer: list[Params] | None = None, error: Exception | None = None) -> None:
        self.calls: list[list[str]] = []
        self.answer = answer or []
        self.error = error

    async def __call__(self, _ctx: Any, changes: Sequence[Change]) -> list[Params]:
        self.calls.append([c.id for c in changes])
        if self.error is not None:
            raise self.error
        return self.answer


def _views(affected: Batches | None = None) -> Registry[None]:
    return Registry(
        [
            View("item/{id}", compute=_compute, enumerate=_every_item, depends_on=[On("items", id=PK)],
                 params={"id": Int(minimum=1)}),
            View("color/{color}", compute=_compute, enumerate=_every_color,
                 depends_on=[On("items", color="color")], params={"color": Choice(COLORS)}),
            View("total", compute=_compute, enumerate=lambda _c: _async([{}]), depends_on=[On("items"), On("sales")]),
            View("owner/{id}", compute=_compute, enumerate=_every_item,
                 depends_on=[On("items", id="owner_id"), On("owners", columns=("rank",))],
                 affected=affected or Batches(), params={"id": Int(minimum=1)}),
        ]
    )  # fmt: skip


async def _async(value: Any) -> Any:
    return value


def _change(item: int, op: Operation = Operation.UPDATE, **sides: dict[str, Any] | None) -> Change:
    return Change(entity="items", id=str(item), op=op, **sides)


async def test_declared_keys_come_from_the_values_before_and_after() -> None:
    registry = _views()
    moved = _change(1, before={"color": "red", "owner_id": 7}, after={"color": "blue", "owner_id": 7})
    affected = await registry.affected(None, [moved])
    assert set(affected.keys) == {"item/1", "color/red", "color/blue", "total", "owner/7"}
    assert (affected.invalid, affected.failed, affected.everything) == ({}, {}, set())


async def test_a_batch_is_resolved_once_and_each_function_called_once_with_every_change() -> None:
    batches = Batches(answer=[{"id": 9}])
    registry = _views(batches)
    changes = [
        _change(1, after={"color": "red", "owner_id": 1}),
        Change(entity="owners", id="5", op=Operation.UPDATE, after={"rank": 2}),
        _change(2, before={"color": "green", "owner_id": 1}, after={"color": "green", "owner_id": 2}),
    ]
    affected = await registry.affected(None, changes)
    assert batches.calls == [["1", "5", "2"]]
    assert set(affected.keys) == {
        "item/1",
        "item/2",
        "color/red",
        "color/green",
        "total",
        "owner/1",
        "owner/2",
        "owner/9",
    }


async def test_null_names_no_key_and_a_missing_column_affects_every_key() -> None:
    registry = _views()
    orphan = _change(3, before={"color": "red", "owner_id": None}, after={"color": "red", "owner_id": None})
    assert "owner/" not in " ".join((await registry.affected(None, [orphan])).keys)
    vague = _change(3, after={"owner_id": 1})  # does not say its colour
    affected = await registry.affected(None, [vague])
    assert affected.everything == {"color/{color}"}
    assert {k for k in affected.keys if k.startswith("color/")} == {"color/red", "color/green", "color/blue"}


async def test_a_value_no_key_can_have_is_invalid_and_does_not_spoil_the_batch() -> None:
    registry = _views()
    bad = Change(entity="items", id="abc", op=Operation.UPDATE, after={"color": "red", "owner_id": 1})
    good = _change(2, after={"color": "blue", "owner_id": 2})
    affected = await registry.affected(None, [bad, good])
    assert list(affected.invalid) == [0]
    assert "'abc' is not a canonical integer" in affected.invalid[0]
    assert {"item/2", "color/blue"} <= set(affected.keys)
    with pytest.raises(InvalidChangeError):
        resolve(registry.views[0], bad)
    wrong_type = _change(4, after={"color": "red", "owner_id": True})
    assert list((await registry.affected(None, [wrong_type])).invalid) == [0]


async def test_a_failing_function_fails_its_view_only() -> None:
    registry = _views(Batches(error=RuntimeError("source down")))
    affected = await registry.affected(None, [_change(1, after={"color": "red", "owner_id": 1})])
    assert list(affected.failed) == ["owner/{id}"]
    error, indexes = affected.failed["owner/{id}"]
    assert (str(error), indexes) == ("source down", [0])
    assert {"item/1", "color/red", "total"} <= set(affected.keys)


async def test_changes_to_entities_no_view_depends_on_affect_nothing() -> None:
    affected = await _views().affected(None, [Change(entity="audit_log", id="1", op=Operation.CREATE)])
    assert (affected.keys, affected.invalid, affected.failed) == ({}, {}, {})


def test_columns_to_capture_are_what_the_declarations_read() -> None:
    registry = _views()
    assert registry.columns("items") == {"color", "owner_id"}
    assert registry.columns("owners") == {"rank"}
    assert registry.columns("nothing") == frozenset()


@pytest.mark.parametrize(
    ("declaration", "message"),
    [
        ({"depends_on": []}, "depends on no entity"),
        ({"depends_on": [On("items", colour="color")]}, "not parameters"),
        ({"depends_on": [On("items")]}, "maps no parameter"),
    ],
)
def test_declarations_that_cannot_name_keys_are_refused(declaration: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        View("item/{id}", compute=_compute, enumerate=_every_item, params={"id": Int()}, **declaration)
