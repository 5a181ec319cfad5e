"""Village loudspeakers (广播“村村响”): a spoken script, synthesized once, played by plan.

Features
    script      intro, title, body, table sentences, closing; numbers, money, dates and
                phone numbers normalised for speech (channels/_speech_text.py)
    engines     edge-tts (neural voices, per village or county) with espeak-ng (cmn) as the
                offline fallback; the delivery records which engine spoke (channels/tts.py)
    audio       loudness-normalised MP3, cached by (script, engine, voice, format) so a
                notice to 400 villages is synthesized once; served at /audio/<sha256>.mp3
    plan        now, then the village's daily times; quiet hours (default 21:30-06:30) move
                or skip routine plays; emergencies play at once (channels/_play_plan.py)
    transport   signed `speaker.play` over MQTT, QoS 1, never retained (docs/device-protocol.md)
    confirms    'sent' when the broker accepts it, 'delivered' on the first `played` ack
    config      devices.yaml `speaker` endpoints (device_id, zone), village `voice` and
                `quiet_hours`, defaults; VILLAGECAST_TTS_MODE (auto|edge|offline)
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, ClassVar

from channels._audio import ClipCache, synthesize_clip
from channels._device import command_id_for, dispatch_command
from channels._mqtt import Publisher
from channels._play_plan import plan_plays
from channels._recall import recall_on_device
from channels._speech_text import spoken_script
from channels.base import Channel, ChannelLimits, ContentError, DeliveryContext, SendResult
from channels.keys import Keyring
from channels.protocol import Command, sign_command
from channels.tts import Synthesizer, Voice
from content_queue.errors import ConfigError
from content_queue.i18n import tr
from content_queue.models import local_tz
from content_queue.registry import EndpointKind, Registry, SpeakerEndpoint
from content_queue.settings import Settings
from content_queue.store import NoticeView, utcnow

__all__ = ["DEFAULT_VOICE", "SpeakerChannel", "build_play_command", "script_for", "voice_for"]

DEFAULT_VOICE = "zh-CN-XiaoxiaoNeural"
REPEATS = {"routine": 2, "important": 2, "emergency": 3}
"""How many times the clip is said at each play: villagers expect to hear it twice."""


def script_for(notice: NoticeView) -> str:
    return spoken_script(
        title=notice.title,
        body=notice.body,
        category=notice.category,
        priority=notice.priority,
        table=notice.table,
    )


def voice_for(registry: Registry, village_id: str | None) -> Voice:
    village = registry.villages.get(village_id or "")
    name = (village.voice if village else None) or registry.doc.defaults.voice or DEFAULT_VOICE
    return Voice(name=name)


def build_play_command(
    *,
    notice: NoticeView,
    endpoint: SpeakerEndpoint,
    registry: Registry,
    village_id: str | None,
    delivery_id: int,
    command_id: str,
    keyring: Keyring,
    settings: Settings,
    synthesizer: Synthesizer,
    now: datetime,
) -> tuple[Command, dict[str, Any]]:
    """Synthesize (or reuse) the clip, plan the plays, sign a ``speaker.play``."""
    script = script_for(notice)
    cache = ClipCache.for_settings(settings)
    clips, synthesis, hit = synthesize_clip(
        cache, synthesizer, script=script, voice=voice_for(registry, village_id), fmt="mp3"
    )
    clip = clips[0]
    quiet = registry.quiet_hours(village_id) if village_id else None
    plan = plan_plays(
        priority=notice.priority if notice.priority in REPEATS else "routine",  # type: ignore[arg-type]
        now=now,
        tz=local_tz(),
        quiet=(quiet.start, quiet.end) if quiet else None,
        expires_at=notice.expires_at,
    )
    if not plan.plays:
        raise ContentError(
            tr(
                "没有可以播放的时间：所有时段都在静音时段内或通知已过期",
                "no time to play it: every slot is in quiet hours or after the expiry",
            ),
            code="no_play_time",
        )
    last = plan.plays[-1].at
    ttl = now + timedelta(seconds=settings.command_ttl_seconds)
    expires = max(last + timedelta(hours=1), min(notice.expires_at or ttl, ttl))
    if notice.expires_at is not None:
        expires = min(expires, notice.expires_at)
    body = {
        "clip": {
            "url": f"{settings.resolved_feed_base_url}/audio/{clip.path.name}",
            "sha256": clip.sha256,
            "format": clip.format,
            "duration_ms": int(clip.duration_s * 1000),
            "size": clip.size,
        },
        "repeat": REPEATS.get(notice.priority, 2),
        "gap_ms": 3000,
        "volume": 100 if notice.priority == "emergency" else 80,
        "plays": [int(p.at.timestamp()) for p in plan.plays],
        "preempt": notice.priority == "emergency",
    }
    command = sign_command(
        key=keyring.active(),
        command_id=command_id,
        device=endpoint.device_id,
        notice=notice.id,
        revision=notice.revision,
        delivery=delivery_id,
        kind="speaker.play",
        priority=notice.priority,
        issued_at=int(now.timestamp()),
        expires_at=int(expires.timestamp()),
        body=body,
    )
    # A cache hit has no Synthesis of its own: the clip's record says which engine spoke.
    made = (cache.meta_for(clip.sha256) or {}) if synthesis is None else {}
    details = {
        "engine": synthesis.engine if synthesis else made.get("engine", "unknown"),
        "fallback": synthesis.fallback_reason if synthesis else made.get("fallback_reason"),
        "cache_hit": hit,
        "clip": clip.sha256,
        "plays": [p.at.isoformat() for p in plan.plays],
        "moved_out_of_quiet_hours": sum(p.moved_from is not None for p in plan.plays),
        "skipped_plays": len(plan.skipped),
    }
    return command, details


class SpeakerChannel(Channel):
    kind: ClassVar[EndpointKind] = "speaker"
    limits: ClassVar[ChannelLimits] = ChannelLimits(
        max_title_chars=80, max_body_chars=3000, confirms="ack", formats=("mp3",)
    )
    claim_chunk: ClassVar[int] = 10  # the clip is synthesized once, the rest are cache hits

    def __init__(
        self,
        publisher: Publisher | None = None,
        keyring: Keyring | None = None,
        synthesizer: Synthesizer | None = None,
    ) -> None:
        self._publisher = publisher
        self._keyring = keyring
        self._synthesizer = synthesizer

    def send(self, ctx: DeliveryContext) -> SendResult:
        endpoint = ctx.endpoint
        if not isinstance(endpoint, SpeakerEndpoint):
            raise ConfigError(tr("端点不是广播音箱", "the endpoint is not a loudspeaker"))
        if self._keyring is None:
            self._keyring = Keyring.load(ctx.settings.keys_dir)
        if self._synthesizer is None:
            self._synthesizer = Synthesizer(mode=ctx.settings.tts_mode)
        now = utcnow()
        command_id = command_id_for(ctx.delivery_id)
        command, details = build_play_command(
            notice=ctx.notice,
            endpoint=endpoint,
            registry=ctx.registry,
            village_id=ctx.village_id,
            delivery_id=ctx.delivery_id,
            command_id=command_id,
            keyring=self._keyring,
            settings=ctx.settings,
            synthesizer=self._synthesizer,
            now=now,
        )
        dispatch_command(command, store=ctx.store, settings=ctx.settings, publisher=self._publisher)
        return SendResult("sent", external_ref=command_id, details=details)

    def recall(self, ctx: DeliveryContext) -> SendResult:
        """``speaker.stop`` for the notice: the loudspeaker stops it if it is playing and
        cancels its remaining plan; 'delivered' when it acks ``stopped``."""
        endpoint = ctx.endpoint
        if not isinstance(endpoint, SpeakerEndpoint):
            raise ConfigError(tr("端点不是广播音箱", "the endpoint is not a loudspeaker"))
        if self._keyring is None:
            self._keyring = Keyring.load(ctx.settings.keys_dir)
        return recall_on_device(
            ctx,
            device_id=endpoint.device_id,
            kind="speaker.stop",
            keyring=self._keyring,
            publisher=self._publisher,
        )
