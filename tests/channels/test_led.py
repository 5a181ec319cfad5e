"""The LED channel: what it publishes, and every way it can refuse or fail."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from channels._mqtt import MqttPublisher
from channels.base import ContentError, DeliveryContext, TransientError
from channels.keys import Keyring
from channels.led import LedChannel
from channels.protocol import ReplayGuard, verify_command
from content_queue.errors import ConfigError
from content_queue.models import build_notice
from content_queue.registry import Registry, RegistryFile
from content_queue.settings import Settings
from content_queue.store import PlannedDelivery, Store, utcnow
from tests.conftest import SMALL_DEVICES


@dataclass
class RecordingPublisher:
    sent: list[tuple[str, bytes]] = field(default_factory=list)

    def publish(self, topic: str, payload: bytes, *, timeout: float = 10.0) -> None:
        self.sent.append((topic, payload))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home")


@pytest.fixture
def registry() -> Registry:
    return Registry(RegistryFile.model_validate(yaml.safe_load(SMALL_DEVICES)))


def _ctx(settings: Settings, registry: Registry, **notice: object) -> DeliveryContext:
    store = Store(f"sqlite:///{settings.home / 'vc.sqlite'}")
    data = {
        "title": "寒潮预警",
        "body": "今晚降温，请注意防寒。",
        "category": "emergency",
        "priority": "emergency",
        "targets": {"villages": ["east-liu"]},
        **notice,
    }
    _, (d,) = store.add_notice(
        build_notice(data), [PlannedDelivery("east-liu-led", "led", "east-liu", "east")]
    )
    (claim,) = store.claim([d.id], worker="t", lease_seconds=30, max_attempts=3)
    return DeliveryContext(
        delivery_id=d.id,
        attempt=1,
        notice=claim.notice,
        endpoint=registry.endpoints["east-liu-led"],
        village_id="east-liu",
        registry=registry,
        settings=settings,
        store=store,
    )


def test_publishes_a_signed_command_the_board_accepts(
    settings: Settings, registry: Registry
) -> None:
    keyring = Keyring.init(settings.keys_dir)
    pub = RecordingPublisher()
    ctx = _ctx(settings, registry)
    result = LedChannel(publisher=pub).deliver(ctx)
    assert result.status == "sent" and result.external_ref == f"vc-{ctx.delivery_id}"
    ((topic, payload),) = pub.sent
    assert topic == "vc/v1/dev/led-east-liu-01/cmd"
    cmd = verify_command(
        payload,
        device_id="led-east-liu-01",
        keyring=keyring.public_keys(),
        now=int(utcnow().timestamp()),
        max_skew=300,
        guard=ReplayGuard(),
    )
    assert not hasattr(cmd, "reason"), cmd
    body = json.loads(payload)["body"]
    assert body["pages"][0]["kind"] == "title" and body["pages"][0]["flash"] is True
    assert ctx.store.commands_for(ctx.delivery_id)[0]["published_at"] is not None


def test_character_the_board_cannot_show_is_named(settings: Settings, registry: Registry) -> None:
    Keyring.init(settings.keys_dir)
    with pytest.raises(ContentError) as err:
        LedChannel(publisher=RecordingPublisher()).deliver(
            _ctx(settings, registry, body="吉祥的𠮷")
        )
    assert "𠮷" in err.value.render("zh") and "U+20BB7" in err.value.render("en")
    assert err.value.code == "encoding"


def test_body_longer_than_the_board_takes(settings: Settings, registry: Registry) -> None:
    Keyring.init(settings.keys_dir)
    with pytest.raises(ContentError) as err:
        LedChannel(publisher=RecordingPublisher()).deliver(
            _ctx(settings, registry, body="很" * 600)
        )
    assert "超过这块 LED 屏的上限 512 字" in err.value.render("zh")


def test_missing_signing_keys_is_a_configuration_error(
    settings: Settings, registry: Registry
) -> None:
    with pytest.raises(ConfigError) as err:
        LedChannel(publisher=RecordingPublisher()).deliver(_ctx(settings, registry))
    assert "villagecast keys init" in err.value.render("zh")


def test_unreachable_broker_is_transient(settings: Settings, registry: Registry) -> None:
    Keyring.init(settings.keys_dir)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket closes
    pub = MqttPublisher(f"mqtt://127.0.0.1:{port}", password=None)
    channel = LedChannel(publisher=_ShortTimeout(pub))
    with pytest.raises(TransientError) as err:
        channel.deliver(_ctx(settings, registry))
    assert err.value.code == "mqtt_unreachable"
    assert "无法连接 MQTT 服务器" in err.value.render("zh")
    pub.close()


@dataclass
class _ShortTimeout:
    inner: MqttPublisher

    def publish(self, topic: str, payload: bytes, *, timeout: float = 10.0) -> None:
        self.inner.publish(topic, payload, timeout=1.0)
