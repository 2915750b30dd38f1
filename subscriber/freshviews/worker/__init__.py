"""The subscriber: the standalone process that consumes changes, recomputes the views they affect, writes them
to Redis and sweeps. Run it with ``freshviews subscriber --views module:registry`` (or ``python -m
freshviews.worker``); embed it with :class:`Subscriber`."""

from freshviews.worker.service import Subscriber
from freshviews.worker.settings import SubscriberSettings

__all__ = ["Subscriber", "SubscriberSettings"]
