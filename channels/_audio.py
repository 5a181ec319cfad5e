"""Loudspeaker MP3 and WeCom AMR clips made with ffmpeg, and a content-addressed clip cache."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from channels.base import ContentError, TransientError
from channels.tts import Synthesis, Synthesizer, Voice
from content_queue.errors import ConfigError
from content_queue.i18n import tr

if TYPE_CHECKING:
    from content_queue.settings import Settings

__all__ = [
    "LOUDNESS_LUFS",
    "WECOM_VOICE_MAX_BYTES",
    "WECOM_VOICE_MAX_SECONDS",
    "Clip",
    "ClipCache",
    "lookup_clips",
    "probe_duration",
    "synthesize_clip",
    "to_loudspeaker_mp3",
    "to_wecom_amr",
]

ClipFormat = Literal["mp3", "amr"]

LOUDNESS_LUFS = -16.0
"""Target loudness of loudspeaker speech, peaks limited to -2 dBFS: loud outdoors without
clipping. espeak-ng speech lands within 1 LU of it (see _normalise_chain)."""
LOUDSPEAKER_RATE = 44100
LOUDSPEAKER_BITRATE = "64k"
WECOM_VOICE_MAX_SECONDS = 60.0
WECOM_VOICE_MAX_BYTES = 2 * 1024 * 1024
# Cut a little below 60 s: AMR frames are 20 ms and players round durations up.
_AMR_TARGET_SECONDS = 58.0
_FFMPEG_TIMEOUT = 300.0
# Loudness is normalised in two cheap passes rather than with ffmpeg's single-pass
# ``loudnorm``: that filter resamples to 192 kHz and cost 60-70% of a clip's making
# (docs/performance.md). Pass 1 measures the integrated loudness of the gently compressed
# speech (ebur128 without true-peak oversampling); pass 2 compresses the same way, applies
# the gain to the target, and a limiter at -2 dBFS catches the peaks (0.5 dB below the -1.5
# dBTP of the old chain, for inter-sample peaks).
_COMPRESS = "acompressor=threshold=-18dB:ratio=3:attack=5:release=50"
_LIMIT = f"alimiter=limit={10 ** (-2.0 / 20):.4f}:level=false"
_MAX_GAIN_DB = 30.0  # near-silence is not blown up into noise
_LIMITER_LOSS_DB = 0.7  # what the limiter takes off compressed speech (espeak-ng: 0.5-1.0)
# LAME's quality 7 (0 best and slowest, 9 fastest): for 64 kbit/s mono speech the difference
# is not audible on a horn loudspeaker, and it encodes twice as fast as the default.
_LAME_QUALITY = "7"
_LOUDNESS = re.compile(r"\bI:\s+(-?[\d.]+|-inf) LUFS")
_STATS_TIME = re.compile(r"time=(\d+):(\d\d):(\d\d(?:\.\d+)?)")
# Two overlapping bell tones (B5 then G5) with a 5 ms attack: the "ding-dong" before village
# announcements. Peak -10 dBFS, quieter than speech at -16 LUFS, so the voice stays the focus.
_CHIME = (
    "aevalsrc=exprs='0.3*(min(1,t*200)*sin(2*PI*988*t)*exp(-5*t)"
    "+gte(t,0.5)*min(1,(t-0.5)*200)*sin(2*PI*784*(t-0.5))*exp(-4*(t-0.5)))'"
    ":s={rate}:d=1.3:c=mono,afade=t=out:st=1.1:d=0.2"
)
_SILENCE = re.compile(r"silence_(start|end): (-?[\d.]+)")


@dataclass(frozen=True)
class Clip:
    """One audio file with what a device needs to fetch and verify it."""

    path: Path
    sha256: str
    format: ClipFormat
    duration_s: float
    size: int

    @classmethod
    def from_file(cls, path: Path, fmt: ClipFormat, *, duration_s: float | None = None) -> Clip:
        data = path.read_bytes()
        duration = probe_duration(path) if duration_s is None else duration_s
        return cls(path, hashlib.sha256(data).hexdigest(), fmt, duration, len(data))


def _tool(name: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        raise ConfigError(
            tr(
                "找不到 {t}，请安装 Debian 软件包 ffmpeg（sudo apt-get install ffmpeg）",
                "{t} is missing; install the Debian package ffmpeg (sudo apt-get install ffmpeg)",
                t=name,
            )
        )
    return exe


@functools.cache
def _encoders(ffmpeg: str) -> str:
    return subprocess.run(
        [ffmpeg, "-hide_banner", "-encoders"], capture_output=True, text=True, timeout=30
    ).stdout


def _require_encoder(encoder: str, package: str) -> None:
    if not re.search(rf"\s{encoder}\s", _encoders(_tool("ffmpeg"))):
        raise ConfigError(
            tr(
                "ffmpeg 缺少编码器 {e}，请安装 Debian 软件包 {p}（sudo apt-get install {p}）",
                "ffmpeg has no {e} encoder; install the Debian package {p} "
                "(sudo apt-get install {p})",
                e=encoder,
                p=package,
            )
        )


def _ffmpeg(args: Sequence[str]) -> str:
    """Run ffmpeg quietly; returns its stderr (silencedetect reports there)."""
    cmd = [_tool("ffmpeg"), "-hide_banner", "-nostdin", "-y", *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_FFMPEG_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise TransientError(
            tr("ffmpeg 处理音频超时", "ffmpeg did not finish converting the audio in time"),
            code="ffmpeg timeout",
        ) from exc
    if proc.returncode != 0:
        raise ContentError(
            tr("音频转换失败：{e}", "the audio could not be converted: {e}", e=proc.stderr[-400:]),
            code="audio",
        )
    return proc.stderr


def _normalise_chain(src: Path) -> str:
    """The filters that bring ``src`` to LOUDNESS_LUFS (pass 1 measures; see _COMPRESS)."""
    err = _ffmpeg(["-nostats", "-i", str(src), "-af", f"{_COMPRESS},ebur128", "-f", "null", "-"])
    found = _LOUDNESS.findall(err)
    loudness = float(found[-1]) if found and found[-1] != "-inf" else -70.0
    gain = max(-_MAX_GAIN_DB, min(_MAX_GAIN_DB, LOUDNESS_LUFS - loudness + _LIMITER_LOSS_DB))
    return f"{_COMPRESS},volume={gain:.2f}dB,{_LIMIT}"


def _encoded_seconds(stderr: str) -> float | None:
    """The output duration from ffmpeg's final stats line (within a frame of ffprobe's
    packet sum, and it saves running ffprobe)."""
    found = _STATS_TIME.findall(stderr)
    if not found:
        return None
    hours, minutes, seconds = found[-1]
    return round(int(hours) * 3600 + int(minutes) * 60 + float(seconds), 3)


def probe_duration(path: Path) -> float:
    """Duration in seconds: the sum of the audio packets' durations as ffprobe reads them.

    ffprobe's container duration is estimated from the bitrate for AMR (and for MP3 without a
    Xing header) and was seen 2 s too long on a 58 s clip; the packets are exact.
    """
    cmd = [_tool("ffprobe"), "-v", "error", "-select_streams", "a:0"]
    cmd += ["-show_entries", "packet=duration_time", "-of", "csv=p=0", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    total = 0.0
    packets = 0
    for line in proc.stdout.split():
        with contextlib.suppress(ValueError):
            total += float(line.strip(","))
            packets += 1
    if proc.returncode != 0 or packets == 0:
        raise ContentError(
            tr(
                "无法读取音频 {p}：{e}",
                "cannot read the audio file {p}: {e}",
                p=path.name,
                e=proc.stderr.strip()[-300:] or "no audio",
            ),
            code="audio",
        )
    return round(total, 3)


@contextlib.contextmanager
def _source(audio: bytes, src_format: str) -> Iterator[Path]:
    if not audio:
        raise ContentError(tr("音频为空", "the audio is empty"), code="audio")
    with tempfile.TemporaryDirectory(prefix="vc-audio-") as tmp:
        src = Path(tmp) / f"src.{re.sub(r'[^a-z0-9]', '', src_format.lower()) or 'bin'}"
        src.write_bytes(audio)
        yield src


def to_loudspeaker_mp3(
    audio: bytes, *, src_format: str, out: Path, chime: bool = False, loudnorm: bool = True
) -> Clip:
    """Mono 44.1 kHz 64 kbit/s MP3, loudness-normalised, optionally between two chimes."""
    _require_encoder("libmp3lame", "ffmpeg")
    fmt = f"aformat=sample_fmts=fltp:sample_rates={LOUDSPEAKER_RATE}:channel_layouts=mono"
    out.parent.mkdir(parents=True, exist_ok=True)
    with _source(audio, src_format) as src:
        norm = f"{_normalise_chain(src)}," if loudnorm else ""
        graph = [f"[0:a]{norm}aresample={LOUDSPEAKER_RATE},{fmt},anull[speech]"]
        return _encode_mp3(src, graph, out, chime=chime)


def _encode_mp3(src: Path, graph: list[str], out: Path, *, chime: bool) -> Clip:
    fmt = f"aformat=sample_fmts=fltp:sample_rates={LOUDSPEAKER_RATE}:channel_layouts=mono"
    if chime:
        graph.append(f"{_CHIME.format(rate=LOUDSPEAKER_RATE)},{fmt},asplit=2[c1][c2]")
        graph.append("[c1]apad=pad_dur=0.4[open]")
        graph.append("[c2]adelay=delays=400:all=1[close]")
        graph.append("[open][speech][close]concat=n=3:v=0:a=1[out]")
    else:
        graph.append("[speech]anull[out]")
    args = ["-i", str(src), "-filter_complex", ";".join(graph), "-map", "[out]"]
    args += ["-map_metadata", "-1", "-ac", "1", "-ar", str(LOUDSPEAKER_RATE)]
    args += ["-c:a", "libmp3lame", "-b:a", LOUDSPEAKER_BITRATE]
    err = _ffmpeg([*args, "-compression_level", _LAME_QUALITY, "-f", "mp3", str(out)])
    return Clip.from_file(out, "mp3", duration_s=_encoded_seconds(err))


def _silence_midpoints(wav: Path) -> list[float]:
    stderr = _ffmpeg(["-i", str(wav), "-af", "silencedetect=noise=-40dB:d=0.2", "-f", "null", "-"])
    points: list[float] = []
    start: float | None = None
    for kind, value in _SILENCE.findall(stderr):
        if kind == "start":
            start = float(value)
        elif start is not None:
            points.append((start + float(value)) / 2)
            start = None
    return points


def _plan_cuts(duration: float, breaks: Sequence[float], *, max_len: float) -> list[float]:
    """Cut points: the latest break that keeps each piece under max_len, else a hard cut."""
    cuts: list[float] = []
    start = 0.0
    while duration - start > max_len:
        window = [b for b in breaks if start + max_len / 4 < b <= start + max_len]
        cut = max(window) if window else start + max_len
        cuts.append(cut)
        start = cut
    return cuts


def to_wecom_amr(
    audio: bytes,
    *,
    src_format: str,
    out_dir: Path,
    sentence_breaks_s: list[float] | None = None,
    loudnorm: bool = True,
) -> list[Clip]:
    """AMR-NB 8 kHz mono clips for WeCom voice messages (each <= 60 s and <= 2 MB).

    Longer audio is cut at sentence boundaries: the given break times, or the middle of the
    pauses ffmpeg's silencedetect finds; a stretch with no pause is cut hard.
    """
    _require_encoder("libopencore_amrnb", "libavcodec-extra")
    out_dir.mkdir(parents=True, exist_ok=True)
    with _source(audio, src_format) as src:
        wav = src.with_name("mono8k.wav")
        chain = f"{_normalise_chain(src)}," if loudnorm else ""
        args = ["-i", str(src), "-af", f"{chain}aresample=8000", "-ac", "1", "-ar", "8000"]
        _ffmpeg([*args, "-c:a", "pcm_s16le", str(wav)])
        duration = probe_duration(wav)
        breaks = sentence_breaks_s if sentence_breaks_s is not None else _silence_midpoints(wav)
        bounds = [0.0, *_plan_cuts(duration, sorted(breaks), max_len=_AMR_TARGET_SECONDS)]
        clips: list[Clip] = []
        for i, start in enumerate(bounds, 1):
            end = bounds[i] if i < len(bounds) else None
            out = out_dir / f"part-{i:02d}.amr"
            span = ["-ss", f"{start:.3f}"] + (["-to", f"{end:.3f}"] if end is not None else [])
            args = [*span, "-i", str(wav), "-map_metadata", "-1", "-ac", "1", "-ar", "8000"]
            _ffmpeg([*args, "-c:a", "libopencore_amrnb", "-b:a", "12.2k", "-f", "amr", str(out)])
            clip = Clip.from_file(out, "amr")
            if clip.duration_s > WECOM_VOICE_MAX_SECONDS or clip.size > WECOM_VOICE_MAX_BYTES:
                raise ContentError(
                    tr(
                        "语音片段 {n} 超过企业微信上限（60 秒、2 MB）",
                        "voice clip {n} exceeds WeCom's limits (60 s, 2 MB)",
                        n=i,
                    ),
                    code="too long",
                )
            clips.append(clip)
    return clips


_INDEX = "index.json"
_HASH_NAME = re.compile(r"^[0-9a-f]{64}\.(mp3|amr)$")


def _sniff(data: bytes) -> ClipFormat:
    if data.startswith(b"#!AMR\n"):
        return "amr"
    if data.startswith(b"ID3") or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0):
        return "mp3"
    raise ContentError(tr("不是 MP3 或 AMR 音频", "not MP3 or AMR audio"), code="audio")


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class ClipCache:
    """Clips stored as ``<directory>/<sha256>.<fmt>`` with a JSON index of keys and last use.

    The index maps a key (:meth:`key`) to its clips (one MP3, or the AMR parts of a long
    script). Every change happens under an exclusive ``flock`` on ``.lock`` and is written to
    a temporary file and renamed, so several worker processes can share one directory and a
    crash leaves either the old or the new index. Clips shared by two keys (same bytes) are
    stored once and deleted only when no key refers to them.
    """

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int = 500 * 1024 * 1024,
        touch_interval: float = 60.0,
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.touch_interval = touch_interval
        """A hit records its use only if the last one is older: eviction by age needs no
        finer grain, and a fan-out's hits stay read-only."""
        directory.mkdir(parents=True, exist_ok=True)

    @classmethod
    def for_settings(cls, settings: Settings, *, max_bytes: int = 500 * 1024 * 1024) -> ClipCache:
        return cls(settings.home / "audio", max_bytes=max_bytes)

    @staticmethod
    def key(*, script: str, engine: str, voice: Voice, fmt: str) -> str:
        """sha256 hex of a canonical JSON of what changes the audio.

        The offline engine has a single voice, so its keys ignore the voice name (rate and
        volume still count): villages with different edge voices share one offline clip.
        """
        canonical = {
            "v": 1,
            "script": " ".join(unicodedata.normalize("NFC", script).split()),
            "engine": engine,
            "voice": voice.name if engine == "edge" else "",
            "rate": voice.rate,
            "volume": voice.volume,
            "fmt": fmt,
        }
        blob = json.dumps(canonical, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    @contextlib.contextmanager
    def _locked(self, name: str = ".lock") -> Iterator[None]:
        path = self.directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def synthesis_lock(self, key: str) -> contextlib.AbstractContextManager[None]:
        """Held while one process synthesizes a key, so others wait and then hit the cache.

        256 lock files striped by key prefix: bounded on disk, rarely contended.
        """
        return self._locked(f"locks/{key[:2]}.lock")

    def _load(self) -> dict[str, Any]:
        try:
            index = json.loads((self.directory / _INDEX).read_text("utf-8"))
        except (FileNotFoundError, ValueError):
            # A lost or damaged index only costs re-synthesis; evict() sweeps the orphans.
            return {}
        entries = index.get("entries") if isinstance(index, dict) else None
        return entries if isinstance(entries, dict) else {}

    def _save(self, entries: dict[str, Any]) -> None:
        blob = json.dumps({"version": 1, "entries": entries}, ensure_ascii=False, indent=1)
        _atomic_write(self.directory / _INDEX, blob.encode("utf-8"))

    def _clip(self, item: dict[str, Any]) -> Clip:
        fmt: ClipFormat = "amr" if item["format"] == "amr" else "mp3"
        path = self.directory / f"{item['sha256']}.{fmt}"
        return Clip(path, item["sha256"], fmt, float(item["duration_s"]), int(item["size"]))

    def get_entry(self, key: str) -> tuple[list[Clip], dict[str, Any]] | None:
        """The clips stored under ``key`` (several for a split AMR) and what was recorded
        when they were made (engine, voice, fallback reason, the notice they were made for).

        A hit reads the index without the lock (it is only ever replaced whole, by rename):
        the speaker channel looks a clip up for every delivery of a fan-out. Its last use is
        written at most once a minute, which is all eviction by age needs.
        """
        entry = self._load().get(key)
        if entry is None:
            return None
        clips = [self._clip(item) for item in entry["clips"]]
        present = all(c.path.is_file() for c in clips)
        if present and time.time() - float(entry.get("last_used", 0)) < self.touch_interval:
            return clips, dict(entry.get("meta") or {})
        with self._locked():
            entries = self._load()
            entry = entries.get(key)
            if entry is None:
                return None
            clips = [self._clip(item) for item in entry["clips"]]
            if not all(c.path.is_file() for c in clips):
                del entries[key]
                self._save(entries)
                return None
            entry["last_used"] = time.time()
            self._save(entries)
            return clips, dict(entry.get("meta") or {})

    def get_all(self, key: str) -> list[Clip] | None:
        """All clips stored under ``key`` (several for a split AMR), marking them used."""
        found = self.get_entry(key)
        return found[0] if found else None

    def get(self, key: str) -> Clip | None:
        """The clip stored under ``key`` (the first part of a split AMR; see get_all)."""
        clips = self.get_all(key)
        return clips[0] if clips else None

    def meta_for(self, sha256: str) -> dict[str, Any] | None:
        """What was recorded when a clip was made (engine, voice, fallback reason), by its hash.

        For the caller of a cache hit, which gets no Synthesis but must say which engine spoke.
        """
        with self._locked():
            for entry in self._load().values():
                if any(item["sha256"] == sha256 for item in entry["clips"]):
                    meta: dict[str, Any] = entry["meta"]
                    return meta
        return None

    def put(self, key: str, clip_bytes: bytes, meta: dict[str, Any]) -> Clip:
        """Store one MP3 or AMR clip (format sniffed from the bytes) under ``key``."""
        fmt = _sniff(clip_bytes)
        with tempfile.TemporaryDirectory(prefix="vc-clip-") as tmp:
            path = Path(tmp) / f"clip.{fmt}"
            path.write_bytes(clip_bytes)
            return self.put_clips(key, [Clip.from_file(path, fmt)], meta)[0]

    def put_clips(self, key: str, clips: Sequence[Clip], meta: dict[str, Any]) -> list[Clip]:
        """Copy clips into the cache under ``key``; then evict down to ``max_bytes``."""
        items = []
        with self._locked():
            for clip in clips:
                data = clip.path.read_bytes()
                sha = hashlib.sha256(data).hexdigest()
                target = self.directory / f"{sha}.{clip.format}"
                if not target.is_file():
                    _atomic_write(target, data)
                items.append({**asdict(clip), "path": None, "sha256": sha, "size": len(data)})
            entries = self._load()
            now = time.time()
            entries[key] = {"clips": items, "meta": meta, "created": now, "last_used": now}
            self._evict(entries, keep=key)
            self._save(entries)
        return [self._clip(item) for item in items]

    def evict(self) -> int:
        """Drop least recently used keys until the clips fit in max_bytes; returns how many."""
        with self._locked():
            entries = self._load()
            dropped = self._evict(entries, keep=None)
            self._save(entries)
            return dropped

    def _evict(self, entries: dict[str, Any], *, keep: str | None) -> int:
        def names(entry: dict[str, Any]) -> dict[str, int]:
            return {f"{i['sha256']}.{i['format']}": int(i["size"]) for i in entry["clips"]}

        referenced: dict[str, int] = {}
        for entry in entries.values():
            referenced.update(names(entry))
        for path in self.directory.iterdir():
            stale_tmp = path.name.startswith(".tmp-") and time.time() - path.stat().st_mtime > 3600
            if stale_tmp or (_HASH_NAME.match(path.name) and path.name not in referenced):
                path.unlink(missing_ok=True)
        total = sum(referenced.values())
        dropped = 0
        for key in sorted(entries, key=lambda k: float(entries[k]["last_used"])):
            if total <= self.max_bytes:
                break
            if key == keep:
                continue
            gone = names(entries.pop(key))
            still = {n for entry in entries.values() for n in names(entry)}
            for name in gone.keys() - still:
                (self.directory / name).unlink(missing_ok=True)
                total -= gone[name]
            dropped += 1
        return dropped


def _variant(fmt: ClipFormat, chime: bool) -> str:
    return f"{fmt}+chime" if chime and fmt == "mp3" else fmt


def _engines(mode: str) -> tuple[str, ...]:
    return ("edge", "offline") if mode == "auto" else (mode,)


def lookup_clips(
    cache: ClipCache,
    *,
    mode: str,
    script: str,
    voice: Voice,
    fmt: ClipFormat,
    chime: bool = False,
) -> tuple[list[Clip], dict[str, Any]] | None:
    """The cached clips ``synthesize_clip`` would return and their record, without
    synthesizing anything."""
    variant = _variant(fmt, chime)
    for engine in _engines(mode):
        key = ClipCache.key(script=script, engine=engine, voice=voice, fmt=variant)
        found = cache.get_entry(key)
        if found:
            return found
    return None


def synthesize_clip(
    cache: ClipCache,
    synth: Synthesizer,
    *,
    script: str,
    voice: Voice,
    fmt: ClipFormat,
    chime: bool = False,
    limit: contextlib.AbstractContextManager[object] | None = None,
    meta: dict[str, Any] | None = None,
) -> tuple[list[Clip], Synthesis | None, bool]:
    """Clips for a script, synthesized at most once per key across processes.

    Returns (clips, the synthesis or None on a cache hit, cache_hit). In auto mode a cached
    offline clip of the same script is reused, so every village hears the same audio even if
    edge recovers halfway through a fan-out. A chime makes a different MP3 (key format
    ``mp3+chime``). ``limit`` is held around the synthesis itself (not a cache hit): the
    machine-wide bound on concurrent syntheses (channels/_synthesis.py). ``meta`` is kept
    with the clip (e.g. the notice it was first made for).
    """
    variant = _variant(fmt, chime)
    engines = _engines(synth.mode)

    def key_for(engine: str) -> str:
        return ClipCache.key(script=script, engine=engine, voice=voice, fmt=variant)

    def lookup() -> list[Clip] | None:
        found = lookup_clips(
            cache, mode=synth.mode, script=script, voice=voice, fmt=fmt, chime=chime
        )
        return found[0] if found else None

    if clips := lookup():
        return clips, None, True
    with cache.synthesis_lock(key_for(engines[0])):
        if clips := lookup():
            return clips, None, True
        with limit if limit is not None else contextlib.nullcontext():
            synthesis = synth.synthesize(script, voice)
            with tempfile.TemporaryDirectory(prefix="vc-clips-") as tmp:
                if fmt == "mp3":
                    made = [
                        to_loudspeaker_mp3(
                            synthesis.audio,
                            src_format=synthesis.format,
                            out=Path(tmp) / "clip.mp3",
                            chime=chime,
                        )
                    ]
                else:
                    made = to_wecom_amr(
                        synthesis.audio, src_format=synthesis.format, out_dir=Path(tmp)
                    )
                record = {
                    **(meta or {}),
                    "engine": synthesis.engine,
                    "voice": synthesis.voice,
                    "fallback_reason": synthesis.fallback_reason,
                    "chars": len(script),
                    "format": variant,
                }
                stored = cache.put_clips(key_for(synthesis.engine), made, record)
    return stored, synthesis, False
