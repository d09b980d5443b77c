"""setup_logging formats (text, JSON), file and hub handlers; rate-limited logging."""

import io
import json
import logging

import pytest

from vane.observe.hub import Hub
from vane.observe.logging import RateLimitedLogger, setup_logging


@pytest.fixture(autouse=True)
def restore_root():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    root.setLevel(level)


def test_text_format_with_fields():
    out = io.StringIO()
    setup_logging("info", "text", stream=out)
    logging.getLogger("vane.engine").warning("plugin failed: %s", "boom",
                                             extra={"conn": "c-1", "rule": "blog", "node": "/a b"})
    logging.getLogger("vane.engine").debug("hidden")
    assert out.getvalue() == 'WARNING vane.engine: plugin failed: boom conn=c-1 rule=blog node="/a b"\n'


def test_json_format_with_fields_and_exception():
    out = io.StringIO()
    setup_logging("debug", "json", stream=out)
    try:
        raise ValueError("bad")
    except ValueError:
        logging.getLogger("vane.x").exception("oops", extra={"rule": "r1", "n": 3})
    rec = json.loads(out.getvalue())
    assert rec["level"] == "ERROR" and rec["logger"] == "vane.x" and rec["message"] == "oops"
    assert rec["rule"] == "r1" and rec["n"] == 3
    assert "ValueError: bad" in rec["exc"]
    assert isinstance(rec["ts"], float)


def test_file_and_hub_handlers(tmp_path):
    out = io.StringIO()
    hub = Hub()
    sub = hub.subscribe(10)
    path = tmp_path / "vaned.log"
    setup_logging("info", "text", file=str(path), hub=hub, stream=out)
    logging.getLogger("vane.daemon").info("reloaded", extra={"hash": "abc"})
    line = path.read_text()
    assert line.endswith("INFO vane.daemon: reloaded hash=abc\n")
    assert line[:4].isdigit()  # the file gets a timestamp, journald does not need one
    rec = sub.get(0)
    assert rec["message"] == "reloaded" and rec["hash"] == "abc" and rec["level"] == "INFO"


def test_setup_twice_replaces_handlers():
    out1, out2 = io.StringIO(), io.StringIO()
    setup_logging("info", "text", stream=out1)
    setup_logging("info", "json", stream=out2)
    logging.getLogger("vane").info("once")
    assert out1.getvalue() == ""
    assert json.loads(out2.getvalue())["message"] == "once"


def test_bad_level_and_format():
    with pytest.raises(ValueError):
        setup_logging("loud")
    with pytest.raises(ValueError):
        setup_logging("info", "xml")


def test_rate_limited_logger_once_per_interval_and_bounded():
    now = [100.0]
    records = []

    class Capture(logging.Handler):
        def emit(self, record):
            records.append(record)

    logger = logging.getLogger("vane.test.floor")
    logger.propagate = False
    logger.addHandler(Capture())
    logger.setLevel(logging.INFO)
    rl = RateLimitedLogger(logger, interval=1.0, max_keys=3, clock=lambda: now[0])
    assert rl.log(("max_conn_per_ip", "192.0.2.1"), logging.WARNING, "limit hit")
    assert not rl.log(("max_conn_per_ip", "192.0.2.1"), logging.WARNING, "limit hit")
    assert not rl.log(("max_conn_per_ip", "192.0.2.1"), logging.WARNING, "limit hit")
    now[0] += 1.0
    assert rl.log(("max_conn_per_ip", "192.0.2.1"), logging.WARNING, "limit hit")
    assert records[-1].suppressed == 2
    for i in range(10):
        rl.log(("max_conn_per_ip", f"198.51.100.{i}"), logging.WARNING, "limit hit")
    assert len(rl) == 3
