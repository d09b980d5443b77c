"""External plugin in WebAssembly (wasmtime), DESIGN.md §6.

A core module exporting ``memory``, ``alloc(len) -> ptr`` and ``handle(ptr, len) -> i64``
(result pointer << 32 | length), exchanging the same JSON as the other drivers. Each call
runs with a fuel budget and a memory cap. Compiled modules are cached as
``<VANE_STATE_DIR>/wasm/<sha256>.cwasm`` when that directory is writable; the instance lives
as long as the graph (its memory resets on reload).
"""

from __future__ import annotations

import hashlib
import logging
import os

import wasmtime

from vane.config.files import MAX_WASM_BYTES, read_regular

from .base import MAX_REPLY, ExternalError, ExternalPlugin

log = logging.getLogger("vane.wasm")

DEFAULT_FUEL = 50_000_000
DEFAULT_MEMORY_MB = 64
_ENGINE: wasmtime.Engine | None = None


def engine() -> wasmtime.Engine:
    global _ENGINE
    if _ENGINE is None:
        config = wasmtime.Config()
        config.consume_fuel = True
        _ENGINE = wasmtime.Engine(config)
    return _ENGINE


def load_module(path: str, state_dir: str | None) -> wasmtime.Module:
    data = read_regular(path, MAX_WASM_BYTES)  # a regular file, bounded: never a FIFO or /dev/zero
    digest = hashlib.sha256(data).hexdigest()
    cache = os.path.join(state_dir, "wasm", f"{digest}.cwasm") if state_dir else None
    if cache and os.path.exists(cache):
        try:
            return wasmtime.Module.deserialize_file(engine(), cache)
        except Exception as exc:  # noqa: BLE001 - a stale cache entry is rebuilt
            log.info("ignoring cached %s: %s", cache, exc)
    module = wasmtime.Module(engine(), data)
    if cache:
        try:
            os.makedirs(os.path.dirname(cache), exist_ok=True)
            tmp = f"{cache}.{os.getpid()}.tmp"
            with open(tmp, "wb") as fh:
                fh.write(module.serialize())
            os.replace(tmp, cache)
        except OSError as exc:
            log.debug("cannot cache %s: %s", cache, exc)
    return module


class WasmPlugin(ExternalPlugin):
    def __init__(self, node, env) -> None:
        super().__init__(node, env)
        path = self.options["wasm"]
        if not os.path.isabs(path):
            path = os.path.join(env.config_dir or ".", path)
        self.fuel = int(self.options.get("fuel") or DEFAULT_FUEL)
        self.memory_bytes = int(self.options.get("memory_mb") or DEFAULT_MEMORY_MB) * 1024 * 1024
        self.module = load_module(path, getattr(env.settings, "state_dir", None))
        self.store = wasmtime.Store(engine())
        self.store.set_limits(memory_size=self.memory_bytes)
        self.store.set_fuel(self.fuel)
        instance = wasmtime.Instance(self.store, self.module, [])
        exports = instance.exports(self.store)
        try:
            self.memory = exports["memory"]
            self.alloc = exports["alloc"]
            self.handle = exports["handle"]
        except KeyError as exc:
            raise ValueError(f"wasm plugin {self.name}: module does not export {exc}") from None

    def call(self, data: bytes) -> bytes:
        store = self.store
        store.set_fuel(self.fuel)
        try:
            ptr = self.alloc(store, len(data))
            self.memory.write(store, data, ptr)
            packed = self.handle(store, ptr, len(data))
        except wasmtime.Trap as exc:
            raise ExternalError(f"trap: {exc}") from None
        except wasmtime.WasmtimeError as exc:
            raise ExternalError(str(exc)) from None
        out_ptr, out_len = (packed >> 32) & 0xFFFFFFFF, packed & 0xFFFFFFFF
        if out_len > MAX_REPLY or out_ptr + out_len > self.memory.data_len(store):
            raise ExternalError("reply out of bounds")
        return bytes(self.memory.read(store, out_ptr, out_ptr + out_len))
