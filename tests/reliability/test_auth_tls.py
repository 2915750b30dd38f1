"""The whole stack against a Redis that requires an ACL user with only what the product needs, and over TLS;
wrong credentials and plaintext-to-TLS fail at start-up with a clear error instead of retrying forever."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Generator, Iterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from tests.support.helpers import free_port
from tests.support.stack import Stack, live_keys, stale_keys

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
USER, PASSWORD = "freshviews", "s3cret-for-tests"
# What the product needs, and nothing else: its own key and channel namespace, no admin or dangerous commands
# (INFO is read-only and used by operators' tooling; TIME gives the fence its clock).
ACL_RULES = ["on", f">{PASSWORD}", "~fv:*", "resetchannels", "&fv:*", "-@all"]
ACL_RULES += ["+@read", "+@write", "+@stream", "+@pubsub", "+@connection", "+@scripting", "+@keyspace", "+@fast"]
ACL_RULES += ["+@transaction"]
ACL_RULES += ["-@dangerous", "+time", "+info"]


def _answers(port: int) -> bool:
    """True once something accepts connections on the port (any reply will do: auth and TLS come later)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


class ServerExited(Exception):
    pass


def _server(tmp: Path, executable: str, port: int, *args: str) -> Generator[int]:
    """Run ``executable`` with ``args`` until the generator closes; yields ``port`` once it accepts connections."""
    proc = subprocess.Popen(
        [executable, "--bind", "127.0.0.1", "--dir", str(tmp), "--save", "", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not _answers(port):
            if proc.poll() is not None:
                raise ServerExited(f"{executable} exited with {proc.returncode}")
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def acl_redis(tmp_path: Path, redis_server_executable: str) -> Iterator[int]:
    """A Redis whose default user is off; the product's user has ACL_RULES; ``admin`` may read the ACL log."""
    port = free_port()
    admin = ["--user", "admin", "on", ">admin", "~*", "allchannels", "+@all"]
    users = ["--user", "default", "off", "--user", USER, *ACL_RULES, *admin]
    yield from _server(tmp_path, redis_server_executable, port, "--port", str(port), *users)


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A TLS-only Redis with a self-signed certificate made here; yields (port, CA file)."""
    executable, openssl = shutil.which("redis-server", path="/usr/bin:/usr/local/bin"), shutil.which("openssl")
    if executable is None or openssl is None:
        pytest.skip("needs a system redis-server built with TLS, and openssl (Debian: redis-server, openssl)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    request = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1"]
    subject = ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
    subprocess.run([openssl, *request, *subject], check=True, capture_output=True)
    port = free_port()
    tls = ["--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert), "--tls-key-file", str(key)]
    tls += ["--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"]
    server = _server(tmp_path, executable, port, *tls)
    try:
        listen = next(server)
    except ServerExited as exc:
        pytest.skip(f"{exc}: built without TLS?")
    yield listen, cert
    server.close()


async def _flows(stack: Stack) -> None:
    """Start the subscriber and the backend; a write reaches the cache; every key equals the naive answer."""
    stack.seed()
    stack.start_subscriber()
    stack.start_app()
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=10) as client:
        keys = await live_keys(stack.database_url or "")
        deadline = time.monotonic() + 30
        while await stale_keys(client, keys):
            assert time.monotonic() < deadline, f"the cache never warmed\n{stack.logs()}"
            await asyncio.sleep(0.1)
        assert (await client.patch("/api/teams/2", json={"name": "Through ACL/TLS"})).status_code == 200
        deadline = time.monotonic() + 5
        while stale := await stale_keys(client, ["team/2"]):
            assert time.monotonic() < deadline, f"{stale}\n{stack.logs()}"
            await asyncio.sleep(0.02)
    assert all(proc.running for proc in stack.subscribers)


def _subscriber_exits(redis_url: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "freshviews",
            "subscriber",
            "--burst",
            "--views",
            "freshviews.scoreboard.views:registry",
        ],
        env={"REDIS_URL": redis_url, "FRESHVIEWS_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert time.monotonic() - started < 20, "start-up hung instead of failing"
    return done


async def test_the_stack_runs_with_a_least_privilege_acl_user(tmp_path: Path, acl_redis: int) -> None:
    url = f"redis://{USER}:{PASSWORD}@127.0.0.1:{acl_redis}/0"
    stack = Stack(tmp_path, url, f"sqlite+aiosqlite:///{tmp_path / 'scoreboard.db'}")
    try:
        await _flows(stack)
        # Nothing was refused on the way: a denied command or key would be in the ACL log.
        admin = Redis.from_url(f"redis://admin:admin@127.0.0.1:{acl_redis}/0")
        try:
            denied = await admin.acl_log()
            assert denied == [], denied[0]["client-info"]["cmd"]
        finally:
            await admin.aclose()
    finally:
        stack.stop()
        print(stack.logs())


def test_a_wrong_password_fails_start_up_with_the_reason(tmp_path: Path, acl_redis: int) -> None:
    done = _subscriber_exits(f"redis://{USER}:not-the-password-42@127.0.0.1:{acl_redis}/0", tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "refused our credentials" in done.stderr
    assert "not-the-password-42" not in done.stderr  # never log a secret


async def test_the_stack_runs_over_tls(tmp_path: Path, tls_redis: tuple[int, Path]) -> None:
    port, ca = tls_redis
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}"
    stack = Stack(tmp_path, url, f"sqlite+aiosqlite:///{tmp_path / 'scoreboard.db'}")
    try:
        await _flows(stack)
    finally:
        stack.stop()
        print(stack.logs())


def test_plaintext_to_a_tls_port_fails_start_up_with_a_hint(tmp_path: Path, tls_redis: tuple[int, Path]) -> None:
    port, _ = tls_redis
    done = _subscriber_exits(f"redis://127.0.0.1:{port}/0", tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "rediss://" in done.stderr


def test_an_untrusted_certificate_fails_start_up_with_a_hint(tmp_path: Path, tls_redis: tuple[int, Path]) -> None:
    port, _ = tls_redis
    done = _subscriber_exits(f"rediss://127.0.0.1:{port}/0", tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "ssl_ca_certs" in done.stderr
