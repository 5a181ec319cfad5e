"""What every MQTT device channel shares: record a signed command, publish it, note it.

The order is the guarantee: a command is in the store before it can reach the broker, so
a crash at any point leaves a record of everything that may have gone out (the sweeper
re-sends it with the same id; the device drops the duplicate and acks again).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import UTC, datetime

from channels._mqtt import MqttPublisher, Publisher, not_confirmed, publish_all
from channels.base import SendResult
from channels.protocol import Command, SignedCommand, encode, topic_cmd
from content_queue.settings import Settings
from content_queue.store import NewCommand, Store

__all__ = [
    "command_id_for",
    "dispatch_command",
    "dispatch_commands",
    "publish_signed",
    "publisher_for",
]


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


def dispatch_commands(
    commands: Sequence[SignedCommand],
    *,
    store: Store,
    settings: Settings,
    publisher: Publisher | None = None,
    timeout: float = 10.0,
) -> list[bool]:
    """A chunk's commands: remembered in one transaction, then all published (QoS 1, never
    retained) before waiting for the broker's PUBACKs together. Returns, per command,
    whether the broker accepted it. Their ``published_at`` is left to the caller, which
    notes it in the transaction that records the deliveries' outcome
    (``Store.finish_chunk``). Raises TransientError when the broker cannot be reached."""
    if not commands:
        return []
    store.record_commands(
        [
            NewCommand(
                command_id=c.id,
                delivery_id=c.delivery,
                device_id=c.device,
                kind=c.kind,
                issued_at=datetime.fromtimestamp(c.issued_at, tz=UTC),
                expires_at=datetime.fromtimestamp(c.expires_at, tz=UTC),
            )
            for c in commands
        ]
    )
    prefix = settings.mqtt_prefix
    return publish_all(
        publisher or publisher_for(settings),
        [(topic_cmd(prefix, c.device), c.payload) for c in commands],
        timeout=timeout,
    )


def publish_signed(
    results: list[SendResult | Exception],
    signed: Sequence[tuple[int, SignedCommand]],
    *,
    store: Store,
    settings: Settings,
    publisher: Publisher | None,
    timeout: float = 10.0,
) -> list[SendResult | Exception]:
    """The end of a channel's chunk: ``results`` holds a SendResult at each index in
    ``signed``; those commands go out with :func:`dispatch_commands`, and a command the
    broker did not accept (or a broker that cannot be reached) replaces its result."""
    if not signed:
        return results
    try:
        accepted: list[bool] | Exception = dispatch_commands(
            [c for _, c in signed],
            store=store,
            settings=settings,
            publisher=publisher,
            timeout=timeout,
        )
    except Exception as exc:
        accepted = exc
    for n, (i, _) in enumerate(signed):
        if isinstance(accepted, Exception):
            results[i] = accepted
        elif not accepted[n]:
            results[i] = not_confirmed(timeout)
    return results
