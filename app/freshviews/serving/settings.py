"""The read side's settings: limits and timeouts of the cache routes and the event stream."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from freshviews.core.settings import RedisSettings


class ServingSettings(RedisSettings):
    """Limits and timeouts of the read routes and the event stream (environment prefix ``FRESHVIEWS_``), with the
    Redis settings every process shares."""

    model_config = SettingsConfigDict(env_prefix="FRESHVIEWS_", extra="ignore", populate_by_name=True)

    #: The address ``freshviews serve`` listens on.
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)

    #: Deadlines of ``freshviews serve`` on reading a request (serving/protocol.py), seconds: its head (from the
    #: connection, or the request's first byte) and its body (from the head's end); 408 and closed past them.
    request_head_timeout: float = Field(default=5.0, gt=0, le=300)
    request_body_timeout: float = Field(default=10.0, gt=0, le=3600)
    #: A request head (request line and headers) over this many bytes is refused with 431.
    request_head_max_bytes: int = Field(default=16_384, ge=1024, le=1_048_576)
    #: The longest one read waits on Redis before answering 503 (a dead or frozen Redis must not hang readers).
    cache_redis_timeout: float = Field(default=0.5, gt=0, le=30)
    #: Redis calls the read routes make at once in this process; more wait (within cache_redis_timeout) rather
    #: than fail. Must stay below the client's connection pool size (redis-py's default is 100), which also
    #: serves the update subscription and the app's other Redis work.
    cache_redis_concurrency: int = Field(default=64, ge=1)
    #: Retry-After of every 503, seconds.
    cache_retry_after: int = Field(default=1, ge=0, le=3600)
    #: Values this process keeps in memory, kept current by the update subscription (0 = always read Redis).
    cache_memory_keys: int = Field(default=10_000, ge=0)
    #: Keys accepted by one ``GET /cache?key=...&key=...`` (400 beyond).
    cache_batch_max_keys: int = Field(default=100, ge=1, le=10_000)
    #: How long a read of a valid key that is not cached waits for the subscriber to compute it, seconds.
    cache_miss_wait: float = Field(default=0.5, ge=0, le=30)
    #: Distinct keys being refreshed at once in this process; further misses get 503 without asking.
    cache_miss_max_pending: int = Field(default=1000, ge=1)
    #: Approximate length of the refresh request stream (requests are hints: old ones may be trimmed).
    cache_refresh_maxlen: int = Field(default=10_000, ge=10)
    #: How long ``?min_version=`` waits for the cache to reach that version, seconds.
    cache_min_version_wait: float = Field(default=2.0, ge=0, le=60)
    #: Keys one SSE stream may watch (400 beyond).
    sse_max_keys: int = Field(default=50, ge=1, le=10_000)
    #: SSE streams open at once in this process (503 beyond).
    sse_max_streams: int = Field(default=1000, ge=1)
    #: SSE streams one client address may hold at once (429 beyond); 0 = no per-client cap.
    sse_max_streams_per_client: int = Field(default=0, ge=0)
    #: Seconds between heartbeat comments on an idle stream (keeps proxies from closing it); 0 = none.
    sse_ping: float = Field(default=15.0, ge=0)
    #: A client that does not take an event (or ping) within this many seconds is disconnected. A send waits
    #: only once the buffers towards the client are full: see socket_send_buffer. Also the kernel's timeout
    #: (TCP_USER_TIMEOUT) for a connection that acknowledges nothing or keeps its window shut (listen.py).
    sse_send_timeout: float = Field(default=10.0, gt=0)
    #: On reconnect, a key whose version is older than Last-Event-ID by more than this many seconds is not
    #: sent again (see freshviews/serving/stream.py for why a margin is needed); 0 trusts Last-Event-ID exactly.
    sse_resume_grace: float = Field(default=60.0, ge=0)
    #: The longest wait between attempts to resubscribe to update notifications, seconds.
    sse_reconnect_max: float = Field(default=5.0, gt=0)
    #: SO_SNDBUF of the connections the app accepts, bytes (0 = the kernel's, autotuned up to megabytes): how
    #: much can be queued to a client that stopped reading before a send to it stalls (listen.py). Applies where
    #: the server is started through :func:`freshviews.serving.listen.serve`, as ``freshviews serve`` does.
    socket_send_buffer: int = Field(default=65_536, ge=0)
