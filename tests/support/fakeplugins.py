"""Plugins for the executor and external-plugin tests: no sockets, deterministic behaviour."""

from __future__ import annotations

import json

import gevent

from vane.engine.context import Context
from vane.engine.kv import KV
from vane.engine.outcome import FINISHED, Upgrade
from vane.engine.plugin import LAYERS_ALL, HttpMiddleware, Kind, Middleware, PluginSpec, Terminator
from vane.plugins.external.base import ExternalPlugin


class Branch(Middleware):
    """Returns the branch named by input ``branch`` and stores input ``store``."""

    def run(self, ctx, args):
        return args.get("branch", "true"), args.get("store")


class Auth(Middleware):
    def run(self, ctx, args):
        return "success", {"user": args.get("user", "alice")}


class AuthNext(Middleware):
    def run(self, ctx, args):
        return "next", {"user": "alice"}


class Sleep(Middleware):
    def run(self, ctx, args):
        gevent.sleep(float(args["secs"]))
        return "next", None


class Boom(Middleware):
    def run(self, ctx, args):
        raise RuntimeError("boom")


class Record(Terminator):
    """Terminator that records the resolved input on the context."""

    def terminate(self, ctx, args):
        ctx.result = args
        return FINISHED


class Layer(Terminator):
    """Like upgrade: continue at ``next`` with an l7 context."""

    def terminate(self, ctx, args):
        new = RecCtx("l7", ctx.kv.child())
        new.trajectory = ctx.trajectory
        return Upgrade(new)


class External(ExternalPlugin):
    """An external plugin whose I/O the test sets through a class attribute."""

    behaviour = "ok"
    calls = 0

    def call(self, data: bytes) -> bytes:
        External.calls += 1
        if External.behaviour == "raise":
            raise OSError("connection refused")
        branch = "failure" if External.behaviour == "failure" else "success"
        return json.dumps({"branch": branch, "store": {"v": "1"}}).encode()


class HttpOnly(HttpMiddleware):
    def run(self, ctx, args):
        return "next", {"kind": "http"}


class GenericSame(Middleware):
    def run(self, ctx, args):
        return "next", {"kind": "generic"}


class RecCtx(Context):
    __slots__ = ("result",)

    def __init__(self, layer="l4", kv=None):
        super().__init__(layer, kv if kv is not None else KV(), "conn-1")
        self.result = None


def spec(name, kind, branches=(), impl="Branch", layers=LAYERS_ALL, external=False, outputs=None):
    return PluginSpec(name=name, kind=kind, layers=layers, branches=tuple(branches),
                      impl=f"tests.support.fakeplugins:{impl}", input_schema={"type": "object"},
                      outputs=outputs, external=external, has_next=name == "layer")


TEST_SPECS = (
    spec("detect", Kind.GENERIC_MIDDLEWARE, ("true", "false")),
    spec("auth", Kind.GENERIC_MIDDLEWARE, ("success", "failure"), "Auth", outputs=("user",)),
    spec("sleep", Kind.GENERIC_MIDDLEWARE, ("next",), "Sleep"),
    spec("boom", Kind.GENERIC_MIDDLEWARE, ("next",), "Boom"),
    spec("record", Kind.TERMINATOR, (), "Record"),
    spec("layer", Kind.TERMINATOR, (), "Layer"),
    spec("ext", Kind.GENERIC_MIDDLEWARE, ("success", "failure"), "External", external=True),
    spec("dual", Kind.TERMINATOR, (), "Record"),
    spec("dual", Kind.GENERIC_MIDDLEWARE, ("next",), "GenericSame"),
    spec("dual", Kind.HTTP_MIDDLEWARE, ("next",), "HttpOnly", layers=frozenset({"l7"})),
    spec("my.plugin", Kind.GENERIC_MIDDLEWARE, ("next",), "AuthNext", outputs=None),
)
