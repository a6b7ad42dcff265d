"""The one Redis connection behind `--state redis://...`, shared by limits, the response cache and the
circuit breakers; `memory://` opens nothing."""
from __future__ import annotations

import importlib
import logging
import os
import time
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

log = logging.getLogger("edgerules.gateway")

ENV_REDIS_POOL = "EDGERULES_REDIS_POOL"
DEFAULT_REDIS_POOL = 64
CONNECT_TIMEOUT = 2.0    # seconds: a Redis that is down answers fast; one that is unreachable must too
COMMAND_TIMEOUT = 5.0
QUIET_AFTER_ERROR = 1.0  # seconds during which the cache and breakers skip Redis after it failed
PLAIN = ("redis", "rediss", "redis+unix")
SENTINEL, CLUSTER = "redis+sentinel", "redis+cluster"


def scheme_of(state_uri: str) -> str:
    return state_uri.partition("://")[0].removeprefix("async+").lower()


def is_shared(state_uri: str) -> bool:
    """True when the state URI is shared by every process that uses it (not `memory://`)."""
    return scheme_of(state_uri) != "memory"


FORMS = ("memory://, redis://[:PASSWORD@]HOST:PORT[/DB], rediss://..., redis+unix:///PATH, "
         "redis+sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT]/SERVICE or redis+cluster://[:PASSWORD@]HOST:PORT[,HOST:PORT]")


def check_state_uri(state_uri: str) -> str | None:
    """What is wrong with a state URI, said before the gateway binds its port (the password never
    shown); None when the `limits` library knows its scheme and a Sentinel URI names its service."""
    from limits.storage import SCHEMES

    importlib.import_module("limits.aio.storage")   # registers the async schemes in SCHEMES

    scheme, sep, rest = state_uri.partition("://")
    if not sep or "async+" + scheme.removeprefix("async+").lower() not in SCHEMES:
        return f"unknown state URI '{redacted(state_uri)}': use {FORMS}"
    if scheme_of(state_uri) == SENTINEL and not _nodes(state_uri, 26379)[2]:
        return (f"state URI '{redacted(state_uri)}' needs the service name: "
                f"redis+sentinel://[:PASSWORD@]HOST:PORT/SERVICE")
    return None


@dataclass(eq=False)
class Shared:
    """A Redis client (redis-py, asyncio) and, for a plain URI, the pool the limiter reuses."""

    uri: str
    client: object
    pool: object | None
    cluster: bool = False
    down_until: float = 0.0   # monotonic: skip Redis until then (the cache and breakers only)
    failures: tuple = ()      # what the clients raise when Redis failed (see failure_types)

    def usable(self) -> bool:
        return time.monotonic() >= self.down_until

    def failed(self, what: str, exc: BaseException) -> None:
        """Note a Redis failure: logged once per outage, then quiet for a second."""
        if self.usable():
            log.error("shared state (Redis) failed while %s: %s; serving with local state", what, exc)
        self.down_until = time.monotonic() + QUIET_AFTER_ERROR

    async def prepare(self, limits_storage=None) -> None:
        """Find a Redis Cluster's nodes before the first request. redis-py (8.1) discovers them on
        first use, and a burst of first commands then fails some with a RuntimeError or an
        AttributeError (it closes connections other commands are opening; docs/limits-and-cache.md),
        a 500 from the limiter; one discovery up front avoids it. Both
        clients are prepared: ours, and the `limits` library's own (it cannot share a cluster
        client). An unreachable cluster delays the start by the connect timeouts and is logged."""
        if not self.cluster:
            return
        try:
            await self.client.initialize()
            if limits_storage is not None and not await limits_storage.check():
                raise ConnectionError("no answer to PING")
        except Exception as exc:
            log.warning("shared state (Redis Cluster) not reachable at start: %s; retrying on first use", exc)

    async def close(self) -> None:
        try:
            await self.client.aclose()
        finally:
            if self.pool is not None:
                await self.pool.disconnect()


def failure_types() -> tuple[type[BaseException], ...]:
    """What redis-py raises when Redis failed: its RedisError, a Cluster client's RedisClusterException
    once no node answers (not a RedisError, so the `limits` library does not wrap it), socket errors,
    timeouts."""
    from redis.exceptions import RedisClusterException, RedisError

    return (RedisError, RedisClusterException, OSError, TimeoutError)


def is_failure(exc: BaseException, failures) -> bool:
    """Whether an exception means Redis failed: one of `failures`, or any other error raised inside
    redis-py (its Cluster client using a connection that another command closed: a RuntimeError
    from the transport, an AttributeError on its writer, seen in the first burst after a whole
    Cluster restarted), which is no bug of the gateway's."""
    if isinstance(exc, failures):
        return True
    if not isinstance(exc, Exception):
        return False
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_globals.get("__name__", "").startswith("redis."):
            return True
        tb = tb.tb_next
    return False


def open_shared(state_uri: str) -> Shared | None:
    """The Redis client for a shared state URI; None for `memory://` (or when redis-py is missing:
    then limits fall back to the `limits` library's own client and the cache and breakers stay local)."""
    scheme = scheme_of(state_uri)
    if scheme == "memory":
        return None
    try:
        import redis.asyncio as aredis
    except ImportError:
        log.warning("redis-py is not installed: the cache and circuit breakers stay in this process")
        return None
    plain = state_uri.removeprefix("async+")
    options = {"socket_connect_timeout": CONNECT_TIMEOUT, "socket_timeout": COMMAND_TIMEOUT}
    if scheme in PLAIN:
        size = int(os.environ.get(ENV_REDIS_POOL, DEFAULT_REDIS_POOL))
        url = plain.replace("redis+unix://", "unix://", 1)
        pool = aredis.BlockingConnectionPool.from_url(url, max_connections=size, retry=stale_retry(), **options)
        return Shared(state_uri, aredis.Redis(connection_pool=pool), pool, failures=failure_types())
    if scheme == SENTINEL:
        from redis.asyncio.sentinel import Sentinel

        nodes, password, service = _nodes(plain, 26379)
        if not service:
            raise ValueError(f"state URI '{redacted(state_uri)}' needs the service name: "
                             f"redis+sentinel://[:PASSWORD@]HOST:PORT/SERVICE")
        sentinel = Sentinel(nodes, password=password, retry=fail_fast(),
                            sentinel_kwargs={"password": password, "retry": fail_fast()}, **options)
        return Shared(state_uri, sentinel.master_for(service), None, failures=failure_types())
    if scheme == CLUSTER:
        from redis.asyncio.cluster import ClusterNode, RedisCluster

        nodes, password, _ = _nodes(plain, 6379)
        client = RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in nodes], password=password, **options)
        return Shared(state_uri, client, None, cluster=True, failures=failure_types())
    return None   # another `limits` backend (memcached, mongodb): limits only


def redacted(uri: str) -> str:
    """The URI with its password replaced by '***', for messages."""
    scheme, sep, rest = uri.partition("://")
    netloc, slash, path = rest.partition("/")
    if "@" not in netloc:
        return uri
    auth, _, hosts = netloc.rpartition("@")
    user = auth.partition(":")[0]
    return f"{scheme}{sep}{user}:***@{hosts}{slash}{path}"


def _nodes(uri: str, default_port: int) -> tuple[list[tuple[str, int]], str | None, str]:
    """([(host, port)], password, path) of `scheme://[:password@]h1:p1,h2:p2/path`."""
    rest = uri.partition("://")[2]
    netloc, _, path = rest.partition("/")
    password = None
    if "@" in netloc:
        auth, _, netloc = netloc.rpartition("@")
        password = unquote(auth.partition(":")[2]) or None
    nodes = []
    for part in netloc.split(","):
        host = urlsplit("//" + part)
        nodes.append((host.hostname or "127.0.0.1", host.port or default_port))
    return nodes, password, path.split("?")[0]


def limits_options(shared: Shared | None) -> dict:
    """Options for limits' storage_from_string: redis-py, on the shared pool when there is one.

    limits' default async client (coredis) was seen to report an admitted hit as refused under a few
    hundred concurrent calls, which breaks exact request limits.
    """
    if shared is None:
        return {}
    if shared.pool is not None:
        return {"implementation": "redispy", "connection_pool": shared.pool}
    if scheme_of(shared.uri) == SENTINEL:
        return {"implementation": "redispy", "retry": fail_fast(), "sentinel_kwargs": {"retry": fail_fast()}}
    return {"implementation": "redispy"}


def stale_retry():
    """One immediate retry on a connection error, none on a timeout: after Redis restarted, every
    pooled connection is stale and fails its next command once (redis-py's pools retry nothing by
    default), which made each of them a BYPASS and a quiet second for the cache and breakers."""
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError

    return Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))


def fail_fast():
    """One immediate retry (a pooled connection Redis closed), no backoff. redis-py's default for
    Sentinel clients (3 retries, exponential backoff from 1 s) made every request that met a
    limit or the cache wait 3-5 s for its 503 or BYPASS while the sentinels were unreachable."""
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return Retry(NoBackoff(), 1)
