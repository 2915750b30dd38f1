"""Prometheus metrics of the subscriber process."""

from prometheus_client import Counter, Gauge, Histogram

CHANGES_CONSUMED = Counter("freshviews_changes_consumed_total", "Changes read from the change log", ["entity"])
CHANGES_IGNORED = Counter(
    "freshviews_changes_ignored_total", "Changes to entities no view depends on, acknowledged unapplied", ["entity"]
)
RECOMPUTES = Counter("freshviews_recomputes_total", "View recomputes", ["view", "trigger"])
RECOMPUTES_DEFERRED = Counter(
    "freshviews_recomputes_deferred_total",
    "Change-driven recomputes put off to the end of their view's minimum interval",
    ["view"],
)
RECOMPUTE_FAILURES = Counter("freshviews_recompute_failures_total", "Recomputes that raised", ["view"])
# Buckets from 0.5 ms: a view's compute time is what its freshness is judged against (commit -> readable p99
# within compute + 5 ms), and most views take milliseconds.
RECOMPUTE_SECONDS = Histogram(
    "freshviews_recompute_seconds",
    "Time to compute one view",
    ["view"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CHANGES_PER_RECOMPUTE = Histogram(
    "freshviews_changes_per_recompute",
    "Changes coalesced into one recompute of a key (above 1 means a burst cost one recompute)",
    buckets=(1, 2, 5, 10, 50, 100, 500, 1000),
)
WRITES = Counter("freshviews_cache_writes_total", "Outcomes of fenced cache writes", ["view", "outcome"])
FENCE_REJECTIONS = Counter(
    "freshviews_fence_rejections_total", "Writes refused because a newer recompute had already landed", ["view"]
)
SWEEP_REPAIRS = Counter("freshviews_sweep_repairs_total", "Keys a sweep found wrong and rewrote", ["view"])
SWEEPS = Counter("freshviews_sweeps_total", "Completed sweeps", ["reason"])
SWEEP_LOCKS_LOST = Counter(
    "freshviews_sweep_locks_lost_total", "Sweeps stopped because their lease expired or was taken before it was renewed"
)
SWEEP_SECONDS = Histogram("freshviews_sweep_seconds", "Duration of a sweep", buckets=(0.1, 0.5, 1, 5, 10, 30, 60, 300))
DEAD_LETTERS = Counter("freshviews_dead_letters_total", "Changes moved to the dead-letter stream", ["reason"])
LOG_GAPS = Counter("freshviews_log_gaps_total", "Times the change log was found trimmed past unread changes")
RECLAIM_ROUNDS = Counter(
    "freshviews_reclaim_rounds_total", "Rounds of the reclaim loop (idle changes reclaimed, gauges set, gaps checked)"
)
RECLAIMED = Counter("freshviews_changes_reclaimed_total", "Pending changes reclaimed from idle consumers")
STREAM_LAG = Gauge("freshviews_stream_lag", "Changes in the log not yet delivered to this consumer group")
PENDING = Gauge("freshviews_stream_pending", "Changes delivered but not yet acknowledged")
COMMIT_TO_CACHE = Histogram(
    "freshviews_commit_to_cache_seconds",
    "Time from a change's commit to the write of the views it affects",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
REDIS_ERRORS = Counter("freshviews_subscriber_redis_errors_total", "Redis errors survived by a loop", ["loop"])
SAMPLES = Counter(
    "freshviews_sampler_samples_total",
    "Keys the consistency sampler recomputed and compared with the cache, by result "
    "(fresh, explained: a change was on its way, unexplained: a missed dependency or a lost change, failed)",
    ["view", "result"],
)
STALE_AGE = Histogram(
    "freshviews_sampler_stale_age_seconds",
    "How old the cached value of an unexplained mismatch was (now minus the time it was written)",
    ["view"],
    buckets=(0.1, 1, 5, 30, 60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400),
)
NINES = Gauge(
    "freshviews_sampler_nines",
    "The share of recent samples (the last 10,000 of the view) that were fresh, as nines: -log10(1 - share)",
    ["view"],
)
