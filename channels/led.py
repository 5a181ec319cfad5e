"""LED boards at the village gate, reached over MQTT with signed commands.

Features
    formats     pages that fit the board exactly (channels/_led_render.py)
    encodings   gb2312, gbk, utf-8 per board; characters a board cannot show are
                replaced by a documented rule or refused with the character named
    transport   MQTT 3.1.1, QoS 1, never retained, topic {prefix}/dev/{device_id}/cmd
    security    Ed25519 signature over RFC 8785 canonical JSON (docs/device-protocol.md)
    confirms    'sent' when the broker accepts the command, 'delivered' on the device's ack
    idempotent  the command id is stable per delivery (vc-<delivery id>): a re-send after a
                crash is dropped by the device's duplicate check, and re-acked
    config      devices.yaml `led` endpoints: device_id, encoding, chars_per_line, lines,
                colours, max_chars; settings: VILLAGECAST_MQTT_URL, VILLAGECAST_MQTT_PASSWORD,
                VILLAGECAST_MQTT_PREFIX, signing keys under VILLAGECAST_HOME/keys
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, ClassVar

from channels._device import command_id_for, dispatch_command
from channels._led_render import (
    BoardSpec,
    EncodingProblem,
    paginate,
    prepare_text,
    render_pages_json,
)
from channels._mqtt import Publisher
from channels._recall import recall_on_device
from channels.base import Channel, ChannelLimits, ContentError, DeliveryContext, SendResult
from channels.keys import Keyring
from channels.protocol import Command, sign_command
from content_queue.errors import ConfigError
from content_queue.i18n import tr
from content_queue.registry import EndpointKind, LedEndpoint
from content_queue.settings import Settings
from content_queue.store import NoticeView, utcnow

__all__ = ["LedChannel", "build_show_command"]


def command_expiry(notice: NoticeView, settings: Settings, now: datetime) -> datetime:
    ttl = now + timedelta(seconds=settings.command_ttl_seconds)
    return min(notice.expires_at, ttl) if notice.expires_at else ttl


def build_show_command(
    *,
    notice: NoticeView,
    endpoint: LedEndpoint,
    delivery_id: int,
    command_id: str,
    keyring: Keyring,
    settings: Settings,
    now: datetime,
) -> Command:
    """Render the notice for this board and sign an ``led.show`` command."""
    spec = BoardSpec(
        chars_per_line=endpoint.chars_per_line,
        lines=endpoint.lines,
        encoding=endpoint.encoding,
        colours=tuple(endpoint.colours),
    )
    table = notice.table or {}
    rows = [[str(c) for c in row] for row in table.get("rows", [])] or None
    columns = [str(c) for c in table.get("columns", [])] or None
    try:
        # paginate prepares every part itself, so one error names every character the
        # board cannot show (title, body and table together).
        pages = paginate(
            notice.title,
            notice.body,
            spec,
            priority=_priority(notice.priority),
            table=rows,
            columns=columns,
        )
    except EncodingProblem as exc:
        raise ContentError(exc.text, code="encoding") from exc
    title, title_fixes = prepare_text(notice.title, endpoint.encoding)
    body_fixes = prepare_text(notice.body, endpoint.encoding)[1]
    expires = command_expiry(notice, settings, now)
    body_json: dict[str, Any] = {
        "title": title,
        "pages": render_pages_json(pages),
        "replacements": [
            {"from": r.original, "to": r.replacement, "rule": r.rule}
            for r in [*title_fixes, *body_fixes]
        ],
    }
    return sign_command(
        key=keyring.active(),
        command_id=command_id,
        device=endpoint.device_id,
        notice=notice.id,
        revision=notice.revision,
        delivery=delivery_id,
        kind="led.show",
        priority=notice.priority,
        issued_at=int(now.timestamp()),
        expires_at=int(expires.timestamp()),
        body=body_json,
    )


def _priority(value: str) -> Any:
    return value if value in ("routine", "important", "emergency") else "routine"


class LedChannel(Channel):
    kind: ClassVar[EndpointKind] = "led"
    limits: ClassVar[ChannelLimits] = ChannelLimits(
        max_title_chars=80, max_body_chars=10000, confirms="ack", formats=("pages",)
    )
    claim_chunk: ClassVar[int] = 25  # publishes are fast and devices drop duplicate ids

    def __init__(self, publisher: Publisher | None = None, keyring: Keyring | None = None):
        self._publisher = publisher
        self._keyring = keyring

    def _keys(self, settings: Settings) -> Keyring:
        if self._keyring is None:
            self._keyring = Keyring.load(settings.keys_dir)
        return self._keyring

    def send(self, ctx: DeliveryContext) -> SendResult:
        endpoint = ctx.endpoint
        if not isinstance(endpoint, LedEndpoint):
            raise ConfigError(tr("端点不是 LED 屏", "the endpoint is not an LED board"))
        if len(ctx.notice.body) > endpoint.max_chars:
            raise ContentError(
                tr(
                    "正文 {n} 字，超过这块 LED 屏的上限 {max} 字",
                    "the body has {n} characters, more than this board's {max}",
                    n=len(ctx.notice.body),
                    max=endpoint.max_chars,
                ),
                code="too_long",
            )
        now = utcnow()
        command_id = command_id_for(ctx.delivery_id)
        command = build_show_command(
            notice=ctx.notice,
            endpoint=endpoint,
            delivery_id=ctx.delivery_id,
            command_id=command_id,
            keyring=self._keys(ctx.settings),
            settings=ctx.settings,
            now=now,
        )
        dispatch_command(command, store=ctx.store, settings=ctx.settings, publisher=self._publisher)
        return SendResult("sent", external_ref=command_id)

    def recall(self, ctx: DeliveryContext) -> SendResult:
        """``led.clear`` for the notice: the board drops it (an emergency's removal returns
        the board to its routine content); 'delivered' when the board acks ``cleared``."""
        endpoint = ctx.endpoint
        if not isinstance(endpoint, LedEndpoint):
            raise ConfigError(tr("端点不是 LED 屏", "the endpoint is not an LED board"))
        return recall_on_device(
            ctx,
            device_id=endpoint.device_id,
            kind="led.clear",
            keyring=self._keys(ctx.settings),
            publisher=self._publisher,
        )
