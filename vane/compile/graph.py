"""The compiled FlowGraph: one tree per listener, a version hash, JSON and text renderings.

Immutable once built; ``link`` gives every node its plugin instance exactly once, before the
graph serves traffic. Trees are walked iteratively so a thousand chained rules never hit the
recursion limit.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Iterator

from vane.config.errors import CompileFailed, ConfigError, pointer
from vane.config.load import RuleSource, Sources, resolve_path
from vane.engine.node import Node
from vane.engine.plugin import LinkEnv
from vane.plugins.registry import Registry

from .listen import ListenAddr
from .lower import ListenerPlan
from .upstreams import UpstreamTable


class FlowGraph:
    def __init__(self, hash: str, listeners: dict[ListenAddr, ListenerPlan], sources: Sources,
                 registry: Registry, upstreams: UpstreamTable | None = None) -> None:
        self.hash = hash
        self.listeners = listeners
        self.sources = sources
        self.registry = registry
        self.upstreams = upstreams if upstreams is not None else UpstreamTable()  # groups, by name and node
        self.linked = False
        self.acme: Any = None  # an AcmePlan when rules ask for ACME certificates
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
        """Instantiate every node's plugin (imports implementations, builds TLS contexts, ...).

        A plugin that cannot be set up (a certificate that does not load, a program outside
        ``bin/``, a module that does not compile) is a config error: every failing node is
        tried and reported, each located by file and JSON pointer; raises CompileFailed.
        """
        if self.linked:
            return
        env.graph = self
        for addr, plan in self.listeners.items():
            for node in plan.root.walk():
                if node.plugin == "upgrade" and node.next is not None and node.input.raw.get("protocol") == "http":
                    self.http_roots[(str(addr), node.id)] = node.next
        classes: dict[str, type] = {}
        failures: dict[tuple[str, str, str], ConfigError] = {}  # one report per place and reason
        locator: _Locator | None = None
        failed_externals: set[int] = set()  # one attempt per declaration: its error is the same everywhere
        for node in self.nodes():
            if id(node.spec) in failed_externals:
                continue
            try:
                cls = classes.get(node.spec.impl)
                if cls is None:
                    cls = classes[node.spec.impl] = node.spec.load()
                node.impl = cls(node, env)
            except Exception as exc:  # noqa: BLE001 - any set-up failure is the config's, located below
                locator = locator or _Locator(self)
                if node.spec.external:
                    failed_externals.add(id(node.spec))
                for err in locator.errors(node, exc):
                    failures.setdefault((err.file, err.pointer, err.message), err)
        if failures:
            raise CompileFailed(sorted(failures.values(), key=lambda e: (e.file, e.pointer)))
        self.linked = True

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


class _Locator:
    """Finds where the config says what made a node's plugin fail to set up (built on the
    first failure, so each later one is a lookup)."""

    def __init__(self, graph: FlowGraph) -> None:
        self.config_dir = graph.config_dir
        self.by_rule = {rs.rule["rule"]: rs for rs in graph.sources.rules}
        self.by_path: dict[str, list[tuple[RuleSource, str]]] = {}
        for rs in graph.sources.rules:
            tls = rs.rule.get("tls")
            if not tls:
                continue
            cert, key = (os.path.abspath(resolve_path(self.config_dir, tls[k])) for k in ("cert", "key"))
            if cert == key:
                self.by_path.setdefault(cert, []).append((rs, "/tls"))
            else:
                self.by_path.setdefault(cert, []).append((rs, "/tls/cert"))
                self.by_path.setdefault(key, []).append((rs, "/tls/key"))

    def errors(self, node: Node, exc: Exception) -> list[ConfigError]:
        """An external plugin: its declaration in config.json (``/plugins/<name>/<driver>``).
        An error that carries ``where`` (file, pointer): there. A file the error names (a certificate or key of an ``upgrade tls``): every rule whose
        ``tls`` names it. Any other node: the node itself (its id is ``<file>#<pointer>``)."""
        spec = node.spec
        if spec.external:
            return [ConfigError("config.json", pointer("plugins", spec.name, spec.driver or ""), _reason(exc))]
        where = getattr(exc, "where", None)   # (file, pointer) the error names itself: an upstream group's backend
        if isinstance(where, tuple) and len(where) == 2:
            return [ConfigError(where[0], where[1], _reason(exc))]
        failed = getattr(exc, "path", None)
        if isinstance(failed, str) and failed:
            target = os.path.abspath(failed)
            users = self.by_path.get(target, ())
            if users:
                shown = os.path.relpath(target, self.config_dir) \
                    if target.startswith(self.config_dir + os.sep) else target
                message = f"{shown}: {getattr(exc, 'message', None) or _reason(exc)}"
                return [ConfigError(rs.file, rs.pointer + where, message) for rs, where in users]
        rs = self.by_rule.get(node.rule or "")
        if rs is not None and not node.synthetic and node.id.startswith(rs.file + "#"):
            return [ConfigError(rs.file, node.id[len(rs.file) + 1:], _reason(exc))]
        return [ConfigError("", "", f"{node.id}: {_reason(exc)}")]


def _reason(exc: Exception) -> str:
    """One line saying why: a library's multi-line report is joined, Python's own error types
    (a bug rather than a bad config) keep their name."""
    if isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    else:
        text = str(exc)
    text = ": ".join(line.strip() for line in text.splitlines() if line.strip() and line.strip() != "Caused by:")
    if type(exc).__module__ == "builtins" and not isinstance(exc, (ValueError, OSError)) or not text:
        text = f"{type(exc).__name__}: {text}".rstrip(": ")
    return text


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
