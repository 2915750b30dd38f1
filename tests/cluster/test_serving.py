"""The read side on a Redis Cluster: stored bytes with ETag and 304, batch reads, misses refreshed by a real
subscriber, ``min_version``, and Server-Sent Events fed by the update subscription: the single-Redis tests
themselves, with the cluster's fixtures (conftest.py)."""

from __future__ import annotations

import contextlib

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from freshviews.core.keys import Keys
from tests.serving.test_batch import test_values_and_versions_of_every_key_with_the_stored_bytes_embedded
from tests.serving.test_health import test_health_is_ok_while_reads_work
from tests.serving.test_min_version import (
    test_a_recompute_that_left_the_value_unchanged_satisfies_it,
    test_the_read_waits_for_a_write_that_lands_later,
)
from tests.serving.test_miss import (
    test_a_miss_is_computed_by_the_subscriber_once_and_returned,
    test_a_miss_on_a_row_that_does_not_exist_ends_as_404,
)
from tests.serving.test_poll import (
    test_a_deleted_view_is_404,
    test_a_matching_if_none_match_is_a_304_from_one_small_read,
    test_a_stale_etag_gets_the_new_value,
    test_stored_bytes_are_returned_unchanged_with_etag_and_cache_control,
)
from tests.serving.test_stream import (
    running,
    stream,
    test_current_values_first_then_every_update_in_the_exact_contract,
    test_last_event_id_skips_values_the_client_has,
)
from tests.support.redis_servers import ClusterNodes
from tests.support.serving import put

__all__ = [
    "test_a_deleted_view_is_404",
    "test_a_matching_if_none_match_is_a_304_from_one_small_read",
    "test_a_miss_is_computed_by_the_subscriber_once_and_returned",
    "test_a_miss_on_a_row_that_does_not_exist_ends_as_404",
    "test_a_recompute_that_left_the_value_unchanged_satisfies_it",
    "test_a_stale_etag_gets_the_new_value",
    "test_current_values_first_then_every_update_in_the_exact_contract",
    "test_health_is_ok_while_reads_work",
    "test_last_event_id_skips_values_the_client_has",
    "test_stored_bytes_are_returned_unchanged_with_etag_and_cache_control",
    "test_the_read_waits_for_a_write_that_lands_later",
    "test_values_and_versions_of_every_key_with_the_stored_bytes_embedded",
]


async def _subscriptions(nodes: ClusterNodes, channel: str) -> int:
    """Subscribers of ``channel`` on every node: a cluster node counts only its own clients' subscriptions."""
    total = 0
    for port in nodes.alive():
        client = Redis(port=port)
        try:
            [(_, count)] = await client.pubsub_numsub(channel)
            total += int(count)
        finally:
            await client.aclose()
    return total


async def test_one_redis_subscription_serves_every_stream(
    redis_url: str, redis: RedisCluster, keys: Keys, redis_cluster: ClusterNodes
) -> None:
    await put(redis, keys, "item/1", {"n": 0})
    async with running(redis_url) as (base_url, serving), contextlib.AsyncExitStack() as streams:
        readers = [(await streams.enter_async_context(stream(base_url, "item/1")))[1] for _ in range(50)]
        for sse in readers:
            await sse.next()
        assert serving.hub.mailboxes == 50
        assert await _subscriptions(redis_cluster, keys.updates_channel) == 1
        # The write lands on the key's master, its notification reaches the node the process subscribed on.
        version = await put(redis, keys, "item/1", {"n": 1})
        assert {(await sse.next()).id for sse in readers} == {str(version)}
