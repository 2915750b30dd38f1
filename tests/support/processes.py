"""Child processes of the tests and benchmarks: started with their output in a log file, stopped with SIGTERM and
then SIGKILL, waited on over HTTP (their metrics are read with tests/support/metrics.py).

Nothing of the product is imported here: the benchmarks load this module before they put the measured snapshot
of the product on ``sys.path``, and point their children's ``PYTHONPATH`` at that snapshot through ``env``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.helpers import wait_for

REPO = Path(__file__).resolve().parents[2]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def python(*args: str) -> list[str]:
    """A command line running this interpreter: ``python(*BACKEND)``."""
    return [sys.executable, *args]


@dataclass
class Process:
    """A child process with its output appended to ``log_path`` (so a restart keeps the first life's lines).

    ``args`` is the whole command line; ``cwd`` defaults to the repository root (the benchmarks run theirs in
    their scratch folder, so that the product can only come from the snapshot on ``PYTHONPATH``).
    """

    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    cwd: Path = REPO
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(self.args, env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT)
        return self

    @property
    def pid(self) -> int:
        if self.popen is None:
            raise RuntimeError(f"{self.name} was not started")
        return self.popen.pid

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def signal(self, sig: int) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(sig)

    def kill(self) -> None:
        """kill -9: no chance to acknowledge or clean up."""
        self.signal(signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait(10)

    def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout`` s; the exit status (None if it never started)."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode

    def cpu(self) -> float | None:
        """User + system CPU seconds of the live process, from /proc (None once it is gone)."""
        return cpu_seconds(self.pid) if self.running else None

    def log(self, chars: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a live process, from /proc (None once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def answers(url: str) -> bool:
    """Whether ``url`` answers below 500 (a server that is up and not failing)."""
    try:
        return httpx.get(url, timeout=1).status_code < 500
    except httpx.HTTPError:
        return False


def wait_http(url: str, proc: Process, timeout: float = 60) -> None:
    """Wait until ``url`` answers below 500; fail at once, with its log, if ``proc`` exits meanwhile."""

    def up() -> bool:
        if not proc.running:
            raise AssertionError(f"{proc.name} exited ({proc.returncode}):\n{proc.log()}")
        return answers(url)

    wait_for(up, timeout, message=lambda: f"{url} did not answer within {timeout}s:\n{proc.log()}")
