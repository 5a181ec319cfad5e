"""deploy/: the files run commands the CLI has, and the example configs work on the real servers."""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

from cli import app
from content_queue.settings import Settings
from dispatcher import doctor
from dispatcher.mqtt_config import generate, write
from tests.conftest import REPO, _free_port
from tests.dispatcher.test_mqtt_config import _give_to_broker_user, make_registry

DEPLOY = REPO / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))


def _cli_accepts(args: list[str]) -> None:
    """Parse ``villagecast ARGS`` the way click would, without running the command."""
    command: Any = typer.main.get_command(app)
    ctx = command.make_context("villagecast", list(args), resilient_parsing=False)
    while hasattr(command, "resolve_command"):  # a group (typer vendors its own click)
        protected = list(getattr(ctx, "_protected_args", None) or ctx.protected_args)
        name, sub, rest = command.resolve_command(ctx, protected + ctx.args)
        assert sub is not None, f"no command {name!r} in villagecast {' '.join(args)}"
        command = sub
        ctx = sub.make_context(str(name), list(rest), parent=ctx)


def _has_command(name: str) -> bool:
    group: Any = typer.main.get_command(app)
    return name in group.commands


def _unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(path)
    return parser


@pytest.mark.parametrize("path", UNITS, ids=[p.name for p in UNITS])
def test_units_run_commands_the_cli_has(path: Path) -> None:
    unit = _unit(path)
    exec_start = unit["Service"]["ExecStart"]
    argv = shlex.split(exec_start.replace("${VC_QUEUES}", "vc.led"))
    assert argv[0] == "/opt/villagecast/.venv/bin/villagecast"
    if argv[1] == "serve" and not _has_command("serve"):
        pytest.skip("`villagecast serve` comes with the township dashboard (not on this branch)")
    _cli_accepts(argv[1:])
    assert unit["Service"]["User"] == "villagecast"
    assert "\nEnvironmentFile=/etc/villagecast/env\n" in path.read_text()


def test_worker_template_defaults_to_its_kinds_queue() -> None:
    unit = _unit(DEPLOY / "systemd" / "villagecast-worker@.service")
    assert unit["Service"]["Environment"] == "VC_QUEUES=vc.%i"
    target = (DEPLOY / "systemd" / "villagecast.target").read_text()
    from content_queue.registry import ENDPOINT_KINDS

    for kind in ENDPOINT_KINDS:
        assert f"villagecast-worker@{kind}.service" in target


def test_compose_services_run_commands_the_cli_has() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    commands = {
        name: svc["command"]
        for name, svc in compose["services"].items()
        if svc.get("image") == "villagecast:local"
    }
    assert {"migrate", "sweeper", "listener", "web", "worker-led"} <= set(commands)
    for name, argv in commands.items():
        if argv[0] == "serve" and not _has_command("serve"):
            continue  # the dashboard's command (not on this branch)
        _cli_accepts(list(argv))
        assert compose["services"][name]["environment"]["VILLAGECAST_DATABASE_URL"].startswith(
            "postgresql+psycopg://"
        ), name


def test_env_example_names_only_real_settings() -> None:
    names = re.findall(r"^#?\s*(VILLAGECAST_[A-Z_]+)=", (DEPLOY / "env.example").read_text(), re.M)
    assert "VILLAGECAST_DATABASE_URL" in names
    fields = {f"VILLAGECAST_{name.upper()}" for name in Settings.model_fields}
    unknown = set(names) - fields - {"VILLAGECAST_MQTT_PASSWORD"}
    assert not unknown


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.fail(f"{what} did not start")
            time.sleep(0.05)


@pytest.fixture
def deploy_redis(tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("VILLAGECAST_REQUIRE_SERVICES"):
            pytest.fail("redis-server is not installed (scripts/dev setup installs it)")
        pytest.skip("redis-server is not installed; `scripts/dev setup` installs it")
    port = _free_port()
    conf = DEPLOY / "redis" / "redis.conf"
    # The example as it is, with only the port, directory and interface of this test.
    proc = subprocess.Popen(
        [binary, str(conf), "--port", str(port), "--dir", str(tmp_path), "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_port(port, proc, "redis-server with deploy/redis/redis.conf")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.service
def test_example_redis_conf_passes_doctor(deploy_redis: str) -> None:
    checks = {c.name: c.status for c in doctor.check_broker(deploy_redis)}
    assert checks == {"broker": "ok", "broker_durability": "ok"}


@pytest.mark.service
def test_example_mosquitto_conf_runs_with_generated_files() -> None:
    """mosquitto 2.0 accepts every directive of the example (set_tcp_nodelay included) and
    lets the dispatcher in with the generated password file and ACL."""
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.access(mosquitto, os.X_OK):
        if os.environ.get("VILLAGECAST_REQUIRE_SERVICES"):
            pytest.fail("mosquitto is not installed (scripts/dev setup installs it)")
        pytest.skip("mosquitto is not installed; `scripts/dev setup` installs it")
    data = Path(tempfile.mkdtemp(prefix="vc-deploy-mosq-"))
    try:
        port = _free_port()
        generated = generate(make_registry(), port=port, data_dir=data)
        write(generated, data)
        example = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
        tls = ("listener 8883", "cafile", "certfile", "keyfile", "tls_version", "require_cert")
        lines = [
            line.replace("/var/lib/villagecast-mosquitto", str(data)).replace(
                "listener 1883 ", f"listener {port} "
            )
            for line in example.splitlines()
            if not line.startswith(tls) and not line.startswith("use_username_as_clientid")
        ]
        assert "set_tcp_nodelay true" in lines and "persistence true" in lines
        (data / "mosquitto.conf").write_text("\n".join(lines) + "\n")
        _give_to_broker_user(data)
        log = (data / "broker.log").open("wb")
        proc = subprocess.Popen(
            [mosquitto, "-c", str(data / "mosquitto.conf")], stdout=log, stderr=log
        )
        try:
            _wait_port(port, proc, "mosquitto with deploy/mosquitto/mosquitto.conf")
            env = {"PW": generated.credentials["villagecast-dispatcher"]}
            check = doctor.check_mqtt(
                f"mqtt://villagecast-dispatcher@127.0.0.1:{port}", password_env="PW", environ=env
            )
            assert check.status == "ok", check.summary.render("en")
            refused = doctor.check_mqtt(f"mqtt://127.0.0.1:{port}", password_env="PW", environ={})
            assert refused.status == "fail"  # anonymous clients are turned away
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            log.close()
    finally:
        shutil.rmtree(data, ignore_errors=True)
