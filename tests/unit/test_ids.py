"""UUIDv7 connection ids: RFC 9562 layout, time order, uniqueness, fresh randomness after fork."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

from vane.engine.ids import uuid7


def test_layout_is_rfc_9562_version_7():
    for _ in range(2000):  # several refills of the random block
        text = uuid7()
        u = uuid.UUID(text)
        assert str(u) == text
        assert u.version == 7 and u.variant == uuid.RFC_4122


def test_the_first_48_bits_are_the_unix_time_in_ms():
    before = time.time_ns() // 1_000_000
    u = uuid.UUID(uuid7())
    after = time.time_ns() // 1_000_000
    assert before <= u.int >> 80 <= after


def test_ids_are_unique():
    ids = {uuid7() for _ in range(20000)}
    assert len(ids) == 20000


FORK_SCRIPT = """
import os, sys
from vane.engine.ids import uuid7
uuid7()  # the parent now holds unused random bytes
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.write(w, " ".join(uuid7()[14:] for _ in range(5)).encode())
    os._exit(0)
os.close(w)
child = os.read(r, 4096).decode().split()
os.waitpid(pid, 0)
print(" ".join(child))
print(" ".join(uuid7()[14:] for _ in range(5)))
"""


def test_a_forked_child_does_not_repeat_the_parent_ids():
    out = subprocess.run([sys.executable, "-c", FORK_SCRIPT], capture_output=True, text=True, timeout=20,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert out.returncode == 0, out.stderr
    child, parent = (set(line.split()) for line in out.stdout.splitlines())
    assert len(child) == 5 and len(parent) == 5
    assert not child & parent  # the random parts (the time part may well be the same)
