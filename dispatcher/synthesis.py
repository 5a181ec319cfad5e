"""The step before a loudspeaker fan-out: every distinct clip made once, at most K at a time.

A doorbell for speaker deliveries goes first to the ``villagecast.synthesize`` task on its
own queue (``vc.synthesis``), consumed by a separate worker process with K threads
(``dispatcher/worker.py``), so a slow synthesis never holds a process of the fan-out
workers. The task makes the clip of each distinct (script, voice) among the deliveries
(a cache hit when it exists), then rings the ``villagecast.deliver`` doorbells of the same
deliveries, which find their clip in the cache. A synthesis that fails is noted
(``content_queue.loudspeakers``) so the deliveries fail with its reason or retry.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from channels.base import ChannelError, ContentError, TransientError
from channels.speaker import failure_key, make_clip, script_for, voice_for
from channels.tts import Synthesizer, Voice
from content_queue.errors import ConfigError, VillagecastError
from content_queue.loudspeakers import (
    SynthesisFailure,
    clear_synthesis_failure,
    note_synthesis_failure,
    waiting_for_clips,
)
from content_queue.registry import Registry
from content_queue.settings import Settings
from content_queue.store import Store
from dispatcher import service

__all__ = ["SynthesisReport", "prepare_clips", "shared_synthesizer"]

log = logging.getLogger(__name__)

_synthesizers: dict[str, Synthesizer] = {}
_synth_lock = threading.Lock()


def shared_synthesizer(mode: str) -> Synthesizer:
    """One per process and mode, so edge-tts's cool-down after a 429 outlives a task."""
    with _synth_lock:
        found = _synthesizers.get(mode)
        if found is None:
            found = _synthesizers[mode] = Synthesizer(mode=mode)  # type: ignore[arg-type]
        return found


@dataclass
class SynthesisReport:
    made: int = 0
    hits: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    """failure key -> error code"""


def _failure(exc: VillagecastError) -> SynthesisFailure:
    if isinstance(exc, TransientError):
        return SynthesisFailure("transient", exc.code or "synthesis", exc.text, exc.retry_after)
    if isinstance(exc, ContentError):
        return SynthesisFailure("content", exc.code or "synthesis", exc.text)
    if isinstance(exc, ConfigError):
        return SynthesisFailure("config", "config", exc.text)
    code = exc.code if isinstance(exc, ChannelError) and exc.code else "synthesis"
    return SynthesisFailure("permanent", code, exc.text)  # PermanentError and the rest


def prepare_clips(
    ids: Sequence[int],
    *,
    store: Store,
    settings: Settings,
    synthesizer: Synthesizer | None = None,
    registry: Registry | None = None,
) -> SynthesisReport:
    """Make (or find) the clip of every speaker delivery among ``ids`` still to be sent."""
    report = SynthesisReport()
    waiting = waiting_for_clips(store, ids)
    if not waiting:
        return report
    if registry is None:
        try:
            registry = service.registry_cache.get(settings.devices)
        except VillagecastError as exc:  # the deliveries report it themselves
            log.warning("synthesis skipped: %s", exc.render("en"))
            return report
    wanted: dict[str, tuple[str, Voice, int]] = {}
    scripts: dict[int, str] = {}
    for w in sorted(waiting, key=lambda w: w.notice.priority != "emergency"):
        script = scripts.get(w.notice.id) or scripts.setdefault(w.notice.id, script_for(w.notice))
        voice = voice_for(registry, w.village_id)
        key = failure_key(script=script, voice=voice, mode=settings.tts_mode)
        wanted.setdefault(key, (script, voice, w.notice.id))
    synth = synthesizer or shared_synthesizer(settings.tts_mode)
    for key, (script, voice, notice_id) in wanted.items():
        try:
            _, hit = make_clip(settings, synth, script=script, voice=voice, notice_id=notice_id)
        except (ChannelError, VillagecastError) as exc:
            failure = _failure(exc)
            log.warning(
                "synthesis for notice %d failed (%s): %s",
                notice_id,
                failure.code,
                failure.text.render("en"),
            )
            note_synthesis_failure(store, key, failure)
            report.failed[key] = failure.code
            continue
        clear_synthesis_failure(store, [key])
        if hit:
            report.hits += 1
        else:
            report.made += 1
    return report
