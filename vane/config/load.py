"""Load a config directory: ``.env``, ``config.json``, ``rules/*.json`` (DESIGN.md §2).

Files merge in lexical order, rules in file order. Every file is checked against its schema
and all errors of all files are reported at once, each with file and JSON pointer. The files
a rule names (certificates, keys) are digested so the graph hash changes when they do.

Whatever a file holds, loading it ends in data or in errors naming it, never in an
exception: only regular files are read, each up to a size limit, and JSON nested deeper
than ``MAX_DEPTH`` levels is refused before it is parsed, so no later stage (schema
validation, flow building, rendering) recurses anywhere near Python's limit.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import sys
from dataclasses import dataclass, field
from itertools import accumulate, repeat
from operator import sub
from typing import Any, Mapping

from dotenv import dotenv_values

from .errors import CompileFailed, ConfigError
from .files import MAX_CERT_BYTES, MAX_WASM_BYTES, FileRefused, read_regular
from .schemas import CONFIG_VALIDATOR, RULE_VALIDATOR, schema_errors
from .settings import Settings

MAX_FILE_BYTES = 8 * 1024 * 1024    # config.json, one rule file
MAX_ENV_BYTES = 1024 * 1024         # .env
MAX_DEPTH = 256                     # nested arrays and objects in one JSON file

_FAILED: Any = object()             # _read_json's "no value" (a file may hold a JSON null)
_STRING = re.compile(r'"(?:[^"\\]++|\\.)*+"', re.DOTALL)
_TO_PARENS = bytes.maketrans(b"[{]}", b"(())")
_NOT_BRACKET = bytes(set(range(256)) - set(b"[]{}"))
_STEP = bytes.maketrans(b"()", b"\x02\x00")
_CHEAP_PASSES = 4


@dataclass
class RuleSource:
    rule: dict[str, Any]
    file: str       # relative to the config dir
    pointer: str    # "" when the file holds one rule, "/3" for the 4th of a list
    index: int      # merge order


@dataclass
class Sources:
    config_dir: str
    config: dict[str, Any] = field(default_factory=dict)
    rules: list[RuleSource] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    file_digests: dict[str, str] = field(default_factory=dict)
    errors: list[ConfigError] = field(default_factory=list)  # schema errors; compile reports them

    def canonical(self) -> dict[str, Any]:
        """The merged input the graph hash is computed over."""
        return {"config": self.config, "rules": [r.rule for r in self.rules], "files": self.file_digests}


def read_env(config_dir: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``<dir>/.env`` under the OS environment (the OS environment wins).

    Raises CompileFailed naming ``.env`` when it exists but cannot be used (not a regular
    file, over ``MAX_ENV_BYTES``, unreadable, not UTF-8).
    """
    environ = os.environ if environ is None else environ
    merged: dict[str, str] = {}
    path = os.path.join(config_dir, ".env")
    if os.path.lexists(path):
        merged.update(_read_dotenv(path))
    merged.update(environ)
    return merged


def _read_dotenv(path: str) -> dict[str, str]:
    try:
        data = read_regular(path, MAX_ENV_BYTES)
        text = data.decode("utf-8")
    except OSError as exc:
        raise CompileFailed([ConfigError(".env", "", _os_reason(exc))]) from None
    except UnicodeDecodeError as exc:
        raise CompileFailed([ConfigError(".env", "", _not_utf8(data, exc))]) from None
    return {k: v for k, v in dotenv_values(stream=io.StringIO(text)).items() if v is not None}


def load_settings(config_dir: str, environ: Mapping[str, str] | None = None) -> Settings:
    return Settings.from_env(read_env(config_dir, environ))


def _os_reason(exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    return reason if isinstance(exc, FileRefused) else f"cannot read: {reason}"


def _line_col(text: str, pos: int) -> str:
    line = text.count("\n", 0, pos) + 1
    column = pos - text.rfind("\n", 0, pos)
    return f"line {line} column {column}"


def _not_utf8(data: bytes, exc: UnicodeDecodeError) -> str:
    line = data.count(b"\n", 0, exc.start) + 1
    column = exc.start - data.rfind(b"\n", 0, exc.start)
    return f"not UTF-8: byte 0x{data[exc.start]:02x} at line {line} column {column} ({exc.reason})"


def nested_deeper_than(text: str, limit: int) -> bool:
    """Whether arrays and objects in the JSON ``text`` nest deeper than ``limit`` levels.

    No recursion and no parse, linear time: strings are cut out (all of the text after a
    quote that never closes is one), every bracket becomes ``(`` or ``)``, a few passes remove
    the innermost pairs (one level each), and the deepest running count of what is left is
    added. Brackets left unmatched count as the levels they open, so a broken text is
    measured by how deep a parser would go into it.
    """
    outside = _STRING.sub("", text)
    unterminated = outside.find('"')
    if unterminated >= 0:
        outside = outside[:unterminated]
    parens = outside.encode("utf-8", "surrogatepass").translate(_TO_PARENS, _NOT_BRACKET)
    passes = 0
    while parens and passes < _CHEAP_PASSES:
        shorter = parens.replace(b"()", b"")
        if len(shorter) == len(parens):
            break
        parens, passes = shorter, passes + 1
    if not parens:
        return passes > limit
    steps = parens.translate(_STEP)  # "(" -> 2, ")" -> 0: a step is that minus 1
    return passes + max(0, max(accumulate(map(sub, steps, repeat(1))))) > limit


def _reject_constant(name: str) -> Any:
    raise _NotJSON(f"{name} is not a JSON number")


class _NotJSON(ValueError):
    pass


def _read_json(path: str, rel: str, errors: list[ConfigError]) -> Any:
    """The JSON value of a file, or ``_FAILED`` after adding the reason to ``errors``."""
    try:
        data = read_regular(path, MAX_FILE_BYTES)
    except OSError as exc:
        errors.append(ConfigError(rel, "", _os_reason(exc)))
        return _FAILED
    try:
        text = data.decode(json.detect_encoding(data))
    except UnicodeDecodeError as exc:
        errors.append(ConfigError(rel, "", _not_utf8(data, exc)))
        return _FAILED
    if nested_deeper_than(text, MAX_DEPTH):
        errors.append(ConfigError(rel, "", f"nested too deeply: more than {MAX_DEPTH} levels of arrays and objects"))
        return _FAILED
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        errors.append(ConfigError(rel, "", f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"))
    except _NotJSON as exc:
        errors.append(ConfigError(rel, "", f"invalid JSON: {exc}"))
    except ValueError:  # an integer literal over Python's digit limit
        digits = sys.get_int_max_str_digits()
        match = re.search(r"\d{%d,}" % (digits + 1), text) if digits else None
        where = f" at {_line_col(text, match.start())}" if match else ""
        errors.append(ConfigError(rel, "", f"invalid JSON{where}: an integer literal longer than {digits} digits"))
    return _FAILED


def rule_files(config_dir: str, errors: list[ConfigError]) -> list[str]:
    """``rules/*.json`` in lexical order (hidden files left out); a ``rules`` that cannot be
    listed is an error. Every listed name is read as a rule file: one that is not a regular
    file (a directory, a FIFO, a dangling link) is an error when it is read."""
    rules_dir = os.path.join(config_dir, "rules")
    if not os.path.lexists(rules_dir):
        return []
    try:
        names = os.listdir(rules_dir)
    except OSError as exc:
        errors.append(ConfigError("rules", "", f"cannot list the rules directory: {exc.strerror or exc}"))
        return []
    return sorted(os.path.join("rules", name) for name in names
                  if name.endswith(".json") and not name.startswith("."))


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a string" if isinstance(value, str) else "a number"


def load_rule_file(config_dir: str, rel: str, start_index: int, errors: list[ConfigError]) -> list[RuleSource]:
    data = _read_json(os.path.join(config_dir, rel), rel, errors)
    if data is _FAILED:
        return []
    if isinstance(data, dict):
        items, pointers = [data], [""]
    elif isinstance(data, list):
        items, pointers = data, [f"/{i}" for i in range(len(data))]
    else:
        errors.append(ConfigError(rel, "", "a rule file holds one rule object or a list of rules "
                                           f"(found {_json_kind(data)})"))
        return []
    out: list[RuleSource] = []
    for item, ptr in zip(items, pointers, strict=True):
        errs = list(schema_errors(RULE_VALIDATOR, item, rel, ptr))
        if errs:
            errors.extend(errs)
            continue
        out.append(RuleSource(item, rel, ptr, start_index + len(out)))
    return out


def load_dir(config_dir: str, environ: Mapping[str, str] | None = None,
             only_rule_file: str | None = None) -> Sources:
    """Read and schema-check a config dir. Schema errors are kept in ``sources.errors`` (the
    compiler adds its own and reports them all); a missing directory raises CompileFailed.

    ``only_rule_file``: compile this single rule file instead of ``rules/*.json`` (still with
    the dir's config.json and .env) — `vane compile FILE --config DIR`.
    """
    errors: list[ConfigError] = []
    sources = Sources(config_dir=os.path.abspath(config_dir))
    if not os.path.isdir(config_dir):
        raise CompileFailed([ConfigError("", "", f"config directory {config_dir!r} does not exist")])
    sources.env = read_env(config_dir, environ)
    config_path = os.path.join(config_dir, "config.json")
    if os.path.lexists(config_path):
        config = _read_json(config_path, "config.json", errors)
        if config is not _FAILED:
            errs = list(schema_errors(CONFIG_VALIDATOR, config, "config.json"))
            if errs:
                errors.extend(errs)
            else:
                sources.config = config
    if only_rule_file is not None:
        rel = os.path.relpath(only_rule_file, config_dir) if os.path.isabs(only_rule_file) else only_rule_file
        files = [rel]
    else:
        files = rule_files(config_dir, errors)
    for rel in files:
        sources.rules.extend(load_rule_file(config_dir, rel, len(sources.rules), errors))
    sources.errors = errors
    sources.file_digests = _digest_referenced(sources)
    return sources


def load_single_rule_file(path: str, config_dir: str | None = None,
                          environ: Mapping[str, str] | None = None) -> Sources:
    """`vane compile FILE`: one rule file alone, with the plugins of ``config_dir`` when given."""
    if config_dir is not None:
        return load_dir(config_dir, environ, only_rule_file=os.path.abspath(path))
    errors: list[ConfigError] = []
    base = os.path.dirname(os.path.abspath(path))
    if os.path.basename(base) == "rules":
        base = os.path.dirname(base)
    sources = Sources(config_dir=base, env=dict(os.environ if environ is None else environ))
    rel = os.path.relpath(os.path.abspath(path), base)
    sources.rules = load_rule_file(base, rel, 0, errors)
    sources.errors = errors
    sources.file_digests = _digest_referenced(sources)
    return sources


def _digest_referenced(sources: Sources) -> dict[str, str]:
    """sha256 of each cert/key/wasm file the config names, each read once and bounded like
    the linker reads it (a file that cannot be read is "missing"; the linker says why)."""
    limits: dict[str, int] = {}
    for rs in sources.rules:
        tls = rs.rule.get("tls")
        for part in ("cert", "key"):  # an ACME rule names no file
            if tls and part in tls:
                limits.setdefault(tls[part], MAX_CERT_BYTES)
    for decl in (sources.config.get("plugins") or {}).values():
        if "wasm" in decl:
            limits.setdefault(decl["wasm"], MAX_WASM_BYTES)
    digests: dict[str, str] = {}
    for rel, limit in limits.items():
        try:
            digests[rel] = hashlib.sha256(read_regular(resolve_path(sources.config_dir, rel), limit)).hexdigest()
        except OSError:
            digests[rel] = "missing"
    return digests


def resolve_path(config_dir: str, path: str) -> str:
    """Relative paths in rules resolve against the config dir."""
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(config_dir, path))
