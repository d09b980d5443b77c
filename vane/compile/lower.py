"""Lower rules into one flow tree per listener address (DESIGN.md §3).

Per listener: the L4 rules, tried in order before anything is consumed, then the HTTP group —
``upgrade tls`` when the listener carries certs, ``upgrade http`` otherwise, and a ``detect``
node telling cleartext and TLS apart when it carries both — whose HTTP rules are tried on
every request. Unmatched requests get 404 (HTTP/1) or 421 (HTTP/2); unmatched L4 connections
a ``deny`` (reset). The inserted nodes are the same ``match``/``upgrade``/``detect``/``deny``
nodes an operator can write; they are marked synthetic and never enter scoped-key paths.

Order on a listener: ``priority`` desc, then predicate count desc, then merge order.

HTTP/3: every TCP address of a TLS rule with ``http3`` gets a UDP twin whose tree is an
``upgrade quic`` (the same certificates) and the HTTP group of those rules; unmatched requests
get 421. Their HTTP/1.1 and HTTP/2 answers advertise it (``Alt-Svc``, through a ``headers``
node in front of the rule's flow). A UDP port cannot carry both HTTP/3 and ``l4`` rules.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from vane.config.errors import ConfigError, pointer
from vane.config.load import RuleSource, resolve_path
from vane.engine.node import Node
from vane.engine.ops import OpError, compile_op, expand_predicates
from vane.engine.template import CompiledInput, Limits
from vane.plugins.registry import Registry

from .listen import ListenAddr, Trusted, listener_proxy_protocol, mixed_tls_errors

L4_PREDICATE_PREFIXES = ("conn.", "listen.", "tls.", "peek.")
ACME_CHALLENGE_PATH = "/.well-known/acme-challenge/"


@dataclass
class Cond:
    key: str
    op: str
    right: Any

    def canonical(self) -> str:
        return json.dumps([self.key, self.op, self.right], sort_keys=True)


@dataclass(eq=False)  # rules are compared by identity: a deep compare of flows costs O(rule)
class CompiledRule:
    source: RuleSource
    name: str
    layer: str                      # "L4" | "L7"
    conds: list[Cond]
    flow: Node
    addrs: list[ListenAddr]
    tls: tuple[str, str] | None     # absolute (cert, key)
    priority: int
    http3: bool = False             # also served over QUIC on the same port (tls.http3)
    acme: tuple[str, ...] | None = None  # the host names of an ACME certificate

    @property
    def terminates_tls(self) -> bool:
        return self.tls is not None or self.acme is not None

    @property
    def sort_key(self) -> tuple[int, int, int]:
        return (-self.priority, -len(self.conds), self.source.index)

    @cached_property
    def predicates_key(self) -> frozenset[str]:
        return frozenset(c.canonical() for c in self.conds)


@dataclass
class ListenerPlan:
    addr: ListenAddr
    root: Node
    rules: list[str] = field(default_factory=list)
    certs: list[tuple[str, str]] = field(default_factory=list)
    proxy_protocol: Trusted | None = None   # accept_proxy_protocol: the sources that must send a header
    quic: bool = False              # a UDP listener serving HTTP/3
    acme: list[tuple[str, ...]] = field(default_factory=list)  # ACME name sets served here


def rule_conditions(rs: RuleSource, errors: list[ConfigError]) -> list[Cond]:
    conds: list[Cond] = []
    match = rs.rule.get("match") or {}
    for key, op, right in expand_predicates(match):
        try:
            compile_op(op, right)
        except OpError as exc:
            where = rs.pointer + pointer("match", key) + (f"/{op}" if isinstance(match[key], dict) else "")
            errors.append(ConfigError(rs.file, where, str(exc)))
            continue
        conds.append(Cond(key, op, right))
    return conds


class Lowerer:
    """Builds every listener's tree from compiled rules."""

    def __init__(self, registry: Registry, limits: Limits, errors: list[ConfigError], acme: Any = None) -> None:
        self.registry = registry
        # HTTP-01 is answered on every cleartext HTTP listener, before any rule
        self.http01 = acme is not None and "http-01" in acme.settings.challenges
        self.limits = limits
        self.errors = errors
        self._trees: dict[tuple, Node] = {}
        self._port = 0                  # of the listener whose tree is being built (Alt-Svc)
        self._reported: set[tuple[str, str]] = set()

    def lower(self, rules: list[CompiledRule], http01_addrs: list[ListenAddr] | None = None
              ) -> dict[ListenAddr, ListenerPlan]:
        """Every listener's plan; ``http01_addrs`` (ACME's HTTP-01 port) get a listener of their
        own, answering challenges and redirecting the rest to https, when no rule listens there."""
        by_addr: dict[ListenAddr, list[CompiledRule]] = {}
        for rule in rules:
            for addr in rule.addrs:  # distinct per rule (compile_sources drops repeats)
                by_addr.setdefault(addr, []).append(rule)
        self._check_overlaps(by_addr)
        plans: dict[ListenAddr, ListenerPlan] = {}
        for addr in sorted(by_addr):
            plan = self._listener(addr, sorted(by_addr[addr], key=lambda r: r.sort_key))
            if plan is not None:
                plans[addr] = plan
        for addr, h3 in sorted(self._quic_addrs(rules, by_addr).items()):
            plans[addr] = self._quic_listener(addr, sorted(h3, key=lambda r: r.sort_key))
        taken = {(a.transport, a.port) for a in by_addr}
        for addr in http01_addrs or ():
            if (addr.transport, addr.port) not in taken:
                plans[addr] = ListenerPlan(addr, self._http01_only(f"tcp :{addr.port}"))
        return plans

    def _quic_addrs(self, rules: list[CompiledRule],
                    by_addr: dict[ListenAddr, list[CompiledRule]]) -> dict[ListenAddr, list[CompiledRule]]:
        """The UDP twins of the TCP addresses of ``http3`` rules; a UDP rule on one of those
        ports (the same address, or a wildcard and an address of its family) is an error."""
        out: dict[ListenAddr, list[CompiledRule]] = {}
        for rule in rules:
            if not rule.http3 or rule.layer != "L7":
                continue
            for addr in rule.addrs:
                if addr.transport == "tcp":
                    out.setdefault(ListenAddr("udp", addr.ip, addr.port), []).append(rule)
        for addr in list(out):
            wild = "0.0.0.0" if addr.family == 4 else "::"
            clash = [a for a in by_addr if a.transport == "udp" and a.port == addr.port and a.family == addr.family
                     and (a.ip == addr.ip or wild in (a.ip, addr.ip))]
            if clash:
                other = by_addr[clash[0]][0]
                rule = out.pop(addr)[0]
                self._error(rule, "/tls/http3", f"HTTP/3 needs {addr} for QUIC, but rule \"{other.name}\" "
                                                f"({other.source.file}) listens on {clash[0]}: one UDP port, "
                                                f"one kind of rule")
        return out

    def _quic_listener(self, addr: ListenAddr, rules: list[CompiledRule]) -> ListenerPlan:
        key = ("quic", tuple(r.name for r in rules))
        certs = _certs(rules)
        root = self._trees.get(key)
        if root is None:
            label = f"udp :{addr.port}"
            root = self._synthetic(label, "/quic", "upgrade", "l4", {
                "protocol": "quic", "certs": [{"cert": c, "key": k} for c, k in certs]})
            up = self._synthetic(label, "/quic/upgrade-http", "upgrade", "l4+", {"protocol": "http"})
            up.next = self._chain(label, "l7", rules,
                                  self._synthetic(label, "/quic/unmatched", "deny", "l7", {"status": 421}), "/quic")
            root.next = up
            self._trees[key] = root
        return ListenerPlan(addr, root, [r.name for r in rules], certs, quic=True)

    def _http01_only(self, label: str) -> Node:
        """A port-80 listener of ACME's own: HTTP-01 answers, and a redirect to https for the rest."""
        key = ("acme-http01", label)
        root = self._trees.get(key)
        if root is None:
            redirect = self._synthetic(label, "/acme/redirect", "redirect", "l7", {
                "location": "https://{{req.host}}{{req.uri}}", "status": 308})
            root = self._synthetic(label, "/http/upgrade-http", "upgrade", "l4", {"protocol": "http"})
            root.next = self._http01(label, "/http", redirect)
            self._trees[key] = root
        return root

    def _error(self, rule: CompiledRule, ptr: str, message: str) -> None:
        where = (rule.source.file, rule.source.pointer + ptr)
        if where not in self._reported:  # one report per rule, not one per listener family
            self._reported.add(where)
            self.errors.append(ConfigError(where[0], where[1], message))

    def _check_overlaps(self, by_addr: dict[ListenAddr, list[CompiledRule]]) -> None:
        for addr, rules in by_addr.items():
            if addr.is_wildcard:
                continue
            wild = ListenAddr(addr.transport, "0.0.0.0" if addr.family == 4 else "::", addr.port)
            if wild in by_addr:
                other = by_addr[wild][0]
                self._error(rules[0], "/listen", f"{addr} overlaps {wild} of rule \"{other.name}\" "
                                                 f"({other.source.file}): one port, one listen form")

    def _listener(self, addr: ListenAddr, rules: list[CompiledRule]) -> ListenerPlan | None:
        l4 = [r for r in rules if r.layer == "L4"]
        http = [r for r in rules if r.layer == "L7"]
        if addr.transport == "udp" and http:
            for r in http:
                self._error(r, "/listen", f"HTTP rule on UDP listener {addr}: HTTP rules need TCP")
            return None
        if addr.transport == "udp":
            self._check_udp(addr, l4)
        self._check_order(addr, l4 + http, l4)
        proxy_protocol = listener_proxy_protocol(addr, rules, self._error)
        mixed_tls_errors(addr, http, self._error)
        key: tuple = (addr.transport, tuple(r.name for r in rules))
        if any(r.http3 for r in http):
            key += (addr.port,)     # the tree's Alt-Svc answers name this port
        root = self._trees.get(key)
        certs = _certs(http)
        if root is None:
            label = f"{addr.transport} :{addr.port}"
            self._port = addr.port
            tail = self._http_group(label, http) if http else self._deny_l4(label)
            root = self._chain(label, "l4", l4, tail, "/l4")
            self._trees[key] = root
        acme = list(dict.fromkeys(r.acme for r in http if r.acme))
        return ListenerPlan(addr, root, [r.name for r in l4 + http], certs, proxy_protocol, acme=acme)

    def _check_udp(self, addr: ListenAddr, l4: list[CompiledRule]) -> None:
        for rule in l4:
            for node in rule.flow.walk():
                body = node.source.get("proxy") if node.plugin == "proxy" and node.source else None
                if isinstance(body, dict) and (body.get("input") or {}).get("proxy_protocol") == "v1":
                    ptr = node.id.partition("#")[2][len(rule.source.pointer):]
                    self._error(rule, f"{ptr}/input/proxy_protocol",
                                f'PROXY protocol v1 is TCP only: on UDP listener {addr} use "v2"')

    def _check_order(self, addr: ListenAddr, ordered: list[CompiledRule], l4: list[CompiledRule]) -> None:
        seen: dict[frozenset[str], CompiledRule] = {}
        for rule in ordered:
            pk = rule.predicates_key
            if pk in seen:
                first = seen[pk]
                self._error(rule, "/match", f'rules "{first.name}" ({first.source.file}) and "{rule.name}" '
                                            f"have identical predicates on listener {addr}")
            else:
                seen[pk] = rule
        groups = [l4, [r for r in ordered if r.layer == "L7" and r.terminates_tls],
                  [r for r in ordered if r.layer == "L7" and not r.terminates_tls]]
        catch_l4 = next((r for r in l4 if not r.conds), None)
        for group in groups:
            catch = catch_l4 if group is not l4 else None
            for rule in group:
                if catch is not None and rule is not catch and rule.predicates_key != catch.predicates_key:
                    self._error(rule, "", f'rule "{rule.name}" is unreachable on listener {addr}: the earlier '
                                          f'rule "{catch.name}" ({catch.source.file}) matches everything')
                elif catch is None and not rule.conds:
                    catch = rule

    # -- tree building -------------------------------------------------------------------------

    def _synthetic(self, label: str, where: str, name: str, layer: str, inp: dict) -> Node:
        spec = self.registry.resolve(name, layer)
        assert spec is not None, (name, layer)
        node = Node(f"<{label}>#{where}", spec, layer, CompiledInput(inp, self.limits), f"plugin.{name}.", None,
                    synthetic=True)
        node.source = {name: {"input": inp}}
        return node

    def _chain(self, label: str, layer: str, rules: list[CompiledRule], tail: Node, where: str) -> Node:
        """One ``route`` node trying ``rules`` in order; ``*`` goes to a catch-all rule or ``tail``."""
        routed = [r for r in rules if r.conds]
        catch_all = next((r for r in rules if not r.conds), None)
        fallback = self._entry(label, where, catch_all) if catch_all is not None else tail
        if not routed:
            return fallback
        inp = {"routes": [{"name": r.name, "match": r.source.rule["match"]} for r in routed]}
        node = self._synthetic(label, where, "route", layer, inp)
        node.branches = {r.name: self._entry(label, where, r) for r in routed}
        node.branches["*"] = node.default = fallback
        return node

    def _entry(self, label: str, where: str, rule: CompiledRule) -> Node:
        """Where a matched rule starts: its flow, behind an ``Alt-Svc`` header on the TCP
        listeners of an ``http3`` rule (naming the port of the listener whose tree it is: a
        constant, not a template resolved per request)."""
        if not rule.http3 or where != "/tls":
            return rule.flow
        node = self._synthetic(label, f"{where}/{rule.name}/alt-svc", "headers", "l7",
                               {"response": {"add": {"alt-svc": f'h3=":{self._port}"; ma=86400'}}})
        node.branches = {"next": rule.flow}
        return node

    def _deny_l4(self, label: str) -> Node:
        return self._synthetic(label, "/l4/unmatched", "deny", "l4", {})

    def _http_fallback(self, label: str, where: str) -> Node:
        m = self._synthetic(label, f"{where}/unmatched", "match", "l7",
                            {"left": "{{req.version}}", "op": "eq", "right": "2"})
        m.branches = {"true": self._synthetic(label, f"{where}/unmatched/h2", "deny", "l7", {"status": 421}),
                      "false": self._synthetic(label, f"{where}/unmatched/h1", "deny", "l7", {"status": 404})}
        return m

    def _upgrade_http(self, label: str, where: str, layer: str, rules: list[CompiledRule]) -> Node:
        up = self._synthetic(label, f"{where}/upgrade-http", "upgrade", layer, {"protocol": "http"})
        up.next = self._chain(label, "l7", rules, self._http_fallback(label, where), where)
        if self.http01 and layer == "l4":
            up.next = self._http01(label, where, up.next)
        return up

    def _http01(self, label: str, where: str, rest: Node) -> Node:
        """ACME HTTP-01 answers before any rule: the CA fetches them over cleartext HTTP."""
        route = self._synthetic(label, f"{where}/acme", "route", "l7", {"routes": [
            {"name": "acme-challenge", "match": {"req.path": {"prefix": ACME_CHALLENGE_PATH}}}]})
        answer = self._synthetic(label, f"{where}/acme/challenge", "acme_challenge", "l7", {})
        route.branches = {"acme-challenge": answer, "*": rest}
        route.default = rest
        return route

    def _http_group(self, label: str, http: list[CompiledRule]) -> Node:
        tls_rules = [r for r in http if r.terminates_tls]
        clear_rules = [r for r in http if not r.terminates_tls]
        tls_node = None
        if tls_rules:
            tls_node = self._synthetic(label, "/tls", "upgrade", "l4", {
                "protocol": "tls", "certs": _cert_items(tls_rules), "alpn": ["h2", "http/1.1"]})
            tls_node.next = self._upgrade_http(label, "/tls", "l4+", tls_rules)
        if not clear_rules:
            return tls_node
        clear_node = self._upgrade_http(label, "/http", "l4", clear_rules)
        if tls_node is None:
            return clear_node
        detect = self._synthetic(label, "/detect", "detect", "l4", {})
        detect.branches = {"tls": tls_node, "*": clear_node}
        detect.default = clear_node
        return detect


def _certs(http: list[CompiledRule]) -> list[tuple[str, str]]:
    """The distinct (cert, key) pairs of the rules, in rule order."""
    return list(dict.fromkeys(rule.tls for rule in http if rule.tls))


def _cert_items(rules: list[CompiledRule]) -> list[dict[str, Any]]:
    """The ``upgrade tls`` node's ``certs``: files and ACME name sets, distinct, in rule order."""
    items: dict[tuple, dict[str, Any]] = {}
    for rule in rules:
        if rule.tls:
            items.setdefault(("file",) + rule.tls, {"cert": rule.tls[0], "key": rule.tls[1]})
        elif rule.acme:
            items.setdefault(("acme",) + rule.acme, {"acme": list(rule.acme)})
    return list(items.values())


def tls_paths(config_dir: str, tls: dict | None) -> tuple[str, str] | None:
    if not tls:
        return None
    return resolve_path(config_dir, tls["cert"]), resolve_path(config_dir, tls["key"])
