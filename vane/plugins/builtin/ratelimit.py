"""``ratelimit``: token bucket per templated key (DESIGN.md §6). Branches ``allow``/``deny``.

Where the buckets live (``store``):

- one process (``VANE_WORKERS=1``): in this node, graph-scoped (they reset on reload); past
  ``max_keys`` the least recently used bucket is evicted (it starts again full);
- several workers: in the daemon's shared table, so the rate holds for the daemon as a whole;
- ``"store": "redis://host:6379/0"``: in Redis, shared by every vaned using that server; when
  Redis does not answer, the daemon's own buckets stand in (logged once, counted).
"""

from __future__ import annotations

import time
from collections import OrderedDict

from vane.engine.plugin import LinkEnv, Middleware

DEFAULT_MAX_KEYS = 100_000


class LocalBuckets:
    """Token buckets of one process, LRU-bounded to ``max_keys``."""

    def __init__(self, max_keys: int) -> None:
        self.max_keys = max_keys
        self.buckets: OrderedDict[str, list[float]] = OrderedDict()  # key -> [tokens, last]

    def take(self, key: str, rate: float, burst: float, now: float) -> tuple[bool, float]:
        buckets = self.buckets
        bucket = buckets.get(key)
        if bucket is None:
            bucket = buckets[key] = [burst, now]
            if len(buckets) > self.max_keys:
                buckets.popitem(last=False)
        else:
            buckets.move_to_end(key)
            tokens = bucket[0] + (now - bucket[1]) * rate
            bucket[0] = tokens if tokens < burst else burst
            bucket[1] = now
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return True, bucket[0]
        return False, bucket[0]


class RateLimit(Middleware):
    def __init__(self, node, env: LinkEnv) -> None:
        super().__init__(node, env)
        raw = node.input.raw
        self.clock = env.clock or time.monotonic
        services = env.services
        store = raw.get("store", "local")
        shared = getattr(services, "shared_limits", None)
        # Keys of daemon-wide tables name the node (and, in the shared table, the graph: its
        # buckets reset on reload like a node's own); a node's own table needs no prefix.
        if store != "local" and services is not None:
            self.store = services.ratelimit_store(store)
            self.scope = f"{node.id}:"
            node.blocking = True          # a network round trip: the flow timer is armed
        elif shared is not None:
            self.store = shared.buckets
            self.scope = f"{env.graph.hash[:16] if env.graph is not None else ''}:{node.id}:"
        else:
            self.store = LocalBuckets(int(raw.get("max_keys", DEFAULT_MAX_KEYS)))
            self.scope = ""

    def run(self, ctx, args):
        rate = float(args["rate"])
        burst = float(args.get("burst") or max(1.0, rate))
        allowed, tokens = self.store.take(self.scope + args["key"], rate, burst, self.clock())
        if allowed:
            return "allow", {"remaining": str(int(tokens))}
        return "deny", {"remaining": "0"}
