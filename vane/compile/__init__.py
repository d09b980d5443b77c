"""The rule compiler (DESIGN.md §3): config sources -> FlowGraph. Pure: no sockets, no daemon.

``compile_sources`` collects every error before failing, so an operator fixes a broken config
in one pass. The graph hash is the sha256 of the canonical JSON of the merged input (config,
rules, and digests of the files they name).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Mapping

from vane.acme.plan import AcmePlan, acme_names, acme_settings
from vane.config.errors import CompileFailed, ConfigError, pointer
from vane.config.load import Sources, load_dir, load_single_rule_file
from vane.config.settings import Settings
from vane.engine.plugin import LinkEnv
from vane.engine.template import Limits
from vane.plugins.registry import registry_from_config

from .flows import FlowBuilder, infer_layer
from .graph import FlowGraph
from .listen import ListenAddr, ListenError, parse_listen, trusted_proxies_errors
from .lower import L4_PREDICATE_PREFIXES, CompiledRule, Lowerer, rule_conditions, tls_paths
from .upstreams import compile_upstreams

__all__ = ["compile_sources", "compile_dir", "compile_path", "link_offline", "FlowGraph", "ListenAddr",
           "graph_hash"]


def graph_hash(sources: Sources) -> str:
    canonical = json.dumps(sources.canonical(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def limits_of(settings: Settings) -> Limits:
    return Limits(settings.max_template_depth, settings.max_template_result_size, settings.max_template_parse_nodes)


def compile_sources(sources: Sources, settings: Settings | None = None) -> FlowGraph:
    """Compile loaded sources; raise CompileFailed with every error found."""
    if settings is None:
        settings = Settings.from_env(sources.env)
    registry, errors = registry_from_config(sources.config)
    errors[:0] = sources.errors
    limits = limits_of(settings)
    defaults = sources.config.get("defaults") or {}
    for name in defaults:
        if name not in registry:
            errors.append(ConfigError("config.json", pointer("defaults", name), f'unknown plugin "{name}"'))
    seen: dict[str, str] = {}
    listen_of: dict[str, list[ListenAddr] | ListenError] = {}  # most rules share a few listen texts
    compiled: list[CompiledRule] = []
    for rs in sources.rules:
        rule = rs.rule
        name = rule["rule"]
        if name in seen:
            errors.append(ConfigError(rs.file, rs.pointer + "/rule",
                                      f'duplicate rule name "{name}" (also in {seen[name]})'))
            continue
        seen[name] = rs.file
        n_errors = len(errors)
        conds = rule_conditions(rs, errors)
        fits, terminators = infer_layer(rule["flow"], registry)
        has_req = any(c.key.startswith("req.") for c in conds)
        if not fits:
            errors.append(ConfigError(rs.file, rs.pointer + "/flow", "rule mixes L4 and L7 terminators: "
                                      + ", ".join(terminators)))
            continue
        layer = next(iter(fits)) if len(fits) == 1 else ("L7" if rule.get("tls") or has_req else "L4")
        if layer == "L4":
            for c in conds:
                if not c.key.startswith(L4_PREDICATE_PREFIXES):
                    errors.append(ConfigError(rs.file, rs.pointer + pointer("match", c.key),
                                              f'"{c.key}" predicates need an HTTP rule; this rule is L4 '
                                              f"(terminators: {', '.join(terminators)})"))
            if rule.get("tls"):
                errors.append(ConfigError(rs.file, rs.pointer + "/tls",
                                          '"tls" terminates TLS for HTTP rules; this rule is L4 (use an '
                                          '"upgrade" node with protocol "tls" in its flow instead)'))
        addrs: dict[ListenAddr, None] = {}  # distinct, in listen order
        listens = rule["listen"] if isinstance(rule["listen"], list) else [rule["listen"]]
        for i, text in enumerate(listens):
            parsed = listen_of.get(text)
            if parsed is None:
                try:
                    parsed = listen_of[text] = parse_listen(text, settings.bind_ipv4, settings.bind_ipv6)
                except ListenError as exc:
                    parsed = listen_of[text] = exc
            if isinstance(parsed, ListenError):
                where = "/listen" + (f"/{i}" if isinstance(rule["listen"], list) else "")
                errors.append(ConfigError(rs.file, rs.pointer + where, str(parsed)))
            else:
                addrs.update(dict.fromkeys(parsed))
        builder = FlowBuilder(registry, limits, rs.file, name, errors, defaults)
        flow = builder.build(rule["flow"], rs.pointer + "/flow", "l4" if layer == "L4" else "l7")
        if flow is None or len(errors) > n_errors:
            continue
        tls = rule.get("tls") or {}
        http3 = bool(tls) and tls.get("http3", sources.config.get("http3", False)) is True
        acme = None
        if tls.get("acme"):
            acme = acme_names(rule, rs.file, rs.pointer, errors)
            if acme is None:
                continue
            http3 = False           # a config.json "http3" default leaves ACME rules out
            if tls.get("http3") is True:
                errors.append(ConfigError(rs.file, rs.pointer + "/tls", '"http3" needs certificate files ("cert" '
                                          'and "key"): HTTP/3 does not serve ACME certificates yet'))
                continue
        compiled.append(CompiledRule(rs, name, layer, conds, flow, list(addrs),
                                     None if acme else tls_paths(sources.config_dir, tls or None),
                                     rule.get("priority", 0), http3, acme))
    errors.extend(trusted_proxies_errors(sources.config))
    upstreams = compile_upstreams(sources.config, compiled, limits, errors)
    name_sets = list(dict.fromkeys(r.acme for r in compiled if r.acme))
    plan = AcmePlan(acme_settings(sources.config, sources.config_dir), name_sets) if name_sets else None
    http01_addrs: list[ListenAddr] = []
    if plan is not None and "http-01" in plan.settings.challenges:
        http01_addrs = parse_listen(f":{plan.settings.http_port}", settings.bind_ipv4, settings.bind_ipv6)
    listeners = Lowerer(registry, limits, errors, plan).lower(compiled, http01_addrs)
    if errors:
        raise CompileFailed(sorted(errors, key=lambda e: e.file))
    graph = FlowGraph(graph_hash(sources), listeners, sources, registry, upstreams)
    graph.acme = plan
    return graph


def compile_dir(config_dir: str, environ: Mapping[str, str] | None = None,
                settings: Settings | None = None) -> FlowGraph:
    sources = load_dir(config_dir, environ)
    return compile_sources(sources, settings)


def compile_path(path: str, config_dir: str | None = None, environ: Mapping[str, str] | None = None) -> FlowGraph:
    """`vane compile PATH`: a config directory, or a single rule file (with ``config_dir``'s plugins)."""
    if os.path.isdir(path):
        return compile_dir(path, environ)
    if not os.path.exists(path):
        raise CompileFailed([ConfigError("", "", f"{path}: no such file or directory")])
    sources = load_single_rule_file(path, config_dir, environ)
    return compile_sources(sources)


def link_offline(graph: FlowGraph) -> None:
    """Link ``graph`` with no daemon, as `vane compile` does: every plugin is set up (certificates
    load, programs are under ``bin/``, WASM modules compile, CGI scripts are executable) with no
    daemon services, so nothing is bound, no greenlet starts and nothing is written (the WASM
    cache of ``VANE_STATE_DIR`` is left alone). Raises CompileFailed like ``FlowGraph.link``."""
    settings = dataclasses.replace(Settings.from_env(graph.sources.env), state_dir=None)
    graph.link(LinkEnv(settings, graph.config_dir, services=None))
