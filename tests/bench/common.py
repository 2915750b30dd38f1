"""Shared pieces of the benchmarks: the product snapshot, statistics, the machine, the database, the conditions.

Processes (Redis, backend, subscriber) are in ``stack.py``. Nothing of the product is imported at module
level here: run.py puts the measured snapshot of the product first on sys.path only after this module is loaded.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.helpers import redis_executable

REPO = Path(__file__).resolve().parents[2]
BENCH_DIR = Path(__file__).resolve().parent
#: The source roots of the ``freshviews`` namespace package (pyproject.toml maps its packages to them).
PRODUCT_ROOTS = ("publisher", "subscriber", "app")
#: Where the product code the benchmarks run comes from (a snapshot, see :func:`snapshot_source`).
SOURCE: list[Path] = [REPO]


def snapshot_source(spec: str, target: Path) -> tuple[Path, dict[str, Any]]:
    """Copy the product packages to ``target`` and return (the copy, what it is).

    Other people edit the working tree while a run takes minutes; every process of a run imports this one
    copy, so what was measured is one version of the code. ``spec``: ``worktree`` (the files as they are now),
    ``HEAD`` or another git revision, or a directory holding the packages (used in place).
    """
    import hashlib

    if spec not in ("worktree",) and Path(spec).is_dir():
        source = Path(spec).resolve()
    else:
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        if spec == "worktree":
            for package in PRODUCT_ROOTS:
                shutil.copytree(REPO / package, target / package, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            archive = subprocess.run(
                ["git", "-C", str(REPO), "archive", spec, *PRODUCT_ROOTS], capture_output=True, check=True
            ).stdout
            subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
        source = target
    digest = hashlib.sha256()
    for path in sorted(p for package in PRODUCT_ROOTS for p in (source / package).rglob("*") if p.is_file()):
        if "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(source)).encode() + b"\0" + path.read_bytes())
    return source, {"spec": spec, "path": str(source), "sha256": digest.hexdigest()[:16]}


def source_path(source: Path) -> list[str]:
    """The ``sys.path`` entries that import the product from ``source`` (a snapshot or the repository)."""
    return [str(source / root) for root in PRODUCT_ROOTS]


# --- statistics -------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) by linear interpolation; None for no values (reported as missing)."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def rounded(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


@dataclass
class Figures:
    """A benchmark's measured figures; one that could not be measured is None with its reason in ``missing``."""

    values: dict[str, Any] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)

    def put(self, name: str, value: Any, reason: str = "not measured") -> None:
        self.values[name] = value
        if value is None:
            self.missing[name] = reason
        else:
            self.missing.pop(name, None)


def goal(name: str, target: str, measured: float | None, met: bool | None, note: str = "") -> dict[str, Any]:
    return {"goal": name, "target": target, "measured": rounded(measured), "met": met, "note": note}


# --- the machine ---------------------------------------------------------------------------------------------


def _first_line(command: Sequence[str]) -> str | None:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else None


def machine_info() -> dict[str, Any]:
    """What a reader needs to judge the figures: CPU, memory, load, versions, the commit measured."""
    cpu = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_gib = round(int(Path("/proc/meminfo").read_text().split()[1]) / 1024**2, 1)
    packages: dict[str, str | None] = {}
    for name in (
        "fastapi", "starlette", "uvicorn", "uvloop", "httptools", "redis", "hiredis", "sqlalchemy", "aiosqlite",
        "pydantic", "sse-starlette", "httpx", "matplotlib",
    ):  # fmt: skip
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = None
    wrk = shutil.which("wrk")
    redis_server = redis_executable()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": mem_gib,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "packages": packages,
        "redis_server": _first_line([redis_server, "--version"]),
        "wrk": _first_line([wrk, "--version"]) if wrk else None,
        "git_commit": _first_line(["git", "-C", str(REPO), "rev-parse", "HEAD"]),
        "git_dirty": bool(_first_line(["git", "-C", str(REPO), "status", "--porcelain"])),
    }


def cpu_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine so far, from /proc/stat, in clock ticks."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


# --- the database ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seed:
    players: int
    teams: int
    scores: int


async def seed_file(path: Path, seed: Seed) -> None:
    """A seeded SQLite file (the app's own schema and seed), checkpointed so that a file copy is complete."""
    from sqlalchemy import text

    from freshviews.scoreboard.db import open_database
    from freshviews.scoreboard.seed import create_schema, seed_database

    for stale in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        stale.unlink(missing_ok=True)
    db = open_database(f"sqlite+aiosqlite:///{path}")
    try:
        await create_schema(db)
        await seed_database(db, players=seed.players, teams=seed.teams, scores=seed.scores)
        async with db.engine.connect() as conn:
            await conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
    finally:
        await db.close()


def copy_database(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target


_SIZE = re.compile(r"^\s*([0-9.]+)\s*(us|ms|s)\s*$")


def seconds_of(text: str) -> float | None:
    """wrk's latency text (``1.23ms``) in seconds."""
    match = _SIZE.match(text)
    if match is None:
        return None
    return float(match.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[match.group(2)]


@dataclass(frozen=True)
class Config:
    """Every condition a benchmark runs under; printed and stored beside its figures."""

    quick: bool
    #: Where results.json, summary.md and the plots go.
    out: Path
    #: Scratch: databases, Redis data, logs, the product snapshot (outside the repository by default).
    work: Path
    seed: Seed
    load_clients: tuple[int, ...]
    load_rate_per_client: float
    load_warmup: float
    load_window: float
    load_pool: int
    write_rate: float
    warmer_interval: float
    fresh_rates: tuple[float, ...]
    fresh_window: float
    fresh_drain: float
    warmer_fresh_rate: float
    warmer_fresh_window: float
    read_seconds: float
    read_rounds: int
    read_connections: int
    write_pairs: int
    sub_changes: int
    sub_keys: int
    sub_repeats: int
    fanout_clients: tuple[int, ...]
    fanout_rounds: int

    @property
    def database_template(self) -> Path:
        """The seeded SQLite file every stack copies (run.py seeds it first)."""
        return self.work / "seed.db"

    def workdir(self, name: str) -> Path:
        path = self.work / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def database(self, name: str) -> Path:
        return copy_database(self.database_template, self.workdir(name) / "scoreboard.db")
