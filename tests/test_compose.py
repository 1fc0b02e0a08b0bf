"""The Docker deployment, checked without Docker or a broker.

docker-compose.yml, the Dockerfile and broker/ only meet real code at `docker compose up`,
which this suite never runs. These checks catch what would break there: a command a module
does not accept, a mounted file that is missing, an env var nothing reads, a package the image
lacks, a broker password hash that does not match its password.
"""

from __future__ import annotations

import base64
import dataclasses
import fnmatch
import functools
import hashlib
import hmac
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from warren.config import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
BROKER = ROOT / "broker"

WORKERS = ("w1", "w2", "w3", "w4")
CLIENTS = ("client1", "client2")
WARREN_SERVICES = ("manager", *WORKERS, *CLIENTS)
SETTINGS_FIELDS = {f.name for f in dataclasses.fields(Settings)}
SETTINGS_ENV = {"WARREN_" + name.upper() for name in SETTINGS_FIELDS}

Service = dict[str, Any]


# -- reading the files ---------------------------------------------------------------------


@functools.cache
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict), "docker-compose.yml is not a mapping"
    return data


def services() -> dict[str, Service]:
    found = compose().get("services")
    assert isinstance(found, dict), "docker-compose.yml has no services"
    return found


def service(name: str) -> Service:
    svc = services().get(name)
    assert isinstance(svc, dict), f"docker-compose.yml has no service {name!r}"
    return svc


def as_argv(value: Any) -> list[str]:
    """A compose command or entrypoint (a list or a shell-like string) as an argv."""
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    assert isinstance(value, list), f"not a command: {value!r}"
    return [str(v) for v in value]


def argv(svc: Service) -> list[str]:
    """What the container runs: entrypoint, then command (the image sets no ENTRYPOINT)."""
    return as_argv(svc.get("entrypoint")) + as_argv(svc.get("command"))


def module_and_args(name: str) -> tuple[str, list[str]]:
    cmd = argv(service(name))
    assert cmd[:2] == ["python", "-m"] and len(cmd) >= 3, f"{name}: runs {cmd!r}"
    return cmd[2], cmd[3:]


def environment(svc: Service) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    assert isinstance(env, dict)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def flag_values(args: list[str]) -> dict[str, str]:
    """``--data-dir /data`` and ``--data-dir=/data`` as {"--data-dir": "/data"}."""
    values: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--") and "=" in arg:
            key, value = arg.split("=", 1)
            values[key] = value
        elif arg.startswith("-") and i + 1 < len(args) and not args[i + 1].startswith("-"):
            values[arg] = args[i + 1]
            i += 1
        elif arg.startswith("-"):
            values[arg] = ""
        i += 1
    return values


@dataclasses.dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool

    @property
    def is_bind(self) -> bool:
        return self.source.startswith((".", "/", "~"))


def mounts(svc: Service) -> list[Mount]:
    found = []
    for v in svc.get("volumes") or []:
        if isinstance(v, dict):
            found.append(Mount(str(v["source"]), str(v["target"]), bool(v.get("read_only"))))
        else:
            parts = str(v).split(":")
            assert len(parts) in (2, 3), f"volume {v!r} is not SOURCE:TARGET[:MODE]"
            modes = parts[2].split(",") if len(parts) == 3 else []
            found.append(Mount(parts[0], parts[1], "ro" in modes))
    return found


def container_ports(svc: Service) -> set[int]:
    ports: set[int] = set()
    for p in svc.get("ports") or []:
        if isinstance(p, dict):
            ports.add(int(p["target"]))
        else:
            # Unquoted "5672:5672" is a base-60 integer to YAML 1.1: compose files quote ports.
            assert isinstance(p, str), f"port {p!r} must be a quoted string"
            ports.add(int(p.split(":")[-1].split("/")[0]))
    return ports


@functools.cache
def help_options(module: str) -> frozenset[str]:
    """The option strings ``python -m MODULE --help`` documents."""
    proc = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"python -m {module} --help failed:\n{proc.stderr}"
    return frozenset(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", proc.stdout))


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    result = []
    for line in lines:
        instruction, _, rest = line.partition(" ")
        result.append((instruction.upper(), rest.strip()))
    return result


def dockerfile_copy_sources() -> list[str]:
    sources: list[str] = []
    for instruction, rest in dockerfile_instructions():
        if instruction in ("COPY", "ADD"):
            words = [w for w in shlex.split(rest) if not w.startswith("--")]
            sources.extend(w.rstrip("/") or "." for w in words[:-1])
    return sources


def broker_conf() -> dict[str, str]:
    conf: dict[str, str] = {}
    for raw in (BROKER / "rabbitmq.conf").read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"rabbitmq.conf: {raw!r} is not 'key = value'"
            conf[key.strip()] = value.strip()
    return conf


def definitions() -> dict[str, Any]:
    data = json.loads((BROKER / "definitions.json").read_text())
    assert isinstance(data, dict)
    return data


def rabbit_sha256_matches(password_hash: str, password: str) -> bool:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt[4] + sha256(salt + password))."""
    raw = base64.b64decode(password_hash, validate=True)
    salt, digest = raw[:4], raw[4:]
    expected = hashlib.sha256(salt + password.encode()).digest()
    return len(salt) == 4 and hmac.compare_digest(digest, expected)


# -- compose: services and commands --------------------------------------------------------


def test_compose_has_the_broker_the_manager_four_workers_and_two_clients() -> None:
    assert set(services()) == {"rabbitmq", *WARREN_SERVICES}
    running_worker = {name for name in WARREN_SERVICES if module_and_args(name)[0] == "worker"}
    assert running_worker == set(WORKERS)


@pytest.mark.parametrize("name", WARREN_SERVICES)
def test_command_runs_a_repo_module_with_flags_it_accepts(name: str) -> None:
    module, args = module_and_args(name)
    assert (ROOT / module / "__main__.py").is_file(), f"{name}: no module {module}/__main__.py"
    options = help_options(module)
    for flag in flag_values(args):
        assert flag in options, f"{name}: python -m {module} has no option {flag}"


@pytest.mark.parametrize("name", ["manager", *WORKERS])
def test_service_settings_load_from_its_flags_and_environment(name: str) -> None:
    _, args = module_and_args(name)
    overrides = {}
    for flag, value in flag_values(args).items():
        field = flag.lstrip("-").replace("-", "_")
        if field in SETTINGS_FIELDS:
            overrides[field] = value
    settings = Settings.load(overrides, environ=environment(service(name)))
    assert settings.data_dir is not None, f"{name}: give --data-dir so state lands on a volume"
    data_volumes = {m.target for m in mounts(service(name)) if not m.is_bind}
    assert str(settings.data_dir) in data_volumes, f"{name}: {settings.data_dir} is no volume"
    if name in WORKERS:
        assert settings.name == name, f"{name}: runs as worker {settings.name!r}"


def test_workers_each_keep_data_on_their_own_volume() -> None:
    volumes = {}
    for name in ("manager", *WORKERS):
        named = [m.source for m in mounts(service(name)) if not m.is_bind]
        assert len(named) == 1, f"{name}: expected one named volume, got {named}"
        volumes[name] = named[0]
    assert len(set(volumes.values())) == len(volumes), f"volumes are shared: {volumes}"
    declared = compose().get("volumes") or {}
    for name, volume in volumes.items():
        assert volume in declared, f"{name}: volume {volume!r} is not declared under volumes:"


def test_clients_run_on_demand_under_distinct_names() -> None:
    names = set()
    for name in CLIENTS:
        svc = service(name)
        assert module_and_args(name)[0] == "client"
        assert "client" in (svc.get("profiles") or []), f"{name}: `up` would start it"
        assert "command" not in svc, f"{name}: `compose run {name} ARGS` should append to it"
        client_name = environment(svc).get("WARREN_CLIENT_NAME", "")
        assert client_name, f"{name}: set WARREN_CLIENT_NAME"
        names.add(client_name)
        assert Settings.load(environ=environment(svc)).client_name == client_name
    assert len(names) == len(CLIENTS)


# -- compose: environment, mounts, broker, ordering -----------------------------------------


@pytest.mark.parametrize("name", sorted(["rabbitmq", *WARREN_SERVICES]))
def test_only_settings_fields_are_set_as_warren_env_vars(name: str) -> None:
    unknown = {k for k in environment(service(name)) if k.startswith("WARREN_")} - SETTINGS_ENV
    assert not unknown, f"{name}: {sorted(unknown)} are not fields of warren.config.Settings"


@pytest.mark.parametrize("name", WARREN_SERVICES)
def test_services_reach_the_compose_broker(name: str) -> None:
    url = environment(service(name)).get("WARREN_AMQP_URL", "")
    parts = urlsplit(url)
    assert parts.hostname == "rabbitmq" and parts.port == 5672, f"{name}: WARREN_AMQP_URL={url}"


@pytest.mark.parametrize("name", sorted(["rabbitmq", *WARREN_SERVICES]))
def test_bind_mounted_host_paths_exist(name: str) -> None:
    for m in mounts(service(name)):
        if m.is_bind:
            assert (ROOT / m.source).exists(), f"{name}: {m.source} does not exist"


def test_rabbitmq_mounts_its_config_read_only() -> None:
    by_target = {m.target: m for m in mounts(service("rabbitmq"))}
    for file in ("rabbitmq.conf", "definitions.json", "enabled_plugins"):
        m = by_target.get(f"/etc/rabbitmq/{file}")
        assert m is not None, f"rabbitmq: /etc/rabbitmq/{file} is not mounted"
        assert (ROOT / m.source).resolve() == BROKER / file
        assert m.read_only, f"rabbitmq: mount {file} read-only"
    assert "/var/lib/rabbitmq" in by_target, "rabbitmq: keep /var/lib/rabbitmq on a volume"


def test_rabbitmq_publishes_its_ports_and_has_a_healthcheck() -> None:
    svc = service("rabbitmq")
    assert {5672, 15672} <= container_ports(svc)
    check = svc.get("healthcheck") or {}
    assert not check.get("disable"), "rabbitmq: the healthcheck is disabled"
    assert as_argv(check.get("test"))[:1] in (["CMD"], ["CMD-SHELL"]), "rabbitmq: no healthcheck"


@pytest.mark.parametrize("name", ["manager", *WORKERS])
def test_services_wait_for_a_healthy_broker(name: str) -> None:
    depends = service(name).get("depends_on")
    assert isinstance(depends, dict), f"{name}: depends_on needs conditions"
    assert (depends.get("rabbitmq") or {}).get("condition") == "service_healthy"
    if name in WORKERS:
        assert "manager" in depends, f"{name}: start the manager first"


# -- the image ------------------------------------------------------------------------------


def test_dockerfile_copies_every_package_the_services_run() -> None:
    copied = set(dockerfile_copy_sources())
    modules = {module_and_args(name)[0] for name in WARREN_SERVICES}
    for package in modules | {"warren"}:
        assert package in copied, f"the Dockerfile does not COPY {package}/"
    tomllib = pytest.importorskip("tomllib")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for package in pyproject["tool"]["setuptools"]["packages"]:
        assert package in copied, f"pip install . needs {package}/ in the image"
    assert {"pyproject.toml", "README.md"} <= copied, "pip install . reads both"


def test_dockerfile_copies_files_that_exist() -> None:
    for source in dockerfile_copy_sources():
        assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which does not exist"


def test_dockerfile_runs_the_manager_as_a_non_root_user() -> None:
    instructions = dockerfile_instructions()
    assert instructions[0][0] == "FROM"
    users = [rest for instruction, rest in instructions if instruction == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "run as a non-root user"
    cmds = [json.loads(rest) for instruction, rest in instructions if instruction == "CMD"]
    assert cmds and cmds[-1] == ["python", "-m", "manager"]
    for instruction, rest in instructions:
        if instruction == "ENV":
            names = set(re.findall(r"(?:^|\s)(WARREN_\w+)=", rest))
            assert names <= SETTINGS_ENV, f"Dockerfile ENV: {sorted(names - SETTINGS_ENV)}"


def test_dockerignore_keeps_local_state_out_and_sources_in() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for excluded in (".git", ".venv", ".warren"):
        assert excluded in patterns, f".dockerignore should exclude {excluded}"
    for needed in dockerfile_copy_sources():
        for pattern in patterns:
            assert not fnmatch.fnmatch(needed, pattern), f".dockerignore drops {needed}"


# -- broker/ --------------------------------------------------------------------------------


def test_definitions_give_guest_full_rights_on_the_default_vhost() -> None:
    defs = definitions()
    users = {u["name"]: u for u in defs["users"]}
    guest = users["guest"]
    tags = guest["tags"]
    assert "administrator" in (tags if isinstance(tags, list) else tags.split(","))
    assert guest["hashing_algorithm"] == "rabbit_password_hashing_sha256"
    assert "password" not in guest, "definitions take password_hash, never a password"
    assert "/" in {v["name"] for v in defs["vhosts"]}
    perms = [p for p in defs["permissions"] if p["user"] == "guest" and p["vhost"] == "/"]
    assert len(perms) == 1
    assert (perms[0]["configure"], perms[0]["write"], perms[0]["read"]) == (".*", ".*", ".*")


def test_guest_password_hash_matches_guest() -> None:
    password_hash = {u["name"]: u for u in definitions()["users"]}["guest"]["password_hash"]
    assert rabbit_sha256_matches(password_hash, "guest")
    assert not rabbit_sha256_matches(password_hash, "guest2")


def test_rabbitmq_conf_matches_the_compose_service() -> None:
    conf = broker_conf()
    assert conf["listeners.tcp.default"].rsplit(":", 1)[-1] == "5672"
    assert conf["management.tcp.port"] == "15672"
    assert conf["load_definitions"] == "/etc/rabbitmq/definitions.json"
    assert conf["loopback_users"] == "none", "guest must be able to log in from other containers"
    assert 0 < float(conf["vm_memory_high_watermark.relative"]) < 1
    assert conf["disk_free_limit.absolute"]
    assert int(conf["consumer_timeout"]) >= 3_600_000, "long uploads outlive a short timeout"


def test_enabled_plugins_is_an_erlang_list() -> None:
    text = (BROKER / "enabled_plugins").read_text().strip()
    match = re.fullmatch(r"\[\s*([a-z_]+(?:\s*,\s*[a-z_]+)*)\s*\]\.", text)
    assert match, f"enabled_plugins is not an Erlang list term: {text!r}"
    plugins = {p.strip() for p in match.group(1).split(",")}
    assert {"rabbitmq_management", "rabbitmq_prometheus"} <= plugins
