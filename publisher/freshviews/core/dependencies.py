"""Which keys a batch of changes affects: declared once per view, resolved for a whole batch with no query.

A view declares, with :class:`On`, the entities whose changes can alter it and how a changed row names the
view's keys: ``On("scores", player_id="player_id")`` says that a change to a row of ``scores`` affects
``player/{player_id}`` for the row's ``player_id`` before the change and after it (a score moved from one player
to another affects both pages). The subscriber resolves these declarations for every change of a batch from the
values the change carries: no query, and no code to get wrong.

What a declaration cannot say (effects across rows: ranks, top-N, a renamed team shown on its members' pages)
goes in the view's ``affected`` function, which receives the whole batch (every change to the entities the view
declares) and answers with set-based queries, never one query per change.

Resolution rules, each chosen to fail towards more work rather than staleness:

- a change missing a column a declaration maps makes the whole view's keys affected (every key ``enumerate``
  lists): a writer that did not say which row moved cannot be trusted to have moved none;
- a change that removed every row (``TRUNCATE``, :data:`~freshviews.core.events.ALL_ROWS`) affects every key;
- a NULL value names no key (a player without a team is on no team page);
- a value that is not a valid parameter (``"abc"`` for an ``Int``) is bad input: :class:`InvalidChangeError`,
  which the subscriber dead-letters with the reason.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from freshviews.core.events import Change

if TYPE_CHECKING:
    from freshviews.core.views import Params, View


class PrimaryKey:
    """The changed row's primary key as the change names it (``Change.id``), for ``On(entity, param=PK)``."""

    _instance: PrimaryKey | None = None

    def __new__(cls) -> PrimaryKey:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "PK"


PK = PrimaryKey()


class InvalidChangeError(ValueError):
    """A change whose values name no valid key of a view that depends on it (bad input: dead-lettered)."""


@dataclass(frozen=True, init=False)
class On:
    """Changes to ``entity`` affect the view: ``params`` map each view parameter to the column of the changed row
    that names it (or :data:`PK`, its primary key); ``columns`` lists further columns the view's ``affected``
    function reads from the changes, so that a capture records them.

    With no ``params``, a change to ``entity`` affects the view's one key (a view without parameters) or is left
    to the view's ``affected`` function.
    """

    entity: str
    params: Mapping[str, str | PrimaryKey]
    columns: tuple[str, ...]

    def __init__(self, entity: str, /, *, columns: Iterable[str] = (), **params: str | PrimaryKey) -> None:
        if not entity:
            raise ValueError("On() needs an entity")
        object.__setattr__(self, "entity", entity)
        object.__setattr__(self, "params", dict(params))
        object.__setattr__(self, "columns", tuple(columns))

    @property
    def needs(self) -> frozenset[str]:
        """The columns a change to ``entity`` must carry for this declaration and the ``affected`` function."""
        mapped = {column for column in self.params.values() if isinstance(column, str)}
        return frozenset(mapped | set(self.columns))


def check(view: View[Any]) -> None:
    """Raise ValueError when ``view``'s declarations cannot name its keys."""
    if not view.depends_on:
        raise ValueError(f"view {view.template!r} depends on no entity: give depends_on=[On(...)]")
    for on in view.depends_on:
        unknown = set(on.params) - set(view.params)
        if unknown:
            raise ValueError(f"view {view.template!r}: On({on.entity!r}) maps {sorted(unknown)}, not parameters")
        if on.params and set(on.params) != set(view.params):
            missing = sorted(set(view.params) - set(on.params))
            raise ValueError(f"view {view.template!r}: On({on.entity!r}) must map every parameter ({missing} left)")
        if not on.params and view.params and view.affected is None:
            raise ValueError(
                f"view {view.template!r}: On({on.entity!r}) maps no parameter; map them, or give the view an "
                "affected function that names the keys"
            )


def resolve(view: View[Any], change: Change) -> dict[str, Params] | None:
    """The keys ``view``'s declarations name for ``change``; None when every key of the view is affected (the
    change lacks a column a declaration maps). Raises :class:`InvalidChangeError` for a value no key can have."""
    keys: dict[str, Params] = {}
    if change.all_rows and change.entity in view.entities:
        return None
    for on in view.depends_on:
        if on.entity != change.entity:
            continue
        if not on.params:
            if not view.params:
                keys[view.key({})] = {}
            continue
        combos = _combinations(on, change)
        if combos is None:
            return None
        for values in combos:
            try:
                # Parsed from their text as a key's parameters are: the compute gets the same types either way.
                params = {name: view.params[name].parse(str(value)) for name, value in values.items()}
                keys[view.key(params)] = params
            except ValueError as exc:
                raise InvalidChangeError(
                    f"{change.entity} {change.id}: {exc} (view {view.template!r}, declared by On({on.entity!r}))"
                ) from None
    return keys


def _combinations(on: On, change: Change) -> list[dict[str, Any]] | None:
    """Every parameter combination the change names through ``on`` (None: a mapped column is missing)."""
    choices: list[list[tuple[str, Any]]] = []
    for param, column in on.params.items():
        values = [change.id] if isinstance(column, PrimaryKey) else change.values(column)
        if values is None:
            return None
        present = [value for value in _flat(values) if value is not None]
        choices.append([(param, value) for value in present])
    return [dict(combo) for combo in itertools.product(*choices)]


def _flat(values: Iterable[Any]) -> Iterator[Any]:
    for value in values:
        if isinstance(value, list):
            yield from value
        else:
            yield value
