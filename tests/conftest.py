"""Shared fixtures: an isolated data directory, a small registry, real services."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from content_queue.settings import Settings, get_settings, reset_settings

REPO = Path(__file__).resolve().parent.parent

SMALL_DEVICES = textwrap.dedent(
    """\
    version: 1
    county:
      code: "371521"
      name: 示例县
    defaults:
      quiet_hours: {start: "21:30", end: "06:30"}
    townships:
      - id: east
        name: 东城镇
        villages:
          - id: east-liu
            name: 刘庄村
            endpoints:
              - {id: east-liu-tv, kind: tv_feed}
              - {id: east-liu-led, kind: led, device_id: led-east-liu-01}
              - {id: east-liu-wecom, kind: wecom_group, webhook_key_env: VC_WECOM_EAST_LIU}
          - id: east-wang
            name: 王庄村
            endpoints:
              - {id: east-wang-tv, kind: tv_feed}
              - {id: east-wang-spk, kind: speaker, device_id: spk-east-wang-01}
      - id: west
        name: 西河乡
        villages:
          - id: west-zhao
            name: 赵家村
            endpoints:
              - {id: west-zhao-tv, kind: tv_feed}
    official_accounts:
      - id: east-oa
        name: 东城镇发布
        app_id: wx0123456789abcdef
        app_secret_env: VC_WECHAT_EAST_SECRET
        covers_townships: [east]
    """
)


def many_villages_yaml(n: int, *, extra_kinds: bool = False) -> str:
    """A county with n villages, each with one tv_feed endpoint (for fan-out tests)."""
    lines = [
        "version: 1",
        "county: {code: '371521', name: 示例县}",
        "townships:",
        "  - id: big",
        "    name: 大镇",
        "    villages:",
    ]
    for i in range(n):
        lines += [
            f"      - id: v{i:04d}",
            f"        name: 第{i}村",
            "        endpoints:",
            f"          - {{id: v{i:04d}-tv, kind: tv_feed}}",
        ]
        if extra_kinds:
            lines.append(f"          - {{id: v{i:04d}-led, kind: led, device_id: led-{i:04d}}}")
    return "\n".join(lines) + "\n"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An isolated VILLAGECAST_HOME with the small registry and fast sweeper settings."""
    for key in list(os.environ):
        if key.startswith("VILLAGECAST_") and key != "VILLAGECAST_REQUIRE_SERVICES":
            monkeypatch.delenv(key)
    devices = tmp_path / "devices.yaml"
    devices.write_text(SMALL_DEVICES, encoding="utf-8")
    data = tmp_path / "home"
    monkeypatch.setenv("VILLAGECAST_HOME", str(data))
    monkeypatch.setenv("VILLAGECAST_DEVICES", str(devices))
    monkeypatch.setenv("VILLAGECAST_LEASE_SECONDS", "4")
    monkeypatch.setenv("VILLAGECAST_REDOORBELL_SECONDS", "2")
    monkeypatch.setenv("VILLAGECAST_SWEEP_INTERVAL", "0.3")
    monkeypatch.setenv("VILLAGECAST_RETRY_BASE_SECONDS", "0.2")
    monkeypatch.setenv("VILLAGECAST_RETRY_CAP_SECONDS", "1")
    monkeypatch.setenv("VILLAGECAST_FEED_PORT", "0")
    # Each test's embedded MQTT broker on its own port, so runs on one machine never meet.
    monkeypatch.setenv("VILLAGECAST_EMBEDDED_MQTT_PORT", str(_free_port()))
    monkeypatch.setenv("VILLAGECAST_ACK_TIMEOUT_SECONDS", "3")
    monkeypatch.setenv("VILLAGECAST_LANG", "zh")
    # Review before publishing is on by default for finance and subsidies; tests of other
    # features send those categories straight out, tests/dispatcher/test_review.py turns
    # it back on.
    monkeypatch.setenv("VILLAGECAST_REVIEW_CATEGORIES", "[]")
    reset_settings()
    yield data
    reset_settings()


@pytest.fixture
def settings(home: Path) -> Settings:
    return get_settings()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free loopback port, for the whole session."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("VILLAGECAST_REQUIRE_SERVICES"):
            pytest.fail("redis-server is not installed (scripts/dev setup installs it)")
        pytest.skip("redis-server is not installed; `scripts/dev setup` installs it")
    port = _free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("redis-server did not start")
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)


MOSQUITTO = "/usr/sbin/mosquitto"


class Mosquitto:
    """A real mosquitto on a free loopback port; persistent, so it can be restarted."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(workdir, 0o777)  # mosquitto drops to its own user when started as root
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            f"persistence true\npersistence_location {workdir}/\nautosave_interval 1\n"
            "set_tcp_nodelay true\nlog_dest stderr\nlog_type error\nlog_type warning\n",
            encoding="utf-8",
        )

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = (self.workdir / "mosquitto.log").open("ab")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    pytest.fail("mosquitto did not start")
                time.sleep(0.05)

    def stop(self, *, kill: bool = False) -> None:
        if self.proc is not None and self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            self.proc.wait(timeout=10)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    if not os.path.exists(MOSQUITTO):
        if os.environ.get("VILLAGECAST_REQUIRE_SERVICES"):
            pytest.fail(f"{MOSQUITTO} is not installed (scripts/dev setup installs it)")
        pytest.skip(f"{MOSQUITTO} is not installed; `scripts/dev setup` installs it")
    broker = Mosquitto(Path(f"/tmp/vc-mosq-{os.getpid()}-{time.monotonic_ns()}"))
    broker.start()
    yield broker
    broker.stop()
    shutil.rmtree(broker.workdir, ignore_errors=True)


def _missing_service(what: str) -> None:
    if os.environ.get("VILLAGECAST_REQUIRE_SERVICES"):
        pytest.fail(f"{what} (scripts/dev setup installs it)")
    pytest.skip(f"{what}; `scripts/dev setup` installs it")


def _pg_bindir() -> Path | None:
    """Debian keeps the server binaries off PATH, one directory per major version."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    return found[-1].parent if found else None


class Postgres:
    """A throwaway PostgreSQL cluster on a free loopback port, owned by a non-root user.

    initdb refuses to run as root, so as root the cluster belongs to Debian's `postgres`
    user (or a dedicated `villagecast-pgtest` user created on a machine without it). It
    trusts loopback connections and runs without fsync: it is thrown away after the run.
    """

    SUPERUSER = "vc"

    def __init__(self, bindir: Path, workdir: Path) -> None:
        self.bindir = bindir
        self.workdir = workdir
        self.data = workdir / "data"
        self.port = _free_port()
        self._run_as: list[str] = []
        self._n = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def _owner(self) -> str | None:
        if os.geteuid() != 0:
            return None
        import pwd

        for name in ("postgres", "villagecast-pgtest"):
            try:
                pwd.getpwnam(name)
                return name
            except KeyError:
                continue
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
             "villagecast-pgtest"],
            check=True,
        )  # fmt: skip
        return "villagecast-pgtest"

    def _cmd(self, *args: str) -> list[str]:
        return [*self._run_as, *args]

    def start(self) -> None:
        owner = self._owner()
        self.workdir.mkdir(parents=True)
        if owner is not None:
            shutil.chown(self.workdir, user=owner)
            self._run_as = ["runuser", "-u", owner, "--"]
        initdb = subprocess.run(
            self._cmd(
                str(self.bindir / "initdb"),
                "-D", str(self.data),
                "-U", self.SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ),
            capture_output=True,
            text=True,
            check=False,
        )  # fmt: skip
        if initdb.returncode != 0:
            pytest.fail(f"initdb failed: {initdb.stderr[-2000:]}")
        log = (self.workdir / "postgres.log").open("ab")
        # `postgres` in the foreground (not pg_ctl's daemon) so the fixture can stop it.
        self.proc = subprocess.Popen(
            self._cmd(
                str(self.bindir / "postgres"),
                "-D", str(self.data),
                "-c", "listen_addresses=127.0.0.1",
                "-c", f"port={self.port}",
                "-c", f"unix_socket_directories={self.workdir}",
                "-c", "fsync=off",
                "-c", "synchronous_commit=off",
                "-c", "full_page_writes=off",
                "-c", "max_connections=200",
            ),
            stdout=log,
            stderr=log,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 30
        while True:
            ready = subprocess.run(
                [str(self.bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                capture_output=True,
                check=False,
            )
            if ready.returncode == 0:
                return
            if time.monotonic() > deadline or self.proc.poll() is not None:
                tail = (self.workdir / "postgres.log").read_text(errors="replace")[-2000:]
                pytest.fail(f"postgres did not start: {tail}")
            time.sleep(0.1)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "vc") -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        import psycopg

        self._n += 1
        name = f"{prefix}_{os.getpid()}_{self._n}"
        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user={self.SUPERUSER} dbname=postgres",
            autocommit=True,
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            subprocess.run(
                self._cmd(str(self.bindir / "pg_ctl"), "-D", str(self.data), "stop", "-m", "fast"),
                capture_output=True,
                timeout=30,
                check=False,
            )
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One real PostgreSQL cluster for the session (Debian's `postgresql` package)."""
    bindir = _pg_bindir()
    if bindir is None:
        _missing_service("PostgreSQL server binaries are not installed")
        raise AssertionError("unreachable")
    pg = Postgres(bindir, Path(f"/tmp/vc-pg-{os.getpid()}-{time.monotonic_ns()}"))
    try:
        pg.start()
        yield pg
    finally:
        pg.stop()


@pytest.fixture
def pg_url(postgres: Postgres) -> str:
    """A fresh, empty PostgreSQL database for one test."""
    return postgres.create_database()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.service)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The store's URL on each engine it supports: SQLite (WAL) and PostgreSQL."""
    if request.param == "postgresql":
        return str(request.getfixturevalue("pg_url"))
    return f"sqlite:///{tmp_path / 'vc.sqlite'}"
