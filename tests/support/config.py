"""Config for tests: rule and flow builders, and config directories written to disk.

A rule is built as ``rule(name, flow, listen=..., match=..., ...)``: the flow is what a test is
about, the listen address defaults to ``:8080`` (enough for the compiler), and every other rule
key passes through as a keyword.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

RESPOND = {"respond": {"input": {"body": "ok"}}}
PROXY_L4 = {"proxy": {"input": {"target": "127.0.0.1:9"}}}


def rule(name: str, flow: dict, listen: str | list[str] = ":8080", **extra: Any) -> dict:
    """A rule document: ``listen`` is one address or a list of them; ``extra`` are further keys."""
    return {"rule": name, "listen": listen if isinstance(listen, list) else [listen], "flow": flow, **extra}


def proxy(target: str | list[str], **inputs: Any) -> dict:
    """An L4 ``proxy`` node to ``target`` (one ``host:port`` or a list to balance over)."""
    return {"proxy": {"input": {"target": target, **inputs}}}


def http_proxy(upstream: str, **inputs: Any) -> dict:
    """An L7 ``proxy`` node to the ``upstream`` URL."""
    return {"proxy": {"input": {"upstream": upstream, **inputs}}}


def write_config(root: str | os.PathLike, rules: dict[str, Any] | None = None, config: Any = None,
                 env: str | None = None) -> Path:
    """Create ``root`` with ``rules/<name>`` files (JSON values or raw strings) and, when given,
    ``config.json`` (a JSON value or a raw string) and ``.env``."""
    root = Path(root)
    (root / "rules").mkdir(parents=True, exist_ok=True)
    for name, content in (rules or {}).items():
        text = content if isinstance(content, str) else json.dumps(content)
        (root / "rules" / name).write_text(text)
    if config is not None:
        (root / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    if env is not None:
        (root / ".env").write_text(env)
    return root
