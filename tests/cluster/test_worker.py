"""The subscriber on a Redis Cluster: tickets, fenced writes and their notifications, the consumer (its batch
settled in one MULTI of the change log's slot, dead letters included), the group reader, the sweep's SCAN of
every primary and its lease, gap detection, the consistency sampler, and readers' refresh requests: the
single-Redis tests themselves, with the cluster's fixtures (conftest.py)."""

from __future__ import annotations

from tests.worker.test_consumer import (
    test_a_burst_drained_in_one_batch_costs_one_recompute_per_key,
    test_bad_entries_are_dead_lettered_with_reasons_and_do_not_stop_the_others,
    test_changes_of_a_dead_consumer_are_reclaimed_after_the_idle_time,
    test_failing_compute_is_retried_then_dead_lettered_and_acked,
)
from tests.worker.test_gap import test_a_trimmed_log_is_detected_and_swept, test_an_untrimmed_log_is_no_gap
from tests.worker.test_groups import (
    reader,
    test_a_backlog_is_coalesced_into_one_batch_up_to_the_limit,
    test_a_lost_group_is_recreated_and_reported,
    test_a_stream_deleted_under_a_blocked_read_is_recreated,
)
from tests.worker.test_refresh import test_requested_keys_are_recomputed_once_each_and_acknowledged
from tests.worker.test_sampler import (
    test_a_failing_compute_is_skipped_and_counted_and_the_loop_samples_on,
    test_a_hole_in_a_declaration_is_found_within_two_passes_and_named,
    test_half_the_picks_walk_every_key_and_the_other_half_go_to_busy_views,
)
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
    test_only_one_subscriber_sweeps_at_a_time,
    test_start_warms_an_empty_cache,
    test_sweep_repairs_exactly_what_differs_and_deletes_what_is_gone,
)
from tests.worker.test_sweep_lock import (
    test_a_holder_takes_its_own_lease_back_and_others_wait_for_it_to_expire,
    test_a_sweep_that_lost_its_lease_stops_and_is_counted,
    test_renewal_extends_only_the_holders_lease,
    test_the_lease_is_renewed_while_a_sweep_runs_and_released_after,
)

__all__ = [
    "reader",
    "test_a_backlog_is_coalesced_into_one_batch_up_to_the_limit",
    "test_a_burst_drained_in_one_batch_costs_one_recompute_per_key",
    "test_a_failing_compute_is_skipped_and_counted_and_the_loop_samples_on",
    "test_a_holder_takes_its_own_lease_back_and_others_wait_for_it_to_expire",
    "test_a_hole_in_a_declaration_is_found_within_two_passes_and_named",
    "test_a_lost_group_is_recreated_and_reported",
    "test_a_stream_deleted_under_a_blocked_read_is_recreated",
    "test_a_sweep_that_lost_its_lease_stops_and_is_counted",
    "test_a_ticket_is_never_below_one_issued_before_whatever_the_clock_says",
    "test_a_trimmed_log_is_detected_and_swept",
    "test_a_write_notifies_version_and_key",
    "test_an_untrimmed_log_is_no_gap",
    "test_bad_entries_are_dead_lettered_with_reasons_and_do_not_stop_the_others",
    "test_cached_view_keys_and_is_empty",
    "test_changes_of_a_dead_consumer_are_reclaimed_after_the_idle_time",
    "test_failing_compute_is_retried_then_dead_lettered_and_acked",
    "test_half_the_picks_walk_every_key_and_the_other_half_go_to_busy_views",
    "test_only_one_subscriber_sweeps_at_a_time",
    "test_renewal_extends_only_the_holders_lease",
    "test_requested_keys_are_recomputed_once_each_and_acknowledged",
    "test_run_applies_changes_sweeps_on_a_timer_beats_and_stops",
    "test_start_warms_an_empty_cache",
    "test_sweep_repairs_exactly_what_differs_and_deletes_what_is_gone",
    "test_the_lease_is_renewed_while_a_sweep_runs_and_released_after",
    "test_tickets_come_from_the_redis_clock_and_pass_the_fence",
    "test_tombstone_deletes_data_and_cannot_be_resurrected_by_an_older_ticket",
    "test_two_subscribers_finishing_out_of_order_keep_the_newer_value",
    "test_write_stores_data_version_digest_and_fence",
]
