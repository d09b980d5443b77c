"""What a config asks of ACME, checked offline (pure: the compiler calls it).

A rule with ``"tls": {"acme": true}`` names its certificate's hosts through its ``req.host``
predicate: an exact name (``eq``) or a list of them (``in``). Wildcards need DNS-01, which
vaned does not answer, and a regex or a glob names no host at all: both are compile errors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from vane.config.errors import ConfigError, pointer
from vane.config.load import resolve_path

__all__ = ["DIRECTORIES", "AcmePlan", "acme_names", "acme_settings"]

DIRECTORIES = {
    "production": "https://acme-v02.api.letsencrypt.org/directory",
    "staging": "https://acme-staging-v02.api.letsencrypt.org/directory",
}
DEFAULT_CHALLENGES = ("http-01", "tls-alpn-01")
MAX_NAMES = 100  # Let's Encrypt's limit of names per certificate

_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_HOSTNAME = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")
_IPV4 = re.compile(r"^[0-9.]+$")


@dataclass(frozen=True)
class AcmeSettings:
    """config.json ``acme`` with its defaults applied."""

    directory: str = DIRECTORIES["production"]
    email: str | None = None
    ca_bundle: str | None = None           # absolute path, or None for the system's roots
    challenges: tuple[str, ...] = DEFAULT_CHALLENGES
    renew_before_days: float | None = None  # None: a third of the certificate's lifetime
    eab: tuple[str, str] | None = None      # (kid, hmac_key)
    http_port: int = 80                     # where the CA fetches HTTP-01 answers

    def to_json(self) -> dict[str, Any]:
        return {"directory": self.directory, "email": self.email, "ca_bundle": self.ca_bundle,
                "challenges": list(self.challenges), "renew_before_days": self.renew_before_days,
                "eab": {"kid": self.eab[0]} if self.eab else None, "http_port": self.http_port}


@dataclass
class AcmePlan:
    """The certificates a graph wants issued: one per distinct name set, in rule order."""

    settings: AcmeSettings
    name_sets: list[tuple[str, ...]] = field(default_factory=list)


def acme_settings(config: dict[str, Any], config_dir: str) -> AcmeSettings:
    """config.json ``acme`` (already schema-checked) with defaults and paths resolved."""
    raw = config.get("acme") or {}
    directory = raw.get("directory", "production")
    eab = raw.get("eab")
    return AcmeSettings(
        directory=DIRECTORIES.get(directory, directory),
        email=raw.get("email"),
        ca_bundle=resolve_path(config_dir, raw["ca_bundle"]) if raw.get("ca_bundle") else None,
        challenges=tuple(raw.get("challenges") or DEFAULT_CHALLENGES),
        renew_before_days=raw.get("renew_before_days"),
        eab=(eab["kid"], eab["hmac_key"]) if eab else None,
        http_port=raw.get("http_port", 80),
    )


def acme_names(rule: dict[str, Any], file: str, base: str, errors: list[ConfigError]) -> tuple[str, ...] | None:
    """The exact host names of a ``tls: {"acme": true}`` rule, or None after reporting why not."""
    tls = rule.get("tls") or {}
    if "cert" in tls or "key" in tls:
        errors.append(ConfigError(file, base + "/tls", '"tls" takes either "cert" and "key" or "acme", not both'))
        return None
    match = rule.get("match") or {}
    if "req.host" not in match:
        errors.append(ConfigError(file, base + "/tls/acme", 'an ACME certificate needs a "req.host" predicate '
                                  'naming the exact hosts it is for (e.g. "req.host": "www.example.com")'))
        return None
    where = base + pointer("match", "req.host")
    value = match["req.host"]
    if isinstance(value, dict):
        if len(value) == 1 and "eq" in value:
            value = value["eq"]
        elif len(value) == 1 and "in" in value:
            value = value["in"]
        else:
            op = ", ".join(sorted(value))
            errors.append(ConfigError(file, where, f'an ACME certificate needs exact host names: "req.host" with '
                                      f'"{op}" names no host ("eq" or "in", or a name or a list of names)'))
            return None
    names = value if isinstance(value, list) else [value]
    out: list[str] = []
    for i, name in enumerate(names):
        at = where + (f"/{i}" if isinstance(value, list) else "")
        host = str(name).lower().rstrip(".")
        if "*" in host:
            errors.append(ConfigError(file, at, f"{name!r}: a wildcard needs the DNS-01 challenge, which vaned "
                                      "does not answer; name each host"))
            return None
        if not isinstance(name, str) or not _HOSTNAME.match(host) or len(host) > 253 or "." not in host \
                or _IPV4.match(host):
            errors.append(ConfigError(file, at, f"{name!r} is not a host name an ACME certificate can carry"))
            return None
        if host not in out:
            out.append(host)
    if not out or len(out) > MAX_NAMES:
        errors.append(ConfigError(file, where, f"an ACME certificate carries 1 to {MAX_NAMES} names"))
        return None
    return tuple(out)
