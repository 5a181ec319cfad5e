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
            "log_dest stderr\nlog_type error\nlog_type warning\n",
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
