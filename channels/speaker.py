"""Village loudspeakers (广播“村村响”): a spoken script, synthesized once, played by plan.

Features
    script      intro, title, body, table sentences, closing; numbers, money, dates and
                phone numbers normalised for speech (channels/_speech_text.py)
    engines     edge-tts (neural voices, per village or county) with espeak-ng (cmn) as the
                offline fallback; the delivery records which engine spoke (channels/tts.py)
    audio       loudness-normalised MP3, cached by (script, engine, voice, format) so a
                notice to 400 villages is synthesized once; served at /audio/<sha256>.mp3
    synthesis   never here: the `villagecast.synthesize` task (queue vc.synthesis, at most
                VILLAGECAST_SYNTHESIS_CONCURRENCY at once per machine) makes the clip
                first; a delivery whose clip is not in the cache retries (clip_pending),
                or fails with the reason the synthesis noted (dispatcher/synthesis.py)
    plan        now, then the village's daily times; quiet hours (default 21:30-06:30) move
                or skip routine plays; emergencies play at once (channels/_play_plan.py);
                `window_s` keeps a delayed play out of the quiet hours
    transport   signed `speaker.play` over MQTT, QoS 1, never retained (docs/device-protocol.md);
                a claimed chunk is signed once per distinct play, recorded in one
                transaction and published together, as the LED channel does
    confirms    'sent' when the broker accepts it, 'delivered' on the first `played` ack;
                each play heard is acked again with its `play_at` and kept per delivery
                (content_queue/loudspeakers.py), so a re-sync after a fresh boot sends only
                the plays still to come
    config      devices.yaml `speaker` endpoints (device_id, zone), village `voice` and
                `quiet_hours`, defaults; VILLAGECAST_TTS_MODE (auto|edge|offline)

Errors
    clip_pending        transient: the clip is not synthesized yet (or was evicted)
    <engine code>       as the synthesis noted it: e.g. ``offline espeak-ng`` (permanent),
                        ``edge 429`` (transient, edge-only mode), ``config`` (engine missing)
    no_play_time        content: every play falls in quiet hours or after the expiry
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from channels._audio import Clip, ClipCache, lookup_clips, synthesize_clip
from channels._device import command_id_for, dispatch_command, publish_signed
from channels._mqtt import Publisher
from channels._play_plan import PlannedPlay, plan_plays, seconds_until_quiet
from channels._recall import recall_on_device
from channels._speech_text import spoken_script
from channels._synthesis import SynthesisSlots
from channels.base import (
    Channel,
    ChannelLimits,
    ContentError,
    DeliveryContext,
    PermanentError,
    SendResult,
    TransientError,
)
from channels.keys import Keyring
from channels.protocol import Command, CommandSigner, SignedCommand, sign_command
from channels.tts import Synthesizer, Voice
from content_queue.errors import ConfigError
from content_queue.i18n import tr
from content_queue.loudspeakers import (
    SynthesisFailure,
    planned_plays,
    played_at,
    synthesis_failure,
)
from content_queue.models import local_tz
from content_queue.registry import EndpointKind, Registry, SpeakerEndpoint
from content_queue.settings import Settings
from content_queue.store import NoticeView, Store, utcnow

__all__ = [
    "DEFAULT_VOICE",
    "MAX_WINDOW_SECONDS",
    "SpeakerChannel",
    "build_play_command",
    "cached_clip",
    "failure_key",
    "make_clip",
    "resync_play_command",
    "script_for",
    "synthesis_slots",
    "voice_for",
]

DEFAULT_VOICE = "zh-CN-XiaoxiaoNeural"
REPEATS = {"routine": 2, "important": 2, "emergency": 3}
"""How many times the clip is said at each play: villagers expect to hear it twice."""
_MEMO = 64
MAX_WINDOW_SECONDS = 600
"""How late a routine or important play may still start on the device (an emergency held
the speaker, it was off): later than that, villagers have gone back to the fields."""


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


def synthesis_slots(settings: Settings) -> SynthesisSlots:
    """The machine-wide bound on concurrent syntheses (beside the clip cache)."""
    return SynthesisSlots(
        ClipCache.for_settings(settings).directory / "slots", settings.synthesis_concurrency
    )


def failure_key(*, script: str, voice: Voice, mode: str) -> str:
    """Names one clip request (whatever engine ends up speaking) for failure notes."""
    return ClipCache.key(script=script, engine=f"request-{mode}", voice=voice, fmt="mp3")


def cached_clip(
    settings: Settings, *, script: str, voice: Voice
) -> tuple[Clip, dict[str, Any]] | None:
    """The clip of a script from the cache, with the record of how it was made."""
    found = lookup_clips(
        ClipCache.for_settings(settings),
        mode=settings.tts_mode,
        script=script,
        voice=voice,
        fmt="mp3",
    )
    return (found[0][0], found[1]) if found else None


def make_clip(
    settings: Settings,
    synthesizer: Synthesizer,
    *,
    script: str,
    voice: Voice,
    notice_id: int | None = None,
    wait: float = 600.0,
) -> tuple[Clip, bool]:
    """The clip of a script, synthesized now unless cached (holding a synthesis slot, waited
    for at most ``wait`` seconds); returns (clip, it was a cache hit)."""
    clips, _, hit = synthesize_clip(
        ClipCache.for_settings(settings),
        synthesizer,
        script=script,
        voice=voice,
        fmt="mp3",
        limit=synthesis_slots(settings).hold(timeout=wait),
        meta={"notice": notice_id} if notice_id is not None else None,
    )
    return clips[0], hit


def _window_seconds(plays: list[PlannedPlay], quiet: tuple[str, str] | None) -> int:
    """How late a play may start and still be heard before the quiet hours begin."""
    window = float(MAX_WINDOW_SECONDS)
    for play in plays:
        left = seconds_until_quiet(play.at, quiet, local_tz())
        if left is not None:
            window = min(window, left)
    return max(1, int(window))


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
    clip: Clip,
    made: dict[str, Any] | None = None,
    now: datetime,
    plays: list[datetime] | None = None,
) -> tuple[Command, dict[str, Any]]:
    """Plan the plays (or take ``plays`` as they are, for a re-sync) and sign a
    ``speaker.play`` for a clip already made (``made``: its record in the cache)."""
    play = _plan_play(
        notice=notice,
        registry=registry,
        village_id=village_id,
        settings=settings,
        clip=clip,
        now=now,
        plays=plays,
    )
    command = sign_command(
        key=keyring.active(),
        command_id=command_id,
        device=endpoint.device_id,
        notice=notice.id,
        revision=notice.revision,
        delivery=delivery_id,
        kind="speaker.play",
        priority=notice.priority,
        issued_at=play.issued_at,
        expires_at=play.expires_at,
        body=play.body,
    )
    return command, _play_details(play, notice=notice, clip=clip, made=made, settings=settings)


@dataclass(frozen=True)
class _Play:
    """A ``speaker.play`` before it is signed: the same for every loudspeaker of a chunk
    with the same plan (the same quiet hours), so a chunk signs it around one body."""

    body: dict[str, Any]
    issued_at: int
    expires_at: int
    planned: list[PlannedPlay]
    skipped: int

    def key(self, notice: NoticeView) -> str:
        return json.dumps(
            [notice.id, notice.revision, self.issued_at, self.expires_at, self.body],
            sort_keys=True,
        )


def _plan_play(
    *,
    notice: NoticeView,
    registry: Registry,
    village_id: str | None,
    settings: Settings,
    clip: Clip,
    now: datetime,
    plays: list[datetime] | None = None,
) -> _Play:
    quiet_hours = registry.quiet_hours(village_id) if village_id else None
    quiet = (quiet_hours.start, quiet_hours.end) if quiet_hours else None
    if plays is None:
        plan = plan_plays(
            priority=notice.priority if notice.priority in REPEATS else "routine",  # type: ignore[arg-type]
            now=now,
            tz=local_tz(),
            quiet=quiet,
            expires_at=notice.expires_at,
        )
        planned, skipped = plan.plays, len(plan.skipped)
    else:
        planned, skipped = [PlannedPlay(at) for at in sorted(plays)], 0
    if not planned:
        raise ContentError(
            tr(
                "没有可以播放的时间：所有时段都在静音时段内或通知已过期",
                "no time to play it: every slot is in quiet hours or after the expiry",
            ),
            code="no_play_time",
        )
    last = planned[-1].at
    ttl = now + timedelta(seconds=settings.command_ttl_seconds)
    expires = max(last + timedelta(hours=1), min(notice.expires_at or ttl, ttl))
    if notice.expires_at is not None:
        expires = min(expires, notice.expires_at)
    emergency = notice.priority == "emergency"
    body: dict[str, Any] = {
        "clip": {
            "url": f"{settings.resolved_feed_base_url}/audio/{clip.path.name}",
            "sha256": clip.sha256,
            "format": clip.format,
            "duration_ms": int(clip.duration_s * 1000),
            "size": clip.size,
        },
        "repeat": REPEATS.get(notice.priority, 2),
        "gap_ms": 3000,
        "volume": 100 if emergency else 80,
        "plays": [int(p.at.timestamp()) for p in planned],
        "preempt": emergency,
    }
    if not emergency:  # an emergency may play late, up to its expiry, quiet hours or not
        body["window_s"] = _window_seconds(planned, quiet)
    return _Play(body, int(now.timestamp()), int(expires.timestamp()), planned, skipped)


def _play_details(
    play: _Play,
    *,
    notice: NoticeView,
    clip: Clip,
    made: dict[str, Any] | None,
    settings: Settings,
) -> dict[str, Any]:
    if made is None:
        made = ClipCache.for_settings(settings).meta_for(clip.sha256) or {}
    return {
        "engine": made.get("engine", "unknown"),
        "fallback": made.get("fallback_reason"),
        # The clip was made for another notice (the same script said before): no synthesis.
        "cache_hit": made.get("notice") != notice.id,
        "clip": clip.sha256,
        "plays": [p.at.isoformat() for p in play.planned],
        "moved_out_of_quiet_hours": sum(p.moved_from is not None for p in play.planned),
        "skipped_plays": play.skipped,
    }


def resync_play_command(
    *,
    store: Store,
    notice: NoticeView,
    endpoint: SpeakerEndpoint,
    registry: Registry,
    delivery_id: int,
    command_id: str,
    keyring: Keyring,
    settings: Settings,
    synthesizer: Synthesizer,
    now: datetime,
) -> Command | None:
    """What a loudspeaker that lost its memory must still play of a delivery: the planned
    plays still to come that no ack reported heard (and, for an emergency, its play if no
    ack reported it: an emergency must be heard). None when nothing is left."""
    village_id, planned = planned_plays(store, delivery_id)
    heard = played_at(store, delivery_id)
    moment = int(now.timestamp())
    emergency = notice.priority == "emergency"
    left = [t for t in planned if t not in heard and (t > moment or emergency)]
    if not left:
        return None
    script, voice = script_for(notice), voice_for(registry, village_id)
    found = cached_clip(settings, script=script, voice=voice)
    if found is None:  # evicted since: rare, and a re-sync is one device
        clip, _ = make_clip(
            settings, synthesizer, script=script, voice=voice, notice_id=notice.id, wait=30
        )
    else:
        clip = found[0]
    command, _ = build_play_command(
        notice=notice,
        endpoint=endpoint,
        registry=registry,
        village_id=village_id,
        delivery_id=delivery_id,
        command_id=command_id,
        keyring=keyring,
        settings=settings,
        clip=clip,
        now=now,
        plays=[datetime.fromtimestamp(t, tz=UTC) for t in left],
    )
    return command


def _not_ready(failure: SynthesisFailure | None) -> Exception:
    if failure is None:
        return TransientError(
            tr("播音音频还在合成中", "the clip is still being synthesized"),
            code="clip_pending",
            retry_after=5,
        )
    if failure.kind == "transient":
        return TransientError(failure.text, code=failure.code, retry_after=failure.retry_after)
    if failure.kind == "content":
        return ContentError(failure.text, code=failure.code)
    if failure.kind == "config":
        return ConfigError(failure.text)
    return PermanentError(failure.text, code=failure.code)


class SpeakerChannel(Channel):
    kind: ClassVar[EndpointKind] = "speaker"
    limits: ClassVar[ChannelLimits] = ChannelLimits(
        max_title_chars=80, max_body_chars=3000, confirms="ack", formats=("mp3",)
    )
    claim_chunk: ClassVar[int] = 10  # cache hits and publishes: fast

    def __init__(
        self,
        publisher: Publisher | None = None,
        keyring: Keyring | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._publisher = publisher
        self._keyring = keyring
        self._clock = clock
        # A fan-out sends one notice to hundreds of speakers: its script and clip are looked
        # up once per process, not once per delivery (a notice revision never changes).
        self._scripts: dict[tuple[int, int], str] = {}
        self._clips: dict[tuple[str, Voice, str], tuple[Clip, dict[str, Any]]] = {}

    def _script(self, notice: NoticeView) -> str:
        key = (notice.id, notice.revision)
        script = self._scripts.get(key)
        if script is None:
            if len(self._scripts) >= _MEMO:
                self._scripts.clear()
            script = self._scripts[key] = script_for(notice)
        return script

    def _clip(
        self, settings: Settings, script: str, voice: Voice
    ) -> tuple[Clip, dict[str, Any]] | None:
        key = (script, voice, settings.tts_mode)
        found = self._clips.get(key)
        if found is not None and found[0].path.is_file():
            return found
        found = cached_clip(settings, script=script, voice=voice)
        if found is not None:
            if len(self._clips) >= _MEMO:
                self._clips.clear()
            self._clips[key] = found
        return found

    def _keys(self, settings: Settings) -> Keyring:
        if self._keyring is None:
            self._keyring = Keyring.load(settings.keys_dir)
        return self._keyring

    def _ready_clip(
        self, ctx: DeliveryContext, script: str, voice: Voice
    ) -> tuple[Clip, dict[str, Any]]:
        found = self._clip(ctx.settings, script, voice)
        if found is None:
            key = failure_key(script=script, voice=voice, mode=ctx.settings.tts_mode)
            raise _not_ready(synthesis_failure(ctx.store, key))
        return found

    def send(self, ctx: DeliveryContext) -> SendResult:
        endpoint = ctx.endpoint
        if not isinstance(endpoint, SpeakerEndpoint):
            raise ConfigError(tr("端点不是广播音箱", "the endpoint is not a loudspeaker"))
        keyring = self._keys(ctx.settings)
        script = self._script(ctx.notice)
        voice = voice_for(ctx.registry, ctx.village_id)
        clip, made = self._ready_clip(ctx, script, voice)
        command_id = command_id_for(ctx.delivery_id)
        command, details = build_play_command(
            notice=ctx.notice,
            endpoint=endpoint,
            registry=ctx.registry,
            village_id=ctx.village_id,
            delivery_id=ctx.delivery_id,
            command_id=command_id,
            keyring=keyring,
            settings=ctx.settings,
            clip=clip,
            made=made,
            now=self._clock(),
        )
        dispatch_command(command, store=ctx.store, settings=ctx.settings, publisher=self._publisher)
        return SendResult("sent", external_ref=command_id, details=details)

    def send_many(self, ctxs: Sequence[DeliveryContext]) -> list[SendResult | Exception]:
        """A claimed chunk, as the LED channel sends one: each distinct play (a notice's
        clip and the plays its village's quiet hours allow) signed around one body, all
        recorded in one transaction, published before the PUBACKs are awaited together.
        The payloads are those :meth:`send` would publish one at a time."""
        if not ctxs:
            return []
        settings = ctxs[0].settings
        try:
            keyring = self._keys(settings)
        except Exception as exc:
            return [exc] * len(ctxs)
        now = self._clock()
        results: list[SendResult | Exception] = []
        signers: dict[str, CommandSigner | Exception] = {}
        clips: dict[tuple[str, Voice], tuple[Clip, dict[str, Any]] | Exception] = {}
        signed: list[tuple[int, SignedCommand]] = []
        for i, ctx in enumerate(ctxs):
            try:
                endpoint = ctx.endpoint
                if not isinstance(endpoint, SpeakerEndpoint):
                    raise ConfigError(tr("端点不是广播音箱", "the endpoint is not a loudspeaker"))
                script = self._script(ctx.notice)
                voice = voice_for(ctx.registry, ctx.village_id)
                found = clips.get((script, voice))
                if found is None:
                    try:
                        found = self._ready_clip(ctx, script, voice)
                    except Exception as exc:
                        found = exc
                    clips[(script, voice)] = found
                if isinstance(found, Exception):
                    raise found
                clip, made = found
                play = _plan_play(
                    notice=ctx.notice,
                    registry=ctx.registry,
                    village_id=ctx.village_id,
                    settings=settings,
                    clip=clip,
                    now=now,
                )
                key = play.key(ctx.notice)
                signer = signers.get(key)
                if signer is None:
                    try:
                        signer = CommandSigner(
                            key=keyring.active(),
                            notice=ctx.notice.id,
                            revision=ctx.notice.revision,
                            kind="speaker.play",
                            priority=ctx.notice.priority,
                            issued_at=play.issued_at,
                            expires_at=play.expires_at,
                            body=play.body,
                        )
                    except Exception as exc:
                        signer = exc
                    signers[key] = signer
                if isinstance(signer, Exception):
                    raise signer
                command = signer.sign(
                    command_id=command_id_for(ctx.delivery_id),
                    device=endpoint.device_id,
                    delivery=ctx.delivery_id,
                )
                details = _play_details(
                    play, notice=ctx.notice, clip=clip, made=made, settings=settings
                )
            except Exception as exc:
                results.append(exc)
                continue
            results.append(
                SendResult(
                    "sent", external_ref=command.id, details=details, published=(command.id,)
                )
            )
            signed.append((i, command))
        return publish_signed(
            results, signed, store=ctxs[0].store, settings=settings, publisher=self._publisher
        )

    def recall(self, ctx: DeliveryContext) -> SendResult:
        """``speaker.stop`` for the notice: the loudspeaker stops it if it is playing and
        cancels its remaining plan; 'delivered' when it acks ``stopped``."""
        endpoint = ctx.endpoint
        if not isinstance(endpoint, SpeakerEndpoint):
            raise ConfigError(tr("端点不是广播音箱", "the endpoint is not a loudspeaker"))
        return recall_on_device(
            ctx,
            device_id=endpoint.device_id,
            kind="speaker.stop",
            keyring=self._keys(ctx.settings),
            publisher=self._publisher,
        )
