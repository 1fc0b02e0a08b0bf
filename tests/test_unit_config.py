"""Settings: env vars, flags over env, and clear sentences for bad values."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import pytest

from devtools.localnode import free_port
from warren import metrics
from warren.config import DEFAULT_AMQP_URL, Settings, default_config_path, mask, redact, shown
from warren.errors import UsageError


def test_defaults_follow_the_contract() -> None:
    s = Settings.load(environ={})
    assert s.amqp_url == DEFAULT_AMQP_URL == "amqp://guest:guest@localhost:5672/%2F"
    assert s.chunk_size == 4 * 1024 * 1024


def test_env_then_flags() -> None:
    env = {
        "WARREN_AMQP_URL": "amqp://a:b@h1:1/, amqp://a:b@h2:2/",
        "WARREN_WINDOW": "8",
        "WARREN_DATA_DIR": "/tmp/x",
    }
    s = Settings.load({"window": 4, "name": None}, environ=env)
    assert s.amqp_urls == ["amqp://a:b@h1:1/", "amqp://a:b@h2:2/"]
    assert s.window == 4
    assert s.data_dir == Path("/tmp/x")


@pytest.mark.parametrize(
    "env, words",
    [
        ({"WARREN_WINDOW": "many"}, "WARREN_WINDOW='many' is not a valid int"),
        ({"WARREN_AMQP_URL": "http://x"}, "is not an amqp:// or amqps:// URL"),
        ({"WARREN_CHUNK_SIZE": "10"}, "between 1 KiB and 64 MiB"),
        ({"WARREN_PREFETCH": "0"}, "WARREN_PREFETCH must be at least 1"),
    ],
)
def test_bad_values_are_one_sentence(env: dict[str, str], words: str) -> None:
    with pytest.raises(UsageError, match=words.replace("(", r"\(").replace("?", r"\?")):
        Settings.load(environ=env)


def test_redact_hides_passwords() -> None:
    assert redact("amqp://user:secret@host:5672/v") == "amqp://user@host:5672/v"
    assert redact("amqp://host/") == "amqp://host/"


def config_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_a_config_file_is_read_and_env_then_flags_override_it(tmp_path: Path) -> None:
    # Given a config file with the broker URL (and its password) and two more settings
    path = config_file(
        tmp_path, 'amqp_url = "amqp://me:s3cret@far:5672/%2F"\nwindow = 8\nclient_name = "laptop"\n'
    )
    env = {"WARREN_CONFIG": str(path), "WARREN_WINDOW": "4"}
    # When settings load with an env var and a flag over two of them
    s, sources = Settings.load_with_sources({"client_name": "desk"}, environ=env)
    # Then the file gives the rest, a variable beats the file, a flag beats both
    assert s.amqp_url == "amqp://me:s3cret@far:5672/%2F"
    assert (s.window, s.client_name) == (4, "desk")
    assert sources["amqp_url"] == "config file"
    assert sources["window"] == "env WARREN_WINDOW"
    assert sources["client_name"] == "flag"
    assert sources["chunk_size"] == "default"


def test_a_config_file_others_can_read_is_refused_in_one_sentence(tmp_path: Path) -> None:
    path = config_file(tmp_path, 'amqp_url = "amqp://me:s3cret@far/"\n', mode=0o644)
    with pytest.raises(UsageError) as caught:
        Settings.load(environ={"WARREN_CONFIG": str(path)})
    message = str(caught.value)
    assert "can be read by others" in message and f"chmod 600 {path}" in message
    assert message.count(". ") == 0 and "s3cret" not in message


@pytest.mark.parametrize(
    "text, words",
    [
        ("windw = 3\n", "sets 'windw', which is not a setting"),
        ('window = "many"\n', "window in"),
        ("amqp_url = \n", "is not valid TOML"),
        ("[client]\nwindow = 3\n", "sets 'client', which is not a setting"),
    ],
)
def test_a_bad_config_file_is_one_sentence(tmp_path: Path, text: str, words: str) -> None:
    path = config_file(tmp_path, text)
    with pytest.raises(UsageError, match=words):
        Settings.load(environ={"WARREN_CONFIG": str(path)})


def test_warren_config_must_name_a_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="WARREN_CONFIG names .* which is not a file"):
        Settings.load(environ={"WARREN_CONFIG": str(tmp_path / "missing.toml")})


def test_the_user_config_dir_is_read_only_from_the_real_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a config file in the user config directory (XDG_CONFIG_HOME on Linux)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    (tmp_path / "warren").mkdir()
    config_file(tmp_path / "warren", "window = 7\n")
    assert default_config_path() == tmp_path / "warren" / "config.toml"
    # Then the process's own settings read it, and an explicit environ never does
    monkeypatch.delenv("WARREN_WINDOW", raising=False)
    monkeypatch.delenv("WARREN_CONFIG", raising=False)
    assert Settings.load().window == 7
    assert Settings.load(environ={}).window == 16


def test_passwords_are_masked_where_settings_are_shown() -> None:
    assert mask("amqp://me:s3cret@far:5672/%2F") == "amqp://me:****@far:5672/%2F"
    assert (
        shown("amqp_url", "amqp://a:x@h1/, amqp://a:y@h2/") == "amqp://a:****@h1/,amqp://a:****@h2/"
    )
    assert shown("admin_password", "hunter2") == "****"
    assert shown("window", 16) == "16"


def test_metrics_are_served_on_the_address_warren_metrics_addr_names() -> None:
    # Given WARREN_METRICS_ADDR naming another loopback address than the default
    port = free_port()
    env = {"WARREN_METRICS_ADDR": "127.0.0.2", "WARREN_METRICS_PORT": str(port)}
    settings = Settings.load(environ=env)
    # When a service starts its metrics as the manager and workers do
    metrics.serve(settings.metrics_port, settings.metrics_addr)
    # Then /metrics answers there, and not on the default 127.0.0.1
    with urllib.request.urlopen(f"http://127.0.0.2:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200 and b"warren_files" in resp.read()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=10).close()


def test_a_chunk_size_the_brokers_messages_cannot_hold_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """WARREN_CHUNK_SIZE's range follows the broker's max_message_size, which both broker
    configs set to the one number in warren.topology."""
    from devtools.localnode import LocalNode
    from warren import topology

    limit = f"max_message_size = {topology.MAX_MESSAGE_SIZE}"
    assert limit in (Path(__file__).parent.parent / "broker" / "rabbitmq.conf").read_text()
    assert limit in LocalNode.with_free_ports(tmp_path).config_text()
    top = topology.max_chunk_size()
    assert top + topology.MESSAGE_HEADROOM <= topology.MAX_MESSAGE_SIZE
    Settings.load(environ={"WARREN_CHUNK_SIZE": str(top)})
    with pytest.raises(UsageError, match="between 1 KiB and 64 MiB"):
        Settings.load(environ={"WARREN_CHUNK_SIZE": str(top + 1)})
    monkeypatch.setattr(topology, "MAX_MESSAGE_SIZE", 16 * 1024 * 1024)
    with pytest.raises(UsageError, match="at most 16 MiB"):
        Settings.load(environ={"WARREN_CHUNK_SIZE": str(32 * 1024 * 1024)})
