"""PostgreSQL's log as the change source on a Redis Cluster: each transaction's changes in one MULTI of the change
log's slot, and the slot's lag in `check` while the source is down: the single-Redis tests themselves, with the
cluster's fixtures."""

from __future__ import annotations

from tests.pglog.test_source import (
    test_each_write_becomes_the_change_the_capture_writes,
    test_slot_lag_is_visible_in_check_while_the_source_is_down,
)

__all__ = [
    "test_each_write_becomes_the_change_the_capture_writes",
    "test_slot_lag_is_visible_in_check_while_the_source_is_down",
]
