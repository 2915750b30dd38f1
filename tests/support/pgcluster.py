"""A PostgreSQL cluster of the test session's own, with ``wal_level=logical`` (a pytest plugin: tests/pglog).

The log source needs logical decoding, which the machine's server may not have on; rather than reconfigure it,
the session runs ``initdb`` and ``pg_ctl`` (Debian's ``postgresql`` package; ``.ci/run`` installs it) in a temp
directory on a free port, and each test gets a fresh database on it, dropped afterwards with its slots. initdb
refuses to run as root: as root the cluster belongs to the ``postgres`` user.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.helpers import free_port


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


@dataclass(frozen=True)
class Cluster:
    port: int
    directory: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def psql(self, database: str, sql: str, *, timeout: float = 120) -> str:
        """Run ``sql`` with psql (no application involved), ON_ERROR_STOP; its output."""
        done = subprocess.run(
            ["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", self.url(database)],
            input=sql,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode:
            raise AssertionError(f"psql failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout


def _as_postgres(args: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


class NoServer(RuntimeError):
    """The PostgreSQL server binaries are not installed."""


@contextmanager
def own_cluster() -> Iterator[Cluster]:
    """A cluster with logical decoding in a temp directory on a free port, stopped and removed on exit."""
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    if initdb is None or pg_ctl is None or shutil.which("psql") is None:
        raise NoServer(
            "PostgreSQL server binaries (initdb, pg_ctl, psql) are not installed: apt-get install postgresql"
        )
    # Not under pytest's temp root: that is private to its owner, and the server runs as postgres when we are root.
    directory = Path(tempfile.mkdtemp(prefix="freshviews-pg-"))
    data = directory / "data"
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres")
    try:
        subprocess.run(
            _as_postgres([initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"]),
            check=True,
            capture_output=True,
            timeout=120,
        )
        port = free_port()
        options = (
            f"-p {port} -c listen_addresses=127.0.0.1 -k {directory} -c wal_level=logical "
            "-c max_replication_slots=20 -c max_wal_senders=20 -c fsync=off "
            "-c full_page_writes=off"
        )
        subprocess.run(
            _as_postgres([pg_ctl, "-D", str(data), "-o", options, "-l", str(directory / "server.log"), "-w", "start"]),
            check=True,
            capture_output=True,
            timeout=120,
        )
        try:
            yield Cluster(port, directory)
        finally:
            subprocess.run(
                _as_postgres([pg_ctl, "-D", str(data), "-m", "immediate", "stop"]), capture_output=True, timeout=60
            )
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    try:
        with own_cluster() as cluster:
            yield cluster
    except NoServer as exc:
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail(f"{exc} (REQUIRE_POSTGRES=1)")
        pytest.skip(str(exc))


@dataclass(frozen=True)
class Database:
    cluster: Cluster
    name: str
    #: A slot and publication name of this test's own (slots are cluster-wide).
    slot: str

    @property
    def url(self) -> str:
        return self.cluster.url(self.name)

    def psql(self, sql: str, *, timeout: float = 120) -> str:
        return self.cluster.psql(self.name, sql, timeout=timeout)


@pytest.fixture
def pg_database(pg_cluster: Cluster) -> Iterator[Database]:
    """A fresh database on the session's cluster, dropped after the test with the slots made on it."""
    name = f"fv_{secrets.token_hex(5)}"  # interpolated into SQL: built here from hex digits only
    pg_cluster.psql("postgres", f"CREATE DATABASE {name}")
    try:
        yield Database(pg_cluster, name, slot=name)
    finally:
        pg_cluster.psql(
            "postgres",
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
            f"WHERE database = '{name}' AND active_pid IS NOT NULL;"
            f"SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = '{name}';"
            f"DROP DATABASE {name} WITH (FORCE);",
        )
