"""Text to speech for the loudspeakers: edge-tts online, espeak-ng Mandarin offline.

Features
--------
Engines
    ``edge``     edge-tts 7.x (Microsoft's neural voices, e.g. ``zh-CN-XiaoxiaoNeural`` and the
                 dialect voices ``zh-CN-liaoning-XiaobeiNeural``, ``zh-CN-shaanxi-XiaoniNeural``).
                 Needs the internet; its author warns it is not for commercial use.
    ``offline``  Debian's ``espeak-ng`` binary speaking ``cmn``: no network, robotic, always there.
Formats
    edge gives MP3 24 kHz 48 kbit/s mono (the only format it offers); offline gives WAV 22,050 Hz
    mono. ``channels._audio`` turns either into loudspeaker MP3 or WeCom AMR.
Limits
    A script is 1 to :data:`MAX_SCRIPT_CHARS` characters (ContentError otherwise); edge-tts splits
    longer texts itself at 4,096 bytes. Each call has a timeout (default 20 s).
Errors (edge; see :func:`_edge_error`)
    TransientError with code ``edge 403`` (Microsoft has had waves of 403s; edge-tts already
    corrected its clock and tried once more), ``edge 429`` (throttled; ``retry_after`` from the
    header), ``edge 5xx``, ``edge timeout``, ``edge no-audio``, ``edge unreachable``,
    ``edge protocol``. Other 4xx at the handshake are PermanentError ``edge <status>`` (the
    service refuses this client until edge-tts is upgraded). Bad voice, rate or volume settings
    and a missing espeak-ng are ConfigError.
Fallback rules (:class:`Synthesizer`)
    ``auto``: edge first; on any ChannelError from edge the offline engine speaks and
    :attr:`Synthesis.fallback_reason` records the code. After a failure edge is skipped for
    ``edge_cooldown`` seconds (or the server's Retry-After, if longer) so a hanging or throttling
    service does not cost every notice a timeout. ``edge``: edge only, errors raised.
    ``offline``: offline only.
Config
    :class:`Voice` (name, rate ``+0%``, volume ``+0%``), mode, timeout, edge endpoint (tests point
    it at a local stand-in), proxy.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib
import math
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from channels.base import ChannelError, ContentError, PermanentError, TransientError
from content_queue.errors import ConfigError
from content_queue.i18n import tr

__all__ = [
    "MAX_SCRIPT_CHARS",
    "ZH_VOICES",
    "EdgeEngine",
    "EngineName",
    "OfflineEngine",
    "Synthesis",
    "Synthesizer",
    "Voice",
]

EngineName = Literal["edge", "offline"]
Mode = Literal["edge", "offline", "auto"]

MAX_SCRIPT_CHARS = 5000
"""About 20 minutes of speech: longer is a document to publish, not an announcement."""

ZH_VOICES = (
    "zh-CN-XiaoxiaoNeural",
    "zh-CN-YunxiNeural",
    "zh-CN-YunjianNeural",
    "zh-CN-YunyangNeural",
    "zh-CN-liaoning-XiaobeiNeural",
    "zh-CN-shaanxi-XiaoniNeural",
)

_VOICE_NAME = re.compile(r"^[a-z]{2,3}-[A-Z]{2,}(-[a-z]+)?-[A-Za-z]+Neural$")
_PERCENT = re.compile(r"^[+-]\d{1,3}%$")
_T = TypeVar("_T")


@dataclass(frozen=True)
class Voice:
    """An edge-tts voice with rate and volume as edge-tts writes them (``+10%``, ``-5%``)."""

    name: str = "zh-CN-XiaoxiaoNeural"
    rate: str = "+0%"
    volume: str = "+0%"

    def __post_init__(self) -> None:
        if not _VOICE_NAME.match(self.name):
            raise ConfigError(
                tr(
                    "语音名称 {v} 无效，应形如 zh-CN-XiaoxiaoNeural",
                    "invalid voice name {v}; expected something like zh-CN-XiaoxiaoNeural",
                    v=self.name,
                )
            )
        for label, value in (("rate", self.rate), ("volume", self.volume)):
            if not _PERCENT.match(value) or not -100 <= int(value[:-1]) <= 200:
                raise ConfigError(
                    tr(
                        "语音参数 {k}={v} 无效，应形如 +10% 或 -20%（-100% 到 +200%）",
                        "invalid voice {k}={v}; expected e.g. +10% or -20% (-100% to +200%)",
                        k=label,
                        v=value,
                    )
                )

    def percent(self, field: Literal["rate", "volume"]) -> int:
        return int(getattr(self, field)[:-1])


@dataclass(frozen=True)
class Synthesis:
    """Audio from one engine, and why the offline engine spoke if edge was asked first."""

    audio: bytes
    format: Literal["mp3", "wav"]
    engine: EngineName
    voice: str
    fallback_reason: str | None


def _run_sync(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run a coroutine from sync code, even when this thread already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


_ENDPOINT_LOCK = threading.Lock()
_EDGE_URL_HOLDERS = ("communicate", "constants")


@contextlib.contextmanager
def _edge_endpoint(url: str | None) -> Iterator[None]:
    """Point edge-tts at ``url`` for the duration of one call.

    edge-tts has no endpoint parameter: ``communicate.py`` builds the URL from the module global
    ``WSS_URL`` it imported from ``constants.py``, so that copy is the one that counts (both are
    patched to stay consistent). The lock keeps two overriding calls from crossing; calls
    without an override never patch, so production code never waits on it.
    """
    if url is None:
        yield
        return
    modules: list[Any] = [importlib.import_module(f"edge_tts.{m}") for m in _EDGE_URL_HOLDERS]
    with _ENDPOINT_LOCK:
        saved = [m.WSS_URL for m in modules]
        for module in modules:
            module.WSS_URL = url
        try:
            yield
        finally:
            for module, old in zip(modules, saved, strict=True):
                module.WSS_URL = old


def _edge_error(exc: BaseException) -> ChannelError:
    """One table for the edge service's failures (see the module docstring)."""
    import aiohttp
    from edge_tts import exceptions as ex

    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return TransientError(
            tr("edge-tts 语音合成超时", "edge-tts did not answer in time"), code="edge timeout"
        )
    if isinstance(exc, aiohttp.ClientResponseError):
        status = exc.status
        if status == 429:
            retry_after = None
            with contextlib.suppress(TypeError, ValueError):
                retry_after = float(exc.headers.get("Retry-After", "")) if exc.headers else None
            return TransientError(
                tr("edge-tts 限流（429），稍后再试", "edge-tts is throttling us (429)"),
                code="edge 429",
                retry_after=retry_after,
            )
        if status == 403 or status >= 500:
            return TransientError(
                tr(
                    "edge-tts 暂时拒绝服务（HTTP {s}）",
                    "edge-tts refused for now (HTTP {s})",
                    s=status,
                ),
                code=f"edge {status}",
            )
        return PermanentError(
            tr(
                "edge-tts 拒绝了请求（HTTP {s}），可能需要升级 edge-tts",
                "edge-tts refused the request (HTTP {s}); edge-tts may need an upgrade",
                s=status,
            ),
            code=f"edge {status}",
        )
    if isinstance(exc, ex.SkewAdjustmentError):
        return TransientError(
            tr("edge-tts 暂时拒绝服务（403）", "edge-tts refused for now (403)"), code="edge 403"
        )
    if isinstance(exc, ex.NoAudioReceived):
        return TransientError(
            tr("edge-tts 没有返回音频", "edge-tts returned no audio"), code="edge no-audio"
        )
    if isinstance(exc, aiohttp.ClientError | OSError):
        return TransientError(
            tr("无法连接 edge-tts 服务：{e}", "cannot reach the edge-tts service: {e}", e=exc),
            code="edge unreachable",
        )
    return TransientError(
        tr("edge-tts 返回了无法识别的响应：{e}", "edge-tts answered unexpectedly: {e}", e=exc),
        code="edge protocol",
    )


class EdgeEngine:
    """edge-tts through its own client (``Communicate.stream``); MP3 24 kHz 48 kbit/s."""

    name: ClassVar[EngineName] = "edge"
    output_format: ClassVar[Literal["mp3"]] = "mp3"

    def __init__(
        self, *, endpoint: str | None = None, proxy: str | None = None, connect_timeout: int = 10
    ) -> None:
        self.endpoint = endpoint
        """A ``ws://`` URL for edge-tts's WSS_URL (a local stand-in); None for Microsoft's."""
        self.proxy = proxy
        self.connect_timeout = connect_timeout

    def synthesize(self, text: str, voice: Voice, *, timeout: float) -> bytes:
        with _edge_endpoint(self.endpoint):
            try:
                return _run_sync(asyncio.wait_for(self._collect(text, voice, timeout), timeout))
            except ChannelError:
                raise
            except Exception as exc:
                raise _edge_error(exc) from exc

    async def _collect(self, text: str, voice: Voice, timeout: float) -> bytes:
        import edge_tts

        communicate = edge_tts.Communicate(
            text,
            voice.name,
            rate=voice.rate,
            volume=voice.volume,
            proxy=self.proxy,
            connect_timeout=min(self.connect_timeout, max(1, math.ceil(timeout))),
            receive_timeout=max(1, math.ceil(timeout)),
        )
        chunks: list[bytes] = []
        async for chunk in communicate.stream():
            if chunk["type"] == "audio":
                chunks.append(chunk["data"])
        audio = b"".join(chunks)
        if not audio:
            raise TransientError(
                tr("edge-tts 没有返回音频", "edge-tts returned no audio"), code="edge no-audio"
            )
        return audio


class OfflineEngine:
    """Debian's espeak-ng speaking Mandarin (``cmn``) into a WAV file; no network."""

    name: ClassVar[EngineName] = "offline"
    output_format: ClassVar[Literal["wav"]] = "wav"
    # espeak-ng's default speed; edge-style percentages scale it.
    BASE_WPM: ClassVar[int] = 175

    def __init__(self, *, binary: str = "espeak-ng", language: str = "cmn") -> None:
        self.binary = binary
        self.language = language

    @property
    def voice_id(self) -> str:
        return f"espeak-ng:{self.language}"

    def _exe(self) -> str:
        exe = shutil.which(self.binary)
        if exe is None:
            raise ConfigError(
                tr(
                    "找不到离线语音引擎 {b}，请安装 Debian 软件包 espeak-ng"
                    "（sudo apt-get install espeak-ng）",
                    "the offline speech engine {b} is missing; install the Debian package "
                    "espeak-ng (sudo apt-get install espeak-ng)",
                    b=self.binary,
                )
            )
        return exe

    def synthesize(self, text: str, voice: Voice, *, timeout: float) -> bytes:
        exe = self._exe()
        speed = round(self.BASE_WPM * (100 + voice.percent("rate")) / 100)
        amplitude = round(100 * (100 + voice.percent("volume")) / 100)
        with tempfile.TemporaryDirectory(prefix="vc-espeak-") as tmp:
            out = Path(tmp) / "out.wav"
            # -b 1: the text is UTF-8 whatever the locale (servers often run with LANG=C);
            # --stdin: a script starting with "-" is never read as an option.
            cmd = [exe, "-b", "1", "-v", self.language, "-s", str(max(80, min(speed, 450)))]
            cmd += ["-a", str(max(0, min(amplitude, 200))), "-w", str(out), "--stdin"]
            try:
                proc = subprocess.run(
                    cmd, input=text.encode("utf-8"), capture_output=True, timeout=timeout
                )
            except subprocess.TimeoutExpired as exc:
                raise TransientError(
                    tr("离线语音合成超时", "the offline engine did not finish in time"),
                    code="offline timeout",
                ) from exc
            stderr = proc.stderr.decode("utf-8", "replace").strip()
            if proc.returncode != 0 or not out.exists():
                if "voice does not exist" in stderr:
                    raise ConfigError(
                        tr(
                            "espeak-ng 缺少语音 {l}，请安装 Debian 软件包 espeak-ng-data",
                            "espeak-ng has no voice {l}; install the Debian package espeak-ng-data",
                            l=self.language,
                        )
                    )
                raise PermanentError(
                    tr("espeak-ng 合成失败：{e}", "espeak-ng failed: {e}", e=stderr[-300:]),
                    code="offline espeak-ng",
                )
            audio = out.read_bytes()
        if len(audio) <= 1024:  # a WAV header and a few samples: nothing was spoken
            raise ContentError(
                tr("这段文字没有可朗读的内容", "there is nothing speakable in this text"),
                code="offline empty",
            )
        return audio


class Synthesizer:
    """Chooses the engine (see "Fallback rules" above) and records which one spoke."""

    def __init__(
        self,
        *,
        mode: Mode = "auto",
        edge: EdgeEngine | None = None,
        offline: OfflineEngine | None = None,
        timeout: float = 20.0,
        edge_cooldown: float = 60.0,
    ) -> None:
        if mode not in ("edge", "offline", "auto"):
            raise ConfigError(
                tr(
                    "语音引擎模式 {m} 无效，可选 edge、offline、auto",
                    "invalid engine mode {m}; use edge, offline or auto",
                    m=mode,
                )
            )
        self.mode: Mode = mode
        self.edge = edge or EdgeEngine()
        self.offline = offline or OfflineEngine()
        self.timeout = timeout
        self.edge_cooldown = edge_cooldown
        self._edge_paused_until = 0.0
        self._edge_pause_reason = ""

    def synthesize(self, text: str, voice: Voice) -> Synthesis:
        text = text.strip()
        if not text:
            raise ContentError(tr("没有要朗读的文字", "there is no text to speak"), code="empty")
        if len(text) > MAX_SCRIPT_CHARS:
            raise ContentError(
                tr(
                    "播音稿 {n} 字，超过 {max} 字上限",
                    "the script has {n} characters, more than the {max} allowed",
                    n=len(text),
                    max=MAX_SCRIPT_CHARS,
                ),
                code="too long",
            )
        if self.mode == "offline":
            return self._offline(text, voice, None)
        if self.mode == "auto" and time.monotonic() < self._edge_paused_until:
            return self._offline(text, voice, f"{self._edge_pause_reason} (cooling down)")
        try:
            audio = self.edge.synthesize(text, voice, timeout=self.timeout)
        except ChannelError as exc:
            if self.mode == "edge":
                raise
            reason = exc.code or "edge error"
            retry_after = exc.retry_after if isinstance(exc, TransientError) else None
            self._edge_paused_until = time.monotonic() + max(self.edge_cooldown, retry_after or 0.0)
            self._edge_pause_reason = reason
            return self._offline(text, voice, reason)
        return Synthesis(audio, "mp3", "edge", voice.name, None)

    def _offline(self, text: str, voice: Voice, reason: str | None) -> Synthesis:
        audio = self.offline.synthesize(text, voice, timeout=self.timeout)
        return Synthesis(audio, "wav", "offline", self.offline.voice_id, reason)
