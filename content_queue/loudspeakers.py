"""What the store keeps for loudspeakers beyond a delivery's row.

- **Plays heard** (``send_parts``): every ``played`` ack that carries ``play_at`` is one
  play of a delivery's plan heard in full; it is kept as the part ``play:<unix time>``
  (status ``accepted``, the command that played it as ``external_ref``). A re-sync after a
  fresh boot leaves these out, so a loudspeaker never says the same play twice.
- **Synthesis failures** (``kv_entries``): the synthesis task notes why a clip could not be
  made, for a short while, so the speaker deliveries waiting for it fail with that reason
  (or retry, when the reason is transient) instead of a vague "not ready".
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from content_queue.db import Delivery, DeviceCommand, KvEntry, Notice, SendPart
from content_queue.i18n import Text
from content_queue.store import NoticeView, Store, utcnow

__all__ = [
    "FailureKind",
    "SynthesisFailure",
    "WaitingDelivery",
    "clear_synthesis_failure",
    "note_synthesis_failure",
    "planned_plays",
    "played_at",
    "record_play",
    "synthesis_failure",
    "waiting_for_clips",
]

_PLAY_PART = "play:"
_FAILURE_KEY = "synthesis-failed:"

FailureKind = Literal["transient", "permanent", "content", "config"]


def record_play(
    store: Store,
    *,
    device_id: str,
    command_id: str,
    play_at: int,
    at: datetime | None = None,
) -> bool:
    """Remember one play heard in full; False if it was known already (a duplicate ack)
    or the command is not this device's."""
    now = at or utcnow()
    key = f"{_PLAY_PART}{play_at}"
    try:
        with store.session() as s:
            cmd = s.get(DeviceCommand, command_id)
            if cmd is None or cmd.device_id != device_id:
                return False
            found = s.scalar(
                select(SendPart.id).where(
                    SendPart.delivery_id == cmd.delivery_id, SendPart.part_key == key
                )
            )
            if found is not None:
                return False
            s.add(
                SendPart(
                    delivery_id=cmd.delivery_id,
                    part_key=key,
                    seq=play_at,
                    status="accepted",
                    started_at=now,
                    finished_at=now,
                    external_ref=command_id,
                )
            )
    except IntegrityError:  # another listener recorded the same ack a moment earlier
        return False
    return True


def played_at(store: Store, delivery_id: int) -> set[int]:
    """The planned times (unix seconds) of the plays devices reported heard in full."""
    with store.session(readonly=True) as s:
        keys = s.scalars(
            select(SendPart.part_key).where(
                SendPart.delivery_id == delivery_id,
                SendPart.part_key.startswith(_PLAY_PART),
                SendPart.status == "accepted",
            )
        )
        return {int(k.removeprefix(_PLAY_PART)) for k in keys}


def planned_plays(store: Store, delivery_id: int) -> tuple[str | None, list[int]]:
    """(village, the planned play times) the speaker channel recorded for a delivery."""
    with store.session(readonly=True) as s:
        d = s.get(Delivery, delivery_id)
        if d is None:
            return None, []
        plays = (d.details or {}).get("plays") or []
        times = sorted({int(datetime.fromisoformat(str(p)).timestamp()) for p in plays})
        return d.village_id, times


@dataclass(frozen=True)
class WaitingDelivery:
    delivery_id: int
    notice: NoticeView
    village_id: str | None


def waiting_for_clips(store: Store, ids: Sequence[int]) -> list[WaitingDelivery]:
    """Of these deliveries, the publish deliveries still to be sent (they need a clip)."""
    with store.session(readonly=True) as s:
        rows = s.execute(
            select(Delivery.id, Delivery.village_id, Notice)
            .join(Notice, Notice.id == Delivery.notice_id)
            .where(
                Delivery.id.in_(list(ids)),
                Delivery.action == "publish",
                Delivery.status.in_(["pending", "scheduled", "sending"]),
            )
            .order_by(Delivery.id)
        )
        return [WaitingDelivery(did, NoticeView.of(n), village) for did, village, n in rows]


@dataclass(frozen=True)
class SynthesisFailure:
    kind: FailureKind
    code: str
    text: Text
    retry_after: float | None = None


def note_synthesis_failure(
    store: Store, clip_key: str, failure: SynthesisFailure, *, ttl_seconds: float = 600
) -> None:
    now = utcnow()
    value = json.dumps(
        {
            "kind": failure.kind,
            "code": failure.code,
            "zh": failure.text.render("zh"),
            "en": failure.text.render("en"),
            "retry_after": failure.retry_after,
        },
        ensure_ascii=False,
    )
    with store.session() as s:
        entry = s.get(KvEntry, _FAILURE_KEY + clip_key)
        expires = now + timedelta(seconds=ttl_seconds)
        if entry is None:
            s.add(
                KvEntry(
                    key=_FAILURE_KEY + clip_key, value=value, expires_at=expires, updated_at=now
                )
            )
        else:
            entry.value, entry.expires_at, entry.updated_at = value, expires, now


def synthesis_failure(store: Store, clip_key: str) -> SynthesisFailure | None:
    """The last failure noted for this clip, unless it has expired."""
    with store.session(readonly=True) as s:
        entry = s.get(KvEntry, _FAILURE_KEY + clip_key)
        if entry is None or (entry.expires_at is not None and entry.expires_at <= utcnow()):
            return None
        data = json.loads(entry.value)
    kind = data.get("kind")
    if kind not in ("transient", "permanent", "content", "config"):
        kind = "transient"
    retry = data.get("retry_after")
    return SynthesisFailure(
        kind=kind,
        code=str(data.get("code") or "synthesis"),
        text=Text(str(data.get("zh", "")), str(data.get("en", ""))),  # rendered already
        retry_after=float(retry) if isinstance(retry, int | float) else None,
    )


def clear_synthesis_failure(store: Store, clip_keys: Iterable[str]) -> None:
    keys = [_FAILURE_KEY + k for k in clip_keys]
    if not keys:
        return
    with store.session() as s:
        s.execute(delete(KvEntry).where(KvEntry.key.in_(keys)))
