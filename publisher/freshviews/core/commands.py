"""What every freshviews command does at its edge: turn configuration mistakes into one line, stop on signals."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Callable

from freshviews.core.settings import ConfigError


def run_guarded(command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a command; a configuration mistake is one line on stderr and exit status 2, never a traceback."""
    try:
        return command(args)
    except ConfigError as exc:
        print(f"freshviews: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def importable_from_here() -> None:
    """Let ``module:attribute`` names resolve from the working directory, as ``python -m`` and uvicorn's CLI let
    them (a console script's own folder is what Python puts first on its path)."""
    here = os.getcwd()
    if here not in sys.path:
        sys.path.insert(0, here)


def stop_on_signals(stop: Callable[[], None]) -> None:
    """Call ``stop`` on SIGTERM and SIGINT (in the running event loop), instead of dying mid-step."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
