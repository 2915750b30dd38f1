"""Run the freshviews benchmarks: ``python tests/bench/run.py [--quick] [--only NAME ...] [--out DIR]``.

Every figure is a count or a ratio measured in this run against a baseline measured in the same run on the
same machine; the conditions are printed and stored beside it. ``--quick`` is a smoke run (under a minute,
small database, short windows): it proves the harness works, its figures are not the results. Results go to
``DIR/results.json`` (and ``DIR/summary.md``, plus PNG plots when matplotlib is installed: the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parents[1]
# Run as a script, Python puts this folder first on sys.path: the benchmark modules are imported from the
# repository root instead, as the package tests.bench (so that none of their names shadows another module). The
# product packages come from the snapshot chosen by --source, put first on sys.path before any of them is imported.
if sys.path and Path(sys.path[0] or ".").resolve() == BENCH_DIR:
    sys.path[0] = str(REPO)
elif str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.bench import common  # noqa: E402
from tests.bench.common import Config, Seed, machine_info  # noqa: E402

#: name -> module with ``async def run(config) -> dict``, imported once the product source is on sys.path.
BENCHMARKS = {
    "load": "tests.bench.load",
    "freshness": "tests.bench.freshness",
    "read": "tests.bench.read",
    "write": "tests.bench.write",
    "subscriber": "tests.bench.subscriber",
    "fanout": "tests.bench.fanout",
    "sampler": "tests.bench.sampler",
    "pglog": "tests.bench.pglog",
    "ttl": "tests.bench.ttl",
}


def make_config(quick: bool, out: Path, work: Path) -> Config:
    if quick:
        return Config(
            quick=True, out=out, work=work, seed=Seed(players=300, teams=20, scores=6000),
            load_clients=(5, 20), load_rate_per_client=1.2, load_warmup=0.2, load_window=0.6, load_pool=200,
            write_rate=5.0, warmer_interval=2.0, fresh_rates=(10.0, 100.0), fresh_window=0.6, fresh_drain=1.5,
            warmer_fresh_rate=10.0, warmer_fresh_window=0.6, read_seconds=1.0, read_rounds=1, read_connections=16,
            write_pairs=100, sub_changes=20_000, sub_keys=1000, sub_repeats=1, fanout_clients=(100,),
            fanout_rounds=2,
        )  # fmt: skip
    return Config(
        quick=False, out=out, work=work, seed=Seed(players=5000, teams=200, scores=120_000),
        load_clients=(10, 100, 1000), load_rate_per_client=1.2, load_warmup=3.0, load_window=30.0, load_pool=200,
        write_rate=5.0, warmer_interval=10.0, fresh_rates=(10.0, 100.0, 1000.0), fresh_window=15.0, fresh_drain=15.0,
        warmer_fresh_rate=10.0, warmer_fresh_window=40.0, read_seconds=5.0, read_rounds=3, read_connections=32,
        write_pairs=1000, sub_changes=200_000, sub_keys=1000, sub_repeats=3, fanout_clients=(100, 1000),
        fanout_rounds=10,
    )  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python tests/bench/run.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small database, short windows (< 1 min)")
    parser.add_argument("--only", action="append", choices=list(BENCHMARKS), help="run only this one (repeatable)")
    parser.add_argument("--out", type=Path, help="output directory (default tests/bench/results/<quick|full>)")
    parser.add_argument(
        "--work",
        type=Path,
        help="scratch directory (databases, Redis data, logs, the product snapshot); default: a new temporary "
        "directory, removed after a run where nothing failed",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="with --only: replace those benchmarks' entries in an existing DIR/results.json (the rest are kept; "
        "each entry records the run it came from)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: rewrite summary.md and the plots from DIR/results.json",
    )
    parser.add_argument(
        "--source",
        default="worktree",
        help="product code to measure: 'worktree' (a copy of app/, publisher/, subscriber/ taken at start; the "
        "default), a git revision such as HEAD, or a directory holding those packages",
    )
    return parser.parse_args(argv)


async def main_async(config: Config, source: dict[str, Any], modules: dict[str, Any]) -> dict[str, Any]:
    """Run the benchmarks in turn and return the results document."""
    started = time.monotonic()
    results: dict[str, Any] = {
        "schema": 1,
        "mode": "quick" if config.quick else "full",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(),
        "source": source,
        "benchmarks": {},
    }
    print(f"freshviews benchmarks ({results['mode']}), results in {config.out}", flush=True)
    print(f"  machine: {results['machine']['cpu']}, {results['machine']['cores']} cores", flush=True)
    await common.seed_file(config.database_template, config.seed)
    for name in modules:
        print(f"[{name}]", flush=True)
        begun = time.monotonic()
        busy0, total0 = common.cpu_jiffies()
        load_before = [round(x, 2) for x in os.getloadavg()]
        try:
            entry = await modules[name].run(config)
            entry.setdefault("status", "ok")
        except Exception as exc:
            # One benchmark failing must not lose the others' figures: it is recorded as failed, with why.
            traceback.print_exc()
            entry = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"[:2000]}
        entry["seconds"] = round(time.monotonic() - begun, 1)
        busy1, total1 = common.cpu_jiffies()
        # How busy the whole machine was (this benchmark's processes and anything else running): noise shows here.
        entry["machine"] = {
            "cpu_busy_share": round((busy1 - busy0) / max(total1 - total0, 1), 3),
            "load_average_before": load_before,
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        }
        results["benchmarks"][name] = entry
        if entry["status"] == "failed":
            print(f"  {name}: failed: {entry['reason']}", flush=True)
    results["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    results["seconds"] = round(time.monotonic() - started, 1)
    return results


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    out: Path = (args.out or BENCH_DIR / "results" / ("quick" if args.quick else "full")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        return report_only(args, out)
    previous: dict[str, Any] | None = None
    if args.merge:
        if not args.only:
            raise SystemExit("--merge needs --only NAME")
        previous = json.loads((out / "results.json").read_text())
        if previous["mode"] != ("quick" if args.quick else "full"):
            raise SystemExit(f"--merge: {out / 'results.json'} is a {previous['mode']} run")
    temporary = args.work is None
    work = Path(tempfile.mkdtemp(prefix="freshviews-bench-")) if temporary else args.work.resolve()
    marker = work / ".freshviews-bench"
    if not temporary and work.exists() and any(work.iterdir()) and not marker.exists():
        raise SystemExit(f"--work {work} is not empty and not a benchmark scratch directory: choose another")
    # Each run starts from nothing: a Redis data dir left by an earlier run would come back with its cache.
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    marker.touch()
    config = make_config(args.quick, out, work)
    source_dir, source = common.snapshot_source(args.source, work / "source")
    common.SOURCE[0] = source_dir
    sys.path[:0] = common.source_path(source_dir)
    modules = {name: importlib.import_module(module) for name, module in BENCHMARKS.items()}
    imported_from = Path(importlib.import_module("freshviews.core").__file__ or "").resolve()
    if not imported_from.is_relative_to(source_dir):
        raise RuntimeError(f"the product was imported from {imported_from}, not from the snapshot {source_dir}")
    if args.only:
        modules = {name: modules[name] for name in args.only}
    print(f"scratch in {work}", flush=True)
    try:
        import uvloop
    except ImportError:
        results = asyncio.run(main_async(config, source, modules))
    else:
        # The generator's own cost matters (it shares the cores with the servers it measures): uvloop cuts it.
        results = uvloop.run(main_async(config, source, modules))
    if previous is not None:
        for name, entry in results["benchmarks"].items():
            entry["run"] = {k: results[k] for k in ("started_at", "finished_at", "command", "source")}
            previous["benchmarks"][name] = entry
        results = previous
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    status = write_report(out, results)
    if temporary and status == 0:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"scratch (logs, databases) kept in {work}", flush=True)
    return status


def report_only(args: argparse.Namespace, out: Path) -> int:
    """Recompute the load figures from the stored windows, then rewrite summary.md and the plots."""
    results = json.loads((out / "results.json").read_text())
    # The report imports tests.bench.load, which imports the product: the run's own snapshot if it is still there.
    kept = Path(results.get("source", {}).get("path", ""))
    with tempfile.TemporaryDirectory(prefix="freshviews-bench-") as scratch:
        if not (kept / "app").is_dir():
            kept = common.snapshot_source(args.source, Path(scratch) / "source")[0]
        sys.path.insert(0, str(kept))
        return _recompute_and_report(results, out)


def _recompute_and_report(results: dict[str, Any], out: Path) -> int:
    load = results["benchmarks"].get("load", {})
    if load.get("status") == "ok":
        # Figures and goals are functions of the stored windows: recomputed with this version of the code.
        config = make_config(results["mode"] == "quick", out, out)
        summary = importlib.import_module("tests.bench.load").summarize(load["systems"], config)
        load.update(figures=summary["figures"], missing=summary["missing"], goals=summary["goals"])
        load["figures_recomputed"] = datetime.now(UTC).isoformat(timespec="seconds")
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return write_report(out, results)


def write_report(out: Path, results: dict[str, Any]) -> int:
    """summary.md, the goals on the terminal and the plots, from a results document."""
    report = importlib.import_module("tests.bench.report")
    (out / "summary.md").write_text(report.markdown(results))
    plots = report.plots(results, out)
    print(report.goals_text(results), flush=True)
    print(f"wrote {out / 'results.json'}, {out / 'summary.md'}" + (f", {len(plots)} plots" if plots else ""))
    if not plots:
        print("  (no plots: matplotlib is not installed; pip install -e '.[bench]')")
    print(f"total {results['seconds']} s", flush=True)
    failed = [n for n, e in results["benchmarks"].items() if e["status"] == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
