"""Build and check one flow tree (DESIGN.md §4): plugins, layers, branches, terminators, templates.

Every node gets its scoped-key prefix here, computed from the plugin.branch pairs walked from
the root of the tree (a rule's ``flow`` or an ``upgrade``'s ``next``), so nothing about
scoping is left for run time. A template naming a ``plugin.*`` key no earlier node on the
path can store is an error.
"""

from __future__ import annotations

from typing import Any

from vane.config.errors import ConfigError
from vane.config.schemas import schema_errors, validator_for
from vane.engine.node import Node
from vane.engine.plugin import PluginSpec
from vane.engine.template import CompiledInput, Limits, TemplateError, TemplateErrors, static_keys
from vane.plugins.catalog import L4_PROXY_KEYS, L7_PROXY_KEYS
from vane.plugins.registry import Registry

WILDCARD = "*"
UPGRADE_NEXT = "\x00next"  # not a branch: the upgrade's next-layer tree
L7_ONLY_KEYS = ("req.", "res.")


def sanitize(name: str) -> str:
    return name.replace(".", "_")


def _esc(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


class FlowBuilder:
    """Turns the operator's JSON for one tree into Nodes, collecting every error."""

    def __init__(self, registry: Registry, limits: Limits, file: str, rule: str | None,
                 errors: list[ConfigError], defaults: dict[str, dict] | None = None) -> None:
        self.registry = registry
        self.limits = limits
        self.file = file
        self.rule = rule
        self.errors = errors
        self.defaults = defaults or {}

    def error(self, ptr: str, message: str) -> None:
        self.errors.append(ConfigError(self.file, ptr, message))

    def build(self, raw: Any, ptr: str, layer: str, pairs: tuple[str, ...] = (),
              ancestors: tuple[tuple[str, PluginSpec], ...] = ()) -> Node | None:
        """Build the node at ``ptr`` (schema-valid JSON) and everything below it."""
        stack: list[tuple[Any, str, str, tuple[str, ...], tuple, Node | None, str]] = [
            (raw, ptr, layer, pairs, ancestors, None, "")]
        root: Node | None = None
        while stack:
            raw, ptr, layer, pairs, ancestors, parent, branch = stack.pop()
            built = self._node(raw, ptr, layer, pairs, ancestors)
            if built is None:
                continue
            node, children = built
            if parent is None:
                root = node
            elif branch == UPGRADE_NEXT:
                parent.next = node
            else:
                parent.branches[branch] = node
                if branch == WILDCARD:
                    parent.default = node
            stack.extend((c_raw, c_ptr, c_layer, c_pairs, c_anc, node, c_branch)
                         for c_raw, c_ptr, c_layer, c_pairs, c_anc, c_branch in reversed(children))
        return root

    def _node(self, raw: dict, ptr: str, layer: str, pairs: tuple[str, ...],
              ancestors: tuple[tuple[str, PluginSpec], ...]):
        (name, body), = raw.items()
        here = f"{ptr}/{_esc(name)}"
        spec = self.registry.resolve(name, layer)
        if spec is None:
            if name not in self.registry:
                self.error(here, f'unknown plugin "{name}"')
            else:
                layers = ", ".join(sorted(self.registry.layers(name)))
                self.error(here, f'plugin "{name}" does not run at layer {layer} (it runs at {layers})')
            return None
        raw_input = body.get("input", {})
        if spec.name in self.defaults and isinstance(raw_input, dict):
            raw_input = {**self.defaults[spec.name], **raw_input}
        errs = list(schema_errors(validator_for(spec.input_schema), raw_input, self.file, f"{here}/input"))
        if errs:
            self.errors.extend(errs)
            return None
        try:
            cinput = CompiledInput(raw_input, self.limits)
        except TemplateError as exc:
            for e in (exc.errors if isinstance(exc, TemplateErrors) else [exc]):
                self.error(f"{here}/input{e.pointer}", f"template: {e}")
            return None
        self._check_keys(cinput, here, layer, ancestors)
        scope = "plugin." + "".join(p + "." for p in pairs) + sanitize(name) + "."
        node = Node(f"{self.file}#{here}", spec, layer, cinput, scope, self.rule)
        node.source = raw
        output = body.get("output") or {}
        children: list = []
        for branch in output:
            if "{" in branch or "}" in branch:
                self.error(f"{here}/output/{_esc(branch)}", f'branch name "{branch}" must not contain braces')
        if spec.is_terminator:
            if spec.has_next:
                children = self._upgrade_next(cinput.raw, output, here, layer, ancestors)
            elif output:
                self.error(f"{here}/output", f'terminator "{name}" takes no output')
            return node, children
        if not output:
            self.error(here, f'the flow ends at "{name}" without a terminator: '
                             f'give it an "output" for its branches ({", ".join(spec.branches)})')
            return node, children
        branches = spec.branches
        if spec.dynamic_branches:
            branches = tuple(r["name"] for r in cinput.raw.get("routes", ()))
        declared = set(branches)
        for branch in output:
            if branch != WILDCARD and branch not in declared and "{" not in branch and "}" not in branch:
                self.error(f"{here}/output/{_esc(branch)}",
                           f'unknown branch "{branch}" ({name} has: {", ".join(branches)})')
        if WILDCARD not in output:
            for branch in branches:
                if branch not in output:
                    self.error(f"{here}/output", f'missing branch "{branch}"')
        child_anc = ancestors + ((scope, spec),)
        for branch, child in output.items():
            if branch in declared or branch == WILDCARD:
                children.append((child, f"{here}/output/{_esc(branch)}", layer,
                                 pairs + (f"{sanitize(name)}.{branch}",), child_anc, branch))
        return node, children

    def _upgrade_next(self, inp: dict, output: dict, here: str, layer: str, ancestors: tuple) -> list:
        proto = inp.get("protocol", "http")
        if proto == "tls":
            if layer != "l4":
                self.error(f"{here}/input/protocol", "the stream is already TLS: upgrade to tls runs at l4 only")
            if not inp.get("certs"):
                self.error(f"{here}/input", 'upgrade to tls needs "certs"')
            next_layer = "l4+"
        else:
            next_layer = "l7"
        extra = [b for b in output if b != "next"]
        if extra:
            self.error(f"{here}/output", f'upgrade has one branch, "next" (found {", ".join(extra)})')
        if "next" not in output:
            self.error(f"{here}/output", 'upgrade needs output "next": the tree of the next layer')
            return []
        return [(output["next"], f"{here}/output/next", next_layer, (), ancestors, UPGRADE_NEXT)]

    def _check_keys(self, cinput: CompiledInput, here: str, layer: str,
                    ancestors: tuple[tuple[str, PluginSpec], ...]) -> None:
        for tptr, parts in cinput.templates():
            for key in static_keys(parts):
                if layer != "l7" and key.startswith(L7_ONLY_KEYS):
                    self.error(f"{here}/input{tptr}", f'template names "{key}", which exists only in HTTP '
                                                      f"flows (this node runs at {layer})")
                elif key.startswith("plugin.") and not _reachable(key, ancestors):
                    known = ", ".join(f"{s}*" for s, _ in ancestors) or "none"
                    self.error(f"{here}/input{tptr}", f'template names "{key}", which no earlier node on '
                                                      f"this path can store (keys stored before this node: {known})")


def _reachable(key: str, ancestors: tuple[tuple[str, PluginSpec], ...]) -> bool:
    for scope, spec in ancestors:
        if key.startswith(scope) and len(key) > len(scope):
            if spec.outputs is None or key[len(scope):] in spec.outputs:
                return True
    return False


def infer_layer(flow: dict, registry: Registry) -> tuple[set[str], list[str]]:
    """The layers ("L4", "L7") the top-level terminators of a flow allow, and their names.

    Only the tree before any ``upgrade`` counts: what follows an upgrade is the next layer.
    """
    allowed = {"L4", "L7"}
    names: list[str] = []
    stack = [flow]
    while stack:
        raw = stack.pop()
        (name, body), = raw.items()
        specs = registry.specs(name)
        if not specs:
            continue
        if all(not s.is_terminator for s in specs):
            stack.extend((body.get("output") or {}).values())
            continue
        inp = body.get("input") or {}
        if name == "upgrade":
            fits = {"L4"}
        elif name == "proxy" and isinstance(inp, dict) and inp.keys() & L7_PROXY_KEYS:
            fits = {"L7"}
        elif name == "proxy" and isinstance(inp, dict) and inp.keys() & L4_PROXY_KEYS:
            fits = {"L4"}
        else:
            layers = frozenset().union(*(s.layers for s in specs if s.is_terminator))
            fits = ({"L4"} if layers & {"l4", "l4+"} else set()) | ({"L7"} if "l7" in layers else set())
        names.append(f"{name}({'/'.join(sorted(fits))})")
        allowed &= fits
    return allowed, names
