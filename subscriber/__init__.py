"""The standalone subscriber: consumes changes, recomputes the affected views, writes them to Redis, sweeps."""

from subscriber.registry import (
    MISSING,
    Choice,
    Int,
    InvalidKeyError,
    Missing,
    Registry,
    Slug,
    UnknownViewError,
    View,
    ViewKey,
)

__all__ = [
    "MISSING",
    "Choice",
    "Int",
    "InvalidKeyError",
    "Missing",
    "Registry",
    "Slug",
    "UnknownViewError",
    "View",
    "ViewKey",
]
