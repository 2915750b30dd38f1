"""Typed key parameters, and what a compute returns for a row that is gone.

A key's text is parsed by its view's parameters and formatted back by them, canonically: ``player/7`` is the
only spelling of that key (not ``player/07``, ``player/+7`` or ``player/7.0``), so no two keys name one value
and nothing a client sends becomes a Redis key unchecked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


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
