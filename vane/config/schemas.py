"""JSON Schemas (Draft 2020-12) for config.json and rules (DESIGN.md §2, §3, §6).

Plugin inputs are checked against each plugin's own schema by the compiler, which knows the
layer and so which implementation a name stands for.

Every document is checked first by jsonschema-rs (compiled; a reload checks thousands of rules
and plugin inputs), which only says valid or not; a document it does not accept, or cannot
take (a string that is not valid Unicode), is checked again by jsonschema, whose errors are
the ones reported. The verdict and the messages are jsonschema's: the fast check only skips
the slow one for documents it accepts.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

import jsonschema_rs
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from vane.engine.ops import OPS

from .errors import ConfigError

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"

NODE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "minProperties": 1,
    "maxProperties": 1,
    "propertyNames": {"pattern": r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"},
    "additionalProperties": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "input": {},
            "output": {"type": "object", "additionalProperties": {"$ref": "#/$defs/node"}},
        },
    },
}

RULE_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["rule", "listen", "flow"],
    "additionalProperties": False,
    "properties": {
        "rule": {"type": "string", "pattern": _NAME},
        "description": {"type": "string"},
        "listen": {"anyOf": [{"type": "string"},
                             {"type": "array", "minItems": 1, "items": {"type": "string"}}]},
        "priority": {"type": "integer"},
        "match": {
            "type": "object",
            "propertyNames": {"pattern": r"^(conn|listen|tls|peek|req)\.[A-Za-z0-9_.\-]+$"},
            "additionalProperties": {
                "anyOf": [
                    {"type": ["string", "number", "boolean"]},
                    {"type": "array", "items": {"type": ["string", "number"]}},
                    {"type": "object", "minProperties": 1,
                     "propertyNames": {"enum": list(OPS)}},
                ],
            },
        },
        "tls": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"cert": {"type": "string", "minLength": 1}, "key": {"type": "string", "minLength": 1},
                           "http3": {"type": "boolean"}, "acme": {"const": True}},
            # files, or an automatic certificate (the compiler refuses both at once)
            "if": {"required": ["acme"]}, "else": {"required": ["cert", "key"]},
        },
        "accept_proxy_protocol": {
            "type": "object",
            "required": ["trusted"],
            "additionalProperties": False,
            "properties": {"trusted": {"type": "array", "minItems": 1,
                                       "items": {"type": "string", "minLength": 1}}},
        },
        "flow": {"$ref": "#/$defs/node"},
    },
    "$defs": {"node": NODE_SCHEMA},
}

_PLUGIN_DECL: dict[str, Any] = {
    "type": "object",
    "required": ["branches"],
    "additionalProperties": False,
    "properties": {
        "wasm": {"type": "string", "minLength": 1},
        "http": {"type": "string", "pattern": r"^https?://"},
        "unix": {"type": "string", "minLength": 1},
        "command": {"type": "string", "minLength": 1},
        "args": {"type": "array", "items": {"type": "string"}},
        "env": {"type": "object", "additionalProperties": {"type": "string"}},
        "branches": {"type": "array", "minItems": 1, "uniqueItems": True,
                     "items": {"type": "string", "pattern": r"^[A-Za-z0-9_\-]+$"}},
        "params": {"type": "object", "additionalProperties": {
            "type": "object", "properties": {"required": {"type": "boolean"}}}},
        "extra_params": {"type": "boolean"},
        "reads": {"type": "array", "items": {"type": "string"}},
        "layers": {"type": "array", "items": {"enum": ["l4", "l4+", "l7"]}},
        "timeout": {"type": "number", "exclusiveMinimum": 0},
        "fuel": {"type": "integer", "minimum": 1},
        "memory_mb": {"type": "integer", "minimum": 1},
    },
}

# -- upstream groups (config.json ``upstreams``; ``proxy`` / ``fetch`` backend lists) -----------------

MAX_BACKENDS = 1000             # per group: state, ring and checks are linear in it
MAX_GROUPS = 1000
MAX_WEIGHT = 256
BALANCE = ("round_robin", "least_conn", "random", "hash")
PASSIVE_ERRORS = ("connect", "timeout", "5xx")
GROUP_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"
HTTP_ADDRESS = r"^(https?://|unix:/)"


def backend_item(address: Mapping[str, Any]) -> dict[str, Any]:
    """One backend: its address as a string, or ``{"address", "weight", "backup"}``. One schema
    for both forms (string keywords apply to strings, object keywords to objects), so an error
    points at the very field (``/backends/1/weight``)."""
    return {"type": ["string", "object"], **address,
            "required": ["address"], "additionalProperties": False,
            "properties": {"address": {"type": "string", **address},
                           "weight": {"type": "integer", "minimum": 1, "maximum": MAX_WEIGHT},
                           "backup": {"type": "boolean"}}}


def backend_list(address: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": "array", "minItems": 1, "maxItems": MAX_BACKENDS, "items": backend_item(address)}


_ADDRESS = {"minLength": 1, "pattern": r"^\S+$"}

HEALTH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "path": {"type": "string", "pattern": r"^/[^\s#]*$"},
        "interval": {"type": "number", "minimum": 0.1, "maximum": 86400},
        "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600},
        "expect_status": {"type": ["integer", "array"], "minimum": 100, "maximum": 599, "minItems": 1,
                          "maxItems": 100, "items": {"type": "integer", "minimum": 100, "maximum": 599}},
        "rise": {"type": "integer", "minimum": 1, "maximum": 100},
        "fall": {"type": "integer", "minimum": 1, "maximum": 100},
        "host": {"type": "string", "minLength": 1, "pattern": r"^[^\s]+$"},
        "verify": {"type": "boolean"},
        "ca_file": {"type": "string", "minLength": 1},
    },
}

PASSIVE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "max_fails": {"type": "integer", "minimum": 0, "maximum": 1000},
        "fail_timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 86400},
        "errors": {"type": "array", "uniqueItems": True, "items": {"enum": list(PASSIVE_ERRORS)}},
    },
}

# what a group holds besides its backends; a node with an inline backend list takes the same keys
GROUP_OPTIONS: dict[str, Any] = {
    "balance": {"enum": list(BALANCE)},
    "hash_key": {"type": "string", "minLength": 1},
    "health": HEALTH_SCHEMA,
    "passive": PASSIVE_SCHEMA,
}

GROUP_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["backends"],
    "additionalProperties": False,
    "properties": {"backends": backend_list(_ADDRESS), **GROUP_OPTIONS},
}

# -- automatic certificates (config.json ``acme``; rules' ``"tls": {"acme": true}``) -------------------

ACME_CHALLENGES = ("http-01", "tls-alpn-01")

ACME_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "email": {"type": "string", "pattern": r"^[^@\s]+@[^@\s]+$",
                  "$comment": "expected an e-mail address (name@domain)"},
        "directory": {"type": "string", "pattern": r"^(production|staging|https://\S+)$",
                      "$comment": 'expected "production", "staging" or an https:// directory URL'},
        "ca_bundle": {"type": "string", "minLength": 1},
        "challenges": {"type": "array", "minItems": 1, "uniqueItems": True,
                       "items": {"enum": list(ACME_CHALLENGES)}},
        "renew_before_days": {"type": "number", "exclusiveMinimum": 0, "maximum": 3650},
        "http_port": {"type": "integer", "minimum": 1, "maximum": 65535},
        "eab": {"type": "object", "required": ["kid", "hmac_key"], "additionalProperties": False,
                "properties": {"kid": {"type": "string", "minLength": 1},
                               "hmac_key": {"type": "string", "minLength": 1, "pattern": r"^[A-Za-z0-9_\-=]+$",
                                            "$comment": "expected the base64url HMAC key the CA gave"}}},
    },
}

CONFIG_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "plugins": {"type": "object", "propertyNames": {"pattern": r"^[A-Za-z0-9][A-Za-z0-9_\-]*$"},
                    "additionalProperties": _PLUGIN_DECL},
        "defaults": {"type": "object", "additionalProperties": {"type": "object"}},
        "http3": {"type": "boolean"},
        "upstream_pool": {
            "type": "object", "additionalProperties": False,
            "properties": {"max_idle_per_host": {"type": "integer", "minimum": 0},
                           "max_active_per_host": {"type": "integer", "minimum": 1},
                           "idle_timeout": {"type": "number", "minimum": 0},
                           "connect_timeout": {"type": "number", "exclusiveMinimum": 0},
                           "max_active_per_client": {"type": "integer", "minimum": 1},
                           "response_buffer": {"type": "integer", "minimum": 0}},
        },
        "trusted_proxies": {"type": "array", "items": {"type": "string", "minLength": 1}},
        "acme": ACME_SCHEMA,
        "upstreams": {"type": "object", "maxProperties": MAX_GROUPS, "propertyNames": {
            "pattern": GROUP_NAME, "$comment": "a group name is letters, digits, '_', '.' and '-', up to 128"},
                      "additionalProperties": GROUP_SCHEMA},
    },
}

class Validator:
    """One schema's two validators: jsonschema-rs to accept valid documents fast, jsonschema
    for the verdict on the others and for every error message."""

    __slots__ = ("schema", "fast", "full")

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self.schema = schema
        self.full = Draft202012Validator(schema)
        try:
            self.fast: Any = jsonschema_rs.validator_for(dict(schema))
        except Exception:  # noqa: BLE001 - a schema the fast validator cannot take is checked by jsonschema alone
            self.fast = None

    def accepts(self, instance: Any) -> bool:
        """True when the fast validator accepts ``instance`` (False: ask jsonschema)."""
        if self.fast is None:
            return False
        try:
            return bool(self.fast.is_valid(instance))
        except Exception:  # noqa: BLE001 - e.g. a lone surrogate in a string: jsonschema decides
            return False

    def iter_errors(self, instance: Any) -> Iterator[ValidationError]:
        if self.accepts(instance):
            return iter(())
        return self.full.iter_errors(instance)


RULE_VALIDATOR = Validator(RULE_SCHEMA)
CONFIG_VALIDATOR = Validator(CONFIG_SCHEMA)
_CACHE_MAX = 256
_VALIDATORS: dict[int, Validator] = {}


def validator_for(schema: Mapping[str, Any]) -> Validator:
    """The validator of a plugin's input schema, cached per schema object.

    Built-in schemas are module constants; an external plugin's is built anew by every
    compile, so the cache is bounded, and an entry counts only for the very object it was
    made for (it holds that object, so its id cannot be reused while it is cached).
    """
    v = _VALIDATORS.get(id(schema))
    if v is None or v.schema is not schema:
        if len(_VALIDATORS) >= _CACHE_MAX:
            _VALIDATORS.clear()
        v = _VALIDATORS[id(schema)] = Validator(schema)
    return v


def schema_errors(validator: Validator, instance: Any, file: str, base: str = "") -> Iterator[ConfigError]:
    """Every schema violation, located by JSON pointer (``base`` prefixes it), with a plain message."""
    for err in sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.absolute_path))):
        yield ConfigError(file, base + _pointer(err.absolute_path), _clip(describe(err), MAX_MESSAGE))


MAX_MESSAGE = 300  # a message quotes the offending value: a huge one is cut


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _pointer(path: Any) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


def describe(err: ValidationError) -> str:
    """Turn a jsonschema error into an operator-readable sentence."""
    v = err.validator
    if v == "required":
        missing = err.message.split("'")[1] if "'" in err.message else err.message
        return f'missing "{missing}"'
    if v == "additionalProperties" and err.validator_value is False:
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        return "unknown key" + ("s " if len(extra) > 1 else " ") + ", ".join(f'"{k}"' for k in extra)
    if v == "enum":
        return f"{_clip(repr(err.instance), 80)} is not one of " + ", ".join(repr(x) for x in err.validator_value)
    if v == "type":
        want = err.validator_value
        want = " or ".join(want) if isinstance(want, list) else want
        return f"must be of type {want}, got {type(err.instance).__name__}"
    if v == "propertyNames":
        return f"invalid name {_clip(repr(err.instance), 80)}" if not isinstance(err.instance, dict) else err.message
    if v == "minLength" and err.validator_value == 1:
        return "must not be empty"
    if v in ("maxProperties", "minProperties") and err.schema is NODE_SCHEMA:
        return f"a node has exactly one key, the plugin name (found {len(err.instance)})"
    if v == "pattern" and isinstance(err.schema.get("$comment"), str):
        return f"{_clip(repr(err.instance), 80)}: {err.schema['$comment']}"
    if v == "anyOf":
        return f"invalid value {_clip(repr(err.instance), 80)}"
    return err.message
