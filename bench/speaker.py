"""Loudspeaker benchmarks, each beside a baseline measured in the same run.

    python bench/speaker.py [--quick] [--setups embedded,embedded-mosquitto] [--speakers 500]
                            [--no-fanout] [--json FILE] [--keep]

1. Offline synthesis per 100 characters (scripts of 200 characters, each new to the cache),
   against ``espeak-ng -v cmn -w out.wav TEXT`` run directly on the same text:
   - the raw engine (``channels.tts.OfflineEngine``: espeak-ng through our wrapper);
   - the loudness + MP3 step alone (``to_loudspeaker_mp3``), and the same step as it was
     before (ffmpeg's single-pass ``loudnorm``, LAME's default quality, then ffprobe);
   - the full pipeline as the synthesis task runs it (``channels.speaker.make_clip``:
     cache lookup, synthesis slot, espeak-ng, loudness, MP3, cache write).
2. A clip from the cache (the lookup the speaker channel does for every delivery) against
   making it (a miss: the full pipeline above).
3. A 200-character emergency to N simulated speakers (default 500; devices in ONE separate
   process, bench/devices_proc.py --kind speaker: each downloads the clip from the feed
   server, checks its SHA-256 and acks): from `notice add` (submit_notice) to the first and
   the last speaker ack recorded by the device listener, with a real worker (its synthesis
   worker makes the clip first). Baseline: making the same clip alone (step 1's pipeline).
   The same notice sent again (clip cached) is reported too. On the embedded brokers
   (SQLite Celery + amqtt) and on SQLite Celery + mosquitto.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.led import (  # noqa: E402
    FARM,
    PREFIX,
    SETUPS,
    BenchError,
    Farm,
    _wait_for,
    listener,
    mqtt_broker,
    redis_server,
    worker_process,
)
from bench.run import Row, _devices  # noqa: E402

TITLE = "山洪紧急转移通知"
BODY = (
    "受持续强降雨影响，今天夜间河道水位将超过警戒线。请沿河、低洼地带和山脚下的村民"
    "立即带上身份证和常用药品，转移到村委会或村小学，老人和孩子由村干部上门接送。"
    "转移途中不要涉水过河，不要在桥上停留。各村民小组长要逐户清点人数，"
    "发现有人未转移的立即报告村委会。转移后请听从安排，雨停前不要返回家中。联系电话12345。"
)
WARM = ("防火提醒", "秋冬季节天干物燥，请村民不要在田间地头焚烧秸秆。")
DEFAULT_SETUPS = ("embedded", "embedded-mosquitto")


# -- 1 and 2: synthesis and the clip cache ---------------------------------------------------


def _scripts(count: int, length: int = 200) -> list[str]:
    """Distinct spoken scripts of ``length`` characters (each one a cache miss)."""
    from channels._speech_text import spoken_script

    out = []
    for i in range(count):
        script = spoken_script(
            title=f"第{i + 1}号{TITLE}",
            body=BODY * 2,
            category="emergency",
            priority="emergency",
        )
        out.append(script[:length])
    return out


def _per100(seconds: float, text: str) -> float:
    return seconds * 100 / len(text)


def _timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> float:
    t0 = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t0


def _legacy_mp3(wav: bytes, out: Path) -> None:
    """The loudness + MP3 step as it was: single-pass loudnorm, LAME default, ffprobe."""
    from channels._audio import probe_duration

    src = out.with_suffix(".wav")
    src.write_bytes(wav)
    fmt = "aformat=sample_fmts=fltp:sample_rates=44100:channel_layouts=mono"
    graph = (
        f"[0:a]aresample=44100,{fmt},loudnorm=I=-16.0:TP=-1.5:LRA=11,aresample=44100,{fmt},"
        "anull[out]"
    )
    subprocess.run(
        [
            *("ffmpeg", "-hide_banner", "-nostdin", "-y", "-i", str(src)),
            *("-filter_complex", graph, "-map", "[out]", "-map_metadata", "-1"),
            *("-ac", "1", "-ar", "44100", "-c:a", "libmp3lame", "-b:a", "64k", str(out)),
        ],
        check=True,
        capture_output=True,
    )
    hashlib.sha256(out.read_bytes()).hexdigest()  # as Clip.from_file did
    probe_duration(out)


@dataclass
class SynthesisFigures:
    chars: int
    direct: list[float] = field(default_factory=list)  # per 100 chars, seconds
    raw: list[float] = field(default_factory=list)
    mp3: list[float] = field(default_factory=list)
    legacy_mp3: list[float] = field(default_factory=list)
    full: list[float] = field(default_factory=list)
    miss: list[float] = field(default_factory=list)  # per clip, seconds
    hit: list[float] = field(default_factory=list)


def bench_synthesis(samples: int) -> SynthesisFigures:
    from channels._audio import to_loudspeaker_mp3
    from channels.speaker import cached_clip, make_clip
    from channels.tts import OfflineEngine, Synthesizer, Voice
    from content_queue.settings import Settings

    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise BenchError("espeak-ng is not installed (scripts/dev setup installs it)")
    scripts = _scripts(samples)
    figures = SynthesisFigures(chars=len(scripts[0]))
    engine = OfflineEngine()
    voice = Voice()
    with tempfile.TemporaryDirectory(prefix="vc-bench-tts-") as tmp:
        work = Path(tmp)
        settings = Settings(home=work / "home", tts_mode="offline")
        synth = Synthesizer(mode="offline")
        make_clip(settings, synth, script="预热。" * 5, voice=voice)  # imports, ffmpeg caches
        for i, text in enumerate(scripts):
            # The two quick ones, interleaved and best of three: the machine's noise is
            # larger than the difference.
            direct = [espeak, "-v", "cmn", "-w", str(work / f"direct-{i}.wav"), text]
            best_direct = best_raw = math.inf
            wav = b""
            for _ in range(3):
                best_direct = min(
                    best_direct, _timed(subprocess.run, direct, check=True, capture_output=True)
                )
                t0 = time.perf_counter()
                wav = engine.synthesize(text, voice, timeout=60)
                best_raw = min(best_raw, time.perf_counter() - t0)
            figures.direct.append(_per100(best_direct, text))
            figures.raw.append(_per100(best_raw, text))
            mp3 = _timed(to_loudspeaker_mp3, wav, src_format="wav", out=work / f"n{i}.mp3")
            figures.mp3.append(_per100(mp3, text))
            legacy = _timed(_legacy_mp3, wav, work / f"l{i}.mp3")
            figures.legacy_mp3.append(_per100(legacy, text))
            miss = _timed(make_clip, settings, synth, script=text, voice=voice)
            figures.full.append(_per100(miss, text))
            figures.miss.append(miss)
            hits = [_timed(cached_clip, settings, script=text, voice=voice) for _ in range(5)]
            figures.hit.append(statistics.median(hits))
    return figures


def synthesis_rows(f: SynthesisFigures) -> list[Row]:
    direct = statistics.median(f.direct) * 1000
    what = f"espeak-ng -v cmn, same text, per 100 chars ({f.chars}-char scripts)"
    return [
        Row(
            "offline synthesis per 100 chars: raw engine (espeak-ng via OfflineEngine)",
            statistics.median(f.raw) * 1000,
            "ms",
            what,
            direct,
            "<= 1.2x",
        ),
        Row(
            "offline synthesis per 100 chars: full pipeline (make_clip, cache miss)",
            statistics.median(f.full) * 1000,
            "ms",
            what,
            direct,
            "<= 1.2x",
        ),
        Row(
            "  of which loudness + MP3 (measure, gain, limiter, LAME q7)",
            statistics.median(f.mp3) * 1000,
            "ms",
            what,
            direct,
            "(reported)",
        ),
        Row(
            "  the same step before (single-pass loudnorm, LAME default, ffprobe)",
            statistics.median(f.legacy_mp3) * 1000,
            "ms",
            what,
            direct,
            "(reported)",
        ),
        Row(
            f"clip from the cache (hit), {f.chars}-char script",
            statistics.median(f.hit) * 1000,
            "ms",
            "making it (miss, full pipeline)",
            statistics.median(f.miss) * 1000,
            "(reported)",
        ),
    ]


# -- 3: an emergency to N speakers ------------------------------------------------------------


class SpeakerFarm(Farm):
    """bench/devices_proc.py with ``--kind speaker`` (the same protocol on stdout)."""

    def __init__(self, *, port: int, count: int, keyring: Path, log: Path, timeout: float):
        self._log = log.open("ab")
        self.proc = subprocess.Popen(
            [
                *(sys.executable, str(FARM), "--port", str(port), "--count", str(count)),
                *("--keyring", str(keyring), "--prefix", PREFIX, "--kind", "speaker"),
                *("--id-format", "speaker-{i:05d}", "--connect-timeout", str(timeout)),
            ],
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=REPO,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name="farm-stdout", daemon=True)
        self._reader.start()


@contextmanager
def speaker_environment(
    home: Path, celery_url: str | None, mqtt_url: str, n: int
) -> Iterator[Path]:
    """VILLAGECAST_* for one run, keys created, and the feed server serving the clips."""
    from channels.keys import Keyring
    from content_queue.settings import get_settings, reset_settings
    from dispatcher import service
    from dispatcher.feed_server import serve_in_thread

    devices = home / "devices.yaml"
    devices.write_text(_devices(n, kind="speaker"), encoding="utf-8")
    saved = dict(os.environ)
    for key in [k for k in os.environ if k.startswith("VILLAGECAST_")]:
        del os.environ[key]
    os.environ.update(
        {
            "VILLAGECAST_HOME": str(home / "data"),
            "VILLAGECAST_DEVICES": str(devices),
            "VILLAGECAST_MQTT_URL": mqtt_url,
            "VILLAGECAST_MQTT_PREFIX": PREFIX,
            "VILLAGECAST_TTS_MODE": "offline",  # no internet here
            "VILLAGECAST_FEED_PORT": "0",
            "PYTHONPATH": str(REPO),
        }
    )
    if celery_url:
        os.environ["VILLAGECAST_BROKER_URL"] = celery_url
    reset_settings()
    server = None
    try:
        settings = get_settings()
        settings.ensure_home()
        store = service.open_store(settings)
        server, _ = serve_in_thread(
            settings, store, lambda: service.registry_cache.get(settings.devices)
        )
        host, port = server.server_address[:2]
        assert isinstance(host, str)
        os.environ["VILLAGECAST_FEED_BASE_URL"] = f"http://{host}:{port}"
        reset_settings()
        keyring = Keyring.init(settings.keys_dir)
        public = home / "public-keys.json"
        public.write_text(json.dumps(keyring.export_public()), encoding="utf-8")
        yield public
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        os.environ.clear()
        os.environ.update(saved)
        reset_settings()


def _submit(title: str, body: str, targets: dict[str, Any]) -> int:
    from content_queue.models import build_notice
    from content_queue.settings import get_settings
    from dispatcher import service
    from dispatcher.doorbell import ring

    settings = get_settings()
    sub = service.submit_notice(
        build_notice(
            {
                "title": title,
                "body": body,
                "category": "emergency",
                "priority": "emergency",
                "targets": targets,
                "channels": ["speaker"],
            }
        ),
        store=service.open_store(settings),
        registry=service.registry_cache.get(settings.devices),
        ring=lambda ids, countdown: ring(ids, settings=settings, countdown=countdown),
    )
    if not sub.rung:
        raise BenchError(f"the doorbell did not ring: {sub.ring_error}")
    return sub.notice.id


def _phases(nid: int, t0: datetime) -> dict[str, float]:
    """Seconds from `notice add` to the first claim by a fan-out worker (the clip was made
    by then), to the last command published, and to the last ack recorded."""
    from sqlalchemy import func, select

    from content_queue.db import Attempt, Delivery, DeviceCommand
    from content_queue.settings import get_settings
    from dispatcher import service

    store = service.open_store(get_settings())
    with store.session(readonly=True) as s:
        claimed = s.scalar(
            select(func.min(Attempt.started_at))
            .join(Delivery, Delivery.id == Attempt.delivery_id)
            .where(Delivery.notice_id == nid)
        )
        published = s.scalar(
            select(func.max(DeviceCommand.published_at))
            .join(Delivery, Delivery.id == DeviceCommand.delivery_id)
            .where(Delivery.notice_id == nid)
        )
        acked = s.scalar(select(func.max(Delivery.delivered_at)).where(Delivery.notice_id == nid))
    return {
        name: round((t - t0).total_seconds(), 3) if t is not None else math.nan
        for name, t in (
            ("first_claim", claimed),
            ("last_published", published),
            ("last_ack", acked),
        )
    }


def _acks(nid: int) -> tuple[list[datetime], dict[str, int]]:
    from sqlalchemy import func, select

    from content_queue.db import Delivery
    from content_queue.settings import get_settings
    from dispatcher import service

    store = service.open_store(get_settings())
    with store.session(readonly=True) as s:
        delivered = sorted(
            t
            for t in s.scalars(select(Delivery.delivered_at).where(Delivery.notice_id == nid))
            if t is not None
        )
        statuses = dict(
            s.execute(
                select(Delivery.status, func.count())
                .where(Delivery.notice_id == nid)
                .group_by(Delivery.status)
            ).all()
        )
    return delivered, {str(k): int(v) for k, v in statuses.items()}


@dataclass
class FanOut:
    setup: str
    n: int
    ok: bool = False
    error: str | None = None
    script_chars: int = 0
    clip_alone: float = math.nan  # making the clip, nothing else (baseline)
    first: float = math.nan  # notice add -> first ack (cold: synthesis included)
    last: float = math.nan
    cached_first: float = math.nan  # the same notice again, clip cached
    cached_last: float = math.nan
    statuses: dict[str, int] = field(default_factory=dict)
    phases: list[dict[str, float]] = field(default_factory=list)


def _emergency_to_all(
    n: int, timeout: float
) -> tuple[float, float, dict[str, int], dict[str, float]]:
    from content_queue.store import utcnow

    t0 = utcnow()
    nid = _submit(TITLE, BODY, {"county": True})
    _wait_for(lambda: len(_acks(nid)[0]) >= n, timeout, f"{n} speakers acked", step=0.02)
    delivered, statuses = _acks(nid)
    return (
        (delivered[0] - t0).total_seconds(),
        (delivered[-1] - t0).total_seconds(),
        statuses,
        _phases(nid, t0),
    )


def _clip_alone(script: str) -> float:
    from channels.speaker import make_clip
    from channels.tts import Synthesizer, Voice
    from content_queue.settings import Settings

    with tempfile.TemporaryDirectory(prefix="vc-bench-clip-") as tmp:
        settings = Settings(home=Path(tmp), tts_mode="offline")
        synth = Synthesizer(mode="offline")
        make_clip(settings, synth, script="预热。" * 5, voice=Voice())
        # Three different scripts (a trailing pause each), so each one is a miss.
        return min(
            _timed(make_clip, settings, synth, script=script + "。" * i, voice=Voice())
            for i in range(1, 4)
        )


def run_fanout(setup: str, n: int, *, timeout: float, keep: bool) -> FanOut:
    from channels._speech_text import spoken_script

    celery, mqtt_kind = SETUPS[setup]
    result = FanOut(setup, n)
    script = spoken_script(title=TITLE, body=BODY, category="emergency", priority="emergency")
    result.script_chars = len(script)
    home = Path(tempfile.mkdtemp(prefix=f"vc-speaker-{setup}-{n}-"))
    os.chmod(home, 0o755)
    farm: SpeakerFarm | None = None
    try:
        result.clip_alone = _clip_alone(script)
        with ExitStack() as stack:
            celery_url = stack.enter_context(redis_server(home)) if celery == "redis" else None
            mqtt_url = stack.enter_context(mqtt_broker(mqtt_kind, home, n))
            public = stack.enter_context(speaker_environment(home, celery_url, mqtt_url, n))
            port = int(mqtt_url.rsplit(":", 1)[1])
            farm = SpeakerFarm(
                port=port, count=n, keyring=public, log=home / "farm.log", timeout=timeout
            )
            farm.ready(timeout + 15)
            with listener(n, timeout), worker_process(home / "worker.log"):
                warm = _submit(*WARM, {"villages": [f"v{i:05d}" for i in range(min(5, n))]})
                _wait_for(lambda: len(_acks(warm)[0]) >= min(5, n), 120, "warm-up notice")
                result.first, result.last, result.statuses, cold = _emergency_to_all(n, timeout)
                result.cached_first, result.cached_last, _, cached = _emergency_to_all(n, timeout)
                result.phases = [cold, cached]
            farm.close()
            farm = None
        if result.statuses.get("delivered") != n:
            raise BenchError(f"only {result.statuses} of {n} delivered")
        result.ok = True
    except Exception as exc:  # reported; the other runs go on
        result.error = str(exc) if isinstance(exc, BenchError) else f"{type(exc).__name__}: {exc}"
    finally:
        if farm is not None:
            farm.close()
        if keep or not result.ok:
            print(f"  ({setup}, N={n}) logs kept in {home}", file=sys.stderr)
        else:
            shutil.rmtree(home, ignore_errors=True)
    return result


def fanout_rows(r: FanOut) -> list[Row]:
    label = f"{r.n} speakers, {r.script_chars}-char emergency ({r.setup})"
    base = f"making its clip alone ({r.script_chars} chars, full pipeline)"
    if not r.ok:
        return [Row(f"notice add -> first ack, {label}: FAILED", math.nan, "ms", base, 0, "")]
    return [
        Row(f"notice add -> first speaker ack, {label}", r.first * 1000, "ms", base,
            r.clip_alone * 1000, "(reported)"),
        Row("  -> last speaker ack", r.last * 1000, "ms", base, r.clip_alone * 1000,
            "(reported)"),
        Row("  same notice again (clip cached) -> first ack", r.cached_first * 1000, "ms", base,
            r.clip_alone * 1000, "(reported)"),
        Row("  same notice again (clip cached) -> last ack", r.cached_last * 1000, "ms", base,
            r.clip_alone * 1000, "(reported)"),
    ]  # fmt: skip


def speaker_rows(
    *, quick: bool, setups: Sequence[str] = DEFAULT_SETUPS, n: int = 500, timeout: float = 300
) -> list[Row]:
    """The rows bench/run.py adds to its table."""
    rows = synthesis_rows(bench_synthesis(3 if quick else 7))
    for setup in setups:
        print(f"== speakers: {setup}, N={n}", file=sys.stderr, flush=True)
        r = run_fanout(setup, n, timeout=timeout, keep=False)
        print(f"   {'ok' if r.ok else 'FAILED: ' + str(r.error)}", file=sys.stderr, flush=True)
        rows += fanout_rows(r)
    return rows


def main(argv: list[str] | None = None) -> int:
    from bench.led import print_rows

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="3 synthesis samples, not 7")
    parser.add_argument("--setups", default=",".join(DEFAULT_SETUPS))
    parser.add_argument("--speakers", type=int, default=500)
    parser.add_argument("--no-fanout", action="store_true", help="synthesis figures only")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep each run's directory")
    args = parser.parse_args(argv)
    figures = bench_synthesis(3 if args.quick else 7)
    rows = synthesis_rows(figures)
    runs: list[FanOut] = []
    if not args.no_fanout:
        for setup in [s.strip() for s in args.setups.split(",") if s.strip()]:
            if setup not in SETUPS:
                parser.error(f"unknown setup {setup!r}; choose from {', '.join(SETUPS)}")
            print(f"== speakers: {setup}, N={args.speakers}", file=sys.stderr, flush=True)
            r = run_fanout(setup, args.speakers, timeout=args.timeout, keep=args.keep)
            runs.append(r)
            rows += fanout_rows(r)
    print_rows(rows)
    for r in runs:
        if not r.ok:
            print(f"{r.setup}: FAILED: {r.error}")
        for label, phases in zip(("cold", "cached"), r.phases, strict=False):
            print(f"{r.setup} {label}: s after notice add: {phases}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "rows": [row.__dict__ | {"ratio": row.ratio} for row in rows],
                    "synthesis": figures.__dict__,
                    "fanout": [r.__dict__ for r in runs],
                },
                indent=2,
                default=str,
            ),
            encoding="utf-8",
        )
    return 0 if all(r.ok for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
