"""Loudspeaker MP3, WeCom AMR and the clip cache, with real ffmpeg and espeak-ng output."""

from __future__ import annotations

import array
import hashlib
import json
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from channels._audio import (
    LOUDNESS_LUFS,
    WECOM_VOICE_MAX_BYTES,
    WECOM_VOICE_MAX_SECONDS,
    Clip,
    ClipCache,
    _plan_cuts,
    probe_duration,
    synthesize_clip,
    to_loudspeaker_mp3,
    to_wecom_amr,
)
from channels.base import ContentError, TransientError
from channels.tts import EdgeEngine, OfflineEngine, Synthesis, Synthesizer, Voice
from content_queue.errors import ConfigError
from content_queue.i18n import tr
from content_queue.settings import Settings
from tests.channels.edge_standin import EdgeStandin, sine_mp3

NOTICE_35 = "各位村民请注意，明天上午九点在村委会召开村民大会，请各户代表准时参加。"
SENTENCES = (
    "明天上午九点在村委会召开村民大会，请各户派一名代表准时参加。",
    "会议将讨论今年惠农补贴的发放名单和道路维修的资金安排。",
    "近期天气干燥，上山祭扫请勿携带火种，发现火情请立即拨打火警电话。",
    "医保缴费截止日期为本月底，尚未缴费的村民请尽快到村委会办理。",
    "村务公开栏已经更新了上季度的收支明细，欢迎大家监督。",
)


def _stream(path: Path) -> dict[str, Any]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_streams", "-of", "json", str(path)],
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    stream: dict[str, Any] = json.loads(out)["streams"][0]
    return stream


def _loudness(path: Path) -> float:
    err = subprocess.run(
        [
            "ffmpeg",
            "-hide_banner",
            "-nostdin",
            "-i",
            str(path),
            "-af",
            "ebur128",
            "-f",
            "null",
            "-",
        ],
        capture_output=True,
        check=True,
        text=True,
    ).stderr
    return float(re.findall(r"I:\s+(-?[\d.]+) LUFS", err)[-1])


def _pcm(path: Path) -> array.array[int]:
    cmd = ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-i", str(path)]
    cmd += ["-f", "s16le", "-ac", "1", "-ar", "8000", "pipe:1"]
    return array.array("h", subprocess.run(cmd, capture_output=True, check=True).stdout)


def _tone_wav(seconds: float) -> bytes:
    cmd = ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-f", "lavfi"]
    cmd += ["-i", f"sine=frequency=300:duration={seconds}", "-f", "wav", "pipe:1"]
    return subprocess.run(cmd, capture_output=True, check=True).stdout


@pytest.fixture(scope="module")
def notice_wav() -> bytes:
    return OfflineEngine().synthesize(NOTICE_35, Voice(), timeout=30)


class CountingSynthesizer(Synthesizer):
    """The real synthesizer, counting the calls that reach an engine."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.calls = 0
        self._count_lock = threading.Lock()

    def synthesize(self, text: str, voice: Voice) -> Synthesis:
        with self._count_lock:
            self.calls += 1
        return super().synthesize(text, voice)


# --- loudspeaker MP3 ---------------------------------------------------------------------


def test_loudspeaker_mp3_is_normalised_mono_and_hashed(notice_wav: bytes, tmp_path: Path) -> None:
    clip = to_loudspeaker_mp3(notice_wav, src_format="wav", out=tmp_path / "n.mp3")
    data = clip.path.read_bytes()
    assert (clip.format, clip.size, clip.sha256) == (
        "mp3",
        len(data),
        hashlib.sha256(data).hexdigest(),
    )
    stream = _stream(clip.path)
    assert (stream["codec_name"], stream["sample_rate"], stream["channels"]) == ("mp3", "44100", 1)
    assert 4 < clip.duration_s < 20
    assert abs(_loudness(clip.path) - LOUDNESS_LUFS) < 1
    raw = tmp_path / "raw.wav"
    raw.write_bytes(notice_wav)
    assert abs(_loudness(raw) - LOUDNESS_LUFS) > 2  # so the normalisation did something


def test_chime_lengthens_the_clip(notice_wav: bytes, tmp_path: Path) -> None:
    plain = to_loudspeaker_mp3(notice_wav, src_format="wav", out=tmp_path / "plain.mp3")
    chimed = to_loudspeaker_mp3(notice_wav, src_format="wav", out=tmp_path / "c.mp3", chime=True)
    assert chimed.duration_s - plain.duration_s == pytest.approx(3.4, abs=0.3)
    assert chimed.sha256 != plain.sha256


def test_edge_mp3_converts_too(tmp_path: Path) -> None:
    clip = to_loudspeaker_mp3(
        sine_mp3(2.0), src_format="mp3", out=tmp_path / "e.mp3", loudnorm=False
    )
    assert clip.duration_s == pytest.approx(2.0, abs=0.15)


def test_garbage_audio_is_a_content_error(tmp_path: Path) -> None:
    with pytest.raises(ContentError):
        to_loudspeaker_mp3(b"not audio at all", src_format="wav", out=tmp_path / "x.mp3")
    (tmp_path / "bad.mp3").write_bytes(b"\x00" * 100)
    with pytest.raises(ContentError):
        probe_duration(tmp_path / "bad.mp3")


def test_missing_ffmpeg_names_the_debian_package(
    notice_wav: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError) as info:
        to_loudspeaker_mp3(notice_wav, src_format="wav", out=tmp_path / "x.mp3")
    assert "apt-get install ffmpeg" in info.value.render("en")


# --- WeCom AMR ---------------------------------------------------------------------------


def _check_amr(clips: list[Clip]) -> None:
    for clip in clips:
        assert clip.path.read_bytes().startswith(b"#!AMR\n")
        stream = _stream(clip.path)
        assert (stream["codec_name"], stream["sample_rate"], stream["channels"]) == (
            "amr_nb",
            "8000",
            1,
        )
        assert 0 < clip.duration_s <= WECOM_VOICE_MAX_SECONDS
        assert clip.size <= WECOM_VOICE_MAX_BYTES


def test_short_script_is_one_amr_clip(notice_wav: bytes, tmp_path: Path) -> None:
    clips = to_wecom_amr(notice_wav, src_format="wav", out_dir=tmp_path)
    _check_amr(clips)
    assert len(clips) == 1
    raw = tmp_path / "raw.wav"
    raw.write_bytes(notice_wav)
    assert clips[0].duration_s == pytest.approx(probe_duration(raw), abs=0.1)


@pytest.mark.slow
def test_long_script_is_split_at_pauses(tmp_path: Path) -> None:
    script = "各位村民请注意，现在播送一则通知。"
    while len(script) < 900:
        script += SENTENCES[len(script) % len(SENTENCES)]
    wav = OfflineEngine().synthesize(script, Voice(), timeout=60)
    clips = to_wecom_amr(wav, src_format="wav", out_dir=tmp_path / "amr")
    _check_amr(clips)
    assert len(clips) >= 4
    raw = tmp_path / "raw.wav"
    raw.write_bytes(wav)
    assert sum(c.duration_s for c in clips) == pytest.approx(probe_duration(raw), abs=0.5)
    # Cut in pauses, not mid-word: every clip but the last ends in near silence (-30 dBFS).
    for clip in clips[:-1]:
        tail = _pcm(clip.path)[-int(0.08 * 8000) :]
        assert max(abs(x) for x in tail) < 32768 * 10 ** (-30 / 20)


def test_given_sentence_breaks_are_used(tmp_path: Path) -> None:
    clips = to_wecom_amr(
        _tone_wav(130),
        src_format="wav",
        out_dir=tmp_path,
        sentence_breaks_s=[40.0, 80.0, 120.0],
        loudnorm=False,
    )
    _check_amr(clips)
    assert [round(c.duration_s) for c in clips] == [40, 40, 50]


def test_no_pause_means_a_hard_cut_under_60_s(tmp_path: Path) -> None:
    clips = to_wecom_amr(_tone_wav(130), src_format="wav", out_dir=tmp_path, loudnorm=False)
    _check_amr(clips)
    assert [round(c.duration_s) for c in clips] == [58, 58, 14]


def test_plan_cuts() -> None:
    assert _plan_cuts(50, [10, 20], max_len=58) == []
    assert _plan_cuts(120, [5, 30, 57, 70, 100], max_len=58) == [57, 100]
    assert _plan_cuts(120, [2, 3], max_len=58) == [58, 116]


# --- the cache -----------------------------------------------------------------------------


def test_key_covers_script_engine_voice_and_format() -> None:
    base: dict[str, Any] = {"script": "通知", "engine": "edge", "voice": Voice(), "fmt": "mp3"}
    key = ClipCache.key(**base)
    assert re.fullmatch(r"[0-9a-f]{64}", key)
    assert ClipCache.key(**{**base, "script": "  通知\n"}) == key
    variants: list[dict[str, Any]] = [
        {"script": "通知。"},
        {"engine": "offline"},
        {"voice": Voice(name="zh-CN-YunxiNeural")},
        {"voice": Voice(rate="+10%")},
        {"voice": Voice(volume="+10%")},
        {"fmt": "amr"},
    ]
    keys = {ClipCache.key(**{**base, **v}) for v in variants}
    assert len(keys) == len(variants) and key not in keys
    offline: dict[str, Any] = {**base, "engine": "offline"}
    # One offline voice: the edge voice name does not change what espeak-ng says.
    assert ClipCache.key(**offline) == ClipCache.key(
        **{**offline, "voice": Voice(name="zh-CN-YunxiNeural")}
    )


def test_put_and_get_by_content_hash(tmp_path: Path) -> None:
    cache = ClipCache(tmp_path / "audio")
    mp3 = sine_mp3(1.0)
    clip = cache.put("k1", mp3, {"engine": "edge"})
    assert clip.path == tmp_path / "audio" / f"{hashlib.sha256(mp3).hexdigest()}.mp3"
    assert hashlib.sha256(clip.path.read_bytes()).hexdigest() == clip.sha256
    assert (clip.format, clip.size) == ("mp3", len(mp3))
    assert clip.duration_s == pytest.approx(1.0, abs=0.1)
    assert ClipCache(tmp_path / "audio").get("k1") == clip  # another process sees it
    assert cache.get("other") is None
    with pytest.raises(ContentError):
        cache.put("k2", b"RIFF....WAVEfmt ", {})


def test_for_settings_lives_under_home(tmp_path: Path) -> None:
    cache = ClipCache.for_settings(Settings(home=tmp_path / "home"))
    assert cache.directory == tmp_path / "home" / "audio"


def test_same_script_is_synthesized_once(tmp_path: Path) -> None:
    cache = ClipCache(tmp_path / "audio")
    synth = CountingSynthesizer(mode="offline")
    first, synthesis, hit = synthesize_clip(
        cache, synth, script=NOTICE_35, voice=Voice(), fmt="mp3"
    )
    assert (hit, synth.calls) == (False, 1)
    assert synthesis is not None and synthesis.engine == "offline"
    for _ in range(3):
        again, none, hit = synthesize_clip(
            ClipCache(tmp_path / "audio"), synth, script=NOTICE_35, voice=Voice(), fmt="mp3"
        )
        assert (again, none, hit) == (first, None, True)
    assert synth.calls == 1
    synthesize_clip(cache, synth, script=NOTICE_35, voice=Voice(rate="+20%"), fmt="mp3")
    synthesize_clip(cache, synth, script=NOTICE_35, voice=Voice(), fmt="mp3", chime=True)
    amr, _, _ = synthesize_clip(cache, synth, script=NOTICE_35, voice=Voice(), fmt="amr")
    assert synth.calls == 4
    meta = cache.meta_for(first[0].sha256)
    assert meta is not None and (meta["engine"], meta["fallback_reason"]) == ("offline", None)
    assert cache.meta_for("0" * 64) is None
    assert amr[0].format == "amr" and amr[0].path.parent == cache.directory


def test_concurrent_workers_synthesize_once(tmp_path: Path) -> None:
    synth = CountingSynthesizer(mode="offline")
    results: list[tuple[list[Clip], bool]] = []

    def worker() -> None:
        clips, _, hit = synthesize_clip(
            ClipCache(tmp_path / "audio"), synth, script=NOTICE_35, voice=Voice(), fmt="mp3"
        )
        results.append((clips, hit))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert synth.calls == 1
    assert sorted(hit for _, hit in results) == [False, True, True, True]
    assert len({clips[0].sha256 for clips, _ in results}) == 1


def test_auto_mode_reuses_the_offline_clip_and_edge_voices_differ(tmp_path: Path) -> None:
    cache = ClipCache(tmp_path / "audio")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NO_PROXY", "127.0.0.1,localhost")
        with EdgeStandin(mp3=sine_mp3(2.0)) as standin:
            synth = CountingSynthesizer(edge=EdgeEngine(endpoint=standin.url))
            clips, synthesis, _ = synthesize_clip(
                cache, synth, script="村民大会", voice=Voice(), fmt="mp3"
            )
            assert synthesis is not None and synthesis.engine == "edge"
            yunxi = Voice(name="zh-CN-YunxiNeural")
            other, _, hit = synthesize_clip(cache, synth, script="村民大会", voice=yunxi, fmt="mp3")
            assert (hit, synth.calls) == (False, 2)
            assert [r.voice for r in standin.requests] == ["zh-CN-XiaoxiaoNeural", yunxi.name]
            # The stand-in serves the same MP3 for both voices: one file, two keys.
            assert other[0].path == clips[0].path

            standin.mode = "429"
            down = CountingSynthesizer(edge=EdgeEngine(endpoint=standin.url))
            _, fell_back, _ = synthesize_clip(
                cache, down, script="防汛通知", voice=Voice(), fmt="mp3"
            )
            assert fell_back is not None and fell_back.fallback_reason == "edge 429"
            standin.mode = "ok"
            recovered = CountingSynthesizer(edge=EdgeEngine(endpoint=standin.url))
            _, none, hit = synthesize_clip(
                cache, recovered, script="防汛通知", voice=yunxi, fmt="mp3"
            )
            assert (none, hit, recovered.calls) == (None, True, 0)
    entry = json.loads((cache.directory / "index.json").read_text("utf-8"))["entries"]
    assert {e["meta"]["fallback_reason"] for e in entry.values()} == {None, "edge 429"}


def test_failed_synthesis_caches_nothing(tmp_path: Path) -> None:
    class Broken(Synthesizer):
        def synthesize(self, text: str, voice: Voice) -> Synthesis:
            raise TransientError(tr("坏了", "broken"), code="x")

    cache = ClipCache(tmp_path / "audio")
    with pytest.raises(TransientError):
        synthesize_clip(cache, Broken(mode="offline"), script="通知", voice=Voice(), fmt="mp3")
    assert (
        cache.get(ClipCache.key(script="通知", engine="offline", voice=Voice(), fmt="mp3")) is None
    )


def test_eviction_removes_least_recently_used(tmp_path: Path) -> None:
    a, b, c = (sine_mp3(1.0, frequency=f) for f in (300, 400, 500))
    size = len(a) + len(b) + len(c) // 2
    cache = ClipCache(tmp_path / "audio", max_bytes=size, touch_interval=0)  # every hit counts
    clip_a = cache.put("a", a, {})
    time.sleep(0.01)
    clip_b = cache.put("b", b, {})
    time.sleep(0.01)
    assert cache.get("a") == clip_a  # a is now more recent than b
    time.sleep(0.01)
    cache.put("c", c, {})
    assert cache.get("b") is None and not clip_b.path.exists()
    assert cache.get("a") is not None and cache.get("c") is not None
    cache.max_bytes = 0
    assert cache.evict() == 2
    assert list(cache.directory.glob("*.mp3")) == []


def test_a_hit_is_read_only_within_the_touch_interval(tmp_path: Path) -> None:
    cache = ClipCache(tmp_path / "audio")
    clip = cache.put("a", sine_mp3(1.0), {"engine": "offline"})
    index = cache.directory / "index.json"
    before = index.stat().st_mtime_ns
    assert cache.get_entry("a") == ([clip], {"engine": "offline"})
    assert index.stat().st_mtime_ns == before  # the fan-out's lookups write nothing
    clip.path.unlink()  # gone from under the index: the entry goes too
    assert cache.get("a") is None and "a" not in index.read_text()


def test_shared_content_survives_evicting_one_key(tmp_path: Path) -> None:
    shared, other = sine_mp3(1.0), sine_mp3(1.0, frequency=600)
    cache = ClipCache(tmp_path / "audio")
    for key, data in (("x", shared), ("w", other), ("y", shared)):
        cache.put(key, data, {})
        time.sleep(0.01)
    assert cache.get("y") == ClipCache(cache.directory).get("y")  # y is now the most recent
    cache.max_bytes = len(shared) + 1
    assert cache.evict() == 2  # x (frees nothing: y shares its file), then w
    clip = cache.get("y")
    assert clip is not None and clip.path.read_bytes() == shared
    assert cache.get("x") is None and cache.get("w") is None


def test_damaged_index_and_lost_files_recover(tmp_path: Path) -> None:
    cache = ClipCache(tmp_path / "audio")
    clip = cache.put("k", sine_mp3(1.0), {})
    clip.path.unlink()
    assert cache.get("k") is None
    clip = cache.put("k", sine_mp3(1.0), {})
    (cache.directory / "index.json").write_text("{not json", "utf-8")
    assert cache.get("k") is None
    assert cache.evict() == 0
    assert not clip.path.exists()  # an orphan once the index forgot it
