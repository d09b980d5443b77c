"""The bundled etc/vaned compiles, and so does each example rule on its own."""

import glob
import os

import pytest

from vane.compile import compile_dir, compile_path

ETC = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "etc", "vaned")


def test_bundled_config_compiles():
    graph = compile_dir(ETC, environ={})
    assert [str(a) for a in graph.listeners] == ["tcp 127.0.0.1:8080", "tcp [::1]:8080"]


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ETC, "examples", "*.json"))))
def test_example_rule_compiles(path):
    assert compile_path(path, config_dir=ETC, environ={}).listeners
