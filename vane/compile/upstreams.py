"""Upstream groups, checked and described at compile (pure: no sockets).

A group is a list of backends with a ``balance`` strategy, optional ``hash_key``, active
``health`` checks and ``passive`` outlier ejection. Groups are declared once in config.json
``upstreams`` and named by ``proxy`` / ``fetch`` nodes (``"upstream": "api"``, L4
``"target": "db"``), or written inline as a node's list of backends, which makes a group
named ``rule/<rule>`` (``rule/<rule>/2``, ... for further lists in the same rule).

Every problem is a ``ConfigError`` naming the file and the JSON pointer. A group's
``UpstreamDef`` carries its settings with the defaults filled in and a digest of them: the
daemon keeps a group's runtime state (health, drained backends) across reloads while the
digest stays the same. ``runtime`` is filled when the graph is linked.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Iterable

from vane.config.errors import ConfigError, pointer
from vane.config.schemas import MAX_BACKENDS
from vane.engine.template import Limits, Parts, TemplateError, parse, static_keys

__all__ = ["DEFAULT_HEALTH", "DEFAULT_PASSIVE", "MAX_RING_POINTS", "RING_POINTS", "BackendDef", "UpstreamDef",
           "UpstreamTable", "compile_upstreams"]

DEFAULT_HEALTH: dict[str, Any] = {"path": "/", "interval": 5.0, "timeout": 2.0, "expect_status": None,
                                  "rise": 2, "fall": 3}
HEALTH_HTTP_ONLY = ("path", "expect_status", "host", "verify", "ca_file")
DEFAULT_PASSIVE: dict[str, Any] = {"max_fails": 3, "fail_timeout": 10.0, "errors": ["connect", "timeout"]}
DEFAULT_L4_HASH_KEY = "{{conn.ip}}"
GROUP_KEYS = ("balance", "hash_key", "health", "passive")

RING_POINTS = 100               # hash ring points per unit of weight
MAX_RING_POINTS = 1 << 18       # per tier (primaries, backups): bounds memory and build time

_URL = re.compile(r"^(https?://|unix:/)")
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[^\s:\[\]/]+):([0-9]{1,5})$")


class BackendDef:
    """One backend as configured: its address (URL at L7, ``host:port`` at L4), weight, backup."""

    __slots__ = ("address", "weight", "backup", "pointer")

    def __init__(self, address: str, weight: int = 1, backup: bool = False, pointer: str = "") -> None:
        self.address = address
        self.weight = weight
        self.backup = backup
        self.pointer = pointer      # where it is written, e.g. "/upstreams/api/backends/1"

    def canonical(self) -> list:
        return [self.address, self.weight, self.backup]


class UpstreamDef:
    """One group's checked settings; ``runtime`` is the daemon's live group once linked."""

    __slots__ = ("name", "layer", "backends", "balance", "hash_key", "hash_parts", "health", "passive",
                 "file", "pointer", "inline", "digest", "runtime")

    def __init__(self, name: str, layer: str, backends: tuple[BackendDef, ...], balance: str,
                 hash_key: str | None, hash_parts: Parts | None, health: dict | None, passive: dict,
                 file: str, pointer: str, inline: bool) -> None:
        self.name = name
        self.layer = layer              # "l7" (URLs, HTTP checks) | "l4" (host:port, TCP checks)
        self.backends = backends
        self.balance = balance
        self.hash_key = hash_key
        self.hash_parts = hash_parts
        self.health = health            # None: no active checks
        self.passive = passive
        self.file = file
        self.pointer = pointer          # the group's object ("/upstreams/api", or a node's "/…/input")
        self.inline = inline
        canonical = {"name": name, "layer": layer, "backends": [b.canonical() for b in backends],
                     "balance": balance, "hash_key": hash_key, "health": health, "passive": passive}
        self.digest = hashlib.sha256(json.dumps(canonical, sort_keys=True, separators=(",", ":"))
                                     .encode("utf-8")).hexdigest()
        self.runtime: Any = None

    def where(self, suffix: str = "") -> tuple[str, str]:
        return self.file, self.pointer + suffix


class UpstreamTable:
    """Every group of a graph by name, and the group each ``proxy`` / ``fetch`` node uses."""

    __slots__ = ("groups", "by_node", "templated")

    def __init__(self) -> None:
        self.groups: dict[str, UpstreamDef] = {}
        self.by_node: dict[str, str] = {}      # node id -> group name
        self.templated: set[str] = set()       # layers with a templated upstream (may name any group)

    def of_node(self, node_id: str) -> UpstreamDef | None:
        name = self.by_node.get(node_id)
        return self.groups[name] if name is not None else None

    def named(self, name: str, layer: str) -> UpstreamDef | None:
        """A config.json group usable at ``layer`` (what a templated upstream may resolve to)."""
        d = self.groups.get(name)
        return d if d is not None and not d.inline and d.layer == layer else None


def compile_upstreams(config: dict, rules: Iterable[Any], limits: Limits,
                      errors: list[ConfigError]) -> UpstreamTable:
    """Check config.json ``upstreams`` and every ``proxy`` / ``fetch`` node's upstream.

    ``rules`` are compiled rules (``.flow``, ``.name``, ``.source.file``). Errors are appended.
    """
    table = UpstreamTable()
    config_failed = any(e.file == "config.json" for e in errors)   # its groups are unknown, not missing
    broken: set[str] = set()                                        # declared with errors (reported)
    for name, group in (config.get("upstreams") or {}).items():
        base = pointer("upstreams", name)
        layer = _layer_of(group["backends"], "config.json", base + "/backends", errors)
        d = None
        if layer is not None:
            d = _define(name, layer, group["backends"], group, "config.json", base, "/backends", False, limits,
                        errors)
        if d is not None:
            table.groups[name] = d
        else:
            broken.add(name)
    for rule in rules:
        inline = 0
        for node in rule.flow.walk():
            if node.plugin not in ("proxy", "fetch") or node.synthetic:
                continue
            layer = "l7" if node.layer == "l7" else "l4"
            key = "upstream" if layer == "l7" else "target"
            file = rule.source.file
            here = node.id.partition("#")[2] + "/input"
            raw = node.input.raw
            own = (node.source or {}).get(node.plugin, {}).get("input") or {}
            value = raw.get(key)
            if isinstance(value, list):
                if any("{{" in (v if isinstance(v, str) else v.get("address", "")) for v in value):
                    if "health" in own:     # templated backends: a group per resolved list, at run time
                        errors.append(ConfigError(file, f"{here}/health", "health checks need backends known at "
                                                  "compile time: a templated list has passive health only"))
                    continue
                inline += 1
                name = f"rule/{rule.name}" + (f"/{inline}" if inline > 1 else "")
                d = _define(name, layer, value, raw, file, here, f"/{key}", True, limits, errors)
                if d is not None:
                    table.groups[name] = d
                    table.by_node[node.id] = name
                continue
            if not isinstance(value, str):
                continue
            if "{{" in value:
                table.templated.add(layer)
                _no_group_keys(own, file, here, "a templated upstream", errors)
                continue
            if _is_address(value, layer):
                _no_group_keys(own, file, here, "a single backend (use a list of backends or an upstream group)",
                               errors)
                continue
            group = table.groups.get(value)
            if group is None and (config_failed or value in broken):
                continue
            if group is None or group.inline:
                known = ", ".join(sorted(n for n, g in table.groups.items() if not g.inline)) or "none declared"
                what = "an upstream group" if layer == "l7" else "a host:port target or an upstream group"
                errors.append(ConfigError(file, f"{here}/{key}", f'unknown upstream group "{value}": expected '
                                          f"{what} (config.json upstreams: {known})"))
                continue
            if group.layer != layer:
                errors.append(ConfigError(file, f"{here}/{key}", _layer_mismatch(value, group.layer)))
                continue
            _no_group_keys(own, file, here, f'upstream group "{value}" (config.json /upstreams/{value})', errors)
            table.by_node[node.id] = value
    return table


def _is_address(value: str, layer: str) -> bool:
    return bool(_URL.match(value)) if layer == "l7" else ":" in value


def _layer_mismatch(name: str, layer: str) -> str:
    if layer == "l4":
        return f'upstream group "{name}" has host:port backends (TCP): an HTTP "upstream" needs URL backends'
    return f'upstream group "{name}" has URL backends (HTTP): an L4 "target" needs host:port backends'


def _no_group_keys(own: dict, file: str, here: str, what: str, errors: list[ConfigError]) -> None:
    for key in GROUP_KEYS:
        if key in own:
            errors.append(ConfigError(file, f"{here}/{key}", f'"{key}" does not apply to {what}'))


def _address(item: Any) -> str:
    return item if isinstance(item, str) else item["address"]


def _layer_of(items: list, file: str, ptr: str, errors: list[ConfigError]) -> str | None:
    urls = [bool(_URL.match(_address(item))) for item in items]
    if all(urls):
        return "l7"
    if not any(urls):
        return "l4"
    odd = urls.index(not urls[0])
    errors.append(ConfigError(file, f"{ptr}/{odd}", "a group's backends are all URLs (HTTP) or all host:port "
                                                    "(TCP); this one differs from the first"))
    return None


def _define(name: str, layer: str, items: list, options: dict, file: str, base: str, list_key: str,
            inline: bool, limits: Limits, errors: list[ConfigError]) -> UpstreamDef | None:
    """Check one group; None when it has errors (they are appended)."""
    n_errors = len(errors)
    at = base + list_key
    backends: list[BackendDef] = []
    seen: dict[str, int] = {}
    if len(items) > MAX_BACKENDS:       # the schema says so too; a node list is checked here again
        errors.append(ConfigError(file, at, f"more than {MAX_BACKENDS} backends"))
        return None
    for i, item in enumerate(items):
        address = _address(item)
        where = f"{at}/{i}" + ("" if isinstance(item, str) else "/address")
        if "{{" in address:
            errors.append(ConfigError(file, where, "a group's backends cannot be templated"))
            continue
        if layer == "l4" and not _valid_host_port(address):
            errors.append(ConfigError(file, where, f"{address!r}: expected host:port"))
            continue
        if address in seen:
            errors.append(ConfigError(file, where, f"duplicate backend {address!r} (also at {at}/{seen[address]})"))
            continue
        seen[address] = i
        weight = 1 if isinstance(item, str) else item.get("weight", 1)
        backup = False if isinstance(item, str) else item.get("backup", False)
        backends.append(BackendDef(address, weight, backup, f"{at}/{i}"))
    if backends and all(b.backup for b in backends):
        errors.append(ConfigError(file, at, "every backend is a backup: at least one must be a primary"))
    balance = options.get("balance") or "round_robin"
    hash_key = options.get("hash_key")
    hash_parts = None
    if balance == "hash":
        if hash_key is None and layer == "l4":
            hash_key = DEFAULT_L4_HASH_KEY
        if hash_key is None:
            errors.append(ConfigError(file, base + ("/balance" if "balance" in options else ""),
                                      'balance "hash" needs "hash_key", the request part to hash, e.g. '
                                      '"{{req.cookie.session}}" or "{{conn.ip}}"'))
        else:
            hash_parts = _hash_parts(hash_key, layer, inline, file, base + "/hash_key", limits, errors)
        for tier in (False, True):
            points = sum(RING_POINTS * b.weight for b in backends if b.backup is tier)
            if points > MAX_RING_POINTS:
                errors.append(ConfigError(file, at, f"hashing over these backends takes {points} ring points, over "
                                                    f"the {MAX_RING_POINTS} limit: lower their weights"))
    elif hash_key is not None:
        errors.append(ConfigError(file, base + "/hash_key", '"hash_key" is used only with balance "hash"'))
    health = options.get("health")
    if health is not None:
        if layer == "l4":
            for key in HEALTH_HTTP_ONLY:
                if key in health:
                    errors.append(ConfigError(file, f"{base}/health/{key}", f'"{key}" is for HTTP checks: an L4 '
                                                                           "group is checked by TCP connect"))
        if inline:                      # checks reach the backends as the node does
            for key in ("verify", "ca_file"):
                value = options.get(key)
                if key not in health and value is not None and not (isinstance(value, str) and "{{" in value):
                    health = {**health, key: value}
        health = {**DEFAULT_HEALTH, **health}
        for key in ("interval", "timeout"):
            health[key] = float(health[key])
        status = health["expect_status"]
        if status is not None:
            health["expect_status"] = sorted(set(status if isinstance(status, list) else [status]))
    passive = {**DEFAULT_PASSIVE, **(options.get("passive") or {})}
    passive["fail_timeout"] = float(passive["fail_timeout"])
    passive["errors"] = sorted(passive["errors"])
    if layer == "l4" and "5xx" in passive["errors"]:
        errors.append(ConfigError(file, f"{base}/passive/errors", '"5xx" is for HTTP groups'))
    if len(errors) > n_errors:
        return None
    return UpstreamDef(name, layer, tuple(backends), balance, hash_key, hash_parts, health, passive, file, base,
                       inline)


def _valid_host_port(address: str) -> bool:
    m = _HOST_PORT.match(address)
    return m is not None and 0 < int(m.group(2)) < 65536


def _hash_parts(text: str, layer: str, inline: bool, file: str, ptr: str, limits: Limits,
                errors: list[ConfigError]) -> Parts | None:
    try:
        parts = parse(text, limits)
    except TemplateError as exc:
        errors.append(ConfigError(file, ptr, f"template: {exc}"))
        return None
    keys = list(static_keys(parts))
    if not keys:
        errors.append(ConfigError(file, ptr, "hash_key must name what to hash with {{...}}, e.g. "
                                             "{{req.cookie.session}}: a constant sends everything to one backend"))
    for key in keys:
        if key.startswith("res."):
            errors.append(ConfigError(file, ptr, f'"{key}" does not exist before the upstream answers'))
        elif key.startswith("req.") and layer == "l4":
            errors.append(ConfigError(file, ptr, f'"{key}" exists only in HTTP flows: an L4 group hashes '
                                                 "connections (conn.*, tls.*, ...)"))
        elif key.startswith("plugin.") and not inline:
            errors.append(ConfigError(file, ptr, f'"{key}": a config.json group cannot name plugin outputs '
                                                 "(write the backend list in the node instead)"))
    return parts
