"""Config and compile errors: every error names the file and the JSON pointer (DESIGN.md §2-§3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class ConfigError:
    """One problem in the operator's config, located by file and JSON pointer."""

    file: str      # path relative to the config dir, e.g. "rules/20-api.json"; "" for env/global
    pointer: str   # RFC 6901 JSON pointer inside that file, e.g. "/0/flow/match/output"; "" = whole file
    message: str

    def __str__(self) -> str:
        where = self.file or "<config>"
        return f"{where}: {self.pointer or '/'}: {self.message}"

    def to_dict(self) -> dict:
        return {"kind": "Compile", "file": self.file, "path": self.pointer, "message": self.message}


class CompileFailed(Exception):
    """Loading or compiling failed; carries every error found, not just the first."""

    def __init__(self, errors: Iterable[ConfigError]) -> None:
        self.errors: list[ConfigError] = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


def pointer(*parts: object) -> str:
    """Build a JSON pointer from path parts, escaping '~' and '/' (RFC 6901)."""
    out = []
    for part in parts:
        s = str(part).replace("~", "~0").replace("/", "~1")
        out.append(s)
    return "/" + "/".join(out) if out else ""
