"""Prometheus metrics of the PostgreSQL log source."""

from prometheus_client import Counter, Gauge, Histogram

TRANSACTIONS = Counter("freshviews_pglog_transactions_total", "Transactions read from the slot and appended to the log")
CHANGES = Counter("freshviews_pglog_changes_total", "Changes read from the slot and appended to the change log")
DEAD_LETTERS = Counter("freshviews_pglog_dead_letters_total", "Row changes the log source could not turn into changes")
ERRORS = Counter("freshviews_pglog_errors_total", "Failures the log source survived", ["kind"])
LAG_BYTES = Gauge("freshviews_pglog_lag_bytes", "WAL the slot holds that the source has not confirmed, bytes")
LAG_SECONDS = Gauge(
    "freshviews_pglog_lag_seconds", "Age of the oldest transaction received and not yet in the change log"
)
COMMIT_TO_LOG = Histogram(
    "freshviews_pglog_commit_to_log_seconds",
    "Time from a transaction's commit to its changes being in the change log",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
