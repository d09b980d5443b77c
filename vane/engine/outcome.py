"""How a walk ends (seed 001: finished, or a layer transition)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .context import Context


class Outcome:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


FINISHED = Outcome("finished")   # a terminator handled the connection / request
ERROR = Outcome("error")         # a plugin raised: L7 answers 500, L4 closes
TIMEOUT = Outcome("timeout")     # the flow timeout fired before a terminator took over


class Upgrade(Outcome):
    """Continue the walk at the terminator's ``next`` with a new context (e.g. after TLS)."""

    __slots__ = ("ctx",)

    def __init__(self, ctx: "Context") -> None:
        super().__init__("upgrade")
        self.ctx = ctx


class Rejected(Outcome):
    """The client's request was at fault (a body over the limit, a client gone mid-body, a
    query too large to read): answer ``status`` (4xx); not a vane error."""

    __slots__ = ("status",)

    def __init__(self, status: int) -> None:
        super().__init__("rejected")
        self.status = status


class ServeHttp(Outcome):
    """``upgrade http``: the connection speaks HTTP from here; its driver runs the HTTP layer
    on ``ctx``'s stream, each request starting at the tree after ``upgrade`` (the node)."""

    __slots__ = ("ctx", "upgrade", "graph")

    def __init__(self, ctx: "Context", upgrade: Any, graph: Any) -> None:
        super().__init__("http")
        self.ctx = ctx
        self.upgrade = upgrade
        self.graph = graph        # the graph ``upgrade`` belongs to
