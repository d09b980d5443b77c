"""Comparison operators of ``match`` and rule predicates (DESIGN.md §3).

``compile_op(op, right)`` turns a static right-hand side into a predicate over the left value
once, at link time: regexes compiled, CIDRs parsed, globs translated. ``left`` is ``None``
when the key is missing; only ``exists`` and ``ne``/``not_in`` can be true then.

``regex`` searches (unanchored, like nginx ``~``); ``glob`` matches the whole value with
``*``, ``?`` and ``[...]``; ``lt``/``gt`` compare as numbers (false when either side is not one);
``cidr`` takes one network or a list.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from functools import lru_cache
from typing import Any, Callable

Predicate = Callable[[str | None], bool]

OPS = ("eq", "ne", "prefix", "suffix", "contains", "regex", "glob", "cidr", "in", "not_in", "exists", "lt", "gt")


class OpError(ValueError):
    """A right-hand side that cannot work with its operator."""


def as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise OpError(f"expected a number, got {value!r}") from None


def _networks(right: Any) -> tuple:
    items = right if isinstance(right, list) else [right]
    try:
        return tuple(ipaddress.ip_network(str(x), strict=False) for x in items)
    except ValueError as exc:
        raise OpError(f"invalid CIDR: {exc}") from None


OPS: tuple[str, ...] = ("eq", "ne", "prefix", "suffix", "contains", "regex", "glob", "cidr", "in", "not_in",
                        "exists", "lt", "gt")
"""Every operator a predicate may name (DESIGN.md §3); ``compile_op`` knows each of them."""


def compile_op(op: str, right: Any) -> Predicate:
    """A predicate for ``left <op> right``; raises OpError on a bad right-hand side."""
    if op == "eq":
        r = as_text(right)
        return lambda left: left == r
    if op == "ne":
        r = as_text(right)
        return lambda left: left != r
    if op == "prefix":
        r = as_text(right)
        return lambda left: left is not None and left.startswith(r)
    if op == "suffix":
        r = as_text(right)
        return lambda left: left is not None and left.endswith(r)
    if op == "contains":
        r = as_text(right)
        return lambda left: left is not None and r in left
    if op == "regex":
        try:
            search = re.compile(as_text(right)).search
        except re.error as exc:
            raise OpError(f"invalid regex {right!r}: {exc}") from None
        return lambda left: left is not None and search(left) is not None
    if op == "glob":
        match = re.compile(fnmatch.translate(as_text(right))).match
        return lambda left: left is not None and match(left) is not None
    if op == "cidr":
        nets = _networks(right)
        return lambda left: left is not None and _in_networks(left, nets)
    if op in ("in", "not_in"):
        if not isinstance(right, list):
            raise OpError(f'"{op}" needs a list')
        values = frozenset(as_text(x) for x in right)
        if op == "in":
            return lambda left: left in values
        return lambda left: left not in values
    if op == "exists":
        if not isinstance(right, bool):
            raise OpError('"exists" needs true or false')
        want = right
        return lambda left: (left is not None) is want
    if op in ("lt", "gt"):
        r = _number(right)
        if op == "lt":
            return lambda left: _num_or_none(left) is not None and _num_or_none(left) < r
        return lambda left: _num_or_none(left) is not None and _num_or_none(left) > r
    raise OpError(f"unknown operator {op!r}")


@lru_cache(maxsize=4096)
def _ip(text: str):
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _in_networks(left: str, nets: tuple) -> bool:
    addr = _ip(left)
    if addr is None:
        return False
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr.version == n.version and addr in n for n in nets)


def _num_or_none(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return None


@lru_cache(maxsize=1024)
def compile_op_cached(op: str, right_key: str) -> Predicate:
    """For right-hand sides that are templates: compiled once per distinct value, bounded."""
    return compile_op(op, right_key)


def expand_predicates(match: dict) -> list[tuple[str, str, Any]]:
    """Rule-style predicates -> (key, op, right) triples (DESIGN.md §3).

    ``{"key": "v"}`` is eq; ``{"key": ["a", "b"]}`` is in; ``{"key": {"op": value, ...}}`` one
    triple per operator. Scalars are compared as text (``true``, ``80``).
    """
    out: list[tuple[str, str, Any]] = []
    for key, spec in match.items():
        if isinstance(spec, dict):
            out.extend((key, op, right) for op, right in spec.items())
        elif isinstance(spec, list):
            out.append((key, "in", [as_text(v) for v in spec]))
        else:
            out.append((key, "eq", as_text(spec)))
    return out
