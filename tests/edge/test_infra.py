"""infra/ checked against the code, without Docker or systemd: names, ports and commands must agree.

A setting with a misspelt environment name is silently ignored (the settings objects ignore unknown names), a
port that differs between two files is a 502, a wrong command is a crash loop: each is cheap to catch here.
Where a real program can judge a file (redis-server its config, uvicorn the app command), it does.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from pydantic_settings import BaseSettings

from freshviews.core.views import Registry
from freshviews.scoreboard.settings import AppSettings
from freshviews.worker.cli import load_registry
from freshviews.worker.settings import SubscriberSettings
from tests.edge.nginx import INFRA, NGINX_PLACEHOLDERS, NGINX_TEMPLATE, REPO, placeholders
from tests.support.helpers import free_port
from tests.support.stack import Stack

COMPOSE_FILE = INFRA / "docker-compose.yml"
DOCKERFILE = INFRA / "Dockerfile"
SYSTEMD = INFRA / "systemd"
SERVICES = {"redis", "postgres", "app", "subscriber", "nginx"}
#: Read by the processes without being settings fields: uvicorn's worker count and trusted proxies, the
#: interpreter's own.
OTHER_ENV = {"WEB_CONCURRENCY", "FORWARDED_ALLOW_IPS", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"}
#: Values for the variables compose requires from the operator's environment.
OPERATOR_ENV = {"REDIS_PASSWORD": "r3dis", "POSTGRES_PASSWORD": "pg-secret"}


def env_names(settings: type[BaseSettings]) -> set[str]:
    """Every environment variable ``settings`` reads: its aliases, else its prefix + the field name."""
    prefix = str(settings.model_config.get("env_prefix", ""))
    names: set[str] = set()
    for name, info in settings.model_fields.items():
        alias = info.validation_alias
        choices = getattr(alias, "choices", None)
        if choices is not None:
            names.update(str(c).upper() for c in choices if str(c).isupper())
        elif isinstance(alias, str):
            names.add(alias.upper())
        else:
            names.add(f"{prefix}{name}".upper())
    return names


APP_ENV = env_names(AppSettings)
# The subscriber reads its own settings, and AppSettings too: the scoreboard's views open the database from them.
SUBSCRIBER_ENV = env_names(SubscriberSettings) | APP_ENV


_INTERPOLATION = re.compile(r"\$\$|\$\{(?P<name>[A-Z0-9_]+)(?:(?P<op>:\?|:-)(?P<arg>[^}]*))?\}")


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's variable substitution (``${X}``, ``${X:-default}``, ``${X:?error}``, ``$$``)."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name"), match.group("op"), match.group("arg")
        if env.get(name):
            return env[name]
        if op == ":-":
            return arg
        if op == ":?":
            raise ValueError(f"{name} is required: {arg}")
        return ""

    return _INTERPOLATION.sub(substitute, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return loaded


def service_env(compose: dict[str, Any], service: str) -> dict[str, str]:
    """A service's environment as the container sees it (merge keys resolved, variables substituted)."""
    env = compose["services"][service].get("environment", {})
    assert isinstance(env, dict), f"{service}: use the mapping form of environment"
    return {str(k): interpolate(str(v), OPERATOR_ENV) for k, v in env.items()}


def command(compose: dict[str, Any], service: str) -> list[str]:
    raw = compose["services"][service]["command"]
    parts = shlex.split(raw) if isinstance(raw, str) else [str(p) for p in raw]
    return [interpolate(p, OPERATOR_ENV) for p in parts]


def option(args: list[str], name: str) -> str:
    assert name in args, f"{name} missing from {args}"
    return args[args.index(name) + 1]


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, settings: type[BaseSettings]) -> Any:
    """``settings`` as a process with exactly ``env`` (and nothing of this test run's own) would read them."""
    for name in list(os.environ):
        if name.startswith(("APP_", "SUBSCRIBER_", "FRESHVIEWS_")) or name in {"REDIS_URL", "DATABASE_URL"}:
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return settings()


# --- docker-compose.yml -------------------------------------------------------------------------------------


def test_compose_runs_every_part_and_publishes_only_nginx(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == SERVICES
    published = {name for name, service in compose["services"].items() if service.get("ports")}
    assert published == {"nginx"}


def test_compose_env_names_are_ones_the_processes_read(compose: dict[str, Any]) -> None:
    assert set(service_env(compose, "app")) - APP_ENV - OTHER_ENV == set()
    assert set(service_env(compose, "subscriber")) - SUBSCRIBER_ENV - OTHER_ENV == set()


def test_compose_env_values_pass_the_settings_validation(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = settings_from(service_env(compose, "app"), monkeypatch, AppSettings)
    subscriber = settings_from(service_env(compose, "subscriber"), monkeypatch, SubscriberSettings)
    assert app.key_prefix == subscriber.key_prefix
    assert app.redis_url == subscriber.redis_url == f"redis://:{OPERATOR_ENV['REDIS_PASSWORD']}@redis:6379/0"
    assert app.database_url is not None
    assert app.database_url.startswith("postgresql+asyncpg://freshviews:")
    # No process of a deployment may start a Redis of its own.
    assert app.embedded_redis is False
    assert subscriber.embedded_redis is False
    # The Redis and PostgreSQL the URLs name are the services, with the password compose gives them.
    assert "--requirepass" in command(compose, "redis")
    assert option(command(compose, "redis"), "--requirepass") == OPERATOR_ENV["REDIS_PASSWORD"]
    postgres = service_env(compose, "postgres")
    assert f"{postgres['POSTGRES_USER']}:{postgres['POSTGRES_PASSWORD']}@postgres:5432/{postgres['POSTGRES_DB']}" in (
        app.database_url
    )


def test_compose_app_command_serves_app_port(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    args = command(compose, "app")
    app = settings_from(service_env(compose, "app"), monkeypatch, AppSettings)
    # The kit's own server: it makes the listening socket that drops clients that stop reading (serving/listen.py).
    assert args[:5] == ["freshviews", "serve", "freshviews.scoreboard.main:create_app", "--factory", "--no-access-log"]
    assert app.host == "0.0.0.0"
    assert compose["services"]["app"]["expose"] == [str(app.port)]
    assert int(service_env(compose, "app")["WEB_CONCURRENCY"]) >= 2
    assert service_env(compose, "app")["FORWARDED_ALLOW_IPS"] == "*"  # nginx is another container


def test_compose_subscriber_command_loads_the_registry(compose: dict[str, Any]) -> None:
    args = command(compose, "subscriber")
    assert args == ["freshviews", "subscriber", "--views", "freshviews.scoreboard.views:registry"]
    assert isinstance(load_registry(option(args, "--views")), Registry)


def test_compose_nginx_renders_infra_nginx_conf_onto_the_app(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    nginx = compose["services"]["nginx"]
    env = service_env(compose, "nginx")
    app = settings_from(service_env(compose, "app"), monkeypatch, AppSettings)
    # The image renders /etc/nginx/templates/*.template with envsubst: the mounted file must be our template.
    mounts = [m.split(":") for m in nginx["volumes"]]
    assert [
        (INFRA / source).resolve() for source, target, *_ in mounts if target.startswith("/etc/nginx/templates/")
    ] == [NGINX_TEMPLATE]
    assert placeholders(NGINX_TEMPLATE.read_text()) == NGINX_PLACEHOLDERS
    assert set(env) >= NGINX_PLACEHOLDERS
    assert all(re.search(env["NGINX_ENVSUBST_FILTER"], name) for name in NGINX_PLACEHOLDERS)
    assert env["FRESHVIEWS_UPSTREAM"] == f"app:{app.port}"
    # What nginx listens on inside the container is what the published port maps to.
    (mapping,) = nginx["ports"]
    assert interpolate(mapping, OPERATOR_ENV).rsplit(":", 1)[1] == env["FRESHVIEWS_LISTEN"]


def test_compose_redis_runs_infra_redis_conf(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    args = command(compose, "redis")
    mounts = {target: (INFRA / source).resolve() for source, target, *_ in (m.split(":") for m in redis["volumes"])}
    assert mounts[args[1]] == INFRA / "redis.conf"
    assert any(target == "/data" for target in mounts), "the AOF must live on a volume"


# --- Dockerfile ---------------------------------------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_dockerfile_ships_every_package_and_runs_unprivileged(compose: dict[str, Any]) -> None:
    instructions = _dockerfile()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    # Every source root the packages are mapped from (app/, publisher/, subscriber/) is copied into the image.
    roots = {path.split("/")[0] for path in pyproject["tool"]["setuptools"]["package-dir"].values()}
    copied = {args.split()[0] for op, args in instructions if op == "COPY"}
    assert roots <= copied, f"not copied into the image: {roots - copied}"
    (base,) = [args for op, args in instructions if op == "FROM"]
    minimum = tuple(int(p) for p in pyproject["project"]["requires-python"].removeprefix(">=").split("."))
    version = tuple(int(p) for p in re.search(r"python:(\d+)\.(\d+)", base).groups())
    assert version >= minimum
    users = [args for op, args in instructions if op == "USER"]
    assert users
    assert users[-1] not in {"root", "0"}
    env = dict(pair.split("=", 1) for op, args in instructions if op == "ENV" for pair in args.split())
    pip = {"PIP_NO_CACHE_DIR", "PIP_DISABLE_PIP_VERSION_CHECK"}
    assert set(env) - APP_ENV - SUBSCRIBER_ENV - OTHER_ENV - pip == set()
    (expose,) = [args for op, args in instructions if op == "EXPOSE"]
    assert int(expose) == int(env["FRESHVIEWS_PORT"]) == int(service_env(compose, "app")["FRESHVIEWS_PORT"])
    (cmd,) = [args for op, args in instructions if op == "CMD"]
    assert cmd.startswith('["freshviews", "serve", "freshviews.scoreboard.main:create_app", "--factory"')
    ignored = (INFRA / "Dockerfile.dockerignore").read_text().split()
    assert {".git", ".venv", ".data"} <= set(ignored)


# --- systemd ------------------------------------------------------------------------------------------------


def unit(name: str) -> dict[str, dict[str, list[str]]]:
    """A unit file as section -> key -> values (systemd keys such as Environment= repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in (SYSTEMD / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None, f"{name}: {line!r} outside a section"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def unit_env(sections: dict[str, dict[str, list[str]]]) -> dict[str, str]:
    pairs = [shlex.split(value) for value in sections["Service"].get("Environment", [])]
    return dict(item.split("=", 1) for items in pairs for item in items)


def env_file() -> dict[str, str]:
    lines = (SYSTEMD / "freshviews.env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


@pytest.mark.parametrize(
    ("name", "arguments", "known"),
    [
        ("freshviews-app.service", ["serve", "freshviews.scoreboard.main:create_app", "--factory"], APP_ENV),
        (
            "freshviews-subscriber.service",
            ["subscriber", "--views", "freshviews.scoreboard.views:registry"],
            SUBSCRIBER_ENV,
        ),
    ],
)
def test_systemd_units_run_the_documented_commands(name: str, arguments: list[str], known: set[str]) -> None:
    sections = unit(name)
    service = sections["Service"]
    (exec_start,) = service["ExecStart"]
    args = shlex.split(exec_start)
    assert Path(args[0]).name == "freshviews"
    assert args[0].startswith("/"), "systemd needs an absolute path"
    assert args[1 : 1 + len(arguments)] == arguments
    assert set(unit_env(sections)) - known - OTHER_ENV == set()
    assert service["EnvironmentFile"] == ["/etc/freshviews/freshviews.env"]
    assert service["Restart"] == ["on-failure"]
    assert service["User"] == ["freshviews"]
    assert sections["Install"]["WantedBy"] == ["multi-user.target"]
    assert "network-online.target" in sections["Unit"]["After"][0]


def test_systemd_env_file_names_and_values_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    env = env_file()
    assert set(env) - APP_ENV - SUBSCRIBER_ENV == set()
    app_env = {**env, **unit_env(unit("freshviews-app.service"))}
    app = settings_from(app_env, monkeypatch, AppSettings)
    subscriber = settings_from(
        {**env, **unit_env(unit("freshviews-subscriber.service"))}, monkeypatch, SubscriberSettings
    )
    assert app.key_prefix == subscriber.key_prefix
    assert app.redis_url == subscriber.redis_url
    # nginx on the same host proxies to the loopback port the unit gives the app (README.md, "Deploying").
    assert (app.host, app.port) == ("127.0.0.1", 8000)
    assert "FRESHVIEWS_UPSTREAM=127.0.0.1:8000" in (INFRA.parent / "README.md").read_text()


# --- redis.conf, judged by a real redis-server --------------------------------------------------------------


def _redis(port: int, *parts: str) -> bytes:
    request = f"*{len(parts)}\r\n".encode() + b"".join(f"${len(p)}\r\n{p}\r\n".encode() for p in parts)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        return sock.recv(65536)


def test_redis_conf_is_accepted_by_redis_and_never_evicts(redis_server_executable: str, tmp_path: Path) -> None:
    port = free_port()
    # The file as it is, with only what belongs to this machine overridden on the command line.
    server = subprocess.Popen(
        [
            *(redis_server_executable, str(INFRA / "redis.conf"), "--port", str(port), "--bind", "127.0.0.1"),
            *("--dir", str(tmp_path), "--daemonize", "no", "--logfile", str(tmp_path / "redis.log")),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                if _redis(port, "PING").startswith(b"+PONG"):
                    break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                log = (tmp_path / "redis.log").read_text() if (tmp_path / "redis.log").exists() else ""
                pytest.fail(
                    f"redis-server refused infra/redis.conf:\n{server.stdout and server.stdout.read()!r}\n{log}"
                )
            time.sleep(0.05)
        assert b"noeviction" in _redis(port, "CONFIG", "GET", "maxmemory-policy")
        assert _redis(port, "CONFIG", "GET", "appendonly").endswith(b"$3\r\nyes\r\n")
        assert b"everysec" in _redis(port, "CONFIG", "GET", "appendfsync")
        assert _redis(port, "XADD", "fv:{changes}", "*", "change", "x").startswith(b"$")
        # Full: a write is refused, and the change log is still all there.
        assert _redis(port, "CONFIG", "SET", "maxmemory", "1").startswith(b"+OK")
        assert _redis(port, "SET", "fv:filler", "x" * 1000).startswith(b"-OOM")
        assert _redis(port, "XLEN", "fv:{changes}") == b":1\r\n"
        assert any(p.name.startswith("appendonly") for p in tmp_path.iterdir()), "no AOF written"
    finally:
        server.terminate()
        server.wait(10)


# --- the compose app command, run for real ------------------------------------------------------------------


@pytest.mark.slow
def test_the_compose_app_command_runs_the_app_in_several_workers(
    compose: dict[str, Any], edge_stack: Stack, tmp_path: Path
) -> None:
    args = command(compose, "app")
    assert args[0] == "freshviews"
    port = free_port()
    log_path = tmp_path / "uvicorn.log"
    env = edge_stack.env(FRESHVIEWS_HOST="127.0.0.1", FRESHVIEWS_PORT=str(port), WEB_CONCURRENCY="2")
    with log_path.open("wb") as log:
        # The console script of the image, run from this interpreter.
        proc = subprocess.Popen([sys.executable, "-m", *args], env=env, cwd=REPO, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while True:
            log_text = log_path.read_text(errors="replace")
            try:
                healthy = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                healthy = False
            if healthy and log_text.count("Application startup complete") >= 2:
                break
            assert proc.poll() is None, f"uvicorn exited with {proc.returncode}:\n{log_text}"
            assert time.monotonic() < deadline, f"two healthy workers did not come up:\n{log_text}"
            time.sleep(0.1)
        assert len(set(re.findall(r"Started server process \[(\d+)\]", log_text))) == 2
        # Each worker logs the app's own lines, in the app's format (workers do not run the parent's set-up).
        assert log_text.count("INFO freshviews.scoreboard.main: scoreboard backend ready") == 2, log_text
        assert httpx.get(f"http://127.0.0.1:{port}/cache/stats/global", timeout=5).status_code == 200
    finally:
        proc.terminate()
        proc.wait(20)
