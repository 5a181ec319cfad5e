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

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, ClassVar

from channels._device import command_id_for, dispatch_command, publish_signed
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
from channels.protocol import Command, CommandSigner, SignedCommand, sign_command
from content_queue.errors import ConfigError
from content_queue.i18n import tr
from content_queue.registry import EndpointKind, LedEndpoint
from content_queue.settings import Settings
from content_queue.store import NoticeView, utcnow

__all__ = ["LedChannel", "build_show_command", "show_body", "show_signer"]


def command_expiry(notice: NoticeView, settings: Settings, now: datetime) -> datetime:
    ttl = now + timedelta(seconds=settings.command_ttl_seconds)
    return min(notice.expires_at, ttl) if notice.expires_at else ttl


def show_body(notice: NoticeView, endpoint: LedEndpoint) -> dict[str, Any]:
    """The body of an ``led.show`` for this board: the notice rendered into pages that fit
    it (the same for every board of the same geometry, encoding and colours)."""
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
    return {
        "title": title,
        "pages": render_pages_json(pages),
        "replacements": [
            {"from": r.original, "to": r.replacement, "rule": r.rule}
            for r in [*title_fixes, *body_fixes]
        ],
    }


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
    body_json = show_body(notice, endpoint)
    expires = command_expiry(notice, settings, now)
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


def show_signer(
    *,
    notice: NoticeView,
    endpoint: LedEndpoint,
    keyring: Keyring,
    settings: Settings,
    now: datetime,
) -> CommandSigner:
    """Render once, sign for every board that shares ``endpoint``'s geometry
    (:func:`build_show_command` for many boards; the same payloads)."""
    expires = command_expiry(notice, settings, now)
    return CommandSigner(
        key=keyring.active(),
        notice=notice.id,
        revision=notice.revision,
        kind="led.show",
        priority=notice.priority,
        issued_at=int(now.timestamp()),
        expires_at=int(expires.timestamp()),
        body=show_body(notice, endpoint),
    )


def _priority(value: str) -> Any:
    return value if value in ("routine", "important", "emergency") else "routine"


class LedChannel(Channel):
    kind: ClassVar[EndpointKind] = "led"
    limits: ClassVar[ChannelLimits] = ChannelLimits(
        max_title_chars=80, max_body_chars=10000, confirms="ack", formats=("pages",)
    )
    # A fan-out is a few tasks of many boards, each worked in chunks: claimed, rendered and
    # signed, recorded in one transaction, published in one burst, finished in one
    # transaction. Safe to repeat: a device drops a duplicate command id and acks again.
    task_batch: ClassVar[int | None] = 500
    claim_chunk: ClassVar[int] = 100

    def __init__(self, publisher: Publisher | None = None, keyring: Keyring | None = None):
        self._publisher = publisher
        self._keyring = keyring

    def _keys(self, settings: Settings) -> Keyring:
        if self._keyring is None:
            self._keyring = Keyring.load(settings.keys_dir)
        return self._keyring

    def _endpoint(self, ctx: DeliveryContext) -> LedEndpoint:
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
        return endpoint

    def send(self, ctx: DeliveryContext) -> SendResult:
        endpoint = self._endpoint(ctx)
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

    def send_many(self, ctxs: Sequence[DeliveryContext]) -> list[SendResult | Exception]:
        """A claimed chunk: each notice rendered once per board geometry, each board's
        command signed around the shared body, all recorded in one transaction, then all
        published before the PUBACKs are awaited together (docs/architecture.md)."""
        if not ctxs:
            return []
        settings, store = ctxs[0].settings, ctxs[0].store
        try:
            keyring = self._keys(settings)
        except Exception as exc:
            return [exc] * len(ctxs)
        now = utcnow()
        results: list[SendResult | Exception] = []
        signers: dict[tuple[object, ...], CommandSigner | Exception] = {}
        signed: list[tuple[int, SignedCommand]] = []
        for i, ctx in enumerate(ctxs):
            try:
                endpoint = self._endpoint(ctx)
                key = (
                    ctx.notice.id,
                    ctx.notice.revision,
                    endpoint.chars_per_line,
                    endpoint.lines,
                    endpoint.encoding,
                    tuple(endpoint.colours),
                )
                signer = signers.get(key)
                if signer is None:
                    try:
                        signer = show_signer(
                            notice=ctx.notice,
                            endpoint=endpoint,
                            keyring=keyring,
                            settings=settings,
                            now=now,
                        )
                    except Exception as exc:
                        signer = exc
                    signers[key] = signer
                if isinstance(signer, Exception):
                    results.append(signer)
                    continue
                command = signer.sign(
                    command_id=command_id_for(ctx.delivery_id),
                    device=endpoint.device_id,
                    delivery=ctx.delivery_id,
                )
            except Exception as exc:
                results.append(exc)
                continue
            results.append(SendResult("sent", external_ref=command.id, published=(command.id,)))
            signed.append((i, command))
        return publish_signed(
            results, signed, store=store, settings=settings, publisher=self._publisher
        )
