"""The Docker deployment, checked without Docker or a broker.

docker-compose.yml (one broker), docker-compose.cluster.yml (three clustered brokers), the
Dockerfile and broker/ only meet real code at `docker compose up`, which this suite never runs
(`make compose-test` does, with Docker). These checks catch what would break there: a command
a module does not accept, a mounted file that is missing, an env var nothing reads, a package
the image lacks, a service whose login the broker would refuse (the `provision` service's own
command is run here into a temporary folder standing for its volume, and each service's config
file is read from there), a cluster node its peers cannot find or authenticate, a key
docker-compose v1 rejects, two layouts in one project, and the two compose files or the two
broker configs drifting apart.
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
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import yaml

from devtools import provision
from warren.config import CONFIG_ENV, Settings
from warren.topology import permissions

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
DOTENV = ROOT / ".env"
README = ROOT / "README.md"
BROKER = ROOT / "broker"

WORKERS = ("w1", "w2", "w3", "w4")
CLIENTS = ("client1", "client2")
WARREN_SERVICES = ("manager", *WORKERS, *CLIENTS)
# One-shot services that run `init` for each client at `up` (its owner key), as that client.
INITS = {f"{c}-init": c for c in CLIENTS}
SETTINGS_FIELDS = {f.name for f in dataclasses.fields(Settings)}
SETTINGS_ENV = {"WARREN_" + name.upper() for name in SETTINGS_FIELDS}
WARREN_ENV = SETTINGS_ENV | {CONFIG_ENV}  # WARREN_CONFIG names the config file
PROVISION = "provision"  # the one-shot service that writes the users' secrets
SECRETS = "secrets"  # the volume it writes them into
# The top-level keys docker-compose v1 accepts (besides x- extensions); v2 also takes `name:`,
# which v1 rejects, so the project names come from .env and -p.
COMPOSE_V1_TOP_LEVEL = {"version", "services", "volumes", "networks", "secrets", "configs"}
# Where Erlang (the node and the CLI tools) reads the cookie: $HOME of the rabbitmq user.
COOKIE_PATH = "/var/lib/rabbitmq/.erlang.cookie"

Service = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Layout:
    """One compose file and what it must run."""

    file: str
    brokers: tuple[str, ...]  # the RabbitMQ services, each one node
    broker_conf: str  # the file under broker/ its nodes mount as rabbitmq.conf
    queue_type: str  # the manager's and the workers' Settings.queue_type


SINGLE = Layout("docker-compose.yml", ("rabbitmq",), "rabbitmq.conf", "classic")
CLUSTER = Layout(
    "docker-compose.cluster.yml",
    ("rabbitmq1", "rabbitmq2", "rabbitmq3"),
    "rabbitmq-cluster.conf",
    "quorum",
)
LAYOUTS = (SINGLE, CLUSTER)


def each_layout() -> pytest.MarkDecorator:
    return pytest.mark.parametrize("layout", LAYOUTS, ids=lambda layout: layout.file)


def each_service(names: Callable[[Layout], Iterable[str]]) -> pytest.MarkDecorator:
    """Parametrize (layout, name) over both compose files and the services ``names`` picks."""
    params = [
        pytest.param(layout, name, id=f"{layout.file}:{name}")
        for layout in LAYOUTS
        for name in names(layout)
    ]
    return pytest.mark.parametrize(("layout", "name"), params)


# -- reading the files ---------------------------------------------------------------------


@functools.cache
def compose(layout: Layout) -> dict[str, Any]:
    data = yaml.safe_load((ROOT / layout.file).read_text())
    assert isinstance(data, dict), f"{layout.file} is not a mapping"
    return data


def dotenv() -> dict[str, str]:
    """The variables of .env, which both compose versions read from the project folder."""
    values: dict[str, str] = {}
    for raw in DOTENV.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f".env: {raw!r} is not KEY=VALUE"
            values[key.strip()] = value.strip()
    return values


def header_commands(layout: Layout) -> list[str]:
    """The `docker compose ...` command lines of the file's opening comment."""
    text = (ROOT / layout.file).read_text()
    return [line for line in text.splitlines() if re.match(r"#\s+docker compose ", line)]


def project_name(layout: Layout) -> str:
    """The compose project: the -p its header commands give, else .env's COMPOSE_PROJECT_NAME."""
    given = set()
    for line in header_commands(layout):
        match = re.search(r"docker compose -p (\S+)", line)
        if match:
            given.add(match.group(1))
    assert len(given) <= 1, f"{layout.file}: the commands give different projects: {given}"
    return given.pop() if given else dotenv().get("COMPOSE_PROJECT_NAME", "")


def services(layout: Layout) -> dict[str, Service]:
    found = compose(layout).get("services")
    assert isinstance(found, dict), f"{layout.file} has no services"
    return found


def service(layout: Layout, name: str) -> Service:
    svc = services(layout).get(name)
    assert isinstance(svc, dict), f"{layout.file} has no service {name!r}"
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


def module_and_args(layout: Layout, name: str) -> tuple[str, list[str]]:
    cmd = argv(service(layout, name))
    assert cmd[:2] == ["python", "-m"] and len(cmd) >= 3, f"{layout.file}: {name} runs {cmd!r}"
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


@dataclasses.dataclass(frozen=True)
class Port:
    host_ip: str  # "" when published on every interface
    host_port: int | None
    container_port: int


def published(svc: Service) -> list[Port]:
    ports: list[Port] = []
    for p in svc.get("ports") or []:
        if isinstance(p, dict):
            host = p.get("published")
            host_port = int(host) if host is not None else None
            ports.append(Port(str(p.get("host_ip", "")), host_port, int(p["target"])))
            continue
        # Unquoted "5672:5672" is a base-60 integer to YAML 1.1: compose files quote ports.
        assert isinstance(p, str), f"port {p!r} must be a quoted string"
        parts = p.split("/")[0].split(":")
        assert 1 <= len(parts) <= 3, f"port {p!r} is not [[IP:]HOST:]CONTAINER"
        ip = parts[0] if len(parts) == 3 else ""
        host_port = int(parts[-2]) if len(parts) >= 2 else None
        ports.append(Port(ip, host_port, int(parts[-1])))
    return ports


def container_ports(svc: Service) -> set[int]:
    return {p.container_port for p in published(svc)}


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


@functools.cache
def broker_conf(file: str = "rabbitmq.conf") -> dict[str, str]:
    conf: dict[str, str] = {}
    for raw in (BROKER / file).read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{file}: {raw!r} is not 'key = value'"
            assert key.strip() not in conf, f"{file}: {key.strip()} is set twice"
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


def node_name(layout: Layout, broker: str) -> str:
    """The node's name: rabbit@<hostname> (the image's default; RABBITMQ_NODENAME overrides)."""
    svc = service(layout, broker)
    default = f"rabbit@{svc.get('hostname', '')}"
    return environment(svc).get("RABBITMQ_NODENAME", default)


def erlang_cookie(layout: Layout, broker: str, provisioned: ProvisionedBy) -> str:
    """The cookie a node runs with, read from where its service takes it.

    Either a file that provision writes into the secrets volume and the command installs as
    $HOME/.erlang.cookie, owned by rabbitmq and readable by it only, before handing over to
    the image's entrypoint; or the (deprecated) RABBITMQ_ERLANG_COOKIE variable.
    """
    svc = service(layout, broker)
    from_env = environment(svc).get("RABBITMQ_ERLANG_COOKIE")
    cmd = argv(svc)
    if cmd[:2] != ["sh", "-c"]:
        assert from_env, f"{broker}: no Erlang cookie: its peers would refuse it"
        return from_env
    assert from_env is None, f"{broker}: give the cookie one way, not two"
    assert len(cmd) == 3, f"{broker}: sh -c takes one script: {cmd!r}"
    steps = [shlex.split(step) for step in cmd[2].split("&&")]
    assert steps[-1] == ["exec", "docker-entrypoint.sh", "rabbitmq-server"], (
        f"{broker}: the script must end by handing over to the image's entrypoint"
    )
    installs = [s for s in steps if s[:1] == ["install"] and s[-1] == COOKIE_PATH]
    assert len(installs) == 1, f"{broker}: the script does not install {COOKIE_PATH}"
    install = installs[0]
    options = flag_values(install[1:-2])
    assert options.get("-o") == "rabbitmq" and options.get("-g") == "rabbitmq", (
        f"{broker}: the cookie must belong to the rabbitmq user: {install}"
    )
    assert options.get("-m") in ("0400", "400"), f"{broker}: the cookie must be 0400: {install}"
    source = install[-2]
    target = own_mount(layout, broker).target
    assert source.startswith(target + "/"), f"{broker}: {source} is not in its own volume"
    path = provisioned(layout).path(broker, source)
    assert path.is_file(), f"{broker}: provision does not write {source}"
    return path.read_text()


def secrets_mount(layout: Layout, name: str) -> Mount:
    found = [m for m in mounts(service(layout, name)) if m.source == SECRETS]
    assert len(found) == 1, f"{layout.file}: {name} does not mount the volume {SECRETS}"
    return found[0]


def handed_volumes(layout: Layout) -> dict[str, str]:
    """The volumes provision hands out (each container's own), and where it mounts each."""
    return {
        m.source: m.target
        for m in mounts(service(layout, PROVISION))
        if not m.is_bind and m.source != SECRETS
    }


def own_mount(layout: Layout, name: str) -> Mount:
    """The one volume provision hands ``name``: its secrets, and nobody else's."""
    handed = handed_volumes(layout)
    found = [m for m in mounts(service(layout, name)) if m.source in handed]
    assert len(found) == 1, f"{layout.file}: {name} mounts {len(found)} volumes of secrets"
    return found[0]


@dataclasses.dataclass(frozen=True)
class Provisioned:
    """What the provision service wrote: each volume's folder here."""

    layout: Layout
    folders: dict[str, Path]  # volume -> the folder that stands in for it

    def path(self, name: str, in_container: str) -> Path:
        """The file ``in_container`` of service ``name``, through the volume it mounts there."""
        for m in sorted(mounts(service(self.layout, name)), key=lambda m: -len(m.target)):
            if in_container.startswith(m.target + "/") and m.source in self.folders:
                return self.folders[m.source] / in_container[len(m.target) + 1 :]
        raise AssertionError(f"{name}: {in_container} is in no volume provision writes")

    def files(self, volume: str) -> set[str]:
        return {p.name for p in self.folders[volume].iterdir()}


ProvisionedBy = Callable[[Layout], Provisioned]


@pytest.fixture(scope="module")
def provisioned(tmp_path_factory: pytest.TempPathFactory) -> ProvisionedBy:
    """Run each layout's provision command, with each volume's folder here instead."""
    made: dict[str, Provisioned] = {}

    def get(layout: Layout) -> Provisioned:
        if layout.file not in made:
            module, args = module_and_args(layout, PROVISION)
            assert module == "devtools.provision", f"{layout.file}: provision runs {module}"
            flags = flag_values(args)
            target = secrets_mount(layout, PROVISION).target
            assert flags.get("--out") == target, "write into the secrets volume"
            folder = tmp_path_factory.mktemp("etc-warren")
            own = tmp_path_factory.mktemp("own")
            folders = {SECRETS: folder}
            for volume, mounted in handed_volumes(layout).items():
                assert mounted.startswith(flags.get("--own", "?") + "/"), (
                    f"{layout.file}: provision mounts {volume} at {mounted}, not in --own"
                )
                folders[volume] = own / mounted.rsplit("/", 1)[1]
                folders[volume].mkdir()  # as Docker makes a volume's mount point
            here = {target: str(folder), flags["--own"]: str(own)}
            # --owner: the image's uid and gid, which only root (provision in Docker) can give
            args = [a for a in args if a not in ("--owner", flags.get("--owner"))]
            assert provision.main([here.get(a, a) for a in args]) == 0
            made[layout.file] = Provisioned(layout, folders)
        return made[layout.file]

    return get


def settings_of(
    layout: Layout,
    name: str,
    provisioned: ProvisionedBy,
    overrides: dict[str, Any] | None = None,
) -> Settings:
    """The service's settings, its config file read from what provision wrote."""
    env = environment(service(layout, name))
    if CONFIG_ENV in env:
        env[CONFIG_ENV] = str(provisioned(layout).path(name, env[CONFIG_ENV]))
    return Settings.load(overrides, environ=env)


# -- compose: services and commands --------------------------------------------------------


@each_layout()
def test_compose_has_the_brokers_the_manager_four_workers_and_two_clients(layout: Layout) -> None:
    assert set(services(layout)) == {*layout.brokers, *WARREN_SERVICES, PROVISION, *INITS}
    running_worker = {
        name for name in WARREN_SERVICES if module_and_args(layout, name)[0] == "worker"
    }
    assert running_worker == set(WORKERS)


@each_service(lambda layout: (*WARREN_SERVICES, *INITS))
def test_command_runs_a_repo_module_with_flags_it_accepts(layout: Layout, name: str) -> None:
    module, args = module_and_args(layout, name)
    assert (ROOT / module / "__main__.py").is_file(), f"{name}: no module {module}/__main__.py"
    options = help_options(module)
    for flag in flag_values(args):
        assert flag in options, f"{name}: python -m {module} has no option {flag}"


def test_provision_runs_a_repo_module_with_flags_it_accepts() -> None:
    for layout in LAYOUTS:
        module, args = module_and_args(layout, PROVISION)
        options = help_options(module)
        for flag in flag_values(args):
            assert flag in options, f"{layout.file}: python -m {module} has no option {flag}"
        svc = service(layout, PROVISION)
        assert svc.get("restart") == "no", f"{layout.file}: provision runs once per `up`"
        assert not secrets_mount(layout, PROVISION).read_only
        assert all(not m.read_only for m in mounts(svc)), f"{layout.file}: provision writes"
        # It runs as root, to make the volumes it hands out the image's user's
        assert svc.get("user") in ("root", "0", "0:0"), f"{layout.file}: provision as root"
        assert flag_values(args).get("--owner") == "1000:1000", f"{layout.file}: --owner"


@each_service(lambda layout: ("manager", *WORKERS))
def test_service_settings_load_from_its_flags_and_environment(
    layout: Layout, name: str, provisioned: ProvisionedBy
) -> None:
    _, args = module_and_args(layout, name)
    overrides = {}
    for flag, value in flag_values(args).items():
        field = flag.lstrip("-").replace("-", "_")
        if field in SETTINGS_FIELDS:
            overrides[field] = value
    svc = service(layout, name)
    settings = settings_of(layout, name, provisioned, overrides)
    assert settings.data_dir is not None, f"{name}: give --data-dir so state lands on a volume"
    data_volumes = {m.target for m in mounts(svc) if not m.is_bind}
    assert str(settings.data_dir) in data_volumes, f"{name}: {settings.data_dir} is no volume"
    if name in WORKERS:
        assert settings.name == name, f"{name}: runs as worker {settings.name!r}"
    assert settings.queue_type == layout.queue_type, f"{layout.file}: {name} declares queues"


@each_layout()
def test_every_service_keeps_its_data_on_a_volume_of_its_own(layout: Layout) -> None:
    volumes = {}
    for name in (*layout.brokers, "manager", *WORKERS):
        named = [m.source for m in mounts(service(layout, name)) if not m.is_bind]
        named = [v for v in named if v not in handed_volumes(layout)]
        assert len(named) == 1, f"{name}: expected one named volume, got {named}"
        volumes[name] = named[0]
    assert len(set(volumes.values())) == len(volumes), f"volumes are shared: {volumes}"
    declared = compose(layout).get("volumes") or {}
    for name, volume in volumes.items():
        assert volume in declared, f"{name}: volume {volume!r} is not declared under volumes:"


@each_layout()
def test_every_container_mounts_only_its_own_secrets_read_only(
    layout: Layout, provisioned: ProvisionedBy
) -> None:
    """No container but provision sees another's password, the administrator's or the
    manager's key: each mounts one volume of secrets, its own, read-only."""
    made = provisioned(layout)
    owners: dict[str, set[str]] = {}
    for name in (*layout.brokers, *WARREN_SERVICES, *INITS):
        assert SECRETS not in {m.source for m in mounts(service(layout, name))}, (
            f"{name}: only provision mounts the volume {SECRETS} (every password)"
        )
        m = own_mount(layout, name)
        assert m.read_only, f"{name}: only provision may write its secrets"
        owners.setdefault(m.source, set()).add(name)
        if name in layout.brokers:
            want = {"definitions.json"} | ({"erlang.cookie"} if len(layout.brokers) > 1 else set())
        elif name in CLIENTS or name in INITS:  # a client's init runs as that client
            client = INITS.get(name, name)
            want = {f"{client}.toml", f"{client}.owner-password"}
        else:
            want = {f"{name}.toml"} | ({"manager.key"} if name == "manager" else set())
        assert made.files(m.source) == want, f"{name}: its volume holds {made.files(m.source)}"
    # a volume each, but the broker nodes share theirs (the same definitions and cookie)
    clients_and_inits = [{c, *(i for i, of in INITS.items() if of == c)} for c in CLIENTS]
    assert sorted(owners.values(), key=sorted) == sorted(
        [
            set(layout.brokers),
            *({n} for n in WARREN_SERVICES if n not in CLIENTS),
            *clients_and_inits,
        ],
        key=sorted,
    )
    declared = compose(layout).get("volumes") or {}
    assert SECRETS in declared and set(owners) <= set(declared)


@each_layout()
def test_up_makes_each_clients_owner_key_with_its_password_file(
    layout: Layout, provisioned: ProvisionedBy
) -> None:
    """`up` runs `init` once for each client (not in the client profile), as that client:
    its config, whose password_file is the owner password provision wrote into its volume,
    so the README's tour asks for no password."""
    for init, client in INITS.items():
        svc = service(layout, init)
        assert module_and_args(layout, init) == ("client", ["init", "-q"])
        assert not svc.get("profiles"), f"{init}: `up` must run it"
        assert svc.get("restart") == "no", f"{init}: runs once per `up`"
        assert own_mount(layout, init).source == own_mount(layout, client).source
        settings = settings_of(layout, init, provisioned)
        assert settings.amqp_urls == settings_of(layout, client, provisioned).amqp_urls
        assert settings.password_file, f"{init}: its config names no password file"
        # provision wrote it as --out/secrets/<file> (here --out is a folder of this test's),
        # where the client's volume is mounted, and handed it to that volume
        written = Path(settings.password_file)
        assert written.parent.name == "secrets" and written.name == f"{client}.owner-password"
        own = own_mount(layout, init)
        in_volume = provisioned(layout).path(init, f"{own.target}/{written.name}")
        assert in_volume.is_file() and in_volume.stat().st_mode & 0o077 == 0
        assert settings.request_timeout >= 60, f"{init}: wait out a manager catching up"


@each_layout()
def test_clients_run_on_demand_under_distinct_names(
    layout: Layout, provisioned: ProvisionedBy
) -> None:
    names = set()
    for name in CLIENTS:
        svc = service(layout, name)
        assert module_and_args(layout, name)[0] == "client"
        assert "client" in (svc.get("profiles") or []), f"{name}: `up` would start it"
        assert "command" not in svc, f"{name}: `compose run {name} ARGS` should append to it"
        client_name = environment(svc).get("WARREN_CLIENT_NAME", "")
        assert client_name, f"{name}: set WARREN_CLIENT_NAME"
        names.add(client_name)
        assert settings_of(layout, name, provisioned).client_name == client_name
    assert len(names) == len(CLIENTS)


@each_layout()
def test_compose_v1_reads_every_top_level_key(layout: Layout) -> None:
    keys = {key for key in compose(layout) if not key.startswith("x-")}
    unknown = keys - COMPOSE_V1_TOP_LEVEL
    assert not unknown, f"{layout.file}: docker-compose v1 rejects {sorted(unknown)}"


def test_the_two_layouts_are_separate_projects() -> None:
    names = [project_name(layout) for layout in LAYOUTS]
    assert all(names), "give every layout a project name: its volumes are named after it"
    assert len(set(names)) == len(names), f"the layouts would share containers and volumes: {names}"


@pytest.mark.parametrize("name", WARREN_SERVICES)
def test_cluster_services_are_the_single_broker_services_but_for_the_broker(name: str) -> None:
    # Only the broker addresses, the queue type and what to wait for may differ.
    cluster, single = service(CLUSTER, name), service(SINGLE, name)
    differing = ("environment", "depends_on")
    assert {k: v for k, v in cluster.items() if k not in differing} == {
        k: v for k, v in single.items() if k not in differing
    }, f"{name}: docker-compose.cluster.yml and docker-compose.yml run it differently"
    per_layout = ("WARREN_AMQP_URL", "WARREN_QUEUE_TYPE")
    cluster_env = {k: v for k, v in environment(cluster).items() if k not in per_layout}
    single_env = {k: v for k, v in environment(single).items() if k not in per_layout}
    assert cluster_env == single_env, f"{name}: the layouts set different environments"


def test_cluster_header_commands_name_the_cluster_project_and_file() -> None:
    # A bare `docker compose ...` would act on docker-compose.yml's project instead.
    commands = header_commands(CLUSTER)
    assert commands, f"{CLUSTER.file}: start with the commands that use it"
    expected = f"docker compose -p {project_name(CLUSTER)} -f {CLUSTER.file} "
    for line in commands:
        assert expected in line, f"{CLUSTER.file}: {line!r}"
    single = [line for line in header_commands(SINGLE) if re.search(r" -p | -f \S+\.yml", line)]
    assert not single, f"{SINGLE.file}: its commands need neither -p nor -f: {single}"


def test_readme_cluster_commands_name_the_cluster_project() -> None:
    pattern = re.compile(rf"docker[ -]compose .*-f {re.escape(CLUSTER.file)}")
    commands = [line for line in README.read_text().splitlines() if pattern.search(line)]
    assert commands, "README: show how to start the cluster layout"
    for line in commands:
        assert f"-p {project_name(CLUSTER)} -f {CLUSTER.file}" in line, f"README: {line!r}"


# -- compose: environment, mounts, broker, ordering -----------------------------------------


@each_service(lambda layout: sorted([*layout.brokers, *WARREN_SERVICES, *INITS]))
def test_only_settings_fields_are_set_as_warren_env_vars(layout: Layout, name: str) -> None:
    env = environment(service(layout, name))
    unknown = {k for k in env if k.startswith("WARREN_")} - WARREN_ENV
    assert not unknown, f"{name}: {sorted(unknown)} are not fields of warren.config.Settings"


@each_service(lambda layout: (*WARREN_SERVICES, *INITS))
def test_services_reach_every_broker_of_their_compose_file(
    layout: Layout, name: str, provisioned: ProvisionedBy
) -> None:
    settings = settings_of(layout, name, provisioned)
    urls = settings.amqp_urls
    hosts = [urlsplit(url).hostname for url in urls]
    assert sorted(h or "" for h in hosts) == sorted(layout.brokers), (
        f"{layout.file}: {name} lists {hosts}, not each of {list(layout.brokers)} once"
    )
    for url in urls:
        assert urlsplit(url).port == 5672, f"{name}: {url} is not the AMQP port"
    # The URLs differ only in the host, so no node gets other credentials or another vhost.
    shapes = {url.replace(f"@{urlsplit(url).hostname}:", "@HOST:") for url in urls}
    assert len(shapes) == 1, f"{name}: {sorted(shapes)}"


@each_service(lambda layout: sorted([*layout.brokers, *WARREN_SERVICES, *INITS]))
def test_bind_mounted_host_paths_exist(layout: Layout, name: str) -> None:
    for m in mounts(service(layout, name)):
        if m.is_bind:
            assert (ROOT / m.source).exists(), f"{name}: {m.source} does not exist"


@each_service(lambda layout: layout.brokers)
def test_rabbitmq_mounts_its_config_read_only(layout: Layout, name: str) -> None:
    by_target = {m.target: m for m in mounts(service(layout, name))}
    sources = {"rabbitmq.conf": layout.broker_conf, "enabled_plugins": "enabled_plugins"}
    for file, source in sources.items():
        m = by_target.get(f"/etc/rabbitmq/{file}")
        assert m is not None, f"{name}: /etc/rabbitmq/{file} is not mounted"
        assert (ROOT / m.source).resolve() == BROKER / source, f"{name}: mount broker/{source}"
        assert m.read_only, f"{name}: mount {file} read-only"
    assert "/var/lib/rabbitmq" in by_target, f"{name}: keep /var/lib/rabbitmq on a volume"
    assert not by_target["/var/lib/rabbitmq"].is_bind, f"{name}: /var/lib/rabbitmq on a volume"


@each_service(lambda layout: layout.brokers)
def test_rabbitmq_publishes_its_ports_on_localhost_and_has_a_healthcheck(
    layout: Layout, name: str
) -> None:
    svc = service(layout, name)
    assert {5672, 15672} <= container_ports(svc)
    for port in published(svc):
        assert port.host_ip == "127.0.0.1", f"{name}: publish on 127.0.0.1 only"
        assert port.host_port is not None, f"{name}: give {port.container_port} a fixed port"
    check = svc.get("healthcheck") or {}
    assert not check.get("disable"), f"{name}: the healthcheck is disabled"
    assert as_argv(check.get("test"))[:1] in (["CMD"], ["CMD-SHELL"]), f"{name}: no healthcheck"
    assert check == service(SINGLE, "rabbitmq")["healthcheck"], (
        f"{layout.file}: {name} is checked differently from docker-compose.yml's broker"
    )


@each_layout()
def test_brokers_publish_on_host_ports_of_their_own(layout: Layout) -> None:
    seen: dict[int | None, str] = {}
    for name in layout.brokers:
        for port in published(service(layout, name)):
            assert port.host_port not in seen, (
                f"{layout.file}: {name} and {seen[port.host_port]} both publish {port.host_port}"
            )
            seen[port.host_port] = name


@each_layout()
def test_brokers_have_fixed_distinct_hostnames(layout: Layout) -> None:
    # A node is rabbit@<hostname> and keeps its data under that name: a recreated container
    # must come back as the same node. The hostname is the service name, which is how the
    # services and the peer nodes reach it.
    for name in layout.brokers:
        svc = service(layout, name)
        assert svc.get("hostname") == name, f"{layout.file}: give {name} `hostname: {name}`"
        assert node_name(layout, name) == f"rabbit@{name}"
    assert len({node_name(layout, name) for name in layout.brokers}) == len(layout.brokers)


@each_service(lambda layout: (*WARREN_SERVICES, *INITS))
def test_services_wait_for_every_healthy_broker(layout: Layout, name: str) -> None:
    depends = service(layout, name).get("depends_on")
    assert isinstance(depends, dict), f"{name}: depends_on needs conditions"
    for broker in layout.brokers:
        condition = (depends.get(broker) or {}).get("condition")
        assert condition == "service_healthy", f"{layout.file}: {name} must wait for {broker}"
    if name != "manager":
        assert "manager" in depends, f"{name}: start the manager first"


@each_service(lambda layout: layout.brokers)
def test_brokers_wait_for_the_users_to_be_provisioned(layout: Layout, name: str) -> None:
    depends = service(layout, name).get("depends_on") or {}
    condition = (depends.get(PROVISION) or {}).get("condition")
    # docker-compose v1 (1.29) knows this condition too.
    assert condition == "service_completed_successfully", f"{name}: wait for {PROVISION}"


@each_layout()
def test_brokers_do_not_wait_for_each_other(layout: Layout) -> None:
    # A restarted node waits for the peer that stopped last: if it had to wait for a peer to
    # be healthy before starting, the cluster could never come back.
    for name in layout.brokers:
        depends = service(layout, name).get("depends_on") or {}
        assert not set(depends) & set(layout.brokers), f"{name}: waits for {sorted(depends)}"


# -- compose: the cluster --------------------------------------------------------------------


def test_cluster_conf_is_rabbitmq_conf_plus_peer_discovery_of_the_three_nodes() -> None:
    single, cluster = broker_conf(SINGLE.broker_conf), broker_conf(CLUSTER.broker_conf)
    for key, value in single.items():
        assert cluster.get(key) == value, (
            f"{CLUSTER.broker_conf}: {key} = {cluster.get(key)}, rabbitmq.conf says {value}"
        )
    extra = {k: v for k, v in cluster.items() if k not in single}
    for key in extra:
        assert key.startswith("cluster_formation."), f"{CLUSTER.broker_conf}: {key} only here"
    backend = extra.get("cluster_formation.peer_discovery_backend")
    assert backend in ("rabbit_peer_discovery_classic_config", "classic_config"), backend
    listed = {
        k: v for k, v in extra.items() if k.startswith("cluster_formation.classic_config.nodes.")
    }
    expected = sorted(node_name(CLUSTER, name) for name in CLUSTER.brokers)
    assert sorted(listed.values()) == expected, f"{CLUSTER.broker_conf} lists {listed}"


def test_cluster_nodes_share_one_valid_erlang_cookie(provisioned: ProvisionedBy) -> None:
    cookies = {name: erlang_cookie(CLUSTER, name, provisioned) for name in CLUSTER.brokers}
    assert len(set(cookies.values())) == 1, f"the nodes would refuse each other: {cookies}"
    # Erlang reads the first line: printable ASCII, at most 255 characters.
    lines = next(iter(cookies.values())).splitlines()
    assert len(lines) == 1, "the cookie file holds one line"
    assert re.fullmatch(r"[!-~]{20,255}", lines[0]), "a cookie is 20-255 printable characters"


@pytest.mark.parametrize("name", ["manager", *WORKERS])
def test_cluster_manager_and_workers_declare_quorum_queues(name: str) -> None:
    value = environment(service(CLUSTER, name)).get("WARREN_QUEUE_TYPE")
    assert value == "quorum", f"{name}: set WARREN_QUEUE_TYPE: quorum on the cluster"
    assert Settings.load(environ={"WARREN_QUEUE_TYPE": value}).queue_type == "quorum"


@each_service(lambda layout: CLIENTS)
def test_clients_leave_the_queue_type_to_the_services(layout: Layout, name: str) -> None:
    # Clients declare no shared queue: a queue type set here would only mislead.
    assert "WARREN_QUEUE_TYPE" not in environment(service(layout, name))


# -- the image ------------------------------------------------------------------------------


def test_dockerfile_copies_every_package_the_services_run() -> None:
    copied = set(dockerfile_copy_sources())
    modules = {module_and_args(layout, name)[0] for layout in LAYOUTS for name in WARREN_SERVICES}
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


ROLES = {
    "manager": "manager",
    **dict.fromkeys(WORKERS, "worker"),
    **dict.fromkeys(CLIENTS, "client"),
}


def provisioned_definitions(layout: Layout, provisioned: ProvisionedBy) -> dict[str, Any]:
    """The definitions file the brokers load, as provision wrote it."""
    loaded = broker_conf(layout.broker_conf)["load_definitions"]
    for broker in layout.brokers:
        assert loaded.startswith(own_mount(layout, broker).target + "/"), (
            f"{broker}: load the definitions from the volume provision gives it"
        )
    path = provisioned(layout).path(layout.brokers[0], loaded)
    assert path.stat().st_mode & 0o004, "the broker runs as a user of its own: let it read them"
    data = json.loads(path.read_text())
    assert isinstance(data, dict)
    return data


@each_service(lambda layout: WARREN_SERVICES)
def test_each_service_logs_in_as_its_own_user_with_exactly_its_roles_rights(
    layout: Layout, name: str, provisioned: ProvisionedBy
) -> None:
    defs = provisioned_definitions(layout, provisioned)
    users = {u["name"]: u for u in defs["users"]}
    assert "guest" not in users, "no guest: RabbitMQ creates none when definitions are loaded"
    settings = settings_of(layout, name, provisioned)
    logins = {(urlsplit(u).username, urlsplit(u).password) for u in settings.amqp_urls}
    assert len(logins) == 1, f"{name}: one login on every node"
    user, password = (unquote(x or "") for x in logins.pop())
    assert user == name, f"{name} logs in as {user!r}, not as its own user"
    entry = users[user]
    assert entry["hashing_algorithm"] == "rabbit_password_hashing_sha256"
    assert rabbit_sha256_matches(entry["password_hash"], password), f"{name}: wrong password"
    want = permissions(ROLES[name], user)
    (perm,) = [p for p in defs["permissions"] if p["user"] == user and p["vhost"] == "/"]
    assert (perm["configure"], perm["write"], perm["read"]) == (
        want.configure,
        want.write,
        want.read,
    )
    topics = {
        t["exchange"]: (t["write"], t["read"])
        for t in defs["topic_permissions"]
        if t["user"] == user and t["vhost"] == "/"
    }
    assert topics == want.topics
    # Workers take commands only from the manager's user.
    assert settings.manager_user == "manager"


@each_layout()
def test_the_management_ui_has_an_administrator_whose_password_the_header_shows(
    layout: Layout, provisioned: ProvisionedBy
) -> None:
    header = [line for line in header_commands(layout) if "admin.password" in line]
    assert header, f"{layout.file}: say how to read the administrator's password"
    # only provision mounts the volume that holds it
    in_container = re.search(r"run --rm provision cat (\S+)", header[0])
    assert in_container, header[0]
    password = provisioned(layout).path(PROVISION, in_container.group(1)).read_text().strip()
    defs = provisioned_definitions(layout, provisioned)
    admin = {u["name"]: u for u in defs["users"]}["admin"]
    assert admin["tags"] == ["administrator"]
    assert rabbit_sha256_matches(admin["password_hash"], password)
    secrets_dir = provisioned(layout).folders[SECRETS] / "secrets"
    assert secrets_dir.stat().st_mode & 0o777 == 0o700, "the secrets are uid 1000's alone"


@pytest.mark.parametrize("file", [layout.broker_conf for layout in LAYOUTS])
def test_rabbitmq_conf_matches_the_compose_service(file: str) -> None:
    conf = broker_conf(file)
    assert conf["listeners.tcp.default"].rsplit(":", 1)[-1] == "5672"
    assert conf["management.tcp.port"] == "15672"
    assert conf["load_definitions"] == "/etc/warren/definitions.json"
    # guest (left from an older volume) may log in only from inside the broker's container
    assert "loopback_users" not in conf
    assert 0 < float(conf["vm_memory_high_watermark.relative"]) < 1
    assert conf["disk_free_limit.absolute"]
    assert int(conf["consumer_timeout"]) >= 3_600_000, "long uploads outlive a short timeout"


def test_enabled_plugins_is_an_erlang_list() -> None:
    text = (BROKER / "enabled_plugins").read_text().strip()
    match = re.fullmatch(r"\[\s*([a-z_]+(?:\s*,\s*[a-z_]+)*)\s*\]\.", text)
    assert match, f"enabled_plugins is not an Erlang list term: {text!r}"
    plugins = {p.strip() for p in match.group(1).split(",")}
    assert {"rabbitmq_management", "rabbitmq_prometheus"} <= plugins
