"""The compiled FlowGraph: one tree per listener, a version hash, JSON and text renderings.

Immutable once built; ``link`` gives every node its plugin instance exactly once, before the
graph serves traffic. Trees are walked iteratively so a thousand chained rules never hit the
recursion limit.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Iterator

from vane.config.load import Sources
from vane.engine.node import Node
from vane.plugins.base import LinkEnv
from vane.plugins.registry import Registry

from .listen import ListenAddr
from .lower import ListenerPlan


class FlowGraph:
    def __init__(self, hash: str, listeners: dict[ListenAddr, ListenerPlan], sources: Sources,
                 registry: Registry) -> None:
        self.hash = hash
        self.listeners = listeners
        self.sources = sources
        self.registry = registry
        self.linked = False
        # (listener label, id of an ``upgrade http`` node) -> the L7 tree after it: where a
        # keep-alive connection opened on another graph finds its requests' tree in this one
        self.http_roots: dict[tuple[str, str], Node] = {}

    @property
    def config_dir(self) -> str:
        return self.sources.config_dir

    def nodes(self) -> Iterator[Node]:
        """Every distinct node once."""
        seen: set[int] = set()
        for plan in self.listeners.values():
            for node in plan.root.walk():
                if id(node) not in seen:
                    seen.add(id(node))
                    yield node

    def link(self, env: LinkEnv) -> None:
        """Instantiate every node's plugin (imports implementations, builds TLS contexts, ...)."""
        if self.linked:
            return
        env.graph = self
        for addr, plan in self.listeners.items():
            for node in plan.root.walk():
                if node.plugin == "upgrade" and node.next is not None and node.input.raw.get("protocol") == "http":
                    self.http_roots[(str(addr), node.id)] = node.next
        classes: dict[str, type] = {}
        for node in self.nodes():
            cls = classes.get(node.spec.impl)
            if cls is None:
                cls = classes[node.spec.impl] = node.spec.load()
            node.impl = cls(node, env)
        self.linked = True

    def certs(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for plan in self.listeners.values():
            for pair in plan.certs:
                if pair not in out:
                    out.append(pair)
        return out

    # -- renderings ----------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "hash": self.hash,
            "listeners": [
                {"listen": str(addr), "rules": plan.rules, "tree": node_to_json(plan.root)}
                for addr, plan in self.listeners.items()
            ],
        }

    def dumps(self, indent: int | None = 2) -> str:
        """JSON text; deep rule chains need a higher recursion limit for the C encoder."""
        data = self.to_json()
        old = sys.getrecursionlimit()
        sys.setrecursionlimit(max(old, 10 * sum(1 for _ in self.nodes()) + 1000))
        try:
            return json.dumps(data, indent=indent)
        finally:
            sys.setrecursionlimit(old)

    def render_text(self) -> str:
        lines = [f"graph {self.hash[:12]}  ({len(self.sources.rules)} rules, {len(self.listeners)} listeners)"]
        shared: dict[int, str] = {}
        for addr, plan in self.listeners.items():
            lines.append("")
            lines.append(f"listener {addr}   rules: {', '.join(plan.rules) or '-'}")
            if id(plan.root) in shared:
                lines.append(f"  (same tree as {shared[id(plan.root)]})")
                continue
            shared[id(plan.root)] = str(addr)
            lines.extend(render_tree(plan.root, "  "))
        return "\n".join(lines)


def node_to_json(root: Node) -> dict:
    """The operator's node syntax for a compiled tree (post-order, iterative)."""
    out: dict[int, dict] = {}
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        if not done:
            stack.append((node, True))
            stack.extend((child, False) for _, child in node.children() if id(child) not in out)
            continue
        body: dict[str, Any] = {}
        if node.input.raw:
            body["input"] = node.input.raw
        outputs = {branch: out[id(child)] for branch, child in node.children()}
        if outputs:
            body["output"] = outputs
        out[id(node)] = {node.plugin: body}
    return out[id(root)]


def _summary(node: Node) -> str:
    inp = node.input.raw
    if node.plugin == "match" and isinstance(inp, dict):
        conds = inp.get("all") or [inp]
        text = " and ".join(f"{c.get('left')} {c.get('op')} {json.dumps(c.get('right'))}" for c in conds)
    elif node.plugin == "route" and isinstance(inp, dict):
        text = f"({len(inp.get('routes', []))} routes, first match wins)"
    elif inp:
        text = json.dumps(inp, separators=(",", ":"))
        if len(text) > 100:
            text = text[:97] + "..."
    else:
        text = ""
    rule = f"  [rule {node.rule}]" if node.rule and not node.synthetic else ""
    return f"{node.plugin} {text}".rstrip() + rule


def render_tree(root: Node, indent: str) -> list[str]:
    """Readable outline; a synthetic match's ``false`` chain stays at one depth ("else")."""
    lines: list[str] = []
    stack: list[tuple[Node, str, str]] = [(root, indent, "")]
    while stack:
        node, pad, label = stack.pop()
        lines.append(f"{pad}{label}{_summary(node)}")
        children = list(node.children())
        chain_else = node.synthetic and node.plugin == "match" and "false" in node.branches
        preds = {}
        if node.plugin == "route":
            preds = {r["name"]: json.dumps(r["match"], separators=(",", ":")) for r in node.input.raw["routes"]}
        push = []
        for branch, child in children:
            if chain_else and branch == "false":
                continue
            label = f"{branch} {preds[branch]}: " if branch in preds else f"{branch}: "
            push.append((child, pad + "    ", label))
        if chain_else:
            stack.append((node.branches["false"], pad, "else: "))
        stack.extend(reversed(push))
    return lines
