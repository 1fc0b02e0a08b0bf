"""Settings: env vars, flags over env, and clear sentences for bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from warren.config import DEFAULT_AMQP_URL, Settings, redact
from warren.errors import UsageError


def test_defaults_follow_the_contract() -> None:
    s = Settings.load(environ={})
    assert s.amqp_url == DEFAULT_AMQP_URL == "amqp://guest:guest@localhost:5672/%2F"
    assert s.chunk_size == 1024 * 1024


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
