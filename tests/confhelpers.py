"""Helpers to write config directories for tests."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_config(root: str | os.PathLike, rules: dict[str, Any] | None = None, config: Any = None,
                 env: str | None = None) -> Path:
    """Create ``root`` with ``rules/<name>`` files (JSON values or raw strings), config.json, .env."""
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


def rule(name: str, flow: dict, listen: Any = ":8080", **extra: Any) -> dict:
    return {"rule": name, "listen": listen if isinstance(listen, list) else [listen], "flow": flow, **extra}


RESPOND = {"respond": {"input": {"body": "ok"}}}
PROXY_L4 = {"proxy": {"input": {"target": "127.0.0.1:9"}}}
