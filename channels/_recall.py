"""Taking a notice back from a device: a signed ``led.clear`` or ``speaker.stop``."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from channels._device import command_id_for, dispatch_command
from channels._mqtt import Publisher
from channels.base import DeliveryContext, SendResult
from channels.keys import Keyring
from channels.protocol import Command, sign_command
from content_queue.store import utcnow

__all__ = ["recall_on_device"]


def recall_on_device(
    ctx: DeliveryContext,
    *,
    device_id: str,
    kind: Literal["led.clear", "speaker.stop"],
    keyring: Keyring,
    publisher: Publisher | None,
) -> SendResult:
    """Send the device a command that removes every command of the notice.

    The body names the notice, not a command id, so it also removes a re-sync's copy or
    an earlier revision's. It stays valid at least as long as anything it removes could
    (a board offline until then still gets it when it returns); a device acks ``cleared``
    or ``stopped`` even when there was nothing left to remove, which settles the recall.
    """
    now = utcnow()
    notice = ctx.notice
    expires = now + timedelta(seconds=ctx.settings.command_ttl_seconds)
    if notice.expires_at is not None and notice.expires_at > expires:
        expires = notice.expires_at
    command: Command = sign_command(
        key=keyring.active(),
        command_id=command_id_for(ctx.delivery_id),
        device=device_id,
        notice=notice.id,
        revision=notice.revision,
        delivery=ctx.delivery_id,
        kind=kind,
        priority=notice.priority,
        issued_at=int(now.timestamp()),
        expires_at=int(expires.timestamp()),
        body={"notice": notice.id},
    )
    dispatch_command(command, store=ctx.store, settings=ctx.settings, publisher=publisher)
    return SendResult("sent", external_ref=command.id, details={"recall": kind})
