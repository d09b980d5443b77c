"""Schema checks: the fast validator only ever skips jsonschema for documents jsonschema
accepts, and a plugin's input schema is the one of the compile at hand."""

from __future__ import annotations

import gc

import pytest

from tests.support.config import RESPOND, rule, write_config
from vane.compile import compile_dir
from vane.config import schemas
from vane.config.errors import CompileFailed


def one_error(root) -> str:
    with pytest.raises(CompileFailed) as info:
        compile_dir(str(root), environ={})
    errs = [str(e) for e in info.value.errors]
    assert len(errs) == 1, errs
    return errs[0]


def test_external_plugin_schema_of_each_compile_is_the_one_checked(tmp_path):
    """A plugin's declaration changes between compiles: the new schema decides, however the
    schema objects are laid out in memory."""
    flow = {"xp": {"input": {"token": "t"}, "output": {"success": RESPOND, "failure": RESPOND}}}
    decl = {"http": "http://127.0.0.1:9/x", "branches": ["success", "failure"]}
    for extra, ok in ((True, True), (False, False), (True, True), (False, False)):
        write_config(tmp_path, {"r.json": rule("r", flow)},
                     config={"plugins": {"xp": {**decl, "params": {"other": {}}, "extra_params": extra}}})
        if ok:
            compile_dir(str(tmp_path), environ={})
        else:
            assert one_error(tmp_path) == 'rules/r.json: /flow/xp/input: unknown key "token"'
        gc.collect()


def test_validator_cache_entry_serves_only_its_own_schema():
    first = {"type": "object", "required": ["a"]}
    v1 = schemas.validator_for(first)
    other = {"type": "object"}
    schemas._VALIDATORS[id(other)] = v1  # as if ``other`` had been allocated where ``first`` was
    try:
        assert schemas.validator_for(other).schema is other
    finally:
        schemas._VALIDATORS.pop(id(other), None)


def test_fast_validator_never_accepts_what_jsonschema_refuses(tmp_path):
    """The fast path may only skip jsonschema for documents jsonschema accepts too."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                        st.text(max_size=6), st.sampled_from(["web", "web\n", ":80", "", "x" * 200]))
    values = st.recursive(scalars, lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(
            ["rule", "listen", "flow", "match", "tls", "priority", "cert", "key", "respond", "input",
             "output", "true", "req.host", "eq", "prefix"]), inner, max_size=4)), max_leaves=12)
    base = rule("r", RESPOND, tls={"cert": "c.pem", "key": "k.pem"}, match={"req.host": "a"}, priority=1)
    keys = st.sampled_from(sorted(base))

    @settings(max_examples=400, deadline=None, database=None)
    @given(keys, values)
    def check(key, value):
        doc = {**base, key: value}
        if schemas.RULE_VALIDATOR.accepts(doc):
            assert schemas.RULE_VALIDATOR.full.is_valid(doc), doc

    check()
