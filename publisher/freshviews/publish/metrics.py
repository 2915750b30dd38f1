"""Prometheus metrics of the write-path hook (process-wide by nature, like every prometheus metric)."""

from prometheus_client import Counter, Histogram

CHANGES_PUBLISHED = Counter("freshviews_changes_published_total", "Changes appended to the change log", ["entity"])
CHANGES_PUBLISH_FAILED = Counter(
    "freshviews_changes_publish_failed_total",
    "Changes that could not be published (the sweep repairs what they would have refreshed)",
    ["entity", "reason"],
)
PUBLISH_SECONDS = Histogram(
    "freshviews_publish_seconds",
    "Time spent publishing changes in the write path",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
)
