"""The contract every freshviews process shares: changes on the wire, Redis key names, views and their registry.

Nothing here imports a web framework or a database driver: a module declaring views imports this and its own
compute functions only.
"""

from freshviews.core.connections import create_redis
from freshviews.core.dependencies import PK, On
from freshviews.core.events import Change, ChangeDecodeError, Operation
from freshviews.core.keys import Keys
from freshviews.core.settings import RedisSettings
from freshviews.core.views import (
    MISSING,
    Choice,
    Int,
    InvalidKeyError,
    Missing,
    Params,
    Registry,
    Slug,
    UnknownViewError,
    View,
    ViewKey,
)

__all__ = [
    "MISSING",
    "PK",
    "Change",
    "ChangeDecodeError",
    "Choice",
    "Int",
    "InvalidKeyError",
    "Keys",
    "Missing",
    "On",
    "Operation",
    "Params",
    "RedisSettings",
    "Registry",
    "Slug",
    "UnknownViewError",
    "View",
    "ViewKey",
    "create_redis",
]
