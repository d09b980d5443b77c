"""The built-in plugins as the compiler sees them: kind, layers, branches, input schema (DESIGN.md §6).

Pure data. Implementations are named by import path and loaded when a graph is linked.
Inputs that may be templated accept a string wherever a number is expected.
"""

from __future__ import annotations

from vane.config.schemas import GROUP_OPTIONS, HTTP_ADDRESS, backend_list
from vane.engine.ops import OPS
from vane.engine.plugin import LAYERS_ALL, LAYERS_L4, LAYERS_L7, Kind, PluginSpec
from vane.net.peek import PROTOCOLS as DETECT_PROTOCOLS

_STR = {"type": "string"}
_INT = {"anyOf": [{"type": "integer"}, {"type": "string", "pattern": r"\{\{"}]}
_NUM = {"anyOf": [{"type": "number", "minimum": 0}, {"type": "string", "pattern": r"\{\{"}]}
_BOOL = {"anyOf": [{"type": "boolean"}, {"type": "string", "pattern": r"\{\{"}]}
_STATUS = {"anyOf": [{"type": "integer", "minimum": 100, "maximum": 599},
                     {"type": "string", "pattern": r"\{\{"}]}
_STR_MAP = {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]}}
# one URL, a template, the name of a config.json ``upstreams`` group, or a list of backends
_UPSTREAM = {**backend_list({"pattern": HTTP_ADDRESS, "$comment": "expected an http://, https:// or unix: URL"}),
             "type": ["string", "array"], "pattern": r"^(https?://|unix:/|\{\{|[A-Za-z0-9][A-Za-z0-9_.\-]*$)",
             "$comment": "expected an http://, https:// or unix: URL, a template, or the name of an upstream group"}
# ``host:port``, a template, a group name, or a list of backends (each may be templated)
_TARGET = {**backend_list({"minLength": 1}), "type": ["string", "array"], "minLength": 1}

_COND = {
    "type": "object",
    "required": ["left", "op"],
    "additionalProperties": False,
    "properties": {"left": _STR, "op": {"enum": list(OPS)}, "right": {}},
}

_HTTP_UPSTREAM_PROPS = {
    "upstream": _UPSTREAM,
    "version": {"enum": ["auto", "h1", "h2"]},
    "connect_timeout": _NUM,
    "timeout": _NUM,            # whole response head
    "read_timeout": _NUM,       # body idle
    "verify": _BOOL,
    "ca_file": _STR,
    "sni": _STR,
    "host": _STR,               # Host header sent upstream; default: the client's
    "retries": {"type": "integer", "minimum": 0, "maximum": 5},
    "headers": _STR_MAP,
    **GROUP_OPTIONS,            # with a list of backends
}

_HEADER_OPS = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"set": _STR_MAP, "add": _STR_MAP,
                   "remove": {"type": "array", "items": _STR}},
}


def _obj(props: dict, required: tuple[str, ...] = (), **extra) -> dict:
    schema = {"type": "object", "additionalProperties": False, "properties": props}
    if required:
        schema["required"] = list(required)
    schema.update(extra)
    return schema


def _spec(name: str, kind: Kind, layers: frozenset[str], branches: tuple[str, ...], impl: str,
          schema: dict, outputs: tuple[str, ...] | None = (), *, blocking: bool,
          has_next: bool = False) -> PluginSpec:
    """``blocking``: the plugin may wait on I/O, so the executor arms the flow timer before it
    (pure computation does not need one). ``has_next``: a terminator handing over to
    ``output.next`` (the next layer's tree)."""
    return PluginSpec(name=name, kind=kind, layers=layers, branches=branches,
                      impl=f"vane.plugins.builtin.{impl}", input_schema=schema, outputs=outputs,
                      has_next=has_next, blocking=blocking)


BUILTINS: tuple[PluginSpec, ...] = (
    _spec("match", Kind.GENERIC_MIDDLEWARE, LAYERS_ALL, ("true", "false"), "match:Match",
          _obj({**_COND["properties"], "all": {"type": "array", "items": _COND}},
               anyOf=[{"required": ["left", "op"]}, {"required": ["all"]}]), blocking=False),
    PluginSpec(name="route", kind=Kind.GENERIC_MIDDLEWARE, layers=LAYERS_ALL, branches=(),
               impl="vane.plugins.builtin.route:Route", input_schema=_obj({"routes": {
                   "type": "array", "items": _obj({"name": {"type": "string", "pattern": r"^[^{}*]+$"},
                                                   "match": {"type": "object", "minProperties": 1}},
                                                  ("name", "match"))}}, ("routes",)),
               outputs=(), dynamic_branches=True, blocking=False),
    _spec("ratelimit", Kind.GENERIC_MIDDLEWARE, LAYERS_ALL, ("allow", "deny"), "ratelimit:RateLimit",
          _obj({"key": _STR, "rate": _NUM, "burst": _INT, "max_keys": {"type": "integer", "minimum": 1},
                "store": {"type": "string", "pattern": r"^(local|(redis|rediss|unix)://.+)$"}},
               ("key", "rate")), outputs=("remaining",), blocking=False),
    _spec("set", Kind.GENERIC_MIDDLEWARE, LAYERS_ALL, ("next",), "setvars:SetVars",
          {"type": "object", "propertyNames": {"pattern": r"^var\.[A-Za-z0-9_.\-]+$"},
           "additionalProperties": {"type": ["string", "number", "boolean"]}}, blocking=False),
    _spec("detect", Kind.L4_MIDDLEWARE, LAYERS_L4, DETECT_PROTOCOLS, "detect:Detect",
          _obj({"timeout": _NUM, "max_bytes": {"type": "integer", "minimum": 1, "maximum": 65536}}), blocking=True),
    _spec("proxy", Kind.TERMINATOR, LAYERS_L4, (), "proxy_l4:L4Proxy",
          _obj({"target": _TARGET, **GROUP_OPTIONS,
                "connect_timeout": _NUM, "idle_timeout": _NUM,
                "proxy_protocol": {"enum": ["v1", "v2"]}}, ("target",)), blocking=True),
    _spec("deny", Kind.TERMINATOR, LAYERS_ALL, (), "deny:Deny",
          _obj({"status": _STATUS, "body": _STR, "headers": _STR_MAP}), blocking=False),
    _spec("upgrade", Kind.TERMINATOR, LAYERS_L4, (), "upgrade:Upgrade",
          _obj({"protocol": {"enum": ["tls", "http", "quic"]},
                "certs": {"type": "array", "minItems": 1,
                          "items": {"anyOf": [_obj({"cert": _STR, "key": _STR}, ("cert", "key")),
                                              _obj({"acme": {"type": "array", "minItems": 1, "items": _STR}},
                                                   ("acme",))]}},
                "alpn": {"type": "array", "items": {"enum": ["h2", "http/1.1"]}}},
               ("protocol",)), blocking=True, has_next=True),
    _spec("fetch", Kind.HTTP_MIDDLEWARE, LAYERS_L7, ("success", "failure"), "fetch:Fetch",
          _obj(dict(_HTTP_UPSTREAM_PROPS), ("upstream",)), outputs=("error",), blocking=True),
    _spec("headers", Kind.HTTP_MIDDLEWARE, LAYERS_L7, ("next",), "headers:HeadersPlugin",
          _obj({"request": _HEADER_OPS, "response": _HEADER_OPS}), blocking=False),
    _spec("rewrite", Kind.HTTP_MIDDLEWARE, LAYERS_L7, ("next",), "rewrite:Rewrite",
          _obj({"path": _STR, "query": _STR}), blocking=False),
    _spec("static", Kind.HTTP_MIDDLEWARE, LAYERS_L7, ("success", "not_found", "failure"), "static:Static",
          _obj({"root": _STR, "index": {"anyOf": [_STR, {"type": "array", "items": _STR}]},
                "spa": {"anyOf": [{"type": "boolean"}, _STR]}, "browse": {"type": "boolean"},
                "precompressed": {"type": "boolean"}, "symlinks": {"type": "boolean"},
                "strip_prefix": _STR, "cache_control": _STR}, ("root",)),
          outputs=("file", "error"), blocking=True),
    _spec("acme_challenge", Kind.TERMINATOR, LAYERS_L7, (), "acme_challenge:AcmeChallenge",
          _obj({}), blocking=False),
    _spec("respond", Kind.TERMINATOR, LAYERS_L7, (), "respond:Respond",
          _obj({"status": _STATUS, "headers": _STR_MAP, "body": _STR, "body_base64": _STR,
                "content_type": _STR}), blocking=False),
    _spec("proxy", Kind.TERMINATOR, LAYERS_L7, (), "proxy_l7:L7Proxy",
          _obj({**_HTTP_UPSTREAM_PROPS, "websocket": {"type": "boolean"},
                "forwarded": {"type": "boolean"},
                "trusted_proxies": {"type": "array", "items": _STR}}, ("upstream",)), blocking=True),
    _spec("redirect", Kind.TERMINATOR, LAYERS_L7, (), "redirect:Redirect",
          _obj({"location": _STR, "status": {"anyOf": [{"enum": [301, 302, 303, 307, 308]},
                                                         {"type": "string", "pattern": r"\{\{"}]}},
               ("location",)), blocking=False),
    _spec("cgi", Kind.TERMINATOR, LAYERS_L7, (), "cgi:Cgi",
          _obj({"script": _STR, "script_name": _STR, "env": _STR_MAP,
                "uid": {"type": "integer", "minimum": 0}, "gid": {"type": "integer", "minimum": 0},
                "timeout": _NUM, "max_output": {"type": "integer", "minimum": 1}}, ("script",)), blocking=True),
)

# Input keys that tell the two `proxy` kinds apart when a rule's layer is being decided.
L4_PROXY_KEYS = frozenset({"target"})
L7_PROXY_KEYS = frozenset({"upstream"})
