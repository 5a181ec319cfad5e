"""The LED channel's chunk path: one render per board geometry, the commands recorded
before any is published, all published before the PUBACKs are awaited, and each failure
reported for its own delivery."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

import channels.led as led_module
from channels._mqtt import MqttPublisher
from channels.base import ContentError, DeliveryContext, SendResult, TransientError
from channels.keys import Keyring
from channels.led import LedChannel, build_show_command
from channels.protocol import Command, ReplayGuard, encode, verify_command
from content_queue.errors import ConfigError
from content_queue.i18n import tr
from content_queue.models import build_notice
from content_queue.registry import LedEndpoint, Registry, RegistryFile
from content_queue.settings import Settings, get_settings, reset_settings
from content_queue.store import Claim, PlannedDelivery, Store, utcnow
from dispatcher import service
from tests.conftest import Mosquitto

BOARDS = """\
version: 1
county: {code: "371521", name: 示例县}
townships:
  - id: t
    name: 东城镇
    villages:
      - id: a
        name: 刘庄村
        endpoints:
          - {id: a-led, kind: led, device_id: led-a}
      - id: b
        name: 王庄村
        endpoints:
          - {id: b-led, kind: led, device_id: led-b}
      - id: c
        name: 赵家村
        endpoints:
          - {id: c-led, kind: led, device_id: led-c, encoding: utf-8, chars_per_line: 24}
"""


@dataclass
class PipelinedPublisher:
    """Checks, when the chunk is handed over, that every command is already in the store."""

    store: Store
    accept: set[str] | None = None
    sent: list[tuple[str, bytes]] = field(default_factory=list)
    unrecorded: list[str] = field(default_factory=list)

    def publish(self, topic: str, payload: bytes, *, timeout: float = 10.0) -> None:
        raise AssertionError("a chunk must be published with publish_many")

    def publish_many(
        self, items: Sequence[tuple[str, bytes]], *, timeout: float = 10.0
    ) -> list[bool]:
        accepted = []
        for topic, payload in items:
            command = json.loads(payload)
            (row,) = self.store.commands_for(command["delivery"]) or [None]
            if row is None or row["id"] != command["id"] or row["published_at"] is not None:
                self.unrecorded.append(command["id"])
            self.sent.append((topic, payload))
            accepted.append(self.accept is None or command["device"] in self.accept)
        return accepted


@dataclass
class OneAtATime:
    """A publisher without publish_many (the tests' and plugins' simplest kind)."""

    sent: list[tuple[str, bytes]] = field(default_factory=list)

    def publish(self, topic: str, payload: bytes, *, timeout: float = 10.0) -> None:
        self.sent.append((topic, payload))


@dataclass
class Down:
    def publish(self, topic: str, payload: bytes, *, timeout: float = 10.0) -> None:
        raise TransientError(tr("连不上", "unreachable"), code="mqtt_unreachable")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home")


@pytest.fixture
def registry() -> Registry:
    return Registry(RegistryFile.model_validate(yaml.safe_load(BOARDS)))


@pytest.fixture
def keyring(settings: Settings) -> Keyring:
    return Keyring.init(settings.keys_dir)


_OPEN: list[Store] = []


@pytest.fixture(autouse=True)
def _dispose_stores() -> Iterator[None]:
    """Close every engine a test opened (paho's select() loop cannot take descriptors
    above 1024, and the suite runs many paho clients after these tests)."""
    yield
    while _OPEN:
        store = _OPEN.pop()
        store.engine.dispose()
        store.read_engine.dispose()


def _contexts(
    settings: Settings, registry: Registry, **notice: object
) -> tuple[Store, list[DeliveryContext]]:
    store = Store(f"sqlite:///{settings.home / 'vc.sqlite'}")
    _OPEN.append(store)
    data = {
        "title": "山洪预警",
        "body": "今夜有大到暴雨，沿河群众请立即转移。",
        "category": "emergency",
        "priority": "emergency",
        "targets": {"county": True},
        **notice,
    }
    _, deliveries = store.add_notice(
        build_notice(data),
        [PlannedDelivery(f"{v}-led", "led", v, "t") for v in ("a", "b", "c")],
    )
    claims: list[Claim] = store.claim(
        [d.id for d in deliveries], worker="t", lease_seconds=30, max_attempts=3
    )
    return store, [
        DeliveryContext(
            delivery_id=c.delivery.id,
            attempt=1,
            notice=c.notice,
            endpoint=registry.endpoints[c.delivery.endpoint_id],
            village_id=c.delivery.village_id,
            registry=registry,
            settings=settings,
            store=store,
        )
        for c in claims
    ]


def _verify(payload: bytes, device: str, keyring: Keyring) -> Command:
    result = verify_command(
        payload,
        device_id=device,
        keyring=keyring.public_keys(),
        now=int(utcnow().timestamp()),
        max_skew=300,
        guard=ReplayGuard(),
    )
    assert isinstance(result, Command), result
    return result


def test_a_chunk_is_rendered_once_per_geometry_and_recorded_before_it_is_published(
    settings: Settings, registry: Registry, keyring: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    renders: list[str] = []
    real = led_module.show_body

    def counting(notice: Any, endpoint: LedEndpoint) -> dict[str, Any]:
        renders.append(endpoint.device_id)
        return real(notice, endpoint)

    monkeypatch.setattr(led_module, "show_body", counting)
    store, ctxs = _contexts(settings, registry)
    pub = PipelinedPublisher(store)
    results = LedChannel(publisher=pub, keyring=keyring).deliver_many(ctxs)

    assert renders == ["led-a", "led-c"]  # a and b share a geometry
    assert pub.unrecorded == []
    assert [t for t, _ in pub.sent] == [f"vc/v1/dev/led-{v}/cmd" for v in "abc"]
    for ctx, result, (_, payload) in zip(ctxs, results, pub.sent, strict=True):
        assert isinstance(result, SendResult)
        command_id = f"vc-{ctx.delivery_id}"
        assert (result.status, result.external_ref, result.published) == (
            "sent",
            command_id,
            (command_id,),
        )
        assert isinstance(ctx.endpoint, LedEndpoint)
        command = _verify(payload, ctx.endpoint.device_id, keyring)
        # byte for byte what the one-at-a-time path signs for the same board
        alone = build_show_command(
            notice=ctx.notice,
            endpoint=ctx.endpoint,
            delivery_id=ctx.delivery_id,
            command_id=command_id,
            keyring=keyring,
            settings=settings,
            now=datetime.fromtimestamp(command.issued_at, tz=UTC),
        )
        assert payload == encode(alone)
    # the published time is the dispatcher's to note, with the outcome
    assert all(store.commands_for(c.delivery_id)[0]["published_at"] is None for c in ctxs)


def test_each_failure_stays_with_its_delivery(
    settings: Settings, registry: Registry, keyring: Keyring
) -> None:
    store, ctxs = _contexts(settings, registry, body="吉祥的𠮷，请注意。")
    pub = PipelinedPublisher(store, accept={"led-c"})
    a, b, c = LedChannel(publisher=pub, keyring=keyring).deliver_many(ctxs)
    # 𠮷 is outside GB2312 (boards a, b) but board c takes UTF-8; the broker took c only
    for refused in (a, b):
        assert isinstance(refused, ContentError) and refused.code == "encoding"
    assert isinstance(c, SendResult) and c.published == (f"vc-{ctxs[2].delivery_id}",)
    assert [json.loads(p)["device"] for _, p in pub.sent] == ["led-c"]

    store, ctxs = _contexts(settings, registry)
    a, b, c = LedChannel(
        publisher=PipelinedPublisher(store, accept={"led-a"}), keyring=keyring
    ).deliver_many(ctxs)
    assert isinstance(a, SendResult)
    for unconfirmed in (b, c):
        assert isinstance(unconfirmed, TransientError) and unconfirmed.code == "mqtt_timeout"


def test_a_publisher_without_pipelining_and_a_broker_that_is_down(
    settings: Settings, registry: Registry, keyring: Keyring
) -> None:
    _, ctxs = _contexts(settings, registry)
    simple = OneAtATime()
    results = LedChannel(publisher=simple, keyring=keyring).deliver_many(ctxs)
    assert all(isinstance(r, SendResult) for r in results) and len(simple.sent) == 3

    store, ctxs = _contexts(settings, registry)
    results = LedChannel(publisher=Down(), keyring=keyring).deliver_many(ctxs)
    assert all(isinstance(r, TransientError) and r.code == "mqtt_unreachable" for r in results)
    # recorded all the same: a command that may have left is never unaccounted for
    assert all(store.commands_for(c.delivery_id) for c in ctxs)


def test_missing_keys_fail_the_whole_chunk_as_configuration(
    settings: Settings, registry: Registry
) -> None:
    store, ctxs = _contexts(settings, registry)
    results = LedChannel(publisher=PipelinedPublisher(store)).deliver_many(ctxs)
    assert all(isinstance(r, ConfigError) for r in results)
    assert "villagecast keys init" in str(results[0].render("zh"))  # type: ignore[union-attr]


@pytest.mark.service
def test_process_deliveries_publishes_a_county_through_mosquitto(
    home: Path, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's path for real: claim, record, pipelined QoS 1 publishes, one
    transaction for the outcomes and the published times."""
    devices = home.parent / "county.yaml"
    lines = ["version: 1", "county: {code: '371521', name: 示例县}", "townships:"]
    lines += ["  - id: big", "    name: 大镇", "    villages:"]
    for i in range(60):
        lines += [f"      - id: v{i:04d}", f"        name: 第{i}村", "        endpoints:"]
        lines.append(f"          - {{id: v{i:04d}-led, kind: led, device_id: led-{i:04d}}}")
    devices.write_text("\n".join(lines) + "\n", encoding="utf-8")
    monkeypatch.setenv("VILLAGECAST_DEVICES", str(devices))
    monkeypatch.setenv("VILLAGECAST_MQTT_URL", mosquitto.url)
    reset_settings()
    settings = get_settings()
    Keyring.init(settings.keys_dir)
    store = service.open_store(settings)
    received: list[str] = []
    subscribed = threading.Event()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-sub", protocol=mqtt.MQTTv311)
    sub.on_connect = lambda c, *_: c.subscribe("vc/v1/dev/+/cmd", qos=1)
    sub.on_subscribe = lambda *_: subscribed.set()
    sub.on_message = lambda c, u, m: received.append(json.loads(m.payload)["id"])
    sub.connect("127.0.0.1", mosquitto.port)
    sub.loop_start()
    try:
        assert subscribed.wait(10)
        submitted = service.submit_notice(
            build_notice(
                {
                    "title": "山洪预警",
                    "body": "请立即转移。",
                    "category": "emergency",
                    "targets": {"county": True},
                }
            ),
            store=store,
            registry=service.registry_cache.get(settings.devices),
            ring=None,
        )
        ids = [d.id for d in submitted.deliveries]
        statuses = service.process_deliveries(ids, store=store, settings=settings, ring=None)
        assert set(statuses.values()) == {"sent"} and len(statuses) == 60
        deadline = time.monotonic() + 10
        while len(received) < 60 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sorted(received) == sorted(f"vc-{i}" for i in ids)
        for i in ids:
            (cmd,) = store.commands_for(i)
            (d,) = store.deliveries(ids=[i])
            assert cmd["published_at"] is not None and cmd["published_at"] == d.sent_at
    finally:
        sub.disconnect()
        sub.loop_stop()
        MqttPublisher.shared(settings.resolved_mqtt_url, password=None).close()
