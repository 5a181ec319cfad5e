"""The generated mosquitto configuration, exercised against a real mosquitto 2.x."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from content_queue.errors import ConfigError
from content_queue.registry import Registry, RegistryFile
from dispatcher.mqtt_config import (
    CREDENTIALS_FILE,
    GeneratedConfig,
    TlsOptions,
    generate,
    load_credentials,
    mosquitto_password_hash,
    write,
)

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
PREFIX = "vc/v1"
DISPATCHER = "villagecast-dispatcher"
LED_A = "led-a"
SPK_B = "spk-b"
TIMEOUT = 5.0


def _doc(led_id: str = LED_A, spk_id: str = SPK_B) -> dict[str, Any]:
    return {
        "version": 1,
        "county": {"code": "371521", "name": "示例县"},
        "townships": [
            {
                "id": "east",
                "name": "东城镇",
                "villages": [
                    {
                        "id": "east-liu",
                        "name": "刘庄村",
                        "endpoints": [
                            {"id": "east-liu-led", "kind": "led", "device_id": led_id},
                            {"id": "east-liu-tv", "kind": "tv_feed"},
                        ],
                    },
                    {
                        "id": "east-wang",
                        "name": "王庄村",
                        "endpoints": [
                            {"id": "east-wang-spk", "kind": "speaker", "device_id": spk_id}
                        ],
                    },
                ],
            }
        ],
    }


def make_registry(led_id: str = LED_A, spk_id: str = SPK_B) -> Registry:
    return Registry(RegistryFile.model_validate(_doc(led_id, spk_id)))


def unsafe_registry(led_id: str) -> Registry:
    """A registry whose LED device_id skipped validation (the loader would refuse it)."""
    doc = RegistryFile.model_validate(_doc())
    township = doc.townships[0]
    village = township.villages[0]
    led = village.endpoints[0].model_copy(update={"device_id": led_id})
    village = village.model_copy(update={"endpoints": [led, *village.endpoints[1:]]})
    township = township.model_copy(update={"villages": [village, *township.villages[1:]]})
    return Registry(doc.model_copy(update={"townships": [township]}))


# -- a real mosquitto -----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _require_mosquitto() -> None:
    if not (os.access(MOSQUITTO, os.X_OK) and os.access(MOSQUITTO_PASSWD, os.X_OK)):
        if os.environ.get("VILLAGECAST_REQUIRE_SERVICES"):
            pytest.fail("mosquitto is not installed (apt-get install mosquitto)")
        pytest.skip("mosquitto is not installed; `apt-get install mosquitto` provides it")


@dataclass
class Broker:
    port: int
    config: GeneratedConfig
    directory: Path
    tls_port: int | None = None
    ca: Path | None = None

    def password(self, user: str) -> str:
        return self.config.credentials[user]


@pytest.fixture
def broker_dir() -> Iterator[Path]:
    # Run as root, mosquitto drops to the mosquitto user before reading passwd and acl,
    # so its directory must be reachable by that user (pytest's basetemp is root-only).
    path = Path(tempfile.mkdtemp(prefix="vc-mosquitto-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _give_to_broker_user(directory: Path) -> None:
    if os.geteuid() != 0:
        return
    try:
        user = pwd.getpwnam("mosquitto")
    except KeyError:
        user = pwd.getpwnam("nobody")
    for path in [directory, *directory.iterdir()]:
        os.chown(path, user.pw_uid, user.pw_gid)


def _run_broker(config: GeneratedConfig, directory: Path, ports: list[int]) -> Iterator[None]:
    write(config, directory)
    _give_to_broker_user(directory)
    log = (directory / "broker.log").open("wb")
    proc = subprocess.Popen(
        [MOSQUITTO, "-c", str(directory / "mosquitto.conf")], stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + 10
        pending = list(ports)
        while pending and time.monotonic() < deadline and proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", pending[0]), timeout=0.2):
                    pending.pop(0)
            except OSError:
                time.sleep(0.05)
        if pending:
            pytest.fail("mosquitto did not start:\n" + (directory / "broker.log").read_text())
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


@pytest.fixture
def broker(broker_dir: Path) -> Iterator[Broker]:
    _require_mosquitto()
    port = _free_port()
    config = generate(make_registry(), prefix=PREFIX, port=port, data_dir=broker_dir)
    for _ in _run_broker(config, broker_dir, [port]):
        yield Broker(port, config, broker_dir)


class Client:
    """A paho client that records CONNACK, SUBACK, disconnects and received messages."""

    def __init__(
        self,
        port: int,
        username: str | None = None,
        password: str | None = None,
        *,
        client_id: str = "",
        ca: Path | None = None,
    ) -> None:
        self.connack: ReasonCode | None = None
        self.messages: list[tuple[str, bytes, bool]] = []
        self.disconnects = 0
        self._cond = threading.Condition()
        self._suback: dict[int, list[ReasonCode]] = {}
        self.mqtt = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=True,
            reconnect_on_failure=False,
        )
        self.mqtt.on_connect = self._on_connect
        self.mqtt.on_message = self._on_message
        self.mqtt.on_subscribe = self._on_subscribe
        self.mqtt.on_disconnect = self._on_disconnect
        if username is not None:
            self.mqtt.username_pw_set(username, password)
        if ca is not None:
            self.mqtt.tls_set(ca_certs=str(ca))
        self.mqtt.connect("127.0.0.1", port, keepalive=10)
        self.mqtt.loop_start()

    def _on_connect(self, _c: Any, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        with self._cond:
            self.connack = rc
            self._cond.notify_all()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))
            self._cond.notify_all()

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, codes: list[ReasonCode], _p: Any) -> None:
        with self._cond:
            self._suback[mid] = codes
            self._cond.notify_all()

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, _rc: ReasonCode, _p: Any) -> None:
        with self._cond:
            self.disconnects += 1
            self._cond.notify_all()

    def _wait(self, predicate: Callable[[], bool], what: str) -> None:
        with self._cond:
            if not self._cond.wait_for(predicate, timeout=TIMEOUT):
                pytest.fail(f"timed out waiting for {what}")

    def wait_connack(self) -> ReasonCode:
        self._wait(lambda: self.connack is not None, "CONNACK")
        assert self.connack is not None
        return self.connack

    def connected(self) -> Client:
        rc = self.wait_connack()
        assert not rc.is_failure, rc
        return self

    def subscribe(self, *topics: str) -> list[ReasonCode]:
        result, mid = self.mqtt.subscribe([(t, 1) for t in topics])
        assert result == mqtt.MQTT_ERR_SUCCESS and mid is not None
        self._wait(lambda: mid in self._suback, "SUBACK")
        return self._suback[mid]

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        # QoS 1: once PUBACK is back, mosquitto has already routed (or dropped) the message.
        info = self.mqtt.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(timeout=TIMEOUT)
        assert info.is_published()

    def wait_for(self, topic: str, payload: bytes) -> list[tuple[str, bytes, bool]]:
        """Wait for one message, then return everything received so far."""
        self._wait(lambda: (topic, payload) in [(t, p) for t, p, _ in self.messages], topic)
        with self._cond:
            return list(self.messages)

    def close(self) -> None:
        self.mqtt.disconnect()
        self.mqtt.loop_stop()


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    made: list[Client] = []
    yield made
    for client in made:
        client.close()


def cmd(device: str) -> str:
    return f"{PREFIX}/dev/{device}/cmd"


def ack(device: str) -> str:
    return f"{PREFIX}/dev/{device}/ack"


def state(device: str) -> str:
    return f"{PREFIX}/dev/{device}/state"


def login(broker: Broker, clients: list[Client], user: str, *, client_id: str = "") -> Client:
    client = Client(broker.port, user, broker.password(user), client_id=client_id or user)
    clients.append(client)
    return client.connected()


# -- authentication -------------------------------------------------------------------------


def test_anonymous_client_is_refused(broker: Broker, clients: list[Client]) -> None:
    client = Client(broker.port, client_id="anon")
    clients.append(client)
    assert client.wait_connack() == ReasonCode(PacketTypes.CONNACK, "Not authorized")


@pytest.mark.parametrize("user", [LED_A, DISPATCHER, "nobody-registered"])
def test_wrong_password_is_refused(broker: Broker, clients: list[Client], user: str) -> None:
    client = Client(broker.port, user, "not-the-password", client_id=user)
    clients.append(client)
    assert client.wait_connack() == ReasonCode(PacketTypes.CONNACK, "Not authorized")


def test_every_generated_identity_logs_in(broker: Broker, clients: list[Client]) -> None:
    assert set(broker.config.credentials) == {DISPATCHER, LED_A, SPK_B}
    for user in broker.config.credentials:
        login(broker, clients, user)


# -- the ACL ----------------------------------------------------------------------------------


def test_dispatcher_command_reaches_only_its_device(broker: Broker, clients: list[Client]) -> None:
    device_a = login(broker, clients, LED_A)
    device_b = login(broker, clients, SPK_B)
    device_a.subscribe(cmd(LED_A))
    device_b.subscribe(cmd(SPK_B))
    dispatcher = login(broker, clients, DISPATCHER)
    dispatcher.publish(cmd(LED_A), b"show-a")
    dispatcher.publish(cmd(SPK_B), b"play-b")
    assert device_a.wait_for(cmd(LED_A), b"show-a") == [(cmd(LED_A), b"show-a", False)]
    assert device_b.wait_for(cmd(SPK_B), b"play-b") == [(cmd(SPK_B), b"play-b", False)]


def test_device_cannot_command_another_device(broker: Broker, clients: list[Client]) -> None:
    device_a = login(broker, clients, LED_A)
    device_a.subscribe(cmd(LED_A))
    device_b = login(broker, clients, SPK_B)
    # mosquitto still PUBACKs a denied QoS 1 publish: only the subscriber can tell.
    device_b.publish(cmd(LED_A), b"rogue")
    device_b.publish(cmd(LED_A), b"rogue-retained", retain=True)
    login(broker, clients, DISPATCHER).publish(cmd(LED_A), b"genuine")
    assert [p for _, p, _ in device_a.wait_for(cmd(LED_A), b"genuine")] == [b"genuine"]
    late = login(broker, clients, LED_A, client_id="led-a-late")
    late.subscribe(cmd(LED_A))
    late.publish(ack(LED_A), b"sync")  # a round trip: a retained rogue would have arrived by now
    assert late.messages == []


def test_device_cannot_listen_to_other_devices(broker: Broker, clients: list[Client]) -> None:
    device_b = login(broker, clients, SPK_B)
    device_b.subscribe(cmd(LED_A), "#", f"{PREFIX}/#", f"{PREFIX}/dev/+/ack", "$SYS/#")
    device_b.subscribe(cmd(SPK_B))
    device_a = login(broker, clients, LED_A)
    dispatcher = login(broker, clients, DISPATCHER)
    dispatcher.publish(cmd(LED_A), b"for-a")
    device_a.publish(ack(LED_A), b"a-acks")
    device_a.publish(state(LED_A), b"online", retain=True)
    dispatcher.publish(cmd(SPK_B), b"for-b")
    received = device_b.wait_for(cmd(SPK_B), b"for-b")
    assert {topic for topic, _, _ in received} == {cmd(SPK_B)}


def test_device_acks_and_state_reach_the_dispatcher(broker: Broker, clients: list[Client]) -> None:
    dispatcher = login(broker, clients, DISPATCHER)
    dispatcher.subscribe(f"{PREFIX}/dev/+/ack", f"{PREFIX}/dev/+/state")
    device_a = login(broker, clients, LED_A)
    device_a.publish(state(LED_A), b"online", retain=True)
    device_a.publish(ack(LED_A), b"shown")
    received = dispatcher.wait_for(ack(LED_A), b"shown")
    assert (state(LED_A), b"online", False) in received
    # A listener connecting later gets the retained presence.
    listener = login(broker, clients, DISPATCHER, client_id="villagecast-listener")
    listener.subscribe(f"{PREFIX}/dev/+/state")
    assert listener.wait_for(state(LED_A), b"online") == [(state(LED_A), b"online", True)]


def test_device_cannot_forge_another_devices_ack(broker: Broker, clients: list[Client]) -> None:
    dispatcher = login(broker, clients, DISPATCHER)
    dispatcher.subscribe(f"{PREFIX}/dev/+/ack", f"{PREFIX}/dev/+/state")
    device_a = login(broker, clients, LED_A)
    device_a.publish(ack(SPK_B), b"forged-ack")
    device_a.publish(state(SPK_B), b"forged-state", retain=True)
    device_a.publish(ack(LED_A), b"own-ack")
    assert dispatcher.wait_for(ack(LED_A), b"own-ack") == [(ack(LED_A), b"own-ack", False)]


def test_dispatcher_cannot_forge_device_messages(broker: Broker, clients: list[Client]) -> None:
    dispatcher = login(broker, clients, DISPATCHER)
    dispatcher.publish(state(LED_A), b"forged-offline", retain=True)
    dispatcher.publish(ack(LED_A), b"forged-ack")
    # The %u patterns would otherwise give the dispatcher a "device" under its own name.
    dispatcher.publish(ack(DISPATCHER), b"self-ack")
    dispatcher.publish(state(DISPATCHER), b"self-state", retain=True)
    listener = login(broker, clients, DISPATCHER, client_id="villagecast-listener")
    listener.subscribe(f"{PREFIX}/dev/+/ack", f"{PREFIX}/dev/+/state")
    dispatcher.publish(ack(LED_A), b"forged-ack-2")
    dispatcher.publish(cmd(DISPATCHER), b"self-cmd")
    login(broker, clients, LED_A).publish(ack(LED_A), b"real-ack")
    assert listener.wait_for(ack(LED_A), b"real-ack") == [(ack(LED_A), b"real-ack", False)]


def test_dispatcher_reads_no_commands(broker: Broker, clients: list[Client]) -> None:
    spy = login(broker, clients, DISPATCHER, client_id="spy")
    spy.subscribe(f"{PREFIX}/dev/+/cmd", f"{PREFIX}/dev/+/ack")
    dispatcher = login(broker, clients, DISPATCHER)
    dispatcher.publish(cmd(LED_A), b"show")
    login(broker, clients, LED_A).publish(ack(LED_A), b"shown")
    assert spy.wait_for(ack(LED_A), b"shown") == [(ack(LED_A), b"shown", False)]


# -- TLS and client ids ------------------------------------------------------------------------


def _make_ca_and_server_cert(directory: Path) -> tuple[Path, Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("villagecast test CA"))
        .issuer_name(name("villagecast test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("broker.test"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = (directory / "ca.crt", directory / "broker.crt", directory / "broker.key")
    paths[0].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@pytest.fixture
def tls_broker(broker_dir: Path) -> Iterator[Broker]:
    _require_mosquitto()
    ca, cert, key = _make_ca_and_server_cert(broker_dir)
    port, tls_port = _free_port(), _free_port()
    tls = TlsOptions(cafile=ca, certfile=cert, keyfile=key, port=tls_port, host="127.0.0.1")
    config = generate(make_registry(), port=port, data_dir=broker_dir, tls=tls)
    for _ in _run_broker(config, broker_dir, [port, tls_port]):
        yield Broker(port, config, broker_dir, tls_port, ca)


def test_tls_listener_verified_and_client_id_forced(
    tls_broker: Broker, clients: list[Client]
) -> None:
    assert tls_broker.tls_port is not None
    tls_port, ca = tls_broker.tls_port, tls_broker.ca

    def over_tls(user: str, client_id: str) -> Client:
        client = Client(tls_port, user, tls_broker.password(user), client_id=client_id, ca=ca)
        clients.append(client)
        return client.connected()

    device_b = over_tls(SPK_B, SPK_B)
    device_b.subscribe(cmd(SPK_B))
    # Device A claims B's client id: on the device listener it is replaced by "led-a",
    # so B keeps its connection and session.
    device_a = over_tls(LED_A, SPK_B)
    device_a.subscribe(cmd(LED_A))
    dispatcher = login(tls_broker, clients, DISPATCHER)  # loopback listener, plain
    dispatcher.publish(cmd(SPK_B), b"for-b")
    dispatcher.publish(cmd(LED_A), b"for-a")
    assert device_b.wait_for(cmd(SPK_B), b"for-b") == [(cmd(SPK_B), b"for-b", False)]
    assert device_a.wait_for(cmd(LED_A), b"for-a") == [(cmd(LED_A), b"for-a", False)]
    assert device_b.disconnects == 0


# -- generation ------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["led+a", "led/a", "led#", "led a", "led\0a", "led:a"])
def test_unsafe_device_id_is_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError) as err:
        generate(unsafe_registry(bad), data_dir=tmp_path)
    for lang in ("zh", "en"):
        assert "east-liu-led" in err.value.render(lang)
    assert "设备" in err.value.render("zh")
    assert "device" in err.value.render("en")


@pytest.mark.parametrize("bad", ["", "vc+dispatcher", "vc/dispatcher", "vc dispatcher"])
def test_unsafe_dispatcher_user_is_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError) as err:
        generate(make_registry(), data_dir=tmp_path, dispatcher_user=bad)
    assert "the dispatcher" in err.value.render("en")
    assert "调度程序" in err.value.render("zh")


def test_duplicate_identities_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        generate(make_registry(LED_A, LED_A), data_dir=tmp_path)
    assert "east-wang-spk" in err.value.render("en")
    assert "east-liu-led" in err.value.render("en")
    with pytest.raises(ConfigError) as err:
        generate(make_registry(), data_dir=tmp_path, dispatcher_user=SPK_B)
    assert "already used by the dispatcher" in err.value.render("en")


def test_invalid_prefix_is_refused(tmp_path: Path) -> None:
    for prefix in ("vc/+", "vc//v1", "/vc", "vc/#"):
        with pytest.raises(ConfigError):
            generate(make_registry(), data_dir=tmp_path, prefix=prefix)


def test_password_hash_matches_mosquitto_passwd(tmp_path: Path) -> None:
    _require_mosquitto()
    pwfile = tmp_path / "pw"
    subprocess.run(
        [MOSQUITTO_PASSWD, "-c", "-b", str(pwfile), "user", "pässwörd 密码"],
        check=True,
        capture_output=True,
    )
    theirs = pwfile.read_text(encoding="utf-8").strip().split(":", 1)[1]
    fields = theirs.split("$")
    salt = base64.b64decode(fields[3])
    assert mosquitto_password_hash("pässwörd 密码", salt=salt) == theirs
    ours = mosquitto_password_hash("x")
    assert re.fullmatch(r"\$7\$101\$[A-Za-z0-9+/]{16}\$[A-Za-z0-9+/]{86}==", ours)
    assert ours != mosquitto_password_hash("x")  # fresh salt each time
    with pytest.raises(ValueError, match="12-byte"):
        mosquitto_password_hash("x", salt=b"short")


def test_written_files_are_private_and_hold_no_plaintext(tmp_path: Path) -> None:
    out = tmp_path / "broker"
    config = generate(make_registry(), data_dir=out)
    paths = write(config, out)
    assert {p.name for p in paths} == {"mosquitto.conf", "passwd", "acl", CREDENTIALS_FILE}
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for path in paths:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert sorted(os.listdir(out)) == sorted(p.name for p in paths)  # no temp files left
    for password in config.credentials.values():
        for name in ("mosquitto.conf", "acl", "passwd"):
            assert password not in (out / name).read_text(encoding="utf-8")
        assert password not in repr(config)
    assert load_credentials(out / CREDENTIALS_FILE) == config.credentials


def test_existing_passwords_are_kept_and_removed_devices_dropped(tmp_path: Path) -> None:
    first = generate(make_registry(), data_dir=tmp_path)
    old = {**first.credentials, "led-removed": "old-secret"}
    second = generate(make_registry(), data_dir=tmp_path, existing_credentials=old)
    assert second.credentials == first.credentials
    third = generate(make_registry(LED_A, "spk-new"), data_dir=tmp_path, existing_credentials=old)
    assert third.credentials[LED_A] == first.credentials[LED_A]
    assert "spk-new" in third.credentials
    assert SPK_B not in third.credentials
    assert len(set(third.credentials.values())) == 3
    assert "spk-b" not in third.files["passwd"]


def test_conf_settings(tmp_path: Path) -> None:
    conf = generate(make_registry(), data_dir=tmp_path, port=1884).files["mosquitto.conf"]
    settings = [line for line in conf.splitlines() if line and not line.startswith("#")]
    for expected in (
        "per_listener_settings false",
        "listener 1884 127.0.0.1",
        "allow_anonymous false",
        f"password_file {tmp_path}/passwd",
        f"acl_file {tmp_path}/acl",
        "persistence true",
        f"persistence_location {tmp_path}/",
        "autosave_interval 60",
        "max_queued_messages 1000",
        "retain_available true",
        "persistent_client_expiration 14d",
        "set_tcp_nodelay true",
    ):
        assert expected in settings
    # The loopback listener serves the dispatcher's several connections; any listener
    # devices reach over the network forces client id == username.
    assert "use_username_as_clientid true" not in settings
    public = generate(make_registry(), data_dir=tmp_path, listen_host="0.0.0.0")
    assert "use_username_as_clientid true" in public.files["mosquitto.conf"].splitlines()


def test_queue_limit_grows_with_the_county(tmp_path: Path) -> None:
    doc = _doc()
    endpoints = doc["townships"][0]["villages"][0]["endpoints"]
    endpoints += [{"id": f"led-{i}", "kind": "led", "device_id": f"led-{i}"} for i in range(700)]
    registry = Registry(RegistryFile.model_validate(doc))
    conf = generate(registry, data_dir=tmp_path).files["mosquitto.conf"]
    assert "max_queued_messages 1404" in conf.splitlines()
