"""The view registry: only registered, well-formed keys parse; keys are canonical; bad templates are refused."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from freshviews.core import On
from freshviews.core.events import Change, Operation
from freshviews.core.views import MAX_KEY_LENGTH, Choice, Int, InvalidKeyError, Registry, Slug, UnknownViewError, View
from tests.support.world import VIEWS, World, compute_item, enumerate_items, registry


async def _affected_none(ctx: Any, changes: Sequence[Change]) -> list[dict[str, Any]]:
    return []


def _view(
    template: str, params: dict[str, Any] | None = None, entities: frozenset[str] = frozenset({"item"})
) -> View[Any]:
    return View(
        template=template,
        compute=compute_item,
        affected=_affected_none,
        enumerate=enumerate_items,
        depends_on=[On(entity) for entity in sorted(entities)],
        params=params or {},
    )


def test_parse_returns_view_typed_params_and_canonical_key() -> None:
    parsed = registry.parse("item/42")
    assert parsed.view.name == "item"
    assert parsed.params == {"id": 42}
    assert parsed.key == "item/42"
    assert registry.parse("color/red").params == {"color": "red"}


def test_unknown_view_is_unknown_view_error() -> None:
    with pytest.raises(UnknownViewError):
        registry.parse("nope/1")
    with pytest.raises(UnknownViewError):
        registry.parse("item:1")  # the whole first segment names no view


@pytest.mark.parametrize(
    "key",
    [
        "item/..",
        "item/*",
        "item/1:2",
        "item/{1}",
        "item/1\r\n",
        "item/1\n",
        "item/1\x00",
        "item/" + "9" * 10_000,
        "item/007",
        "item/+1",
        "item/0",  # below the minimum
        "item/1000001",  # above the maximum
        "item/-1",
        "item/1.0",
        "item/ 1",
        "item/\u0661",  # an Arabic-Indic digit one is not a canonical integer
        "item/",
        "item",  # right view, wrong shape
        "item/1/extra",
        "color/purple",
        "color/RED",
        "color/red*",
        "",
        "x" * (MAX_KEY_LENGTH + 1),
    ],
)
def test_bad_keys_are_invalid_key_errors(key: str) -> None:
    with pytest.raises(InvalidKeyError):
        registry.parse(key)


def test_invalid_key_error_is_a_value_error_and_unknown_view_a_lookup_error() -> None:
    # The HTTP edge maps them to 422 and 404; callers may catch the builtins.
    assert issubclass(InvalidKeyError, ValueError)
    assert issubclass(UnknownViewError, LookupError)


def test_error_messages_are_truncated() -> None:
    with pytest.raises(InvalidKeyError) as info:
        registry.parse("color/" + "z" * 200)
    assert len(str(info.value)) < 200


def test_key_is_canonical_and_validated() -> None:
    item = VIEWS[0]
    assert item.key({"id": 7}) == "item/7"
    assert item.key({"id": "7"}) == "item/7"
    for bad in ("007", "+7", 0, True, "7/8"):
        with pytest.raises(InvalidKeyError):
            item.key({"id": bad})
    with pytest.raises(InvalidKeyError):
        item.key({})  # a missing parameter


def test_param_types() -> None:
    assert Int(minimum=-5, maximum=5).parse("-5") == -5
    with pytest.raises(InvalidKeyError):
        Int(minimum=-5, maximum=5).parse("-6")
    assert Slug(max_length=3).parse("a-_") == "a-_"
    for bad in ("abcd", "a.b", "a/b", "a b", "", "é"):
        with pytest.raises(InvalidKeyError):
            Slug(max_length=3).parse(bad)
    assert Choice(("x", "y")).parse("y") == "y"
    with pytest.raises(InvalidKeyError):
        Choice(("x", "y")).parse("z")


def test_negative_zero_is_not_a_canonical_integer() -> None:
    # "-0" names the same value as "0": accepting both lets two spellings reach one key.
    with pytest.raises(InvalidKeyError):
        Int(minimum=-5, maximum=5).parse("-0")


@pytest.mark.parametrize(
    ("template", "params"),
    [
        ("{id}", {"id": Int()}),  # must start with a literal
        ("item/{id}", {}),  # placeholder without a param
        ("item", {"id": Int()}),  # param without a placeholder
        ("item/{id}/{id}", {"id": Int()}),  # duplicate placeholder
        ("Item/{id}", {"id": Int()}),  # upper case literal
        ("item//{id}", {"id": Int()}),  # empty segment
        ("item/{id}x", {"id": Int()}),  # placeholder inside a segment
        ("item:{id}", {"id": Int()}),
        ("item/{ID}", {"ID": Int()}),
        ("", {}),
    ],
)
def test_bad_templates_are_value_errors(template: str, params: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="template"):
        _view(template, params)


def test_view_without_entities_and_bad_registries_are_value_errors() -> None:
    with pytest.raises(ValueError, match="entity"):
        _view("item/{id}", {"id": Int()}, entities=frozenset())
    with pytest.raises(ValueError, match="at least one view"):
        Registry([])
    with pytest.raises(ValueError, match="duplicate"):
        Registry([VIEWS[0], _view("item/{id}", {"id": Int()})])


def test_same_name_different_shapes() -> None:
    views = Registry([_view("board/{id}", {"id": Int()}), _view("board/{id}/top/{n}", {"id": Int(), "n": Int()})])
    assert views.parse("board/3").params == {"id": 3}
    assert views.parse("board/3/top/10").params == {"id": 3, "n": 10}
    with pytest.raises(InvalidKeyError):
        views.parse("board/3/bottom/10")


async def test_affected_and_all_keys() -> None:
    world = World(items={1: {"id": 1, "color": "red"}, 2: {"id": 2, "color": "blue"}})
    moved = Change(entity="item", id="2", op=Operation.UPDATE, before={"color": "red"}, after={"color": "blue"})
    assert set((await registry.affected(world, [moved])).keys) == {"item/2", "color/blue", "color/red"}
    bare = Change(entity="item", id="2", op=Operation.UPDATE)
    assert set((await registry.affected(world, [bare])).keys) == {"item/2", "color/red", "color/green", "color/blue"}
    other = Change(entity="ghost", id="1", op=Operation.UPDATE)
    assert (await registry.affected(world, [other])).keys == {}
    assert set(await registry.all_keys(world)) == {"item/1", "item/2", "color/red", "color/green", "color/blue"}
