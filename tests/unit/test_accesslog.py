"""The access log's writer and formats on a real file: escaping, the bounded buffer, flushing,
reopen after a rename, and the settings that select it."""

from __future__ import annotations

import os

import gevent
import pytest

from vane.config.errors import CompileFailed
from vane.config.settings import Settings
from vane.engine.kv import KV
from vane.net.http.message import Headers, Request
from vane.observe.accesslog import AccessLog, escape, from_settings, make_formatter


class Conn:
    peer = ("192.0.2.7", 40000)


class Req:
    """Just what the formatters read of an L7 context."""

    def __init__(self, path: str = "/p", query: str = "", agent: str | None = "ua") -> None:
        headers = Headers()
        if agent is not None:
            headers.add("user-agent", agent)
        self.request = Request("GET", path, query, "1.1", headers)
        self.request.host = "h.example"
        self.conn = Conn()
        self.rule = "r1"
        self.upstream = None
        self.upstream_secs = None
        self.request_id = "c/1"
        self.services = None
        self.kv = KV({"conn.ip": "192.0.2.7"})


def test_escape_keeps_plain_text_and_hexes_the_rest():
    assert escape("Mozilla/5.0 (X11)") == "Mozilla/5.0 (X11)"
    assert escape('a"b\\c\nd\x00\x7f\xe9') == "a\\x22b\\x5Cc\\x0Ad\\x00\\x7F\\xE9"
    assert escape("x" * 10000).endswith("...") and len(escape("x" * 10000)) == 8195


def test_combined_line():
    line = make_formatter("combined").format(Req(query="a=1", agent=None), 404, 12, 0.01, 1764633103.5)
    assert line.startswith('192.0.2.7 - - [') and line.endswith('] "GET /p?a=1 HTTP/1.1" 404 12 "-" "-"')


def test_a_template_reads_kv_and_log_keys():
    fmt = make_formatter("{{conn.ip}} {{log.status}} {{log.bytes}} {{log.rule}} {{missing}}.")
    assert fmt.format(Req(), 200, 3, 0.0, 0.0) == "192.0.2.7 200 3 r1 ."


def test_not_a_format():
    with pytest.raises(ValueError):
        make_formatter("common")


def test_lines_are_buffered_then_flushed(tmp_path):
    path = tmp_path / "a.log"
    log = AccessLog(str(path), make_formatter("combined"), flush_interval=0.05)
    log.open()
    log.request(Req(), 200, 1, 0.0, 0.0)
    assert path.read_text() == ""
    gevent.sleep(0.3)
    assert path.read_text().count("\n") == 1
    log.close()


def test_the_buffer_is_bounded(tmp_path):
    path = tmp_path / "a.log"
    log = AccessLog(str(path), make_formatter("combined"), flush_interval=60.0, max_buffer=1000)
    log.open()
    for _ in range(50):                    # about 60 bytes each: the buffer takes 16
        log.request(Req(), 200, 1, 0.0, 0.0)
    assert log.lines + log.dropped == 50 and log.dropped > 0 and log._pending_bytes <= 1000
    log.close()
    assert path.read_text().count("\n") == log.lines


def test_reopen_follows_a_rename(tmp_path):
    path = tmp_path / "a.log"
    log = AccessLog(str(path), make_formatter("combined"), flush_interval=60.0)
    log.open()
    log.request(Req(path="/before"), 200, 1, 0.0, 0.0)
    os.rename(path, tmp_path / "a.log.1")
    log.reopen()                            # writes what was pending to the old file first
    log.request(Req(path="/after"), 200, 1, 0.0, 0.0)
    log.close()
    assert "/before" in (tmp_path / "a.log.1").read_text()
    assert "/after" in path.read_text() and "/before" not in path.read_text()


def test_a_write_error_drops_and_counts(tmp_path):
    log = AccessLog("/dev/full", make_formatter("combined"), flush_interval=60.0)
    log.open()
    log.request(Req(), 200, 1, 0.0, 0.0)
    log.flush()
    assert log.dropped == 1 and log.write_failures == 1
    log.close()


def test_settings():
    assert from_settings(Settings.from_env({})) is None
    s = Settings.from_env({"VANE_ACCESS_LOG": "/var/log/vaned/access.log", "VANE_ACCESS_LOG_FORMAT": "JSON"})
    assert s.access_log == "/var/log/vaned/access.log" and s.access_log_format == "json"
    assert Settings.from_env({"VANE_ACCESS_LOG": "off"}).access_log is None
    for bad in ({"VANE_ACCESS_LOG": "rel/path"}, {"VANE_ACCESS_LOG_FORMAT": "common"},
                {"VANE_ACCESS_LOG_FORMAT": "{{a}}" * 60}, {"VANE_ACCESS_LOG_FORMAT": "{{unclosed"}):
        with pytest.raises(CompileFailed) as info:
            Settings.from_env(bad)
        assert "VANE_ACCESS_LOG" in str(info.value)


def test_json_line_is_one_valid_object_whatever_the_client_sent():
    import json
    r = Req(path='/a"b\\\u00e9\n', query="x=1", agent='Moz "q" \x01\x85')
    line = make_formatter("json").format(r, 404, 5, 0.0012, 1764633103.5)
    assert "\n" not in line and line.isascii()
    entry = json.loads(line)
    assert entry["uri"] == '/a"b\\\u00e9\n?x=1' and entry["user_agent"] == 'Moz "q" \x01\x85'
    assert entry["status"] == 404 and entry["bytes"] == 5 and entry["duration_ms"] == 1.2
    assert entry["upstream"] is None and entry["rule"] == "r1" and entry["time"].endswith(".500Z")
