"""The synthesis step before a loudspeaker fan-out: once per clip, failures noted for the
deliveries, and the doorbell that sends speaker deliveries there first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from channels.speaker import failure_key, script_for, voice_for
from channels.tts import OfflineEngine, Synthesis, Synthesizer, Voice
from content_queue.loudspeakers import synthesis_failure
from content_queue.models import build_notice
from content_queue.registry import load_registry
from content_queue.settings import Settings
from content_queue.store import Store
from dispatcher import service
from dispatcher.synthesis import prepare_clips


class CountingSynthesizer(Synthesizer):
    def __init__(self, **kw: Any) -> None:
        super().__init__(mode="offline", **kw)
        self.calls = 0

    def synthesize(self, text: str, voice: Voice) -> Synthesis:
        self.calls += 1
        return super().synthesize(text, voice)


def _notice(settings: Settings, store: Store, title: str, villages: list[str]) -> list[int]:
    sub = service.submit_notice(
        build_notice(
            {
                "title": title,
                "body": "请各位村民注意。",
                "category": "village_affairs",
                "targets": {"villages": villages},
                "channels": ["speaker", "tv_feed"],
            }
        ),
        store=store,
        registry=load_registry(settings.devices),
        ring=None,
    )
    return [d.id for d in sub.deliveries]


@pytest.fixture
def offline(home: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    from content_queue.settings import get_settings, reset_settings

    monkeypatch.setenv("VILLAGECAST_TTS_MODE", "offline")
    reset_settings()
    return get_settings()


def test_one_synthesis_per_clip_whatever_the_number_of_deliveries(offline: Settings) -> None:
    store = service.open_store(offline)
    synth = CountingSynthesizer()
    first = _notice(offline, store, "秋收安排", ["east-wang", "east-liu"])
    report = prepare_clips(first, store=store, settings=offline, synthesizer=synth)
    assert (report.made, report.hits, synth.calls) == (1, 0, 1)  # tv_feed needs no clip
    again = _notice(offline, store, "秋收安排", ["east-wang"])
    report = prepare_clips(again, store=store, settings=offline, synthesizer=synth)
    assert (report.made, report.hits, synth.calls) == (0, 1, 1)


def test_a_failed_synthesis_is_noted_and_the_delivery_fails_with_its_reason(
    offline: Settings,
) -> None:
    from channels.keys import Keyring

    Keyring.init(offline.keys_dir)
    store = service.open_store(offline)
    broken = CountingSynthesizer(offline=OfflineEngine(binary="no-such-espeak-ng"))
    ids = _notice(offline, store, "停电通知", ["east-wang"])
    report = prepare_clips(ids, store=store, settings=offline, synthesizer=broken)
    assert list(report.failed.values()) == ["config"]
    notice = store.notice(store.deliveries(ids=ids)[0].notice_id)
    key = failure_key(
        script=script_for(notice),
        voice=voice_for(load_registry(offline.devices), "east-wang"),
        mode="offline",
    )
    noted = synthesis_failure(store, key)
    assert noted is not None and noted.kind == "config"
    service.process_deliveries(ids, store=store, settings=offline, ring=None)
    (speaker,) = [d for d in store.deliveries(ids=ids) if d.kind == "speaker"]
    assert speaker.status == "failed" and "no-such-espeak-ng" in (speaker.error_en or "")
    # Once espeak-ng is there again, the next synthesis of that script clears the note.
    again = _notice(offline, store, "停电通知", ["east-wang"])
    prepare_clips(again, store=store, settings=offline, synthesizer=CountingSynthesizer())
    assert synthesis_failure(store, key) is None


def test_speaker_doorbells_go_to_the_synthesis_queue_first(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from content_queue.settings import get_settings
    from dispatcher import doorbell

    sent: list[tuple[str, tuple[Any, ...], str]] = []

    class App:
        def signature(self, name: str, *, args: tuple[Any, ...], queue: str, **_: Any) -> Any:
            sent.append((name, args, queue))
            return name

    monkeypatch.setattr("dispatcher.celery_app.app_for", lambda settings: App())

    class Group:
        def __init__(self, sigs: list[Any], app: Any) -> None:
            pass

        def apply_async(self) -> None:
            pass

    monkeypatch.setattr("celery.group", Group)
    settings = get_settings()
    ids = list(range(1, 61))
    assert doorbell.ring({"speaker": ids, "led": [7]}, settings=settings) == 2
    assert sent == [
        ("villagecast.synthesize", (ids, "speaker"), "vc.synthesis"),  # one task, all of them
        ("villagecast.deliver", ([7], "led"), "vc.led"),
    ]
    sent.clear()
    doorbell.ring({"speaker": ids}, settings=settings, synthesized=True)
    assert [(name, queue, len(args[0])) for name, args, queue in sent] == [
        ("villagecast.deliver", "vc.speaker", 25),
        ("villagecast.deliver", "vc.speaker", 25),
        ("villagecast.deliver", "vc.speaker", 10),
    ]
