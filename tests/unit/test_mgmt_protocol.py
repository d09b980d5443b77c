"""Wire frames of DESIGN.md §9 and request parsing."""

import json

import pytest

from vane.mgmt.protocol import (
    MgmtError,
    decode_frame,
    encode,
    error_frame,
    parse_request,
    response_frame,
    stream_data_frame,
    stream_end_frame,
)


def test_parse_request():
    req = parse_request(b'{"verb": "reload", "args": {}, "request_id": "7"}')
    assert (req.verb, req.args, req.request_id) == ("reload", {}, "7")
    req = parse_request('{"verb": "ping", "request_id": 3}')
    assert (req.verb, req.args, req.request_id) == ("ping", {}, 3)
    assert parse_request('{"verb": "ping", "args": null}').args == {}


@pytest.mark.parametrize("line", [
    b"not json", b"[1]", b'{"args": {}}', b'{"verb": 3}', b'{"verb": "x", "args": []}',
    b'{"verb": "x", "extra": 1}', b'{"verb": "x", "request_id": [1]}', b"\xff\xfe",
])
def test_bad_requests(line):
    with pytest.raises(MgmtError) as info:
        parse_request(line)
    assert info.value.kind == "BadRequest"


def test_bad_request_keeps_request_id():
    with pytest.raises(MgmtError) as info:
        parse_request(b'{"verb": 3, "request_id": "9"}')
    assert info.value.request_id == "9"


def test_http_body_is_args():
    req = parse_request(b'{"dir": "/etc/vaned"}', verb="compile_dry_run")
    assert (req.verb, req.args) == ("compile_dry_run", {"dir": "/etc/vaned"})
    assert parse_request(b"", verb="ping").args == {}
    with pytest.raises(MgmtError):
        parse_request(b"[]", verb="ping")


def test_frames_match_the_contract():
    assert response_frame("7", {"a": 1}) == {"request_id": "7", "result": {"a": 1}, "error": None}
    err = MgmtError("Compile", "bad", file="rules/20-api.json", path="/0/flow")
    assert error_frame("7", err) == {"request_id": "7", "result": None, "error": {
        "kind": "Compile", "message": "bad", "file": "rules/20-api.json", "path": "/0/flow"}}
    assert stream_data_frame("7", 1, {"x": 1}) == {"request_id": "7", "stream": {"seq": 1, "data": {"x": 1}}}
    assert stream_end_frame("7", "done") == {"request_id": "7", "stream": {"end": True, "reason": "done"}}


def test_encode_is_one_line():
    data = encode({"request_id": 1, "result": {"text": "a\nb", "obj": object()}, "error": None})
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    assert json.loads(data)["result"]["text"] == "a\nb"
    assert decode_frame(data)["request_id"] == 1
    with pytest.raises(ValueError):
        decode_frame(b'{"hello": 1}')
