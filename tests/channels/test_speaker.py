"""The speaker channel: what it publishes, what it waits for, every way it refuses or fails,
and what a re-sync after a fresh boot sends."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml

from channels.base import ContentError, DeliveryContext, PermanentError, TransientError
from channels.keys import Keyring
from channels.protocol import ReplayGuard, verify_command
from channels.speaker import (
    MAX_WINDOW_SECONDS,
    SpeakerChannel,
    cached_clip,
    failure_key,
    make_clip,
    resync_play_command,
    script_for,
    voice_for,
)
from channels.tts import Synthesizer
from content_queue.db import Delivery
from content_queue.errors import ConfigError
from content_queue.i18n import tr
from content_queue.loudspeakers import (
    SynthesisFailure,
    note_synthesis_failure,
    played_at,
    record_play,
)
from content_queue.models import build_notice
from content_queue.registry import Registry, RegistryFile, SpeakerEndpoint
from content_queue.settings import Settings
from content_queue.store import PlannedDelivery, Store

TZ = ZoneInfo("Asia/Shanghai")
SPEAKER = "spk-east-wang-01"


@dataclass
class RecordingPublisher:
    sent: list[tuple[str, bytes]] = field(default_factory=list)

    def publish(self, topic: str, payload: bytes, *, timeout: float = 10.0) -> None:
        self.sent.append((topic, payload))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        home=tmp_path / "home", tts_mode="offline", feed_base_url="http://clips.example:8765"
    )


@pytest.fixture
def registry() -> Registry:
    from tests.conftest import SMALL_DEVICES

    return Registry(RegistryFile.model_validate(yaml.safe_load(SMALL_DEVICES)))


def local(hh: int, mm: int = 0, day: int = 1) -> datetime:
    return datetime(2026, 12, day, hh, mm, tzinfo=TZ)


def _ctx(settings: Settings, registry: Registry, **notice: Any) -> DeliveryContext:
    store = Store(f"sqlite:///{settings.home / 'vc.sqlite'}")
    data = {
        "title": "停水通知",
        "body": "明天上午八点到十二点停水，请提前储水。",
        "category": "village_affairs",
        "targets": {"villages": ["east-wang"]},
        **notice,
    }
    _, (d,) = store.add_notice(
        build_notice(data), [PlannedDelivery("east-wang-spk", "speaker", "east-wang", "east")]
    )
    (claim,) = store.claim([d.id], worker="t", lease_seconds=30, max_attempts=3)
    return DeliveryContext(
        delivery_id=d.id,
        attempt=1,
        notice=claim.notice,
        endpoint=registry.endpoints["east-wang-spk"],
        village_id="east-wang",
        registry=registry,
        settings=settings,
        store=store,
    )


def _synthesize(ctx: DeliveryContext) -> str:
    """What the synthesis task does first: the clip, for real (espeak-ng)."""
    clip, hit = make_clip(
        ctx.settings,
        Synthesizer(mode="offline"),
        script=script_for(ctx.notice),
        voice=voice_for(ctx.registry, ctx.village_id),
        notice_id=ctx.notice.id,
    )
    assert not hit
    return clip.sha256


def _verified(payload: bytes, keyring: Keyring, now: datetime) -> Any:
    command = verify_command(
        payload,
        device_id=SPEAKER,
        keyring=keyring.public_keys(),
        now=int(now.timestamp()),
        max_skew=300,
        guard=ReplayGuard(),
    )
    assert not hasattr(command, "reason"), command
    return command


def test_publishes_a_signed_play_of_the_cached_clip(settings: Settings, registry: Registry) -> None:
    keyring = Keyring.init(settings.keys_dir)
    ctx = _ctx(settings, registry, priority="important")
    sha = _synthesize(ctx)
    pub = RecordingPublisher()
    now = local(9)
    result = SpeakerChannel(publisher=pub, clock=lambda: now).deliver(ctx)
    assert result.status == "sent" and result.external_ref == f"vc-{ctx.delivery_id}"
    ((topic, payload),) = pub.sent
    assert topic == f"vc/v1/dev/{SPEAKER}/cmd"
    command = _verified(payload, keyring, now)
    body = command.body
    assert body["clip"]["url"] == f"http://clips.example:8765/audio/{sha}.mp3"
    assert body["clip"]["sha256"] == sha and body["clip"]["duration_ms"] > 1000
    assert [datetime.fromtimestamp(t, TZ).strftime("%d %H:%M") for t in body["plays"]] == [
        "01 09:00",
        "01 12:00",
        "01 18:30",
        "02 07:00",
        "02 12:00",
        "02 18:30",
    ]
    assert body["window_s"] == MAX_WINDOW_SECONDS and body["preempt"] is False
    assert result.details["engine"] == "offline" and result.details["cache_hit"] is False
    assert ctx.store.commands_for(ctx.delivery_id)[0]["published_at"] is not None


def test_window_keeps_a_late_play_out_of_the_quiet_hours(
    settings: Settings, registry: Registry
) -> None:
    keyring = Keyring.init(settings.keys_dir)
    ctx = _ctx(settings, registry)
    _synthesize(ctx)
    pub = RecordingPublisher()
    now = local(21, 26)  # the quiet hours start at 21:30
    SpeakerChannel(publisher=pub, clock=lambda: now).deliver(ctx)
    command = _verified(pub.sent[0][1], keyring, now)
    assert command.body["plays"] == [int(now.timestamp())]
    assert command.body["window_s"] == 4 * 60


def test_emergency_plays_now_at_night_with_no_window(
    settings: Settings, registry: Registry
) -> None:
    keyring = Keyring.init(settings.keys_dir)
    ctx = _ctx(settings, registry, priority="emergency", category="emergency")
    _synthesize(ctx)
    pub = RecordingPublisher()
    now = local(23, 40)
    SpeakerChannel(publisher=pub, clock=lambda: now).deliver(ctx)
    command = _verified(pub.sent[0][1], keyring, now)
    assert command.body["plays"] == [int(now.timestamp())]
    assert "window_s" not in command.body and command.body["preempt"] is True
    assert command.body["repeat"] == 3 and command.body["volume"] == 100


def test_without_its_clip_the_delivery_waits_for_the_synthesis(
    settings: Settings, registry: Registry
) -> None:
    Keyring.init(settings.keys_dir)
    pub = RecordingPublisher()
    with pytest.raises(TransientError) as err:
        SpeakerChannel(publisher=pub).deliver(_ctx(settings, registry))
    assert err.value.code == "clip_pending" and pub.sent == []


FAILURES: dict[str, tuple[SynthesisFailure, type[Exception]]] = {
    "permanent": (
        SynthesisFailure("permanent", "offline espeak-ng", tr("合成失败", "espeak-ng failed")),
        PermanentError,
    ),
    "content": (
        SynthesisFailure("content", "too long", tr("播音稿太长", "the script is too long")),
        ContentError,
    ),
    "config": (
        SynthesisFailure("config", "config", tr("缺少 espeak-ng", "espeak-ng is missing")),
        ConfigError,
    ),
    "transient": (
        SynthesisFailure("transient", "edge 429", tr("限流", "rate limited"), retry_after=60),
        TransientError,
    ),
}


@pytest.mark.parametrize("kind", sorted(FAILURES))
def test_a_failed_synthesis_fails_or_retries_with_its_reason(
    settings: Settings, registry: Registry, kind: str
) -> None:
    Keyring.init(settings.keys_dir)
    ctx = _ctx(settings, registry)
    failure, raised = FAILURES[kind]
    key = failure_key(
        script=script_for(ctx.notice), voice=voice_for(registry, "east-wang"), mode="offline"
    )
    note_synthesis_failure(ctx.store, key, failure)
    with pytest.raises(raised) as err:
        SpeakerChannel(publisher=RecordingPublisher()).deliver(ctx)
    assert failure.text.render("en") in err.value.render("en")
    if kind == "transient":
        assert isinstance(err.value, TransientError) and err.value.retry_after == 60


def test_no_play_time_left_is_a_content_error(settings: Settings, registry: Registry) -> None:
    Keyring.init(settings.keys_dir)
    now = local(22)
    ctx = _ctx(settings, registry, expires_at=(now + timedelta(hours=2)).isoformat())
    _synthesize(ctx)
    with pytest.raises(ContentError) as err:
        SpeakerChannel(publisher=RecordingPublisher(), clock=lambda: now).deliver(ctx)
    assert err.value.code == "no_play_time"


def test_missing_signing_keys_is_a_configuration_error(
    settings: Settings, registry: Registry
) -> None:
    with pytest.raises(ConfigError):
        SpeakerChannel(publisher=RecordingPublisher()).deliver(_ctx(settings, registry))


# -- re-sync after a fresh boot ---------------------------------------------------------


def _sent(settings: Settings, registry: Registry, now: datetime, **notice: Any) -> DeliveryContext:
    Keyring.init(settings.keys_dir)
    ctx = _ctx(settings, registry, **notice)
    _synthesize(ctx)
    result = SpeakerChannel(publisher=RecordingPublisher(), clock=lambda: now).deliver(ctx)
    with ctx.store.session() as s:  # what the worker records with the outcome
        d = s.get(Delivery, ctx.delivery_id)
        assert d is not None
        d.details = dict(result.details)
    return ctx


def _resync(ctx: DeliveryContext, now: datetime) -> Any:
    endpoint = ctx.endpoint
    assert isinstance(endpoint, SpeakerEndpoint)
    return resync_play_command(
        store=ctx.store,
        notice=ctx.notice,
        endpoint=endpoint,
        registry=ctx.registry,
        delivery_id=ctx.delivery_id,
        command_id=f"vc-{ctx.delivery_id}-s1",
        keyring=Keyring.load(ctx.settings.keys_dir),
        settings=ctx.settings,
        synthesizer=Synthesizer(mode="offline"),
        now=now,
    )


def test_resync_sends_only_the_plays_still_to_come_and_not_heard(
    settings: Settings, registry: Registry
) -> None:
    ctx = _sent(settings, registry, local(9), priority="important")
    ts = [int(t.timestamp()) for t in (local(9), local(12), local(18, 30), local(7, day=2))]
    # The device heard 09:00 and, its clock running ahead, 18:30 already.
    for at in (ts[0], ts[2]):
        assert record_play(
            ctx.store, device_id=SPEAKER, command_id=f"vc-{ctx.delivery_id}", play_at=at
        )
    assert not record_play(  # a duplicate ack, or another device's, records nothing
        ctx.store, device_id=SPEAKER, command_id=f"vc-{ctx.delivery_id}", play_at=ts[0]
    )
    assert not record_play(
        ctx.store, device_id="spk-other", command_id=f"vc-{ctx.delivery_id}", play_at=ts[1]
    )
    assert played_at(ctx.store, ctx.delivery_id) == {ts[0], ts[2]}
    command = _resync(ctx, local(10))
    assert command.id == f"vc-{ctx.delivery_id}-s1" and command.delivery == ctx.delivery_id
    assert command.body["plays"][:2] == [ts[1], ts[3]]  # 12:00, then tomorrow 07:00 ...
    assert ts[0] not in command.body["plays"] and ts[2] not in command.body["plays"]
    assert command.body["window_s"] == MAX_WINDOW_SECONDS
    _verified(json.dumps(command.model_dump()).encode(), Keyring.load(settings.keys_dir), local(10))
    # Once the plan is over, nothing is left to send.
    assert _resync(ctx, local(19, day=2)) is None


def test_resync_of_an_emergency_no_ack_reported_sends_it_again(
    settings: Settings, registry: Registry
) -> None:
    ctx = _sent(settings, registry, local(23), priority="emergency", category="emergency")
    command = _resync(ctx, local(23, 5))  # the speaker lost power before it could play
    assert command.body["plays"] == [int(local(23).timestamp())]
    record_play(
        ctx.store,
        device_id=SPEAKER,
        command_id=f"vc-{ctx.delivery_id}",
        play_at=int(local(23).timestamp()),
    )
    assert _resync(ctx, local(23, 5)) is None  # heard: never again


# -- a claimed chunk ----------------------------------------------------------------------

CHUNK_DEVICES = """\
version: 1
county: {code: "371521", name: 示例县}
defaults:
  quiet_hours: {start: "21:30", end: "06:30"}
townships:
  - id: east
    name: 东城镇
    villages:
      - id: a
        name: 刘庄村
        endpoints: [{id: a-spk, kind: speaker, device_id: spk-a}]
      - id: b
        name: 王庄村
        endpoints: [{id: b-spk, kind: speaker, device_id: spk-b}]
      - id: c
        name: 赵家村
        quiet_hours: {start: "20:00", end: "07:00"}
        endpoints: [{id: c-spk, kind: speaker, device_id: spk-c}]
      - id: d
        name: 李庄村
        endpoints: [{id: d-spk, kind: speaker, device_id: spk-d}]
"""


@dataclass
class ChunkPublisher:
    """Accepts a chunk in one call, checking each command is in the store before it."""

    store: Store
    sent: list[tuple[str, bytes]] = field(default_factory=list)
    unrecorded: list[str] = field(default_factory=list)

    def publish(self, topic: str, payload: bytes, *, timeout: float = 10.0) -> None:
        raise AssertionError("a chunk must be published with publish_many")

    def publish_many(self, items: list[tuple[str, bytes]], *, timeout: float = 10.0) -> list[bool]:
        for topic, payload in items:
            command = json.loads(payload)
            rows = self.store.commands_for(command["delivery"])
            if [r["id"] for r in rows] != [command["id"]] or rows[0]["published_at"]:
                self.unrecorded.append(command["id"])
            self.sent.append((topic, payload))
        return [True] * len(items)


def test_a_chunk_signs_each_distinct_play_once_and_publishes_what_send_would(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import channels.speaker as speaker_module
    from channels.protocol import CommandSigner, encode
    from channels.speaker import build_play_command

    registry = Registry(RegistryFile.model_validate(yaml.safe_load(CHUNK_DEVICES)))
    keyring = Keyring.init(settings.keys_dir)
    store = Store(f"sqlite:///{settings.home / 'vc.sqlite'}")
    notice = {
        "title": "停水通知",
        "body": "明天上午八点到十二点停水，请提前储水。",
        "category": "village_affairs",
        "targets": {"county": True},
    }
    _, deliveries = store.add_notice(
        build_notice(notice), [PlannedDelivery(f"{v}-spk", "speaker", v, "east") for v in "abc"]
    )
    _, other = store.add_notice(  # another notice, whose clip is not made yet
        build_notice({**notice, "body": "后天停电。"}),
        [PlannedDelivery("d-spk", "speaker", "d", "east")],
    )
    deliveries += other
    claims = store.claim([d.id for d in deliveries], worker="t", lease_seconds=30, max_attempts=3)
    ctxs = [
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
    _synthesize(ctxs[0])  # the first notice's clip only
    signers: list[int] = []

    class Counting(CommandSigner):
        def __init__(self, **kw: Any) -> None:
            signers.append(kw["expires_at"])
            super().__init__(**kw)

    monkeypatch.setattr(speaker_module, "CommandSigner", Counting)
    now = local(19, 58)  # village c's quiet hours start at 20:00: its window differs
    pub = ChunkPublisher(store)
    results = SpeakerChannel(publisher=pub, clock=lambda: now).deliver_many(ctxs)
    store.engine.dispose()

    assert len(signers) == 2  # a and b share one play, c has its own
    assert pub.unrecorded == []
    assert [t for t, _ in pub.sent] == [f"vc/v1/dev/spk-{v}/cmd" for v in "abc"]
    pending = results[3]
    assert isinstance(pending, TransientError) and pending.code == "clip_pending"
    for ctx, result, (_, payload) in zip(ctxs, results, pub.sent, strict=False):
        endpoint = ctx.endpoint
        assert isinstance(endpoint, SpeakerEndpoint) and not isinstance(result, Exception)
        found = cached_clip(
            settings, script=script_for(ctx.notice), voice=voice_for(registry, ctx.village_id)
        )
        assert found is not None
        clip = found[0]
        one, details = build_play_command(
            notice=ctx.notice,
            endpoint=endpoint,
            registry=registry,
            village_id=ctx.village_id,
            delivery_id=ctx.delivery_id,
            command_id=f"vc-{ctx.delivery_id}",
            keyring=keyring,
            settings=settings,
            clip=clip,
            now=now,
        )
        assert payload == encode(one)  # byte for byte what send() would publish
        assert (result.external_ref, result.published) == (one.id, (one.id,))
        assert result.details == details
        _verified_for(payload, endpoint.device_id, keyring, now)
    windows = [json.loads(p)["body"]["window_s"] for _, p in pub.sent]
    assert windows[0] == windows[1] == MAX_WINDOW_SECONDS and windows[2] == 2 * 60


def _verified_for(payload: bytes, device: str, keyring: Keyring, now: datetime) -> None:
    command = verify_command(
        payload,
        device_id=device,
        keyring=keyring.public_keys(),
        now=int(now.timestamp()),
        max_skew=300,
        guard=ReplayGuard(),
    )
    assert not hasattr(command, "reason"), command
