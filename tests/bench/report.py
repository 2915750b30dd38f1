"""Turning results.json into a markdown summary, a goals table for the terminal, and PNG plots (if matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _fmt(value: Any) -> str:
    if value is None:
        return "missing"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def goals_text(results: dict[str, Any]) -> str:
    lines = ["goals:"]
    for name, entry in results["benchmarks"].items():
        for g in entry.get("goals", []):
            verdict = {True: "met", False: "NOT met", None: "not measured"}[g["met"]]
            note = f"  ({g['note']})" if g.get("note") else ""
            lines.append(f"  [{name}] {g['goal']}: {_fmt(g['measured'])} (target {g['target']}): {verdict}{note}")
    return "\n".join(lines)


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    out = [
        f"# freshviews benchmark results ({results['mode']} run)",
        "",
        f"- started {results['started_at']}, finished {results.get('finished_at')}, {results.get('seconds')} s",
        f"- machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, load at start {m['load_average_at_start']}",
        f"- Python {m['python']}, {m['redis_server']}, wrk: {m['wrk'] or 'not installed'}",
        f"- measured code: {results['source']['spec']} (sha256 {results['source']['sha256']}), "
        f"git {m['git_commit']}{' + uncommitted changes' if m['git_dirty'] else ''}",
        f"- command: `{results['command']}`",
        "",
    ]
    for name, entry in results["benchmarks"].items():
        out.append(f"## {name}: {entry['status']}" + (f" ({entry['reason']})" if entry.get("reason") else ""))
        out.append("")
        if entry.get("figures_recomputed"):
            out.append(f"Figures and goals recomputed from the stored windows on {entry['figures_recomputed']}.")
            out.append("")
        if entry.get("run"):
            run = entry["run"]
            out.append(
                f"Rerun on its own: {run['started_at']} ({run['source']['spec']}, sha256 {run['source']['sha256']})"
            )
            out.append("")
        if entry.get("machine"):
            mm = entry["machine"]
            out.append(
                f"Machine meanwhile: CPU busy {mm['cpu_busy_share']:.0%} (all processes), load average "
                f"{mm['load_average_before'][0]} -> {mm['load_average_after'][0]}; {entry.get('seconds')} s"
            )
            out.append("")
        if entry.get("conditions"):
            out.append("Conditions: " + "; ".join(f"{k}: {v}" for k, v in entry["conditions"].items()))
            out.append("")
        if entry.get("figures"):
            out += ["| figure | value |", "|---|---|"]
            for key, value in entry["figures"].items():
                reason = entry.get("missing", {}).get(key)
                out.append(f"| {key} | {_fmt(value)}{f' ({reason})' if reason else ''} |")
            out.append("")
        if entry.get("goals"):
            out += ["| goal | target | measured | met | note |", "|---|---|---|---|---|"]
            for g in entry["goals"]:
                met = {True: "yes", False: "**no**", None: "n/a"}[g["met"]]
                out.append(f"| {g['goal']} | {g['target']} | {_fmt(g['measured'])} | {met} | {g.get('note', '')} |")
            out.append("")
    return "\n".join(out) + "\n"


def _derived_lines(ax: Any, load: dict[str, Any]) -> None:
    """Dashed: the naive backend's demand had it kept up, and change-driven plus its default sweep, amortised."""
    from tests.bench.load import DEFAULT_SWEEP_INTERVAL, naive_demand

    systems = load["systems"]
    ns = [w["clients"] for w in systems["naive"]["windows"]]
    rate = load["conditions"]["requests_per_s_per_client"]
    demand = [naive_demand(systems["naive"], systems["change"], n, rate) for n in ns]
    if all(d is not None for d in demand):
        ax.plot(ns, demand, linestyle="--", color="C0", label="naive, had it kept up (derived)")
    change = systems["change"]
    if change.get("full_sweep_queries") is not None and change.get("warmup_sweep_s") is not None:
        sweep = change["full_sweep_queries"] * 60 / (DEFAULT_SWEEP_INTERVAL + change["warmup_sweep_s"])
        xs = [w["clients"] for w in change["windows"]]
        ys = [w["queries_per_min"] + sweep for w in change["windows"]]
        ax.plot(
            xs, ys, linestyle="--", color="C2", label=f"change-driven + {DEFAULT_SWEEP_INTERVAL:g} s sweep (amortised)"
        )


def plots(results: dict[str, Any], out: Path) -> list[Path]:
    """The plots; none (and no error) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made: list[Path] = []
    benchmarks = results["benchmarks"]
    label = {
        "naive": "naive (/api on every poll)",
        "warmer": "timed warmer (sweep only)",
        "change": "change-driven",
        "throttled": "change-driven, stats at most 1/s",
    }
    load = benchmarks.get("load", {})
    if load.get("status") == "ok":
        for key, ylabel, name in (
            ("queries_per_min", "database queries per minute (backend + subscriber)", "load_queries.png"),
            ("p99", "read latency p99 (ms)", "load_read_p99.png"),
        ):
            fig, ax = plt.subplots(figsize=(6.4, 4.2))
            for system, data in load["systems"].items():
                windows = data["windows"]
                xs = [w["clients"] for w in windows]
                ys = [w[key] if key != "p99" else w["reads"]["latency_p99_ms"] for w in windows]
                ax.plot(xs, ys, marker="o", label=label.get(system, system))
            if key == "queries_per_min":
                _derived_lines(ax, load)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("polling clients (1.2 requests/s each)")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{results['mode']} run, {load['conditions']['write_rate_per_s']:g} writes/s")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
            fig.tight_layout()
            fig.savefig(out / name, dpi=110)
            plt.close(fig)
            made.append(out / name)
    fresh = benchmarks.get("freshness", {})
    if fresh.get("status") == "ok":
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for system, by_rate in fresh["results"].items():
            if not isinstance(by_rate, dict):
                continue
            for rate, r in by_rate.items():
                samples = sorted(r["staleness_samples_ms"])
                if samples:
                    ys = [(i + 1) / len(samples) for i in range(len(samples))]
                    name = label.get(system, system)
                    ax.step([max(s, 0.1) for s in samples], ys, where="post", label=f"{name}, {rate} writes/s")
        ax.set_xscale("log")
        ax.set_xlabel("commit -> readable in the cache (ms)")
        ax.set_ylabel("fraction of writes")
        ax.set_title("freshness (CDF)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "freshness_cdf.png", dpi=110)
        plt.close(fig)
        made.append(out / "freshness_cdf.png")
    ttl = benchmarks.get("ttl", {})
    if ttl.get("status") == "ok":
        # Each system at each N: what it costs the database against how stale a polled page is.
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for system, data in ttl["results"].items():
            for w in data["windows"]:
                x, y = w["probe"]["staleness_p50_ms"], w.get("queries_per_min_with_sweep", w["queries_per_min"])
                if x is None:
                    continue
                marker = "o" if data["ttl_s"] is None else "s"
                ax.scatter([max(x, 0.1)], [max(y, 1.0)], marker=marker, label=f"{system}, N={w['clients']}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("median staleness of a polled page after a write (ms)")
        ax.set_ylabel("database queries per minute")
        ax.set_title("freshviews against TTL caches")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "ttl_tradeoff.png", dpi=110)
        plt.close(fig)
        made.append(out / "ttl_tradeoff.png")
    fan = benchmarks.get("fanout", {})
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    if fan.get("status") == "ok" and fan.get("results"):
        ks = [r["clients"] for r in fan["results"]]
        for key, name in (("commit_to_client_p50_ms", "p50"), ("commit_to_client_p99_ms", "p99")):
            ax.plot(ks, [r[key] for r in fan["results"]], marker="o", label=f"commit -> client, {name}")
        ax.set_xscale("log")
        ax.set_xlabel("SSE clients on one key (K)")
        ax.set_ylabel("latency (ms)")
        ax.legend()
        ax.grid(True, which="both", alpha=0.3)
    else:
        reason = fan.get("reason", "not run")
        ax.text(0.5, 0.5, f"fan-out not measured:\n{reason}", ha="center", va="center", wrap=True)
        ax.set_axis_off()
    ax.set_title("push fan-out latency vs K")
    fig.tight_layout()
    fig.savefig(out / "fanout_latency.png", dpi=110)
    plt.close(fig)
    made.append(out / "fanout_latency.png")
    return made
