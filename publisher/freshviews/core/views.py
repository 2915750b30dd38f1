"""The view registry: every cached view is declared once, here, and both the subscriber and the read path use it.

A view is a key template with typed parameters (``leaderboard/{region}``), an async ``compute`` that reads
the source of truth, an ``affected`` function mapping a change to the parameters of the keys it touches,
and an ``enumerate`` function listing every live key (for the sweep and the warm-up). Keys are parsed
only against these templates, so nothing a client sends ever becomes a raw Redis key.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from freshviews.core.events import Change

Ctx = TypeVar("Ctx")
Params = Mapping[str, Any]
MAX_KEY_LENGTH = 256


class Missing:
    """Returned by a compute function when the source row is gone: the key is deleted (tombstoned)."""

    _instance: Missing | None = None

    def __new__(cls) -> Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"


MISSING = Missing()


class UnknownViewError(LookupError):
    """No registered view matches the key (HTTP 404)."""


class InvalidKeyError(ValueError):
    """The key names a view but a parameter is invalid (HTTP 422)."""


class Param:
    """A typed key parameter: parses the text of a key segment and formats a value back, canonically."""

    def parse(self, text: str) -> Any:
        raise NotImplementedError

    def format(self, value: Any) -> str:
        text = str(value)
        self.parse(text)  # a value that could not be parsed back would make a key no reader can ask for
        return text


@dataclass(frozen=True)
class Int(Param):
    minimum: int = 0
    maximum: int = 2**53 - 1

    def parse(self, text: str) -> int:
        if not re.fullmatch(r"0|-?[1-9][0-9]{0,15}", text):
            raise InvalidKeyError(f"{text[:40]!r} is not a canonical integer")
        value = int(text)
        if not self.minimum <= value <= self.maximum:
            raise InvalidKeyError(f"{value} is outside [{self.minimum}, {self.maximum}]")
        return value


@dataclass(frozen=True)
class Slug(Param):
    max_length: int = 64

    def parse(self, text: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", text) or len(text) > self.max_length:
            raise InvalidKeyError(f"{text[:40]!r} must be 1-{self.max_length} of A-Z a-z 0-9 _ -")
        return text


@dataclass(frozen=True)
class Choice(Param):
    choices: tuple[str, ...]

    def parse(self, text: str) -> str:
        if text not in self.choices:
            raise InvalidKeyError(f"{text[:40]!r} is not one of {', '.join(self.choices)}")
        return text


_PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
_LITERAL = re.compile(r"[a-z0-9_-]+")

ComputeFn = Callable[..., Awaitable[Any]]
AffectedFn = Callable[[Ctx, Change], Iterable[Params] | Awaitable[Iterable[Params]]]
EnumerateFn = Callable[[Ctx], Awaitable[Iterable[Params]]]


@dataclass(frozen=True)
class View(Generic[Ctx]):
    """One cached view. See the module docstring; ``compute(ctx, **params)`` returns a JSON-able value
    (or a pydantic model) or :data:`MISSING` when its source row no longer exists."""

    template: str
    compute: ComputeFn
    affected: AffectedFn[Ctx]
    enumerate: EnumerateFn[Ctx]
    #: Entities whose changes can affect this view; changes to other entities never reach ``affected``.
    entities: frozenset[str]
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
        if not self.entities:
            raise ValueError(f"view {self.template!r} depends on no entity")

    @property
    def name(self) -> str:
        return self.template.split("/", 1)[0]

    @property
    def segments(self) -> list[str]:
        return self.template.split("/")

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
            for entity in view.entities:
                self._by_entity.setdefault(entity, []).append(view)

    @property
    def entities(self) -> frozenset[str]:
        return frozenset(self._by_entity)

    def views_for(self, entity: str) -> list[View[Ctx]]:
        return self._by_entity.get(entity, [])

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

    async def affected_keys(self, ctx: Ctx, change: Change) -> dict[str, ViewKey]:
        """Every key the change affects, across all views (empty for an entity no view depends on)."""
        out: dict[str, ViewKey] = {}
        for view in self.views_for(change.entity):
            result = view.affected(ctx, change)
            params_list = await result if inspect.isawaitable(result) else result
            for params in params_list:
                key = view.key(params)
                out[key] = ViewKey(view, dict(params), key)
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
