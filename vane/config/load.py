"""Load a config directory: ``.env``, ``config.json``, ``rules/*.json`` (DESIGN.md §2).

Files merge in lexical order, rules in file order. Every file is checked against its schema
and all errors of all files are reported at once, each with file and JSON pointer. The files
a rule names (certificates, keys) are digested so the graph hash changes when they do.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from dotenv import dotenv_values

from .errors import CompileFailed, ConfigError
from .schemas import CONFIG_VALIDATOR, RULE_VALIDATOR, schema_errors
from .settings import Settings

MAX_FILE_BYTES = 8 * 1024 * 1024


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
    """``<dir>/.env`` under the OS environment (the OS environment wins)."""
    environ = os.environ if environ is None else environ
    merged: dict[str, str] = {}
    path = os.path.join(config_dir, ".env")
    if os.path.isfile(path):
        merged.update({k: v for k, v in dotenv_values(path).items() if v is not None})
    merged.update(environ)
    return merged


def load_settings(config_dir: str, environ: Mapping[str, str] | None = None) -> Settings:
    return Settings.from_env(read_env(config_dir, environ))


def _read_json(path: str, rel: str, errors: list[ConfigError]) -> Any:
    try:
        size = os.path.getsize(path)
        if size > MAX_FILE_BYTES:
            errors.append(ConfigError(rel, "", f"file is {size} bytes, over the {MAX_FILE_BYTES} limit"))
            return None
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        errors.append(ConfigError(rel, "", f"cannot read: {exc.strerror or exc}"))
        return None
    try:
        return json.loads(data)
    except UnicodeDecodeError as exc:
        errors.append(ConfigError(rel, "", f"not UTF-8: {exc}"))
    except json.JSONDecodeError as exc:
        errors.append(ConfigError(rel, "", f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"))
    return None


def rule_files(config_dir: str) -> list[str]:
    rules_dir = os.path.join(config_dir, "rules")
    if not os.path.isdir(rules_dir):
        return []
    return sorted(
        os.path.join("rules", name) for name in os.listdir(rules_dir)
        if name.endswith(".json") and not name.startswith(".")
        and os.path.isfile(os.path.join(rules_dir, name))
    )


def load_rule_file(config_dir: str, rel: str, start_index: int, errors: list[ConfigError]) -> list[RuleSource]:
    data = _read_json(os.path.join(config_dir, rel), rel, errors)
    if data is None:
        return []
    if isinstance(data, dict):
        items, pointers = [data], [""]
    elif isinstance(data, list):
        items, pointers = data, [f"/{i}" for i in range(len(data))]
    else:
        errors.append(ConfigError(rel, "", "a rule file holds one rule object or a list of rules"))
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
    if os.path.exists(config_path):
        config = _read_json(config_path, "config.json", errors)
        if config is not None:
            errs = list(schema_errors(CONFIG_VALIDATOR, config, "config.json"))
            if errs:
                errors.extend(errs)
            else:
                sources.config = config
    if only_rule_file is not None:
        rel = os.path.relpath(only_rule_file, config_dir) if os.path.isabs(only_rule_file) else only_rule_file
        files = [rel]
    else:
        files = rule_files(config_dir)
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
    """sha256 of each cert/key/wasm file the config names (missing files are left to the linker)."""
    paths: list[str] = []
    for rs in sources.rules:
        tls = rs.rule.get("tls")
        if tls:
            paths += [tls["cert"], tls["key"]]
    for decl in (sources.config.get("plugins") or {}).values():
        if "wasm" in decl:
            paths.append(decl["wasm"])
    digests: dict[str, str] = {}
    for rel in paths:
        full = resolve_path(sources.config_dir, rel)
        try:
            with open(full, "rb") as fh:
                digests[rel] = hashlib.sha256(fh.read()).hexdigest()
        except OSError:
            digests[rel] = "missing"
    return digests


def resolve_path(config_dir: str, path: str) -> str:
    """Relative paths in rules resolve against the config dir."""
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(config_dir, path))
