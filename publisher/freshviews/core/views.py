"""The view registry: every cached view is declared once, here, and both the subscriber and the read path use it.

A view is a key template with typed parameters (``leaderboard/{region}``), an async ``compute`` that reads the
source of truth, the entities it depends on and how their changes name its keys (``depends_on``, see
:mod:`freshviews.core.dependencies`), optionally an ``affected`` function for effects across rows, and an
``enumerate`` function listing every live key (for the sweep and the warm-up). Keys are parsed only against
these templates, so nothing a client sends ever becomes a raw Redis key.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Generic, TypeVar

from freshviews.core import dependencies
from freshviews.core.dependencies import InvalidChangeError, On
from freshviews.core.events import Change
from freshviews.core.params import MISSING, Choice, Int, InvalidKeyError, Missing, Param, Slug, UnknownViewError

__all__ = [
    "MAX_KEY_LENGTH",
    "MISSING",
    "Affected",
    "Choice",
    "Int",
    "InvalidKeyError",
    "Missing",
    "Params",
    "Registry",
    "Slug",
    "UnknownViewError",
    "View",
    "ViewKey",
]

Ctx = TypeVar("Ctx")
Params = Mapping[str, Any]
MAX_KEY_LENGTH = 256

_PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
_LITERAL = re.compile(r"[a-z0-9_-]+")

#: ``compute(ctx, **params)``: the view's value (JSON-able data or a pydantic model), or MISSING.
ComputeFn = Callable[..., Awaitable[Any]]
#: ``affected(ctx, changes)``: the params of the keys a batch of changes affects beyond what ``depends_on`` says.
AffectedFn = Callable[[Ctx, Sequence[Change]], Iterable[Params] | Awaitable[Iterable[Params]]]
#: ``enumerate(ctx)``: the params of every key that exists now.
EnumerateFn = Callable[[Ctx], Awaitable[Iterable[Params]]]


@dataclass(frozen=True)
class View(Generic[Ctx]):
    """One cached view.

    - ``compute(ctx, **params)`` reads the source of truth and returns the value (JSON-able data or a pydantic
      model), or :data:`MISSING` when the row behind the key is gone (the key is then deleted);
    - ``depends_on``: one :class:`On` per entity whose changes can alter the view, mapping the changed row's
      columns to the view's parameters;
    - ``affected(ctx, changes)`` (optional): for effects a declaration cannot express, the params of further
      keys a batch affects; it receives every change of the batch to the entities in ``depends_on``;
    - ``enumerate(ctx)``: the params of every key that exists now;
    - ``example``: the params of one key, shown by ``GET /cache/views`` so a reader can see what a key looks like.
    """

    template: str
    _: KW_ONLY
    compute: ComputeFn
    enumerate: EnumerateFn[Ctx]
    depends_on: Sequence[On] = ()
    affected: AffectedFn[Ctx] | None = None
    params: Mapping[str, Param] = field(default_factory=dict)
    #: HTTP caching of the read route: max-age and stale-while-revalidate, seconds.
    max_age: int = 1
    stale_while_revalidate: int = 30
    example: Params | None = None

    def __post_init__(self) -> None:
        segments = self.template.split("/")
        names: list[str] = []
        for segment in segments:
            match = _PLACEHOLDER.fullmatch(segment)
            if match:
                names.append(match.group(1))
            elif not _LITERAL.fullmatch(segment):
                raise ValueError(f"template {self.template!r}: segment {segment!r} must be a literal or {{name}}")
        if set(names) != set(self.params) or len(names) != len(set(names)):
            raise ValueError(f"template {self.template!r} placeholders {names} must match params {sorted(self.params)}")
        if _PLACEHOLDER.fullmatch(segments[0]):
            raise ValueError(f"template {self.template!r} must start with a literal (the view's name)")
        object.__setattr__(self, "depends_on", tuple(self.depends_on))
        dependencies.check(self)

    @property
    def name(self) -> str:
        return self.template.split("/", 1)[0]

    @property
    def segments(self) -> list[str]:
        return self.template.split("/")

    @property
    def entities(self) -> frozenset[str]:
        """Entities whose changes can affect this view."""
        return frozenset(on.entity for on in self.depends_on)

    def key(self, params: Params) -> str:
        """The canonical key for ``params`` (validated: a bad enumerate/affected result fails loudly here)."""
        out = []
        for segment in self.segments:
            match = _PLACEHOLDER.fullmatch(segment)
            if match is None:
                out.append(segment)
                continue
            name = match.group(1)
            if name not in params:
                raise InvalidKeyError(f"view {self.name!r}: missing parameter {name!r}")
            out.append(self.params[name].format(params[name]))
        return "/".join(out)

    def match(self, parts: Sequence[str]) -> dict[str, Any] | None:
        """Parse key segments against this template: None when it is not this view, raises when a parameter is bad."""
        segments = self.segments
        if len(parts) != len(segments) or parts[0] != segments[0]:
            return None
        values: dict[str, Any] = {}
        for segment, part in zip(segments, parts, strict=True):
            placeholder = _PLACEHOLDER.fullmatch(segment)
            if placeholder is None:
                if part != segment:
                    return None
                continue
            name = placeholder.group(1)
            try:
                values[name] = self.params[name].parse(part)
            except InvalidKeyError as exc:
                raise InvalidKeyError(f"view {self.name!r}, parameter {name!r}: {exc}") from None
        return values


@dataclass(frozen=True)
class ViewKey:
    """A parsed, validated key: the view it belongs to and its typed parameters."""

    view: View[Any]
    params: Mapping[str, Any]
    key: str


@dataclass
class Affected:
    """The keys a batch of changes affects, and what could not be worked out."""

    keys: dict[str, ViewKey] = field(default_factory=dict)
    #: Changes that name no valid key (bad input), with the reason: dead-lettered, never retried.
    invalid: dict[int, str] = field(default_factory=dict)
    #: Views whose ``affected`` or ``enumerate`` raised, with the error and the indexes of the changes it was given.
    failed: dict[str, tuple[BaseException, list[int]]] = field(default_factory=dict)
    #: Views every key of which is affected (a change lacked a column their declarations map).
    everything: set[str] = field(default_factory=set)
    #: For each view, the indexes of the changes that could affect it.
    inputs: dict[str, list[int]] = field(default_factory=dict)
    #: For each key, the indexes of the changes that named it (what a failure of the key is traced to): those
    #: whose declared values named it, or for a key an ``affected`` function or ``enumerate`` named, every
    #: change the view was given.
    sources: dict[str, set[int]] = field(default_factory=dict)

    def add(self, view_key: ViewKey, indexes: Iterable[int]) -> None:
        self.keys[view_key.key] = view_key
        self.sources.setdefault(view_key.key, set()).update(indexes)


class Registry(Generic[Ctx]):
    """All views of one application, and how to open the context their functions need (e.g. a database engine)."""

    def __init__(
        self,
        views: Iterable[View[Ctx]],
        *,
        context: Callable[[], AbstractAsyncContextManager[Ctx]] | None = None,
    ) -> None:
        self.views: tuple[View[Ctx], ...] = tuple(views)
        if not self.views:
            raise ValueError("a registry needs at least one view")
        templates = [v.template for v in self.views]
        if len(set(templates)) != len(templates):
            raise ValueError(f"duplicate view templates in {templates}")
        self._context = context
        self._by_entity: dict[str, list[View[Ctx]]] = {}
        for view in self.views:
            for entity in sorted(view.entities):
                self._by_entity.setdefault(entity, []).append(view)

    @property
    def entities(self) -> frozenset[str]:
        return frozenset(self._by_entity)

    def views_for(self, entity: str) -> list[View[Ctx]]:
        return self._by_entity.get(entity, [])

    def columns(self, entity: str) -> frozenset[str]:
        """The columns a change to ``entity`` must carry for every view that depends on it (what to capture)."""
        needs = (on.needs for view in self.views_for(entity) for on in view.depends_on if on.entity == entity)
        return frozenset().union(*needs)

    def open_context(self) -> AbstractAsyncContextManager[Ctx]:
        """The context the subscriber passes to every compute/affected/enumerate call."""
        if self._context is None:
            return _none_context()  # type: ignore[return-value]
        return self._context()

    def parse(self, key: str) -> ViewKey:
        """Validate a key from outside; raise :class:`UnknownViewError` or :class:`InvalidKeyError`."""
        if not key or len(key) > MAX_KEY_LENGTH:
            raise InvalidKeyError(f"a key is 1-{MAX_KEY_LENGTH} characters")
        parts = key.split("/")
        shapes_seen = False
        for view in self.views:
            if view.segments[0] != parts[0]:
                continue
            shapes_seen = True
            params = view.match(parts)
            if params is not None:
                return ViewKey(view, params, view.key(params))
        if shapes_seen:
            raise InvalidKeyError(f"{key[:60]!r} does not match the shape of view {parts[0][:40]!r}")
        raise UnknownViewError(f"no view named {parts[0][:40]!r}")

    async def affected(self, ctx: Ctx, changes: Sequence[Change]) -> Affected:
        """Every key ``changes`` affect, across all views: the declared ones with no query, then each view's
        ``affected`` function once for the whole batch. Changes to entities no view depends on affect nothing."""
        out = Affected()
        inputs = out.inputs
        for index, change in enumerate(changes):
            for view in self.views_for(change.entity):
                inputs.setdefault(view.template, []).append(index)
                if view.template in out.everything:
                    continue
                try:
                    declared = dependencies.resolve(view, change)
                except InvalidChangeError as exc:
                    out.invalid[index] = str(exc)
                    continue
                if declared is None:
                    out.everything.add(view.template)
                    continue
                for key, params in declared.items():
                    out.add(ViewKey(view, dict(params), key), [index])
        for view in self.views:
            indexes = [i for i in inputs.get(view.template, []) if i not in out.invalid]
            if not indexes:
                continue
            try:
                found: Iterable[Params] = []
                if view.template in out.everything:
                    found = await view.enumerate(ctx)
                elif view.affected is not None:
                    result = view.affected(ctx, [changes[i] for i in indexes])
                    found = await result if inspect.isawaitable(result) else result
                for params in found:
                    key = view.key(params)
                    out.add(ViewKey(view, dict(params), key), indexes)
            except Exception as exc:
                out.failed[view.template] = (exc, indexes)
        return out

    async def all_keys(self, ctx: Ctx) -> dict[str, ViewKey]:
        out: dict[str, ViewKey] = {}
        for view in self.views:
            for params in await view.enumerate(ctx):
                key = view.key(params)
                out[key] = ViewKey(view, dict(params), key)
        return out


@asynccontextmanager
async def _none_context() -> AsyncIterator[None]:
    yield None
