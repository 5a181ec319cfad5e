"""`villagecast doctor`: every check on both outcomes, then the command as an operator runs it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from typer.testing import CliRunner

from channels.keys import Keyring
from cli import app
from content_queue.registry import load_registry
from content_queue.store import Store
from dispatcher import doctor
from tests.conftest import SMALL_DEVICES, Mosquitto, _free_port
from tests.dispatcher.test_mqtt_config import (  # noqa: F401 - fixtures
    DISPATCHER,
    Broker,
    broker,
    broker_dir,
)

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def _fix(check: doctor.Check) -> str:
    return check.fix.render() if check.fix else ""


def _closed_port() -> int:
    return _free_port()  # bound and released: nothing listens there


# -- database ----------------------------------------------------------------------------


def test_database_at_head_is_ok(db_url: str) -> None:
    Store(db_url).engine.dispose()
    check = doctor.check_database(db_url)
    assert check.status == "ok", check.summary.render("en")


def test_database_not_migrated_says_to_upgrade(tmp_path: Path) -> None:
    check = doctor.check_database(f"sqlite:///{tmp_path / 'new.sqlite'}")
    assert check.status == "fail"
    assert check.fix is not None and "villagecast db upgrade" in check.fix.render("zh")
    assert not (tmp_path / "new.sqlite").exists()  # looking does not create it


def test_unreachable_database_is_a_failure_without_the_password() -> None:
    url = f"postgresql+psycopg://vc:s3cret-pw@127.0.0.1:{_closed_port()}/vc"
    check = doctor.check_database(url)
    assert check.status == "fail"
    text = check.summary.render("en") + (check.fix.render("en") if check.fix else "")
    assert "cannot be reached" in text and "s3cret-pw" not in text


# -- broker ------------------------------------------------------------------------------


def test_embedded_broker_is_ok(tmp_path: Path) -> None:
    (check,) = doctor.check_broker(f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}")
    assert check.status == "ok"


@pytest.fixture
def durable_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("VILLAGECAST_REQUIRE_SERVICES"):
            pytest.fail("redis-server is not installed")
        pytest.skip("redis-server is not installed")
    port = _free_port()
    workdir = tmp_path_factory.mktemp("redis-aof")
    args = ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir), "--save", ""]
    proc = subprocess.Popen(
        [binary, *args, "--appendonly", "yes", "--maxmemory-policy", "noeviction"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.mark.service
def test_durable_redis_is_ok(durable_redis: str) -> None:
    checks = {c.name: c.status for c in doctor.check_broker(durable_redis)}
    assert checks == {"broker": "ok", "broker_durability": "ok"}


@pytest.mark.service
def test_redis_without_aof_is_a_warning_naming_the_settings(redis_url: str) -> None:
    # The session's test Redis runs with --appendonly no.
    broker_check, durability = doctor.check_broker(redis_url)
    assert broker_check.status == "ok" and durability.status == "warn"
    assert "appendonly yes" in durability.summary.render("en")


def test_unreachable_redis_is_a_failure() -> None:
    (check,) = doctor.check_broker(f"redis://127.0.0.1:{_closed_port()}/0", timeout=1)
    assert check.status == "fail" and "redis-server" in _fix(check)


# -- MQTT --------------------------------------------------------------------------------


@pytest.mark.service
def test_mqtt_login_as_the_dispatcher(broker: Broker) -> None:  # noqa: F811
    env = {"VC_MQTT_PW": broker.password(DISPATCHER)}
    check = doctor.check_mqtt(
        f"mqtt://{DISPATCHER}@127.0.0.1:{broker.port}", password_env="VC_MQTT_PW", environ=env
    )
    assert check.status == "ok", check.summary.render("en")


@pytest.mark.service
def test_mqtt_wrong_password_is_refused_and_never_printed(broker: Broker) -> None:  # noqa: F811
    env = {"VC_MQTT_PW": "wrong-password-123"}
    check = doctor.check_mqtt(
        f"mqtt://{DISPATCHER}@127.0.0.1:{broker.port}", password_env="VC_MQTT_PW", environ=env
    )
    assert check.status == "fail"
    text = check.summary.render("en") + (check.fix.render("en") if check.fix else "")
    assert "refused" in text and "VC_MQTT_PW" in text and "wrong-password-123" not in text


def test_mqtt_missing_password_names_the_variable() -> None:
    check = doctor.check_mqtt(
        "mqtt://villagecast-dispatcher@127.0.0.1:1883", password_env="VC_MQTT_PW", environ={}
    )
    assert check.status == "fail" and "VC_MQTT_PW" in check.summary.render("zh")


@pytest.mark.service
def test_mqtt_unreachable_and_anonymous_ok(mosquitto: Mosquitto) -> None:
    ok = doctor.check_mqtt(mosquitto.url, password_env="X", environ={})
    assert ok.status == "ok"
    down = doctor.check_mqtt(
        f"mqtt://127.0.0.1:{_closed_port()}", password_env="X", environ={}, timeout=2
    )
    assert down.status == "fail" and "mosquitto" in _fix(down)


# -- keys and certificates ---------------------------------------------------------------


def test_keys_missing_fail_and_are_skipped_without_devices(tmp_path: Path) -> None:
    (missing,) = doctor.check_signing_keys(tmp_path / "keys", now=NOW)
    assert missing.status == "fail" and "keys init" in _fix(missing)
    (skipped,) = doctor.check_signing_keys(tmp_path / "keys", now=NOW, needed=False)
    assert skipped.status == "skip"


def test_keys_present_with_private_modes_are_ok(tmp_path: Path) -> None:
    Keyring.init(tmp_path / "keys")
    checks = doctor.check_signing_keys(tmp_path / "keys", now=NOW)
    assert [c.status for c in checks] == ["ok"]


def test_private_key_readable_by_others_fails(tmp_path: Path) -> None:
    key = Keyring.init(tmp_path / "keys").active()
    os.chmod(tmp_path / "keys" / f"{key.key_id}.pem", 0o644)
    (check,) = doctor.check_signing_keys(tmp_path / "keys", now=NOW)
    assert check.status == "fail" and "chmod 600" in check.summary.render("zh")


def test_open_key_directory_fails(tmp_path: Path) -> None:
    Keyring.init(tmp_path / "keys")
    os.chmod(tmp_path / "keys", 0o755)
    statuses = [c.status for c in doctor.check_signing_keys(tmp_path / "keys", now=NOW)]
    assert "fail" in statuses


def test_retired_key_warns_thirty_days_before_devices_stop_accepting_it(tmp_path: Path) -> None:
    ring = Keyring.init(tmp_path / "keys")
    old = ring.active().key_id
    ring.rotate(overlap_days=20, now=NOW)
    checks = doctor.check_signing_keys(tmp_path / "keys", now=NOW)
    (warn,) = [c for c in checks if c.status == "warn"]
    assert warn.name == "key_expiry" and old in warn.summary.render("zh")
    assert "19" in warn.summary.render("en") or "20" in warn.summary.render("en")
    # 40 days of overlap: nothing to say yet, and nothing once it has passed.
    other = Keyring.init(tmp_path / "keys2")
    other.rotate(overlap_days=40, now=NOW)
    assert [c.status for c in doctor.check_signing_keys(tmp_path / "keys2", now=NOW)] == ["ok"]
    later = NOW + timedelta(days=21)
    assert [c.status for c in doctor.check_signing_keys(tmp_path / "keys", now=later)] == ["ok"]


def _certificate(path: Path, *, not_after: datetime) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mqtt.example.gov.cn")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_after - timedelta(days=825))
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_certificate_expiry(tmp_path: Path) -> None:
    fine = doctor.check_certificate(
        _certificate(tmp_path / "a.crt", not_after=NOW + timedelta(days=200)), now=NOW
    )
    soon = doctor.check_certificate(
        _certificate(tmp_path / "b.crt", not_after=NOW + timedelta(days=12)), now=NOW
    )
    gone = doctor.check_certificate(
        _certificate(tmp_path / "c.crt", not_after=NOW - timedelta(days=1)), now=NOW
    )
    (tmp_path / "d.crt").write_text("not a certificate")
    broken = doctor.check_certificate(tmp_path / "d.crt", now=NOW)
    assert (fine.status, soon.status, gone.status, broken.status) == ("ok", "warn", "fail", "fail")
    assert "12" in soon.summary.render("zh") and "mqtt.example.gov.cn" in soon.summary.render()


# -- speech and audio --------------------------------------------------------------------


def _fake_tool(tmp_path: Path, name: str, output: str) -> str:
    script = tmp_path / name
    script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{output}\nEOF\n")
    script.chmod(0o755)
    return str(script)


def test_espeak_present_or_missing(tmp_path: Path) -> None:
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is not installed (scripts/dev setup installs it)")
    assert doctor.check_espeak().status == "ok"
    missing = doctor.check_espeak(binary="no-such-espeak-ng")
    assert missing.status == "fail" and "apt-get install espeak-ng" in _fix(missing)
    assert doctor.check_espeak(binary="no-such-espeak-ng", needed=False).status == "warn"
    voiceless = _fake_tool(tmp_path, "espeak-ng", "Pty Language Age/Gender VoiceName")
    assert doctor.check_espeak(binary=voiceless).status == "fail"


def test_edge_tts_reachability_is_only_a_warning() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert doctor.check_edge_tts(host="127.0.0.1", port=port).status == "ok"
    down = doctor.check_edge_tts(host="127.0.0.1", port=_closed_port(), timeout=1)
    assert down.status == "warn" and "espeak-ng" in down.summary.render("zh")


def test_ffmpeg_encoders(tmp_path: Path) -> None:
    if shutil.which("ffmpeg") is None:
        pytest.fail("ffmpeg is not installed (scripts/dev setup installs it)")
    assert doctor.check_ffmpeg(need_amr=True).status == "ok"
    assert doctor.check_ffmpeg(binary="no-such-ffmpeg").status == "fail"
    no_amr = _fake_tool(tmp_path, "ffmpeg", " A....D libmp3lame  libmp3lame MP3")
    assert doctor.check_ffmpeg(binary=no_amr, need_amr=False).status == "warn"
    failing = doctor.check_ffmpeg(binary=no_amr, need_amr=True)
    assert failing.status == "fail" and "libavcodec-extra" in _fix(failing)


def test_disk_space_thresholds(tmp_path: Path) -> None:
    gib = 1024**3

    def usage(free: int) -> doctor.DiskUsage:
        return lambda _p: (100 * gib, 100 * gib - free, free)

    assert doctor.check_audio_disk(tmp_path, usage=usage(50 * gib)).status == "ok"
    assert doctor.check_audio_disk(tmp_path, usage=usage(gib)).status == "warn"
    assert doctor.check_audio_disk(tmp_path, usage=usage(10 * 1024**2)).status == "fail"
    # A home that does not exist yet is measured where it will be created.
    assert doctor.check_audio_disk(tmp_path / "not" / "yet").status in ("ok", "warn", "fail")


# -- devices.yaml and credentials ----------------------------------------------------------


def test_registry_ok_and_broken(tmp_path: Path) -> None:
    good = tmp_path / "devices.yaml"
    good.write_text(SMALL_DEVICES, encoding="utf-8")
    check, registry = doctor.check_registry(good)
    assert check.status == "ok" and registry is not None
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\ncounty: [\n", encoding="utf-8")
    check, registry = doctor.check_registry(bad)
    assert check.status == "fail" and registry is None


def test_credentials_named_never_shown(tmp_path: Path) -> None:
    path = tmp_path / "devices.yaml"
    path.write_text(SMALL_DEVICES, encoding="utf-8")
    registry = load_registry(path)
    missing = doctor.check_credentials(registry, environ={"VC_WECOM_EAST_LIU": "key-123"})
    assert missing.status == "fail"
    assert missing.details == ("VC_WECHAT_EAST_SECRET: east-oa",)
    both = {"VC_WECOM_EAST_LIU": "key-123", "VC_WECHAT_EAST_SECRET": "secret-456"}
    ok = doctor.check_credentials(registry, environ=both)
    assert ok.status == "ok"
    rendered = doctor.render([missing, ok])
    assert "key-123" not in rendered and "secret-456" not in rendered


def test_credentials_include_an_accounts_event_token_and_aes_key(tmp_path: Path) -> None:
    path = tmp_path / "devices.yaml"
    path.write_text(
        SMALL_DEVICES.replace(
            "    covers_townships: [east]\n",
            "    covers_townships: [east]\n    event_token_env: VC_EAST_EVENTS\n"
            "    event_aes_key_env: VC_EAST_AES\n",
        ),
        encoding="utf-8",
    )
    registry = load_registry(path)
    base = {"VC_WECOM_EAST_LIU": "key-123", "VC_WECHAT_EAST_SECRET": "secret-456"}
    missing = doctor.check_credentials(registry, environ=base)
    assert missing.status == "fail"
    assert missing.details == ("VC_EAST_AES: east-oa", "VC_EAST_EVENTS: east-oa")
    ok = doctor.check_credentials(
        registry, environ={**base, "VC_EAST_EVENTS": "tok-789", "VC_EAST_AES": "aes-000"}
    )
    assert ok.status == "ok"
    assert "tok-789" not in doctor.render([ok]) and "aes-000" not in doctor.render([ok])


# -- the command -------------------------------------------------------------------------


def test_doctor_command_fails_then_passes_once_fixed(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    first = runner.invoke(app, ["doctor", "--offline"])
    assert first.exit_code == 1, first.output
    assert "villagecast db upgrade" in first.output
    assert "VC_WECOM_EAST_LIU" in first.output and "keys init" in first.output
    assert "检查完毕" in first.output  # Chinese by default

    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    assert runner.invoke(app, ["keys", "init"]).exit_code == 0
    monkeypatch.setenv("VC_WECOM_EAST_LIU", "robot-key-value")
    monkeypatch.setenv("VC_WECHAT_EAST_SECRET", "oa-secret-value")
    second = runner.invoke(app, ["--lang", "en", "doctor", "--offline"])
    assert second.exit_code == 0, second.output
    assert "robot-key-value" not in second.output and "oa-secret-value" not in second.output
    assert "done: 0 failure(s)" in second.output

    as_json = runner.invoke(app, ["doctor", "--offline", "--json"])
    assert as_json.exit_code == 0
    assert '"name": "database"' in as_json.output


def test_unreachable_rabbitmq_is_a_failure() -> None:
    (check,) = doctor.check_broker(f"amqp://guest:pw-xyz@127.0.0.1:{_closed_port()}//", timeout=1)
    assert check.status == "fail" and "pw-xyz" not in check.summary.render("en")


def test_expiry_checks_are_what_a_dashboard_shows(home: Path, tmp_path: Path) -> None:
    from content_queue.settings import get_settings

    settings = get_settings()
    assert doctor.expiry_checks(settings, now=NOW) == []  # no keys yet: nothing to warn of
    Keyring.init(settings.keys_dir).rotate(overlap_days=10, now=NOW)
    cert = _certificate(tmp_path / "broker.crt", not_after=NOW + timedelta(days=5))
    found = doctor.expiry_checks(settings, now=NOW, certificates=[cert])
    assert [(c.name, c.status) for c in found] == [("key_expiry", "warn"), ("certificate", "warn")]
