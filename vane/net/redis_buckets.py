"""``ratelimit`` buckets in Redis, shared by several vaned hosts.

One Lua script takes a token atomically on the Redis server, on the server's clock (hosts
need not agree on the time); a bucket's key expires once it would be full again, so Redis
holds only the keys that are limiting right now. When Redis cannot answer within the
timeout, the bucket is taken from ``fallback`` (the daemon's own table) instead: the request
goes on, the outage is logged once and counted, and Redis is tried again after a backoff (so
requests do not each wait for a dead server).
"""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis

log = logging.getLogger("vane.ratelimit")

TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local b = redis.call('HMGET', KEYS[1], 't', 'v')
local tokens = burst
if b[1] then
  tokens = math.min(burst, tonumber(b[2]) + (now - tonumber(b[1])) * rate)
end
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 't', tostring(now), 'v', tostring(tokens))
local ttl = 3600000
if rate > 0 then ttl = math.ceil(burst / rate * 1000) + 1000 end
redis.call('PEXPIRE', KEYS[1], ttl)
return {allowed, tostring(tokens)}
"""

PREFIX = "vane:rl:"
BACKOFF_MIN, BACKOFF_MAX = 1.0, 30.0
FAILURES = (redis.RedisError, OSError)


def display_url(url: str) -> str:
    """``url`` without its password, for logs and metric labels."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = (f"{parts.username}:***@" if parts.username else ":***@") + host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


class RedisBuckets:
    """Owns the connection pool to one Redis URL and the down/up state of that server."""

    def __init__(self, url: str, fallback: Any, metrics: Any = None, timeout: float = 0.25,
                 max_connections: int = 64, clock: Any = time.monotonic) -> None:
        self.url = display_url(url)
        self.fallback = fallback
        self.metrics = metrics
        self.clock = clock
        pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=timeout,
            socket_timeout=timeout, socket_connect_timeout=timeout)
        self.client = redis.Redis(connection_pool=pool)
        self._take = self.client.register_script(TAKE)
        self.down_until = 0.0
        self.backoff = BACKOFF_MIN
        self.fallbacks = 0
        self.last_error: str | None = None

    def take(self, key: str, rate: float, burst: float, now: float) -> tuple[bool, float]:
        if self.down_until:
            if self.clock() < self.down_until:
                return self._fall_back(key, rate, burst, now)
        try:
            allowed, tokens = self._take(keys=[PREFIX + key], args=[rate, burst])
        except FAILURES as exc:
            self._went_down(exc)
            return self._fall_back(key, rate, burst, now)
        if self.down_until:
            log.warning("ratelimit store %s answers again", self.url, extra={"store": self.url})
            self.down_until, self.backoff, self.last_error = 0.0, BACKOFF_MIN, None
        return bool(allowed), float(tokens)

    def _went_down(self, exc: BaseException) -> None:
        first = not self.down_until
        self.last_error = str(exc) or type(exc).__name__
        self.down_until = self.clock() + self.backoff
        if first:
            log.warning("ratelimit store %s unreachable (%s): counting in this daemon until it answers",
                        self.url, self.last_error, extra={"store": self.url})
        else:
            self.backoff = min(self.backoff * 2, BACKOFF_MAX)

    def _fall_back(self, key: str, rate: float, burst: float, now: float) -> tuple[bool, float]:
        self.fallbacks += 1
        if self.metrics is not None:
            self.metrics.ratelimit_fallback(self.url)
        return self.fallback.take(key, rate, burst, now)

    def close(self) -> None:
        self.client.connection_pool.disconnect()
