"""devtools/provision.py without a broker: passwords kept, files private, definitions exact."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from devtools import provision
from warren.config import Settings
from warren.topology import permissions


def plan(tmp_path: Path, workers: int = 2, **kw: object) -> provision.Plan:
    return provision.Plan(
        secrets_dir=tmp_path / "secrets",
        definitions_file=tmp_path / "secrets" / "definitions.json",
        workers=workers,
        endpoints=[("127.0.0.1", 5672)],
        management=("127.0.0.1", 15672),
        **kw,  # type: ignore[arg-type]
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def hash_matches(password_hash: str, password: str) -> bool:
    raw = base64.b64decode(password_hash, validate=True)
    return len(raw) == 36 and hashlib.sha256(raw[:4] + password.encode()).digest() == raw[4:]


def test_every_role_gets_a_user_and_only_its_owner_reads_the_secrets(tmp_path: Path) -> None:
    users = plan(tmp_path).write()
    assert [(u.name, u.role) for u in users] == [
        ("admin", "admin"),
        ("manager", "manager"),
        ("w1", "worker"),
        ("w2", "worker"),
        ("client1", "client"),
        ("client2", "client"),
    ]
    assert len({u.password for u in users}) == len(users)
    assert all(len(u.password) >= 32 for u in users)
    secrets = tmp_path / "secrets"
    assert mode(secrets) == 0o700
    files = sorted(secrets.iterdir())
    assert {f.name for f in files} >= {"admin.password", "w2.toml", "definitions.json"}
    for f in files:
        assert mode(f) == 0o600, f.name


def test_passwords_are_kept_and_new_workers_added(tmp_path: Path) -> None:
    first = {u.name: u.password for u in plan(tmp_path, workers=2).write()}
    second = {u.name: u.password for u in plan(tmp_path, workers=3).write()}
    assert {k: second[k] for k in first} == first
    assert set(second) - set(first) == {"w3"}
    # the definitions follow the users on every run
    defs = json.loads((tmp_path / "secrets" / "definitions.json").read_text())
    assert "w3" in {u["name"] for u in defs["users"]}


def test_definitions_hold_hashes_that_verify_and_no_guest(tmp_path: Path) -> None:
    users = plan(tmp_path).write()
    defs = json.loads((tmp_path / "secrets" / "definitions.json").read_text())
    by_name = {u["name"]: u for u in defs["users"]}
    assert "guest" not in by_name
    assert "guest" not in {p["user"] for p in defs["permissions"]}
    assert defs["vhosts"] == [{"name": "/"}]
    for u in users:
        entry = by_name[u.name]
        assert entry["hashing_algorithm"] == "rabbit_password_hashing_sha256"
        assert "password" not in entry
        assert hash_matches(entry["password_hash"], u.password)
        assert not hash_matches(entry["password_hash"], u.password + "x")
    assert by_name["admin"]["tags"] == ["administrator"]
    assert by_name["w1"]["tags"] == ["warren-worker"]
    # clients are capped in connections and channels (RabbitMQ 3.10 loads these limits)
    assert by_name["client1"]["limits"] == {"max-connections": 16, "max-channels": 64}
    assert by_name["manager"]["limits"] == {} and by_name["w1"]["limits"] == {}


def test_each_role_has_exactly_its_topology_permissions(tmp_path: Path) -> None:
    users = plan(tmp_path).write()
    defs = json.loads((tmp_path / "secrets" / "definitions.json").read_text())
    perms = {p["user"]: p for p in defs["permissions"]}
    for u in users:
        p = perms[u.name]
        assert p["vhost"] == "/"
        got = (p["configure"], p["write"], p["read"])
        topics = {
            t["exchange"]: (t["write"], t["read"])
            for t in defs["topic_permissions"]
            if t["user"] == u.name
        }
        if u.role == "admin":
            assert got == (".*", ".*", ".*")
            assert topics == {}
            continue
        want = permissions(u.role, u.name)
        assert got == (want.configure, want.write, want.read), u.name
        assert topics == want.topics, u.name
    assert len(defs["permissions"]) == len(users)


def test_each_process_config_logs_in_as_its_own_user(tmp_path: Path) -> None:
    p = plan(tmp_path, service_settings={"queue_type": "quorum"})
    users = {u.name: u for u in p.write()}
    for name, u in users.items():
        s = Settings.load(environ={"WARREN_CONFIG": str(p.config_file(name))})
        url = urlsplit(s.amqp_url)
        assert (url.scheme, url.hostname, url.port, url.path) == (
            "amqp",
            "127.0.0.1",
            5672,
            "/%2F",
        )
        assert (unquote(url.username or ""), unquote(url.password or "")) == (name, u.password)
        assert s.manager_user == "manager"
        assert s.tls_ca_file == ""
        if u.role == "client":
            assert s.client_name == name
        if u.role in ("manager", "worker"):
            assert s.queue_type == "quorum"
    admin = Settings.load(environ={"WARREN_CONFIG": str(p.config_file("admin"))})
    assert admin.admin_url.startswith("http://admin:") and admin.admin_url.endswith(
        "@127.0.0.1:15672/"
    )


def test_tls_configs_use_amqps_and_the_ca(tmp_path: Path) -> None:
    p = plan(tmp_path, tls_ca_file="/ca.pem")
    p.endpoints = [("localhost", 5671), ("localhost", 5681)]
    p.write()
    s = Settings.load(environ={"WARREN_CONFIG": str(p.config_file("w1"))})
    assert [urlsplit(u).scheme for u in s.amqp_urls] == ["amqps", "amqps"]
    assert [urlsplit(u).port for u in s.amqp_urls] == [5671, 5681]
    assert s.tls_ca_file == "/ca.pem"


def test_a_password_with_any_characters_survives_the_url_and_toml(tmp_path: Path) -> None:
    p = plan(tmp_path)
    p.secrets_dir.mkdir(mode=0o700)
    odd = 'p@ss:/w"o\\rd%é'
    (p.secrets_dir / "client1.password").write_text(odd + "\n")
    p.write()
    s = Settings.load(environ={"WARREN_CONFIG": str(p.config_file("client1"))})
    assert unquote(urlsplit(s.amqp_url).password or "") == odd


def test_the_compose_command_writes_readable_definitions_and_private_secrets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "etc-warren"
    hosts = "rabbitmq1,rabbitmq2,rabbitmq3"
    assert provision.main(["--out", str(out), "--hosts", hosts, "--workers", "4"]) == 0
    assert "provision: users admin, manager, w1, w2, w3, w4, client1, client2" in (
        capsys.readouterr().out
    )
    assert mode(out / "definitions.json") == 0o644  # the broker runs as a user of its own
    assert mode(out / "secrets") == 0o700
    s = Settings.load(environ={"WARREN_CONFIG": str(out / "secrets" / "w4.toml")})
    assert [urlsplit(u).hostname for u in s.amqp_urls] == hosts.split(",")
    kept = (out / "secrets" / "w4.password").read_text()
    assert provision.main(["--out", str(out), "--hosts", hosts]) == 0
    assert (out / "secrets" / "w4.password").read_text() == kept


def test_the_manager_gets_a_key_of_its_own_kept_across_runs(tmp_path: Path) -> None:
    """Outside its data dir, so a manager rebuilding on an empty one (or a standby) opens
    the workers' records; only the manager's config names it."""
    p = plan(tmp_path)
    p.write()
    key = p.manager_key_file.read_bytes()
    p.write()
    assert p.manager_key_file.read_bytes() == key and mode(p.manager_key_file) == 0o600
    for name in ("manager", "w1", "client1", "admin"):
        s = Settings.load(environ={"WARREN_CONFIG": str(p.config_file(name))})
        assert s.manager_key_file == (str(p.manager_key_file) if name == "manager" else "")


def test_each_client_gets_an_owner_password_kept_across_runs(tmp_path: Path) -> None:
    """The password that wraps a client's owner key (init): private, made once (a new one
    would open no key made before), and named by that client's config only."""
    p = plan(tmp_path)
    p.write()
    kept = {c: p.owner_password_file(c).read_text() for c in ("client1", "client2")}
    p.write()
    for client, text in kept.items():
        path = p.owner_password_file(client)
        assert path.read_text() == text and len(text.strip()) >= 24 and mode(path) == 0o600
    assert kept["client1"] != kept["client2"]
    for name in ("manager", "w1", "client1", "client2", "admin"):
        s = Settings.load(environ={"WARREN_CONFIG": str(p.config_file(name))})
        want = str(p.owner_password_file(name)) if name.startswith("client") else ""
        assert s.password_file == want


def test_each_own_folder_gets_only_its_containers_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, own = tmp_path / "etc-warren", tmp_path / "own"
    for name in ("broker", "manager", "w1", "client2"):
        (own / name).mkdir(parents=True)
    (own / "w1" / "admin.password").write_text("left by someone\n")
    args = ["--out", str(out), "--hosts", "r1,r2", "--erlang-cookie", "--own", str(own)]
    assert provision.main(args) == 0
    listed = {p.name: sorted(f.name for f in p.iterdir()) for p in own.iterdir()}
    assert listed == {
        "broker": ["definitions.json", "erlang.cookie"],
        "manager": ["manager.key", "manager.toml"],
        "w1": ["w1.toml"],  # and nothing else, not even what was left there
        "client2": ["client2.owner-password", "client2.toml"],
    }
    assert (own / "client2" / "client2.owner-password").read_text() == (
        out / "secrets" / "client2.owner-password"
    ).read_text()
    assert mode(own / "client2" / "client2.owner-password") == 0o600
    assert (own / "manager" / "manager.key").read_bytes() == (
        out / "secrets" / "manager.key"
    ).read_bytes()
    assert mode(own / "w1") == 0o700 and mode(own / "w1" / "w1.toml") == 0o600
    assert mode(own / "broker" / "definitions.json") == 0o644
    # a folder that is no user's is one sentence, not a guess
    capsys.readouterr()
    (own / "admin").mkdir()
    assert provision.main(args) == 1
    assert "is no user's folder" in capsys.readouterr().err
