"""Plugin kinds, specs and base classes (DESIGN.md §4, §6; seed 000).

A ``PluginSpec`` is pure metadata the compiler checks flows against: kind, layers, branches,
input schema. The implementation class is named by an import path and loaded only when a
graph is linked, so the compiler never imports networking code.

At link time every node gets its own plugin instance (graph-scoped state such as rate-limit
buckets lives there and resets on reload). Middleware ``run`` returns the branch name and an
optional dict of outputs (stored under the node's scoped key); terminators return an Outcome.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

if TYPE_CHECKING:
    from vane.engine.context import Context
    from vane.engine.node import Node
    from vane.engine.outcome import Outcome

LAYERS_ALL = frozenset({"l4", "l4+", "l7"})
LAYERS_L4 = frozenset({"l4", "l4+"})
LAYERS_L7 = frozenset({"l7"})


class Kind(Enum):
    HTTP_MIDDLEWARE = "HTTP middleware"
    GENERIC_MIDDLEWARE = "generic middleware"
    L4_MIDDLEWARE = "L4 middleware"
    TERMINATOR = "terminator"

    @property
    def priority(self) -> int:
        """Dispatch priority when one name has several kinds (DESIGN.md §4): lower first."""
        return _PRIORITY[self]


_PRIORITY = {Kind.HTTP_MIDDLEWARE: 0, Kind.GENERIC_MIDDLEWARE: 1, Kind.L4_MIDDLEWARE: 1,
             Kind.TERMINATOR: 2}


@dataclass(frozen=True)


class PluginSpec:
    name: str
    kind: Kind
    layers: frozenset[str]
    branches: tuple[str, ...]           # declared branches; () for terminators
    impl: str                           # "module:Class", imported at link time
    input_schema: Mapping[str, Any] = field(default_factory=lambda: {"type": "object"})
    outputs: tuple[str, ...] | None = None   # scoped output keys it may store; None = any
    external: bool = False
    has_next: bool = False              # a terminator that hands over to output "next" (upgrade)
    dynamic_branches: bool = False      # branches named by the input (route: one per route)
    blocking: bool = True               # may wait on I/O: the flow timer must be armed around it
    driver: str | None = None           # external driver: wasm | http | unix | command
    options: Mapping[str, Any] = field(default_factory=dict)  # external plugin declaration

    @property
    def is_terminator(self) -> bool:
        return self.kind is Kind.TERMINATOR

    def load(self) -> type["Plugin"]:
        module, _, cls = self.impl.partition(":")
        return getattr(importlib.import_module(module), cls)


class LinkEnv:
    """What plugins may use when a graph is linked: settings, config dir, daemon services."""

    def __init__(self, settings: Any, config_dir: str | None = None, services: Any = None,
                 clock: Any = None) -> None:
        self.settings = settings
        self.config_dir = config_dir
        self.services = services
        self.clock = clock
        self.breakers: dict = {}  # graph-scoped circuit breakers of external plugins, by name
        self.graph: Any = None    # the graph being linked (set by FlowGraph.link)


class Plugin:
    """Base of every plugin implementation; one instance per node."""

    kind: ClassVar[Kind]
    #: False when the plugin reads its own pre-compiled input (the executor passes None).
    resolve_input: ClassVar[bool] = True

    def __init__(self, node: "Node", env: LinkEnv) -> None:
        self.node = node
        self.env = env


class Middleware(Plugin):
    kind = Kind.GENERIC_MIDDLEWARE

    def run(self, ctx: "Context", args: Any) -> tuple[str, Mapping[str, object] | None]:
        raise NotImplementedError


class HttpMiddleware(Middleware):
    kind = Kind.HTTP_MIDDLEWARE


class Terminator(Plugin):
    kind = Kind.TERMINATOR

    def terminate(self, ctx: "Context", args: Any) -> "Outcome":
        raise NotImplementedError
