"""How freshviews' log lines look, and a handler for them where the host application configured none."""

from __future__ import annotations

import logging
import sys

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: The logger every module of the kit logs under (``freshviews.worker.sweep``, ``freshviews.serving.hub``, ...).
ROOT = "freshviews"


def configure(level: str) -> None:
    """Logging for a command of ours: every line with its time, level and logger, on stderr."""
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, stream=sys.stderr)


def ensure_handler() -> None:
    """Give the kit's loggers a handler at INFO if nothing else would print them.

    Under plain ``uvicorn app:app`` the root logger has no handler: the kit's lines would go to Python's last
    resort handler, which prints WARNING and above as bare messages and drops the rest. An application that
    configures logging itself (a root handler, or one on ``freshviews``) is left exactly as it is.
    """
    kit = logging.getLogger(ROOT)
    if logging.getLogger().handlers or kit.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    kit.addHandler(handler)
    if kit.level == logging.NOTSET:
        kit.setLevel(logging.INFO)
