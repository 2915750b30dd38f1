"""The scoreboard end to end on a Redis Cluster: ORM writes through the outbox and its relay into the change
log, a subscriber process, the cache read back over HTTP; poison dead-lettered in the change log's slot; and
/healthz reaching every master. The single-Redis tests themselves where they apply, with the cluster's
fixtures."""

from __future__ import annotations

import httpx

from tests.e2e.test_flow import (
    test_a_write_reaches_every_view_it_affects_and_no_other,
    test_poison_is_dead_lettered_and_healthy_changes_keep_flowing,
)
from tests.support.redis_servers import ClusterNodes
from tests.support.stack import Stack

__all__ = [
    "test_a_write_reaches_every_view_it_affects_and_no_other",
    "test_poison_is_dead_lettered_and_healthy_changes_keep_flowing",
]


async def test_healthz_reaches_every_master(stack: Stack, redis_cluster: ClusterNodes) -> None:
    stack.start_app()
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=10) as client:
        health = (await client.get("/healthz")).json()
    assert health["status"] == "ok", health
    assert (health["redis"], health["updates"]) == ("ok", "ok")
    masters = await redis_cluster.masters()
    assert health["details"]["redis_primaries"] == sorted(f"127.0.0.1:{port}" for port in masters)
    assert len(masters) == 3
