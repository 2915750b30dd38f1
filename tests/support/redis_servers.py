"""Redis for the tests: the session redis-server on a free port, a clean Redis per test, and Redis Cluster nodes.

Tests never touch 127.0.0.1:6379: every server they use is started here (or by the test) on a free port and
stopped at the end. The fixtures are a pytest plugin (``pytest_plugins`` in tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from freshviews.core.clients import RedisClient
from freshviews.core.embedded import EmbeddedRedis, ping
from freshviews.core.settings import CLUSTER_SCHEMES
from tests.support.helpers import free_port, redis_executable, wait_until

#: Hash slots of a Redis Cluster.
SLOTS = 16384
#: How long a new cluster may take to agree on its slots and replicas by gossip (set-up, not the product).
GOSSIP = 20.0


@pytest.fixture(scope="session")
def redis_server_executable() -> str:
    """Path of the redis-server binary the suite runs."""
    return redis_executable()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory, redis_server_executable: str) -> Iterator[EmbeddedRedis]:
    """One redis-server for the whole session, on a free port; tests may kill() and restart() it."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), executable=redis_server_executable)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def command(port: int, *parts: bytes) -> bytes:
    """Send one command over a plain socket and return the first reply line, without an event loop."""
    request = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%b\r\n" % (len(part), part) for part in parts)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        reply = b""
        while b"\r\n" not in reply:
            chunk = sock.recv(256)
            if not chunk:
                break
            reply += chunk
    return reply


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    """URL of the session Redis, emptied before each test."""
    if not ping(redis_server.port):
        # An earlier fault test killed it and did not bring it back; one broken test should not fail the rest.
        redis_server.restart(wipe=True)
    reply = command(redis_server.port, b"FLUSHALL")
    assert reply.startswith(b"+OK"), f"FLUSHALL failed: {reply!r}"
    return redis_server.url


def client_for(url: str) -> RedisClient:
    """A plain asyncio client (redis-py's defaults) for ``url``: a cluster client for ``redis+cluster://``."""
    if url.startswith(CLUSTER_SCHEMES):
        return RedisCluster.from_url(url.replace("+cluster", "", 1))
    return Redis.from_url(url)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    """An asyncio client for the clean session Redis."""
    client = Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


async def command_calls(redis: Redis, name: str) -> int:
    """How many times Redis has run command ``name`` since it started (INFO commandstats): a count a test can
    wait on to know that another process did something, e.g. ran one more round of a loop."""
    stats = await redis.info("commandstats")
    entry = stats.get(f"cmdstat_{name.lower()}")
    return int(entry["calls"]) if isinstance(entry, dict) else 0


# --- Redis Cluster ---------------------------------------------------------------------------------------------


def cluster_port() -> int:
    """A free port whose cluster bus port (itself + 10000, fixed in Redis 6) is free and valid too."""
    while True:
        port = free_port()
        if port + 10_000 < 65_536:
            with socket.socket() as bus:
                try:
                    bus.bind(("127.0.0.1", port + 10_000))
                except OSError:
                    continue
            return port


class ClusterNodes:
    """``count`` cluster-enabled redis-servers on free ports, each knowing only itself until joined.

    :meth:`form` makes them one healthy cluster (masters sharing the slots, each with its replicas); a test that
    needs an odd shape (a node owning no slot) joins them itself.
    """

    def __init__(self, executable: str, directory: Path, count: int, *, node_timeout_ms: int = 3000) -> None:
        if count < 1:
            raise ValueError("a cluster needs at least one node")
        self.executable = executable
        self.directory = directory
        self.node_timeout_ms = node_timeout_ms
        self.ports = [cluster_port() for _ in range(count)]
        self._servers: list[subprocess.Popen[bytes]] = []

    def urls(self) -> list[str]:
        return [f"redis://127.0.0.1:{port}/0" for port in self.ports]

    def cluster_url(self) -> str:
        """The product's URL for the whole cluster (any node of it: the client finds the rest)."""
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def kill(self, port: int) -> None:
        """SIGKILL the node on ``port`` (by its pid) and reap it."""
        server = self._servers[self.ports.index(port)]
        server.send_signal(signal.SIGKILL)
        server.wait(10)

    def alive(self) -> list[int]:
        return [port for port, server in zip(self.ports, self._servers, strict=True) if server.poll() is None]

    async def masters(self) -> list[int]:
        """Ports of the live nodes that say they are masters owning slots."""
        found = []
        for port in self.alive():
            client = Redis(port=port)
            try:
                info = await client.execute_command("INFO", "replication")
                slots = int((await client.execute_command("CLUSTER INFO"))["cluster_slots_assigned"])
            finally:
                await client.aclose()
            if info.get("role") == "master" and slots:
                found.append(port)
        return found

    async def flush(self) -> None:
        """Empty every master (replicas follow): a clean cluster for the next test."""
        for port in await self.masters():
            client = Redis(port=port)
            try:
                await client.flushall()
            except RedisError:
                pass  # a node that holds no slot any more (a failed-over master come back) refuses nothing here
            finally:
                await client.aclose()

    def start(self) -> ClusterNodes:
        self.directory.mkdir(parents=True, exist_ok=True)
        options = ["--bind", "127.0.0.1", "--dir", str(self.directory), "--save", "", "--appendonly", "no"]
        # A node timeout of 3 s rather than 15 by default: gossip reaches every node sooner (each is pinged at least
        # every timeout / 2), and a node on a loaded machine still answers well within it (no failover by accident).
        options += ["--cluster-enabled", "yes", "--cluster-node-timeout", str(self.node_timeout_ms)]
        for port in self.ports:
            config = ["--cluster-config-file", f"nodes-{port}.conf"]
            self._servers.append(
                subprocess.Popen(
                    [self.executable, "--port", str(port), *options, *config],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        return self

    def stop(self) -> None:
        for server in self._servers:
            if server.poll() is None:
                server.terminate()
        for server in self._servers:
            server.wait(10)
        self._servers.clear()

    async def wait_up(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109 (a set-up deadline)
        async def up() -> bool:
            return all(ping(port) for port in self.ports)

        await wait_until(up, timeout, message=f"the cluster nodes on {self.ports} did not start")

    async def form(self, *, replicas: int = 0, timeout: float = GOSSIP) -> None:  # noqa: ASYNC109
        """One cluster of every node: ``count // (replicas + 1)`` masters share the slots evenly, each followed
        by ``replicas`` replicas; returns once every node reports ``cluster_state:ok`` with that shape."""
        masters = len(self.ports) // (replicas + 1)
        if masters < 1 or masters * (replicas + 1) != len(self.ports):
            raise ValueError(f"{len(self.ports)} nodes cannot be masters with {replicas} replicas each")
        await self.wait_up()
        clients = [Redis(port=port) for port in self.ports]
        try:
            for index, client in enumerate(clients[:masters]):
                first, last = index * SLOTS // masters, (index + 1) * SLOTS // masters
                await client.execute_command("CLUSTER ADDSLOTS", *range(first, last))
            for port in self.ports[1:]:
                await clients[0].execute_command("CLUSTER MEET", "127.0.0.1", port)
            ids = [(await client.execute_command("CLUSTER MYID")).decode() for client in clients]

            async def everyone_met() -> bool:
                views = [await client.execute_command("CLUSTER NODES") for client in clients]
                return all(_joined(view) == len(self.ports) for view in views)

            await wait_until(everyone_met, timeout, interval=0.1, message="the cluster nodes never all met")
            for index, client in enumerate(clients[masters:]):
                await client.execute_command("CLUSTER REPLICATE", ids[index % masters])

            async def healthy() -> bool:
                try:
                    infos = [await client.execute_command("CLUSTER INFO") for client in clients]
                    views = [await client.execute_command("CLUSTER NODES") for client in clients]
                except RedisError:
                    return False
                shaped = all(_replicas(view) == len(self.ports) - masters for view in views)
                return shaped and all(
                    info.get("cluster_state") == "ok" and info.get("cluster_size") == str(masters) for info in infos
                )

            await wait_until(healthy, timeout, interval=0.1, message="the cluster never reported cluster_state:ok")
        finally:
            for client in clients:
                await client.aclose()


def _joined(view: dict[str, dict[str, Any]]) -> int:
    """Nodes a node knows by address (``CLUSTER NODES`` as redis-py parses it), past the handshake."""
    return sum(1 for node in view.values() if "handshake" not in node["flags"] and "noaddr" not in node["flags"])


def _replicas(view: dict[str, dict[str, Any]]) -> int:
    return sum(1 for node in view.values() if "slave" in node["flags"])


#: ``start_cluster_nodes(count, node_timeout_ms=3000)`` (fixture): that many cluster nodes, not yet joined,
#: stopped after the test.
StartClusterNodes = Callable[..., ClusterNodes]
#: The node timeout of the clusters the product's tests run on: a dead master is failed over within a few
#: seconds of it (detected after the timeout, then an election), and a busy machine still answers within it.
NODE_TIMEOUT_MS = 1000


@pytest.fixture(scope="session")
def redis_cluster(redis_server_executable: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterNodes]:
    """One Redis Cluster for the session: 3 masters and 3 replicas on free ports, node timeout 1 s; its nodes are
    stopped by pid at the end. Tests that kill nodes start a cluster of their own (:func:`start_cluster_nodes`)."""
    directory = tmp_path_factory.mktemp("cluster")
    nodes = ClusterNodes(redis_server_executable, directory, 6, node_timeout_ms=NODE_TIMEOUT_MS)
    nodes.start()
    try:
        # Its own event loop: the session's fixture outlives every test's loop.
        asyncio.run(nodes.form(replicas=1))
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture
def start_cluster_nodes(redis_server_executable: str, tmp_path: Path) -> Iterator[StartClusterNodes]:
    """``start_cluster_nodes(count)``: ``count`` Redis Cluster nodes on free ports, not yet joined (call
    :meth:`ClusterNodes.form` for a healthy cluster, e.g. ``start_cluster_nodes(6)`` then ``form(replicas=1)``
    for 3 masters and 3 replicas); every node is stopped at the end of the test."""
    started: list[ClusterNodes] = []

    def start(count: int, *, node_timeout_ms: int = 3000) -> ClusterNodes:
        directory = tmp_path / f"cluster-{len(started)}"
        nodes = ClusterNodes(redis_server_executable, directory, count, node_timeout_ms=node_timeout_ms)
        started.append(nodes)
        return nodes.start()

    try:
        yield start
    finally:
        for nodes in started:
            nodes.stop()
