"""What every MQTT device channel shares: record a signed command, publish it, note it."""

from __future__ import annotations

import os
from datetime import UTC, datetime

from channels._mqtt import MqttPublisher, Publisher
from channels.protocol import Command, encode, topic_cmd
from content_queue.settings import Settings
from content_queue.store import Store

__all__ = ["command_id_for", "dispatch_command", "publisher_for"]


def command_id_for(delivery_id: int, *, sync_seq: int | None = None) -> str:
    """Stable per delivery, so a re-send is a duplicate; a sync after reboot gets a new id."""
    return f"vc-{delivery_id}" if sync_seq is None else f"vc-{delivery_id}-s{sync_seq}"


def publisher_for(settings: Settings) -> MqttPublisher:
    password = os.environ.get(settings.mqtt_password_env) or None
    return MqttPublisher.shared(
        settings.resolved_mqtt_url, password=password, keepalive=settings.mqtt_keepalive_seconds
    )


def dispatch_command(
    command: Command,
    *,
    store: Store,
    settings: Settings,
    publisher: Publisher | None = None,
    sync: bool = False,
) -> None:
    """Remember the command before it leaves (the store, not paho, is the record), publish
    it with QoS 1 to the device's command topic, then note that the broker took it."""
    store.record_command(
        command_id=command.id,
        delivery_id=command.delivery,
        device_id=command.device,
        kind=command.kind,
        issued_at=datetime.fromtimestamp(command.issued_at, tz=UTC),
        expires_at=datetime.fromtimestamp(command.expires_at, tz=UTC),
        sync=sync,
    )
    (publisher or publisher_for(settings)).publish(
        topic_cmd(settings.mqtt_prefix, command.device), encode(command)
    )
    store.mark_published(command.id)
