"""The KV store a flow walks with (DESIGN.md §5).

Values are strings. Engine-owned keys that cost something to compute (``tls.*`` from a peeked
ClientHello, ``req.header.*``, ``req.body``, ...) come from a ``lazy`` provider the context
installs: it is asked once per missing key and its answer is cached.
"""

from __future__ import annotations

from typing import Callable, Mapping

LazyProvider = Callable[[str], "str | None"]


class KV:
    __slots__ = ("_d", "_lazy")

    def __init__(self, data: Mapping[str, str] | None = None, lazy: LazyProvider | None = None) -> None:
        self._d: dict[str, str] = dict(data) if data else {}
        self._lazy = lazy

    def get(self, key: str) -> str | None:
        value = self._d.get(key)
        if value is None and self._lazy is not None:
            value = self._lazy(key)
            if value is not None:
                self._d[key] = value
        return value

    def __getitem__(self, key: str) -> str:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def set(self, key: str, value: object) -> None:
        self._d[key] = value if isinstance(value, str) else str(value)

    __setitem__ = set

    def child(self, lazy: LazyProvider | None = None) -> "KV":
        """A copy for a nested context (an HTTP request copies the connection's KV)."""
        kv = KV.__new__(KV)
        kv._d = self._d.copy()
        kv._lazy = lazy
        return kv

    def set_lazy(self, lazy: LazyProvider | None) -> None:
        self._lazy = lazy
