import pytest

from vane.config.errors import CompileFailed
from vane.config.load import load_settings
from vane.config.settings import Settings


def test_defaults():
    s = Settings.from_env({})
    assert s.drain_timeout == 30.0
    assert s.flow_execution_timeout == 10.0
    assert s.mgmt_http_port == 3333
    assert s.bind_ipv4 and s.bind_ipv6
    assert s.max_template_depth == 5 and s.max_template_result_size == 65536 and s.max_template_parse_nodes == 50


def test_bad_number_names_the_variable():
    with pytest.raises(CompileFailed) as info:
        Settings.from_env({"VANE_DRAIN_TIMEOUT_SECS": "soon", "VANE_BIND_MAX_ATTEMPTS": "-1"})
    text = str(info.value)
    assert "VANE_DRAIN_TIMEOUT_SECS" in text and "soon" in text
    assert "VANE_BIND_MAX_ATTEMPTS" in text  # every bad variable, not just the first


def test_seed_aliases_and_vane_name_wins():
    s = Settings.from_env({"FLOW_EXECUTION_TIMEOUT_SECS": "2", "EXTERNAL_PLUGIN_QUIET_PERIOD_SECS": "7"})
    assert s.flow_execution_timeout == 2.0 and s.external_plugin_quiet_period == 7.0
    s = Settings.from_env({"FLOW_EXECUTION_TIMEOUT_SECS": "2", "VANE_FLOW_EXECUTION_TIMEOUT_SECS": "4"})
    assert s.flow_execution_timeout == 4.0


def test_mgmt_port_empty_disables_and_bools():
    s = Settings.from_env({"VANE_MGMT_HTTP_PORT": "", "VANE_BIND_IPV6": "0", "VANE_MGMT_HTTP_PUBLIC": "1",
                           "VANE_MGMT_HTTP_TOKEN": "t"})
    assert s.mgmt_http_port is None and s.bind_ipv6 is False and s.mgmt_http_public is True
    with pytest.raises(CompileFailed, match="VANE_BIND_IPV4"):
        Settings.from_env({"VANE_BIND_IPV4": "maybe"})


def test_dotenv_loaded_and_os_env_wins(tmp_path):
    (tmp_path / ".env").write_text("VANE_DRAIN_TIMEOUT_SECS=12\nVANE_LOG_LEVEL=debug\n")
    s = load_settings(str(tmp_path), {"VANE_LOG_LEVEL": "warning"})
    assert s.drain_timeout == 12.0
    assert s.log_level == "warning"


def test_public_management_without_token_refused(tmp_path):
    missing = str(tmp_path / "none")
    with pytest.raises(CompileFailed, match="VANE_MGMT_HTTP_TOKEN is unset and the token file .*none was not found"):
        Settings.from_env({"VANE_MGMT_HTTP_PUBLIC": "1", "VANE_MGMT_HTTP_TOKEN_FILE": missing})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(CompileFailed, match="is empty"):
        Settings.from_env({"VANE_MGMT_HTTP_PUBLIC": "1", "VANE_MGMT_HTTP_TOKEN_FILE": str(tmp_path / "empty")})
    # a token from the file will do, and without a port nothing is exposed
    (tmp_path / "token").write_text("abc\n")
    assert Settings.from_env({"VANE_MGMT_HTTP_PUBLIC": "1", "VANE_MGMT_HTTP_TOKEN_FILE": str(tmp_path / "token")})
    assert Settings.from_env({"VANE_MGMT_HTTP_PUBLIC": "1", "VANE_MGMT_HTTP_PORT": "",
                              "VANE_MGMT_HTTP_TOKEN_FILE": missing}).mgmt_http_port is None


def test_mgmt_token_file_and_public_host_names():
    s = Settings.from_env({})
    assert s.mgmt_http_token_file == "/etc/vaned/mgmt-http.token" and s.mgmt_http_host == ()
    s = Settings.from_env({"VANE_MGMT_HTTP_TOKEN_FILE": "", "VANE_MGMT_HTTP_HOST": "Mgmt.Example.net, 192.0.2.7,[2001:db8::1]"})
    assert s.mgmt_http_token_file is None
    assert s.mgmt_http_host == ("mgmt.example.net", "192.0.2.7", "[2001:db8::1]")
    for bad in ("mgmt.example.net:3333", "a b", "evil.example/", "[::1"):
        with pytest.raises(CompileFailed, match="VANE_MGMT_HTTP_HOST"):
            Settings.from_env({"VANE_MGMT_HTTP_HOST": bad})
