"""``ratelimit``: token bucket per templated key (DESIGN.md §6). Branches ``allow``/``deny``.

Buckets are graph-scoped (they reset on reload). Memory is bounded: past ``max_keys`` buckets
the least recently used ones are evicted (an evicted key starts again with a full bucket).
"""

from __future__ import annotations

import time
from collections import OrderedDict

from vane.engine.plugin import LinkEnv, Middleware

DEFAULT_MAX_KEYS = 100_000


class RateLimit(Middleware):
    def __init__(self, node, env: LinkEnv) -> None:
        super().__init__(node, env)
        raw = node.input.raw
        self.max_keys = int(raw.get("max_keys", DEFAULT_MAX_KEYS))
        self.clock = env.clock or time.monotonic
        self.buckets: OrderedDict[str, list[float]] = OrderedDict()  # key -> [tokens, last]

    def run(self, ctx, args):
        rate = float(args["rate"])
        burst = float(args.get("burst") or max(1.0, rate))
        key = args["key"]
        now = self.clock()
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
            return "allow", {"remaining": str(int(bucket[0]))}
        return "deny", {"remaining": "0"}
