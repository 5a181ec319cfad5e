"""Speech engines: edge-tts against a local stand-in of its service, espeak-ng for real."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import edge_tts.communicate
import edge_tts.constants
import pytest

from channels._audio import probe_duration
from channels.base import ContentError, PermanentError, TransientError
from channels.tts import (
    MAX_SCRIPT_CHARS,
    ZH_VOICES,
    EdgeEngine,
    OfflineEngine,
    Synthesizer,
    Voice,
)
from content_queue.errors import ConfigError
from tests.channels.edge_standin import EdgeStandin, sine_mp3

NOTICE_35 = "各位村民请注意，明天上午九点在村委会召开村民大会，请各户代表准时参加。"
REAL_WSS_URL = edge_tts.constants.WSS_URL


@pytest.fixture(scope="module")
def standin_server() -> Iterator[EdgeStandin]:
    with pytest.MonkeyPatch.context() as mp:
        # aiohttp honours proxy variables (trust_env); the stand-in is on loopback.
        mp.setenv("NO_PROXY", "127.0.0.1,localhost")
        with EdgeStandin(mp3=sine_mp3(3.0)) as server:
            yield server


@pytest.fixture
def standin(standin_server: EdgeStandin) -> EdgeStandin:
    standin_server.mode = "ok"
    standin_server.requests.clear()
    standin_server.handshakes.clear()
    return standin_server


def _duration(audio: bytes, suffix: str, tmp_path: Path) -> float:
    path = tmp_path / f"audio.{suffix}"
    path.write_bytes(audio)
    return probe_duration(path)


def test_edge_speaks_through_the_real_client(standin: EdgeStandin, tmp_path: Path) -> None:
    voice = Voice(name="zh-CN-YunxiNeural", rate="+10%", volume="-5%")
    audio = EdgeEngine(endpoint=standin.url).synthesize(NOTICE_35, voice, timeout=10)

    assert audio == standin.mp3
    assert 2.5 < _duration(audio, "mp3", tmp_path) < 3.5
    [request] = standin.requests
    assert request.voice == "zh-CN-YunxiNeural"
    assert request.ssml_voice == "Microsoft Server Speech Text to Speech Voice (zh-CN, YunxiNeural)"
    assert (request.text, request.rate, request.volume) == (NOTICE_35, "+10%", "-5%")
    assert request.output_format == "audio-24khz-48kbitrate-mono-mp3"
    [handshake] = standin.handshakes
    assert handshake.path.endswith("/edge/v1")
    assert {"TrustedClientToken", "ConnectionId", "Sec-MS-GEC"} <= handshake.query.keys()


def test_endpoint_override_is_scoped_to_the_call(standin: EdgeStandin) -> None:
    EdgeEngine(endpoint=standin.url).synthesize("你好", Voice(), timeout=10)
    assert edge_tts.communicate.WSS_URL == REAL_WSS_URL  # type: ignore[attr-defined]
    assert edge_tts.constants.WSS_URL == REAL_WSS_URL


def test_dialect_voice_and_xml_characters(standin: EdgeStandin) -> None:
    voice = Voice(name="zh-CN-shaanxi-XiaoniNeural")
    EdgeEngine(endpoint=standin.url).synthesize("收入 <合计> & 支出", voice, timeout=10)
    [request] = standin.requests
    assert request.voice == "zh-CN-shaanxi-XiaoniNeural"
    assert request.text == "收入 <合计> & 支出"


def test_edge_works_when_called_inside_an_event_loop(standin: EdgeStandin) -> None:
    async def caller() -> bytes:
        return EdgeEngine(endpoint=standin.url).synthesize("你好", Voice(), timeout=10)

    assert asyncio.run(caller()) == standin.mp3


@pytest.mark.parametrize(
    ("mode", "code", "handshakes"),
    [
        ("403", "edge 403", 2),  # edge-tts corrects its clock from Date and tries once more
        ("429", "edge 429", 1),
        ("503", "edge 503", 1),
        ("no-audio", "edge no-audio", 1),
        ("hang", "edge timeout", 1),
    ],
)
def test_edge_failures_are_transient(
    standin: EdgeStandin, mode: str, code: str, handshakes: int
) -> None:
    standin.mode = mode
    with pytest.raises(TransientError) as info:
        EdgeEngine(endpoint=standin.url).synthesize("你好", Voice(), timeout=1.5)
    assert info.value.code == code
    assert len(standin.handshakes) == handshakes
    if mode == "429":
        assert info.value.retry_after == standin.retry_after


def test_other_4xx_is_permanent(standin: EdgeStandin) -> None:
    standin.mode = "401"
    with pytest.raises(PermanentError) as info:
        EdgeEngine(endpoint=standin.url).synthesize("你好", Voice(), timeout=5)
    assert info.value.code == "edge 401"


def test_unreachable_service_is_transient() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    engine = EdgeEngine(endpoint=f"ws://127.0.0.1:{port}/edge/v1?TrustedClientToken=x")
    with pytest.raises(TransientError) as info:
        engine.synthesize("你好", Voice(), timeout=5)
    assert info.value.code == "edge unreachable"


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("403", "edge 403"),
        ("429", "edge 429"),
        ("no-audio", "edge no-audio"),
        ("hang", "edge timeout"),
        ("401", "edge 401"),
    ],
)
def test_auto_falls_back_to_offline(
    standin: EdgeStandin, mode: str, reason: str, tmp_path: Path
) -> None:
    standin.mode = mode
    synth = Synthesizer(edge=EdgeEngine(endpoint=standin.url), timeout=1.5)
    result = synth.synthesize(NOTICE_35, Voice())
    assert (result.engine, result.format, result.fallback_reason) == ("offline", "wav", reason)
    assert result.voice == "espeak-ng:cmn"
    assert _duration(result.audio, "wav", tmp_path) > 3
    assert [r.text for r in standin.requests] == (
        [NOTICE_35] if mode in ("no-audio", "hang") else []
    )


def test_auto_uses_edge_when_it_works(standin: EdgeStandin) -> None:
    synth = Synthesizer(edge=EdgeEngine(endpoint=standin.url))
    result = synth.synthesize(NOTICE_35, Voice(name="zh-CN-liaoning-XiaobeiNeural"))
    assert (result.engine, result.format, result.fallback_reason) == ("edge", "mp3", None)
    assert result.voice == "zh-CN-liaoning-XiaobeiNeural"
    assert result.audio == standin.mp3


def test_after_a_failure_edge_rests_for_the_cooldown(standin: EdgeStandin) -> None:
    standin.mode = "429"
    standin.retry_after = 0
    synth = Synthesizer(edge=EdgeEngine(endpoint=standin.url), edge_cooldown=60)
    assert synth.synthesize("第一条", Voice()).fallback_reason == "edge 429"
    standin.mode = "ok"
    second = synth.synthesize("第二条", Voice())
    assert (second.engine, second.fallback_reason) == ("offline", "edge 429 (cooling down)")
    assert len(standin.handshakes) == 1

    no_rest = Synthesizer(edge=EdgeEngine(endpoint=standin.url), edge_cooldown=0)
    standin.mode = "no-audio"
    assert no_rest.synthesize("第三条", Voice()).engine == "offline"
    standin.mode = "ok"
    assert no_rest.synthesize("第四条", Voice()).engine == "edge"


def test_edge_mode_raises_instead_of_falling_back(standin: EdgeStandin) -> None:
    standin.mode = "429"
    synth = Synthesizer(mode="edge", edge=EdgeEngine(endpoint=standin.url))
    with pytest.raises(TransientError, match="429"):
        synth.synthesize("你好", Voice())


def test_offline_mode_never_calls_edge(standin: EdgeStandin) -> None:
    synth = Synthesizer(mode="offline", edge=EdgeEngine(endpoint=standin.url))
    result = synth.synthesize(NOTICE_35, Voice())
    assert (result.engine, result.fallback_reason) == ("offline", None)
    assert standin.handshakes == []


def test_offline_duration_follows_script_length(tmp_path: Path) -> None:
    engine = OfflineEngine()
    assert len(NOTICE_35) == 35
    one = _duration(engine.synthesize(NOTICE_35, Voice(), timeout=30), "wav", tmp_path)
    two = _duration(engine.synthesize(NOTICE_35 * 2, Voice(), timeout=30), "wav", tmp_path)
    fast = _duration(engine.synthesize(NOTICE_35, Voice(rate="+50%"), timeout=30), "wav", tmp_path)
    assert 4 < one < 20
    assert 1.7 * one < two < 2.3 * one
    assert fast < 0.85 * one


def test_offline_reads_a_leading_dash_as_text(tmp_path: Path) -> None:
    audio = OfflineEngine().synthesize("-v 请注意", Voice(), timeout=30)
    assert _duration(audio, "wav", tmp_path) > 0.5


def test_missing_espeak_is_a_config_error_naming_the_package() -> None:
    with pytest.raises(ConfigError) as info:
        OfflineEngine(binary="espeak-ng-not-installed").synthesize("你好", Voice(), timeout=5)
    assert "espeak-ng" in info.value.render("en")
    assert "apt-get install espeak-ng" in info.value.render("zh")


def test_missing_espeak_language_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no voice"):
        OfflineEngine(language="xx-nonexistent").synthesize("你好", Voice(), timeout=5)


@pytest.mark.parametrize(
    "kwargs",
    [{"name": "Xiaoxiao"}, {"rate": "fast"}, {"volume": "+500%"}, {"rate": "10%"}],
)
def test_bad_voice_settings_are_config_errors(kwargs: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        Voice(**kwargs)


def test_known_voices_are_valid() -> None:
    assert [Voice(name=v).name for v in ZH_VOICES] == list(ZH_VOICES)


def test_script_limits() -> None:
    synth = Synthesizer(mode="offline")
    with pytest.raises(ContentError):
        synth.synthesize("   ", Voice())
    with pytest.raises(ContentError, match=str(MAX_SCRIPT_CHARS)):
        synth.synthesize("通" * (MAX_SCRIPT_CHARS + 1), Voice())
    with pytest.raises(ConfigError):
        Synthesizer(mode="cloud")  # type: ignore[arg-type]
