"""Compiled flow-tree nodes: built by vane.compile, walked by the executor, never mutated after link."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator

from .template import CompiledInput

if TYPE_CHECKING:
    from vane.engine.plugin import Plugin, PluginSpec


class Node:
    __slots__ = ("id", "plugin", "spec", "layer", "input", "branches", "default", "next", "scope",
                 "rule", "synthetic", "impl", "terminal", "external", "blocking", "source")

    def __init__(self, id: str, spec: "PluginSpec", layer: str, input: CompiledInput,
                 scope: str, rule: str | None, synthetic: bool = False) -> None:
        self.id = id                  # "rules/10-web.json#/0/flow/match" or "tcp 0.0.0.0:80#/l4/0"
        self.plugin = spec.name
        self.spec = spec
        self.layer = layer            # "l4" | "l4+" | "l7"
        self.input = input
        self.branches: dict[str, Node] = {}
        self.default: Node | None = None   # the "*" branch
        self.next: Node | None = None      # upgrade: the next layer's tree
        self.scope = scope            # "plugin.<flow path>.<plugin>." prefix for outputs
        self.rule = rule
        self.synthetic = synthetic    # inserted by the compiler (rule matching, upgrades, fallbacks)
        self.terminal = spec.is_terminator
        self.external = spec.external
        self.blocking = spec.blocking and not spec.is_terminator
        self.impl: Plugin | None = None
        self.source: Any = None       # the operator's JSON for this node (serialisation)

    def children(self) -> Iterator[tuple[str, "Node"]]:
        for branch, child in self.branches.items():
            yield branch, child
        if self.next is not None:
            yield "next", self.next

    def walk(self) -> Iterator["Node"]:
        """Every node of the tree below (and including) this one, iteratively."""
        stack = [self]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(child for _, child in node.children())

    def __repr__(self) -> str:
        return f"<Node {self.plugin} {self.id}>"
