"""The write-path hook a backend imports, and the contracts every part shares (events, Redis keys)."""

from publisher.events import Change, ChangeDecodeError, Operation
from publisher.keys import Keys
from publisher.publish import Publisher, get_publisher

__all__ = ["Change", "ChangeDecodeError", "Keys", "Operation", "Publisher", "get_publisher"]
