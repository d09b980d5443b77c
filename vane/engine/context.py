"""The abstract execution context the executor walks with (seed 000: L4 and L7 contexts).

Concrete contexts (a socket and its peek buffer at L4; one HTTP request at L7) live with the
networking code; the engine only needs the layer, the KV store and the trajectory, so the
executor is tested with no sockets at all.
"""

from __future__ import annotations

from typing import Any, Callable

from .kv import KV
from .trajectory import Trajectory


class Context:
    __slots__ = ("layer", "kv", "trajectory", "conn_id", "rule", "node", "on_step", "__weakref__")

    def __init__(self, layer: str, kv: KV, conn_id: str = "", trajectory: Trajectory | None = None) -> None:
        self.layer = layer                  # "l4" | "l4+" | "l7"
        self.kv = kv
        self.conn_id = conn_id
        self.trajectory = trajectory if trajectory is not None else Trajectory()
        self.rule: str | None = None        # the rule whose flow is running
        self.node: str = ""                 # id of the node running now (connection accounting)
        self.on_step: Callable[[Context, Any, str], None] | None = None  # debug-level flow log

    def log_extra(self) -> dict:
        return {"conn": self.conn_id, "rule": self.rule, "node": self.node}
