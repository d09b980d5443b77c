"""Management wire format: JSON frames, one per line (DESIGN.md §9).

::

    request   {"verb": "reload", "args": {}, "request_id": "7"}
    response  {"request_id": "7", "result": {...}, "error": null}
    error     {"request_id": "7", "result": null, "error": {"kind": "Compile", "message": "...", ...}}
    stream    {"request_id": "7", "stream": {"seq": 1, "data": {...}}}
              {"request_id": "7", "stream": {"end": true, "reason": "done"}}

The same frames travel over the unix socket (NDJSON) and HTTP (body / x-ndjson chunks).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BAD_REQUEST",
    "COMPILE",
    "INTERNAL",
    "MAX_LINE",
    "TOO_LARGE",
    "UNAUTHORIZED",
    "UNAVAILABLE",
    "UNKNOWN_VERB",
    "MgmtError",
    "Request",
    "decode_frame",
    "encode",
    "error_frame",
    "parse_request",
    "response_frame",
    "stream_data_frame",
    "stream_end_frame",
]

MAX_LINE = 1 << 20  # one request line (or HTTP body) at most 1 MiB

# Error kinds (contract: clients switch on them).
BAD_REQUEST = "BadRequest"
UNKNOWN_VERB = "UnknownVerb"
COMPILE = "Compile"
INTERNAL = "Internal"
TOO_LARGE = "TooLarge"
UNAUTHORIZED = "Unauthorized"
UNAVAILABLE = "Unavailable"  # e.g. too many live streams

HTTP_STATUS = {
    BAD_REQUEST: 400,
    UNAUTHORIZED: 401,
    UNKNOWN_VERB: 404,
    TOO_LARGE: 413,
    COMPILE: 422,
    UNAVAILABLE: 503,
    INTERNAL: 500,
}


class MgmtError(Exception):
    """An error answered to the client; ``fields`` adds keys such as file/path/errors."""

    def __init__(self, kind: str, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.fields = fields
        self.request_id: Any = None  # set when the failing request's id is known

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message, **self.fields}


@dataclass
class Request:
    verb: str
    args: dict[str, Any] = field(default_factory=dict)
    request_id: Any = None


def encode(frame: dict[str, Any]) -> bytes:
    """One frame as a compact JSON line (non-JSON values become strings)."""
    return json.dumps(frame, separators=(",", ":"), default=str).encode() + b"\n"


def _request_id(obj: dict) -> Any:
    rid = obj.get("request_id")
    if rid is None or isinstance(rid, (str, int)) and not isinstance(rid, bool):
        if isinstance(rid, str) and len(rid) > 128:
            raise MgmtError(BAD_REQUEST, "request_id longer than 128 characters")
        return rid
    raise MgmtError(BAD_REQUEST, "request_id must be a string or an integer")


def parse_request(line: bytes | str, verb: str | None = None) -> Request:
    """Decode one request; raises MgmtError(BadRequest). With ``verb`` (HTTP), the body is the args."""
    try:
        obj = json.loads(line) if line.strip() else ({} if verb else None)
    except (ValueError, UnicodeDecodeError) as e:
        raise MgmtError(BAD_REQUEST, f"invalid JSON: {e}") from None
    if verb is not None:
        if not isinstance(obj, dict):
            raise MgmtError(BAD_REQUEST, "the request body must be a JSON object (the verb's args)")
        return Request(verb, obj, None)
    if not isinstance(obj, dict):
        raise MgmtError(BAD_REQUEST, "a request must be a JSON object")
    rid = obj.get("request_id")
    try:
        rid = _request_id(obj)
        name = obj.get("verb")
        if not isinstance(name, str) or not name:
            raise MgmtError(BAD_REQUEST, "missing \"verb\" (a string)")
        args = obj.get("args", {})
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise MgmtError(BAD_REQUEST, "\"args\" must be a JSON object")
        unknown = set(obj) - {"verb", "args", "request_id"}
        if unknown:
            raise MgmtError(BAD_REQUEST, f"unknown request keys: {', '.join(sorted(unknown))}")
    except MgmtError as e:
        e.request_id = rid if isinstance(rid, (str, int)) else None
        raise
    return Request(name, args, rid)


def response_frame(request_id: Any, result: Any) -> dict[str, Any]:
    return {"request_id": request_id, "result": result, "error": None}


def error_frame(request_id: Any, error: MgmtError | dict[str, Any]) -> dict[str, Any]:
    err = error.to_dict() if isinstance(error, MgmtError) else error
    return {"request_id": request_id, "result": None, "error": err}


def stream_data_frame(request_id: Any, seq: int, data: Any) -> dict[str, Any]:
    return {"request_id": request_id, "stream": {"seq": seq, "data": data}}


def stream_end_frame(request_id: Any, reason: str) -> dict[str, Any]:
    return {"request_id": request_id, "stream": {"end": True, "reason": reason}}


def decode_frame(line: bytes | str) -> dict[str, Any]:
    """Client side: one response/stream frame; raises ValueError when it is not one."""
    obj = json.loads(line)
    if not isinstance(obj, dict) or not ("stream" in obj or "result" in obj or "error" in obj):
        raise ValueError("not a management frame")
    return obj
