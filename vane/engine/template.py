"""Template engine: ``{{key}}`` placeholders in plugin inputs (DESIGN.md §4, seed 001).

Templates are parsed once at compile time into tuples of literal strings and ``Ref`` parts;
a ``Ref``'s key may itself be a template (``{{kv.{{conn.proto}}_backend}}``), resolved
inside-out. ``CompiledInput`` walks a node's whole ``input`` JSON once and keeps the static
value when it holds no template, so the hot path pays nothing for static inputs.

Limits: nesting depth, parse nodes per string (checked at compile) and result size (checked
when resolving). A missing key resolves to "" and is reported through ``on_missing``; a
resolved key name containing a brace is refused (treated as missing) so data from a client
can never become a template.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Protocol, Union

OPEN, CLOSE = "{{", "}}"


class TemplateError(ValueError):
    """A template does not parse or breaks a limit. ``pointer`` is relative to the input."""

    def __init__(self, message: str, pointer: str = "") -> None:
        super().__init__(message)
        self.pointer = pointer


class Lookup(Protocol):
    def get(self, key: str) -> str | None: ...


class Ref:
    """A placeholder; ``key`` is a literal key name (str) or a nested template (tuple)."""

    __slots__ = ("key",)

    def __init__(self, key: Union[str, "Parts"]) -> None:
        self.key = key

    def __repr__(self) -> str:
        return f"Ref({self.key!r})"


Parts = tuple[Union[str, Ref], ...]


class Limits:
    __slots__ = ("depth", "result_size", "parse_nodes")

    def __init__(self, depth: int = 5, result_size: int = 65536, parse_nodes: int = 50) -> None:
        self.depth = depth
        self.result_size = result_size
        self.parse_nodes = parse_nodes


DEFAULT_LIMITS = Limits()


def parse(text: str, limits: Limits = DEFAULT_LIMITS) -> Parts:
    """Parse one string. Literal ``}}`` outside a placeholder stays literal."""
    stack: list[list[Union[str, Ref]]] = [[]]
    count = 0
    pos = 0
    n = len(text)
    literal_start = 0

    def flush(end: int) -> None:
        nonlocal count
        if end > literal_start:
            stack[-1].append(text[literal_start:end])
            count += 1

    while pos < n:
        if text.startswith(OPEN, pos):
            flush(pos)
            stack.append([])
            if len(stack) - 1 > limits.depth:
                raise TemplateError(f"template nests deeper than {limits.depth} levels "
                                    f"(VANE_MAX_TEMPLATE_DEPTH)")
            pos += 2
            literal_start = pos
        elif text.startswith(CLOSE, pos) and len(stack) > 1:
            flush(pos)
            inner = stack.pop()
            key = _key_of(inner)
            if isinstance(key, str) and inner:
                count -= 1  # a plain key name is part of its placeholder, not a node of its own
            stack[-1].append(Ref(key))
            count += 1
            pos += 2
            literal_start = pos
        else:
            pos += 1
        if count > limits.parse_nodes:
            raise TemplateError(f"template has more than {limits.parse_nodes} parts "
                                f"(VANE_MAX_TEMPLATE_PARSE_NODES)")
    if len(stack) > 1:
        raise TemplateError(f"unclosed '{{{{' in template {text!r}")
    flush(n)
    if count > limits.parse_nodes:
        raise TemplateError(f"template has more than {limits.parse_nodes} parts "
                            f"(VANE_MAX_TEMPLATE_PARSE_NODES)")
    return tuple(stack[0])


def _key_of(inner: list[Union[str, Ref]]) -> Union[str, Parts]:
    if not inner:
        raise TemplateError("empty placeholder '{{}}'")
    if len(inner) == 1 and isinstance(inner[0], str):
        key = inner[0].strip()
        if not key:
            raise TemplateError("empty placeholder '{{}}'")
        if "{" in key or "}" in key:
            raise TemplateError(f"key name {key!r} contains a brace")
        return key
    # strip surrounding whitespace of a nested key's literal ends
    parts = list(inner)
    if isinstance(parts[0], str):
        parts[0] = parts[0].lstrip()
    if isinstance(parts[-1], str):
        parts[-1] = parts[-1].rstrip()
    return tuple(p for p in parts if p != "")


def static_keys(parts: Parts) -> Iterator[str]:
    """Every key named literally (not computed) in the template, at any depth."""
    for part in parts:
        if isinstance(part, Ref):
            if isinstance(part.key, str):
                yield part.key
            else:
                yield from static_keys(part.key)


def render(parts: Parts, kv: Lookup, limit: int, on_missing: Callable[[str], None] | None) -> str:
    """Resolve parsed parts against the KV store."""
    if len(parts) == 1:
        part = parts[0]
        if isinstance(part, str):
            return part
        out = _lookup(part, kv, limit, on_missing)
    else:
        out = "".join([p if isinstance(p, str) else _lookup(p, kv, limit, on_missing) for p in parts])
    if len(out) > limit:
        raise TemplateError(f"template result is {len(out)} bytes, over the "
                            f"{limit} limit (VANE_MAX_TEMPLATE_RESULT_SIZE)")
    return out


def _lookup(ref: Ref, kv: Lookup, limit: int, on_missing: Callable[[str], None] | None) -> str:
    key = ref.key
    if not isinstance(key, str):
        key = render(key, kv, limit, on_missing)
        if "{" in key or "}" in key:
            if on_missing is not None:
                on_missing(key)
            return ""
    value = kv.get(key)
    if value is None:
        if on_missing is not None:
            on_missing(key)
        return ""
    return value


class CompiledInput:
    """A node's ``input`` with every string pre-parsed.

    ``static`` holds the input itself when it has no template (then ``resolve`` returns it
    unchanged: plugins must not mutate it); otherwise ``resolve`` rebuilds the JSON value.
    """

    __slots__ = ("raw", "static", "is_static", "_tree", "_limit")

    def __init__(self, raw: Any, limits: Limits = DEFAULT_LIMITS) -> None:
        self.raw = raw
        self._limit = limits.result_size
        errors: list[TemplateError] = []
        self._tree = _compile(raw, limits, "", errors)
        if errors:
            raise errors[0] if len(errors) == 1 else TemplateErrors(errors)
        self.is_static = not _dynamic(self._tree)
        self.static = raw if self.is_static else None

    def resolve(self, kv: Lookup, on_missing: Callable[[str], None] | None = None) -> Any:
        if self.is_static:
            return self.static
        return _resolve(self._tree, kv, self._limit, on_missing)

    def templates(self) -> Iterator[tuple[str, Parts]]:
        """(pointer, parts) for every templated string, for compile-time checks."""
        yield from _templates(self._tree, "")


class TemplateErrors(TemplateError):
    def __init__(self, errors: list[TemplateError]) -> None:
        super().__init__("; ".join(str(e) for e in errors), errors[0].pointer)
        self.errors = errors


class _T:
    """A templated string inside an input tree."""

    __slots__ = ("parts",)

    def __init__(self, parts: Parts) -> None:
        self.parts = parts


def _escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


def _compile(value: Any, limits: Limits, ptr: str, errors: list[TemplateError]) -> Any:
    if isinstance(value, str):
        if OPEN not in value:
            return value
        try:
            return _T(parse(value, limits))
        except TemplateError as exc:
            errors.append(TemplateError(str(exc), ptr))
            return value
    if isinstance(value, dict):
        return {k: _compile(v, limits, f"{ptr}/{_escape(k)}", errors) for k, v in value.items()}
    if isinstance(value, list):
        return [_compile(v, limits, f"{ptr}/{i}", errors) for i, v in enumerate(value)]
    return value


def _dynamic(tree: Any) -> bool:
    if isinstance(tree, _T):
        return True
    if isinstance(tree, dict):
        return any(_dynamic(v) for v in tree.values())
    if isinstance(tree, list):
        return any(_dynamic(v) for v in tree)
    return False


def _resolve(tree: Any, kv: Lookup, limit: int, on_missing: Callable[[str], None] | None) -> Any:
    if isinstance(tree, _T):
        return render(tree.parts, kv, limit, on_missing)
    if isinstance(tree, dict):
        return {k: _resolve(v, kv, limit, on_missing) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_resolve(v, kv, limit, on_missing) for v in tree]
    return tree


def _templates(tree: Any, ptr: str) -> Iterator[tuple[str, Parts]]:
    if isinstance(tree, _T):
        yield ptr, tree.parts
    elif isinstance(tree, dict):
        for k, v in tree.items():
            yield from _templates(v, f"{ptr}/{_escape(k)}")
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _templates(v, f"{ptr}/{i}")
