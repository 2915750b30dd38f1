"""The embedded redis-server: start, reuse, stop, crash and restart, against the binary the suite runs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from freshviews.core.embedded import EmbeddedRedis, find_redis_server, ping
from tests.support.helpers import free_port


@pytest.fixture
def server(tmp_path: Path, redis_server_executable: str) -> Iterator[EmbeddedRedis]:
    """A private server per test, so kill() and restart() here never disturb the session one."""
    embedded = EmbeddedRedis(tmp_path / "redis", executable=redis_server_executable)
    try:
        yield embedded
    finally:
        embedded.stop()


def _client(embedded: EmbeddedRedis) -> SyncRedis:
    return SyncRedis.from_url(embedded.url, socket_timeout=5)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_find_redis_server_returns_an_executable() -> None:
    path = find_redis_server()
    assert os.path.isfile(path)
    assert os.access(path, os.X_OK)
    version = subprocess.run([path, "--version"], capture_output=True, text=True, check=True, timeout=10)
    assert version.stdout.startswith("Redis server v=")


def test_start_answers_on_a_local_url(server: EmbeddedRedis) -> None:
    url = server.start()
    assert server.owned
    assert url == server.url == f"redis://127.0.0.1:{server.port}/0"
    assert server.port != 6379
    assert ping(server.port)
    assert (server.data_dir / "redis.port").read_text().strip() == str(server.port)
    assert (server.data_dir / "redis.pid").read_text().strip() == str(server.pid)
    with _client(server) as client:
        assert client.set("k", "v")
        assert client.get("k") == b"v"
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}


def test_given_port_is_used(tmp_path: Path, redis_server_executable: str) -> None:
    port = free_port()
    with EmbeddedRedis(tmp_path, port=port, executable=redis_server_executable) as embedded:
        assert embedded.port == port
        assert ping(port)


def test_second_instance_on_the_same_dir_reuses_the_server(server: EmbeddedRedis, redis_server_executable: str) -> None:
    server.start()
    other = EmbeddedRedis(server.data_dir, executable=redis_server_executable)
    assert other.start() == server.url
    assert not other.owned
    assert other.pid == server.pid
    with pytest.raises(RuntimeError, match="another process"):
        other.restart(wipe=True)

    other.stop()

    assert ping(server.port), "stopping a reusing instance must leave the owner's server running"
    assert (server.data_dir / "redis.pid").exists()


def test_stop_shuts_down_cleanly_and_is_idempotent(server: EmbeddedRedis) -> None:
    server.start()
    pid = server.pid
    assert pid is not None

    server.stop()
    assert not ping(server.port)
    assert not _process_exists(pid)
    assert not (server.data_dir / "redis.pid").exists()
    assert not (server.data_dir / "redis.port").exists()
    assert "ready to exit" in (server.data_dir / "redis.log").read_text()
    server.stop()


def test_restart_with_wipe_comes_back_empty_on_the_same_port(server: EmbeddedRedis) -> None:
    server.start()
    port = server.port
    with _client(server) as client:
        client.set("k", "v")

    server.restart(wipe=True)

    assert server.port == port
    assert server.owned
    with _client(server) as client:
        assert client.dbsize() == 0


def test_kill_then_restart_keeps_appendonly_data(server: EmbeddedRedis) -> None:
    server.start()
    port, pid = server.port, server.pid
    assert pid is not None
    with _client(server) as client:
        # everysec could lose the last second on SIGKILL; "always" makes the write durable before OK.
        client.config_set("appendfsync", "always")
        client.set("survives", "yes")

    server.kill()
    assert not ping(port)
    assert not _process_exists(pid)

    server.restart()

    assert server.port == port
    assert server.pid != pid
    with _client(server) as client:
        assert client.get("survives") == b"yes"


def test_stale_pid_files_are_replaced_by_a_new_server(server: EmbeddedRedis) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (server.data_dir / "redis.pid").write_text(f"{dead.pid}\n")
    (server.data_dir / "redis.port").write_text("1\n")

    server.start()

    assert server.owned
    assert server.pid != dead.pid
    assert ping(server.port)


def test_start_failure_reports_the_log_tail(tmp_path: Path, redis_server_executable: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        embedded = EmbeddedRedis(tmp_path, port=port, executable=redis_server_executable)
        with pytest.raises(RuntimeError, match=r"(?s)exited.*Address already in use"):
            embedded.start()
    assert not embedded.owned
    assert not (tmp_path / "redis.pid").exists()


@pytest.mark.parametrize("run", [1, 2])
async def test_redis_fixture_starts_each_test_empty(redis: Redis, run: int) -> None:
    assert await redis.dbsize() == 0
    await redis.set("left-behind", run)
