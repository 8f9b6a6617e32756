"""The fleet's deployment files agree with the code: docker-compose.yml, docs/fleet/nginx.conf.

No Docker engine runs here, so the files are read, not run: every command is parsed by the real
``robot-sac`` command line, every ``ROBOT_SAC_*`` variable must be a setting, every replica must
sit behind nginx, and nginx's limits must match the service's. Where nginx is installed, it
checks its configuration's syntax too.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import typer.main
import yaml
from typer.testing import CliRunner

from robot_sac.cli import DEFAULT_ENV, app
from robot_sac.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
NGINX_CONF = ROOT / "docs" / "fleet" / "nginx.conf"
DOCKERFILE = ROOT / "Dockerfile"
REPLICAS = ("replica1", "replica2")
ROBOT_SAC_SERVICES = (*REPLICAS, "learner")

# What the variables a deployment must set stand for in these checks.
FAKE_ENV = {
    "POSTGRES_PASSWORD": "pgpassword123",
    "ROBOT_SAC_ROBOT_TOKEN": "robot-token-0123456789abcdef",
    "ROBOT_SAC_OPERATOR_TOKEN": "operator-token-0123456789abcdef",
}
VARIABLE = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<rest>[^}]*)\})")


# --- reading the files ---------------------------------------------------------------------


def variables_in(text: str) -> set[str]:
    return {m["name"] for m in VARIABLE.finditer(text) if m["name"]}


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's interpolation: ``${X}``, ``${X:?message}``, ``${X:-default}``, ``$$``."""

    def one(m: re.Match[str]) -> str:
        if m["name"] is None:
            return "$"
        name, rest = m["name"], m["rest"]
        if name in env:
            return env[name]
        if rest.startswith((":-", "-")):
            return rest.split("-", 1)[1]
        raise AssertionError(f"${{{name}}} is not set and has no default")

    return VARIABLE.sub(one, value)


@cache
def compose_text() -> str:
    return COMPOSE.read_text()


@cache
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(compose_text())  # anchors and `<<` merges resolved as compose does
    assert isinstance(loaded, dict)
    return loaded


def service(name: str) -> dict[str, Any]:
    return compose()["services"][name]


def environment(name: str) -> dict[str, str]:
    env = service(name).get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: interpolate(str(v), FAKE_ENV) for k, v in env.items()}


def dockerfile_instruction(keyword: str) -> list[str]:
    lines = [
        line.split(None, 1)[1]
        for line in DOCKERFILE.read_text().splitlines()
        if line.upper().startswith(keyword + " ")
    ]
    return lines


def entrypoint() -> list[str]:
    (last, *_) = reversed(dockerfile_instruction("ENTRYPOINT"))
    value = json.loads(last)
    return value if isinstance(value, list) else [value]


def argv(name: str) -> list[str]:
    """What the container runs: the image's entrypoint, then the service's command."""
    command = service(name)["command"]
    assert isinstance(command, list), f"{name}: write the command as a list (no shell splitting)"
    return [*entrypoint(), *(interpolate(str(c), FAKE_ENV) for c in command)]


def parse_cli(args: list[str]) -> tuple[str, dict[str, Any]]:
    """Parse ``robot-sac ARGS`` with the real command line, running nothing: the subcommand
    and its parameters, or the command line's own usage error."""
    group = typer.main.get_command(app)
    root = group.make_context("robot-sac", [], resilient_parsing=True)
    name, command, rest = group.resolve_command(root, list(args))
    assert name is not None and command is not None, f"no command {args[0]!r}"
    try:
        return name, command.make_context(name, rest, parent=root).params
    except Exception as exc:  # click's usage errors (typer vendors its own click)
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        raise AssertionError(f"robot-sac {' '.join(args)}: {message}") from None


def data_dir(name: str) -> str:
    _, params = parse_cli(argv(name)[1:])
    if params.get("data_dir") is not None:
        return str(params["data_dir"])
    env = environment(name)
    if "ROBOT_SAC_DATA_DIR" in env:
        return env["ROBOT_SAC_DATA_DIR"]
    for line in dockerfile_instruction("ENV"):
        if m := re.search(r"ROBOT_SAC_DATA_DIR=(\S+)", line):
            return m[1]
    return str(Settings.model_fields["data_dir"].default)


def mounts(name: str) -> dict[str, str]:
    """Container path -> source (volume name or host path) of a service's volumes."""
    out = {}
    for item in service(name).get("volumes") or []:
        if isinstance(item, str):
            source, target, *_ = item.split(":")
        else:  # the long syntax
            source, target = item.get("source", ""), item["target"]
        out[target] = source
    return out


def port_of(name: str) -> int:
    _, params = parse_cli(argv(name)[1:])
    if params.get("port") is not None:
        return int(params["port"])
    env = environment(name)
    return int(env.get("ROBOT_SAC_PORT", Settings.model_fields["port"].default))


# --- nginx.conf, minimally: directives and blocks ------------------------------------------

TOKEN = re.compile(r"""#[^\n]*|"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[{};]|[^\s{};"'#]+""")


class Block:
    def __init__(self, args: list[str]) -> None:
        self.args = args
        self.directives: list[list[str]] = []  # name and arguments
        self.blocks: list[tuple[str, Block]] = []

    def get(self, name: str) -> list[list[str]]:
        return [d[1:] for d in self.directives if d[0] == name]

    def block(self, name: str) -> list[Block]:
        return [b for n, b in self.blocks if n == name]

    def walk(self):  # type: ignore[no-untyped-def]
        yield self
        for _, b in self.blocks:
            yield from b.walk()


def parse_nginx(text: str) -> Block:
    root = Block([])
    stack, words = [root], []
    for tok in TOKEN.findall(text):
        if tok.startswith("#"):
            continue
        if tok == ";":
            assert words, "an empty directive"
            stack[-1].directives.append(words)
            words = []
        elif tok == "{":
            block = Block(words[1:])
            stack[-1].blocks.append((words[0], block))
            stack.append(block)
            words = []
        elif tok == "}":
            assert not words and len(stack) > 1, "unbalanced braces"
            stack.pop()
        else:
            words.append(tok[1:-1] if tok[0] in "\"'" else tok)
    assert len(stack) == 1 and not words, "unbalanced braces or a directive without ';'"
    return root


@cache
def nginx() -> Block:
    return parse_nginx(NGINX_CONF.read_text())


def size(value: str) -> int:
    units = {"k": 2**10, "m": 2**20, "g": 2**30}
    return int(value[:-1]) * units[value[-1].lower()] if value[-1].isalpha() else int(value)


def seconds(value: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    m = re.fullmatch(r"(\d+)(ms|s|m|h)?", value)
    assert m, value
    return int(m[1]) * units[m[2] or "s"]


def the_server() -> Block:
    (server,) = nginx().block("server")
    return server


def location(path: str) -> Block:
    for block in the_server().block("location"):
        if block.args[-1] == path:
            return block
    raise AssertionError(f"no location {path} in {NGINX_CONF.name}")


def setting(block: Block, name: str, server: Block | None = None) -> list[str] | None:
    """A directive as it applies in ``block`` (nginx inherits from the server block)."""
    found = block.get(name) or (server.get(name) if server is not None else [])
    return found[-1] if found else None


# --- docker-compose.yml --------------------------------------------------------------------


def test_the_fleet_services_are_there():
    assert set(compose()["services"]) >= {"postgres", *ROBOT_SAC_SERVICES, "nginx"}


def test_postgres_keeps_its_data_in_a_named_volume_and_says_when_it_is_ready():
    pg = service("postgres")
    assert pg["image"].split(":")[0] == "postgres"
    assert mounts("postgres")["/var/lib/postgresql/data"] in compose()["volumes"]
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])


def test_replicas_and_learner_share_one_store_on_the_postgres_service():
    urls = {name: environment(name)["ROBOT_SAC_STORE_URL"] for name in ROBOT_SAC_SERVICES}
    assert len(set(urls.values())) == 1, urls
    url = urlsplit(next(iter(urls.values())))
    pg_env = environment("postgres")
    assert url.scheme in ("postgresql", "postgres")
    assert url.hostname == "postgres"
    assert (url.port or 5432) == 5432
    assert url.username == pg_env["POSTGRES_USER"]
    assert url.password == pg_env["POSTGRES_PASSWORD"]
    assert url.path == "/" + pg_env["POSTGRES_DB"]
    for name in ROBOT_SAC_SERVICES:
        assert service(name)["depends_on"]["postgres"]["condition"] == "service_healthy", name


def test_every_process_has_its_own_data_directory_volume():
    volumes = {}
    for name in ROBOT_SAC_SERVICES:
        where = data_dir(name)
        assert where in mounts(name), f"{name}: its data directory {where} is not a volume"
        volumes[name] = mounts(name)[where]
        assert volumes[name] in compose()["volumes"], f"{name}: {volumes[name]} is not declared"
    assert len(set(volumes.values())) == len(volumes), volumes


@pytest.mark.parametrize("name", ROBOT_SAC_SERVICES)
def test_commands_are_real_robot_sac_commands(name: str):
    assert entrypoint() == ["robot-sac"], "the compose commands assume this entrypoint"
    args = argv(name)[1:]
    assert args[0] != "robot-sac", "the entrypoint is robot-sac already: give only its arguments"
    command, params = parse_cli(args)
    assert command == ("learn" if name == "learner" else "serve")
    assert params["env"] == DEFAULT_ENV  # the task robot-sac up runs
    # The command line says the same when asked for help on exactly these arguments.
    result = CliRunner().invoke(app, [*args, "--help"])
    assert result.exit_code == 0, result.output


def test_every_robot_sac_variable_is_a_setting_and_valid():
    fields = set(Settings.model_fields)
    named = {v for v in variables_in(compose_text()) if v.startswith("ROBOT_SAC_")}
    for name in ROBOT_SAC_SERVICES:
        env = environment(name)
        named |= {k for k in env if k.startswith("ROBOT_SAC_")}
        values = {k.removeprefix("ROBOT_SAC_").lower(): v for k, v in env.items()}
        Settings.model_validate({k: v for k, v in values.items() if k in fields})
    unknown = sorted(v for v in named if v.removeprefix("ROBOT_SAC_").lower() not in fields)
    assert not unknown, f"not settings of robot_sac.settings.Settings: {unknown}"


def test_replicas_listen_on_all_interfaces_with_tokens_and_report_ready():
    ports = set()
    for name in REPLICAS:
        env = environment(name)
        assert env["ROBOT_SAC_HOST"] == "0.0.0.0"
        # Without both tokens the service refuses to bind anything but loopback.
        settings = Settings(
            robot_token=env["ROBOT_SAC_ROBOT_TOKEN"], operator_token=env["ROBOT_SAC_OPERATOR_TOKEN"]
        )
        assert settings.auth_enabled and not settings.token_warnings()
        raw = service(name)["environment"]
        assert "${ROBOT_SAC_ROBOT_TOKEN" in raw["ROBOT_SAC_ROBOT_TOKEN"]  # from the deployer
        assert "${ROBOT_SAC_OPERATOR_TOKEN" in raw["ROBOT_SAC_OPERATOR_TOKEN"]
        check = " ".join(service(name)["healthcheck"]["test"])
        assert f"127.0.0.1:{port_of(name)}/readyz" in check
        ports.add(port_of(name))
    assert len(ports) == 1


def test_healthchecks_use_only_what_the_image_has():
    (base,) = dockerfile_instruction("FROM")
    assert base.startswith("python:"), "the /readyz healthcheck runs python (no curl in slim)"
    for name in REPLICAS:
        assert service(name)["healthcheck"]["test"][:2] == ["CMD", "python"]


def test_the_image_has_what_the_fleet_needs():
    installs = " ".join(dockerfile_instruction("RUN"))
    extras = re.search(r"\.\[([^\]]*)\]", installs)
    assert extras is not None, "the Dockerfile installs the project with its extras"
    # the compose file runs `serve` (service) and `learn` (learner), on PostgreSQL
    assert {"service", "learner", "sim", "postgres"} <= set(extras[1].split(","))


def test_nginx_publishes_8000_mounts_the_conf_and_waits_for_the_replicas():
    ngx = service("nginx")
    assert ngx["image"].split(":")[0] == "nginx"
    (listen,) = the_server().get("listen")
    assert [str(p) for p in ngx["ports"]] == [f"8000:{listen[0]}"]
    host_path = {v: k for k, v in mounts("nginx").items()}["./docs/fleet/nginx.conf"]
    assert host_path.startswith("/etc/nginx/conf.d/") and host_path.endswith(".conf")
    assert (ROOT / "docs/fleet/nginx.conf").is_file()
    for name in REPLICAS:
        assert ngx["depends_on"][name]["condition"] == "service_healthy"


# --- docs/fleet/nginx.conf -----------------------------------------------------------------


def test_the_upstream_names_every_replica_and_every_location_proxies_to_it():
    (upstream,) = nginx().block("upstream")
    (name,) = upstream.args
    servers = {args[0] for args in upstream.get("server")}
    assert servers == {f"{r}:{port_of(r)}" for r in REPLICAS}
    locations = the_server().block("location")
    assert locations
    for block in locations:
        assert block.get("proxy_pass") == [[f"http://{name}"]], block.args


def test_connections_to_the_replicas_are_kept_alive():
    (upstream,) = nginx().block("upstream")
    assert int(upstream.get("keepalive")[0][0]) > 0
    server = the_server()
    assert server.get("proxy_http_version") == [["1.1"]]
    assert ["Connection", ""] in server.get("proxy_set_header")
    assert ["Authorization", "$http_authorization"] in server.get("proxy_set_header")
    for block in server.block("location"):  # a location's own proxy_set_header drops these
        assert not block.get("proxy_set_header"), block.args
    # nginx must give up an idle connection before uvicorn closes it (5 s, uvicorn's default)
    from robot_sac.services.inference.server import server_config

    uvicorn_idle = server_config(None, Settings()).timeout_keep_alive
    (timeout,) = upstream.get("keepalive_timeout")
    assert seconds(timeout[0]) < uvicorn_idle


def test_body_limits_let_the_service_answer_its_own_413s():
    server, defaults = the_server(), Settings()
    general = size(setting(server, "client_max_body_size")[0])  # type: ignore[index]
    assert general > max(defaults.max_body_bytes, defaults.max_act_batch_body_bytes)
    upload = location("/v1/admin/policies")
    assert size(setting(upload, "client_max_body_size", server)[0]) >= defaults.max_upload_bytes  # type: ignore[index]
    assert setting(upload, "proxy_request_buffering") == ["off"]
    assert seconds(setting(upload, "proxy_read_timeout", server)[0]) > defaults.upload_timeout_s  # type: ignore[index]


def test_only_idempotent_requests_are_resent_to_another_replica():
    server = the_server()
    assert "non_idempotent" not in setting(server, "proxy_next_upstream")  # type: ignore[operator]
    resent = {
        block.args[-1]
        for block in server.block("location")
        if "non_idempotent" in (setting(block, "proxy_next_upstream", server) or [])
    }
    assert resent == {"/v1/act", "/v1/transitions"}
    for block in server.block("location"):
        retry = setting(block, "proxy_next_upstream", server) or []
        assert not any(r.startswith("http_") for r in retry), "a 503 is for the robot to retry"
    act = location("/v1/act")
    assert seconds(setting(act, "proxy_read_timeout", server)[0]) <= 10  # type: ignore[index]


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed here")
def test_nginx_accepts_the_configuration(tmp_path: Path):
    # nginx -t resolves upstream names: point the replicas at loopback for the check.
    conf = NGINX_CONF.read_text()
    for r in REPLICAS:
        conf = conf.replace(f"server {r}:", "server 127.0.0.1:")
    (tmp_path / "fleet.conf").write_text(conf)
    main = tmp_path / "nginx.conf"
    main.write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log stderr;\nevents {{}}\n"
        f"http {{ include {tmp_path}/fleet.conf; }}\n"
    )
    done = subprocess.run(
        ["nginx", "-t", "-q", "-p", str(tmp_path), "-c", str(main)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
