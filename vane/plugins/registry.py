"""Plugin registry: the built-ins plus the external plugins declared in config.json (DESIGN.md §6)."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from vane.config.errors import ConfigError, pointer
from vane.engine.plugin import LAYERS_ALL, Kind, PluginSpec

from .catalog import BUILTINS

DRIVERS = ("wasm", "http", "unix", "command")


class Registry:
    def __init__(self, specs: Iterable[PluginSpec]) -> None:
        self._by_name: dict[str, list[PluginSpec]] = {}
        for spec in specs:
            self._by_name.setdefault(spec.name, []).append(spec)
        for specs_ in self._by_name.values():
            specs_.sort(key=lambda s: s.kind.priority)

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def specs(self, name: str) -> list[PluginSpec]:
        return self._by_name.get(name, [])

    def layers(self, name: str) -> frozenset[str]:
        out: frozenset[str] = frozenset()
        for spec in self.specs(name):
            out |= spec.layers
        return out

    def resolve(self, name: str, layer: str) -> PluginSpec | None:
        """The implementation of ``name`` at ``layer``, by dispatch priority: HTTP middleware,
        then generic middleware, then terminator."""
        for spec in self._by_name.get(name, ()):
            if layer in spec.layers:
                return spec
        return None

    def externals(self) -> list[PluginSpec]:
        return [s for specs in self._by_name.values() for s in specs if s.external]


def builtin_registry() -> Registry:
    return Registry(BUILTINS)


def registry_from_config(config: Mapping[str, Any], file: str = "config.json") -> tuple[Registry, list[ConfigError]]:
    """Built-ins plus config.json's ``plugins``; a name colliding with a built-in is an error."""
    errors: list[ConfigError] = []
    specs = list(BUILTINS)
    builtin_names = {s.name for s in BUILTINS}
    for name, decl in (config.get("plugins") or {}).items():
        where = pointer("plugins", name)
        if name in builtin_names:
            errors.append(ConfigError(file, where, f"plugin name {name!r} collides with a built-in plugin"))
            continue
        drivers = [d for d in DRIVERS if d in decl]
        if len(drivers) != 1:
            errors.append(ConfigError(file, where, "an external plugin names exactly one driver: "
                                      + ", ".join(DRIVERS)))
            continue
        branches = tuple(decl.get("branches") or ())
        if "failure" not in branches:
            errors.append(ConfigError(file, pointer("plugins", name, "branches"),
                                      'an external plugin must declare the "failure" branch '
                                      "(the circuit breaker takes it)"))
            continue
        params = decl.get("params") or {}
        schema = {"type": "object", "properties": {p: {} for p in params},
                  "required": sorted(p for p, d in params.items() if (d or {}).get("required")),
                  "additionalProperties": bool(decl.get("extra_params", True))}
        layers = frozenset(decl.get("layers") or LAYERS_ALL)
        driver = drivers[0]
        specs.append(PluginSpec(name=name, kind=Kind.GENERIC_MIDDLEWARE, layers=layers, branches=branches,
                                impl=f"vane.plugins.external.{driver}:{driver.capitalize()}Plugin",
                                input_schema=schema, outputs=None, external=True, driver=driver,
                                options=dict(decl)))
    return Registry(specs), errors
