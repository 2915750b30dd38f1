"""The subscriber on a Redis Cluster: tickets, fenced writes and their notifications, the consumer (its batch
settled in one MULTI of the change log's slot, dead letters included), the sweep's SCAN of every primary, and
readers' refresh requests: the single-Redis tests themselves, with the cluster's fixtures (conftest.py)."""

from __future__ import annotations

from tests.worker.test_consumer import (
    test_a_burst_drained_in_one_batch_costs_one_recompute_per_key,
    test_bad_entries_are_dead_lettered_with_reasons_and_do_not_stop_the_others,
    test_changes_of_a_dead_consumer_are_reclaimed_after_the_idle_time,
    test_failing_compute_is_retried_then_dead_lettered_and_acked,
)
from tests.worker.test_refresh import test_requested_keys_are_recomputed_once_each_and_acknowledged
from tests.worker.test_service import test_run_applies_changes_sweeps_on_a_timer_beats_and_stops
from tests.worker.test_store import (
    test_a_ticket_is_never_below_one_issued_before_whatever_the_clock_says,
    test_a_write_notifies_version_and_key,
    test_cached_view_keys_and_is_empty,
    test_tickets_come_from_the_redis_clock_and_pass_the_fence,
    test_tombstone_deletes_data_and_cannot_be_resurrected_by_an_older_ticket,
    test_two_subscribers_finishing_out_of_order_keep_the_newer_value,
    test_write_stores_data_version_digest_and_fence,
)
from tests.worker.test_sweep import (
    test_start_warms_an_empty_cache,
    test_sweep_repairs_exactly_what_differs_and_deletes_what_is_gone,
)

__all__ = [
    "test_a_burst_drained_in_one_batch_costs_one_recompute_per_key",
    "test_a_ticket_is_never_below_one_issued_before_whatever_the_clock_says",
    "test_a_write_notifies_version_and_key",
    "test_bad_entries_are_dead_lettered_with_reasons_and_do_not_stop_the_others",
    "test_cached_view_keys_and_is_empty",
    "test_changes_of_a_dead_consumer_are_reclaimed_after_the_idle_time",
    "test_failing_compute_is_retried_then_dead_lettered_and_acked",
    "test_requested_keys_are_recomputed_once_each_and_acknowledged",
    "test_run_applies_changes_sweeps_on_a_timer_beats_and_stops",
    "test_start_warms_an_empty_cache",
    "test_sweep_repairs_exactly_what_differs_and_deletes_what_is_gone",
    "test_tickets_come_from_the_redis_clock_and_pass_the_fence",
    "test_tombstone_deletes_data_and_cannot_be_resurrected_by_an_older_ticket",
    "test_two_subscribers_finishing_out_of_order_keep_the_newer_value",
    "test_write_stores_data_version_digest_and_fence",
]
