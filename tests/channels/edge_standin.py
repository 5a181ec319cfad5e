"""A local stand-in for Microsoft's edge-tts WebSocket service, for tests and demos.

It speaks the protocol that ``edge_tts.Communicate`` (7.x) uses, as read from
``edge_tts/communicate.py``:

client -> server (text frames, headers then a blank line then the body)::

    X-Timestamp:...\\r\\nContent-Type:application/json...\\r\\nPath:speech.config\\r\\n\\r\\n{json}
    X-RequestId:<hex>\\r\\nContent-Type:application/ssml+xml\\r\\nX-Timestamp:...\\r\\n
    Path:ssml\\r\\n\\r\\n<speak ...><voice name='...'><prosody ...>TEXT</prosody></voice></speak>

server -> client::

    text    X-RequestId:<id>\\r\\nContent-Type:...\\r\\nPath:turn.start\\r\\n\\r\\n{json}
    text    ...Path:audio.metadata\\r\\n\\r\\n{"Metadata":[{"Type":"SentenceBoundary",...}]}
    binary  2-byte big-endian header length, headers ending in \\r\\n ("Path:audio",
            "Content-Type:audio/mpeg"), then MP3 bytes (24 kHz, 48 kbit/s, mono)
    binary  the same headers without Content-Type and no data (end of the stream)
    text    ...Path:turn.end\\r\\n\\r\\n{json}

Modes (settable between requests through :attr:`EdgeStandin.mode`):

``ok``        the exchange above, serving :attr:`EdgeStandin.mp3`
``403``       HTTP 403 at the handshake, with a ``Date`` header as Microsoft sends (edge-tts
              then corrects its clock skew and tries once more, so two handshakes arrive)
``429``       HTTP 429 at the handshake with ``Retry-After``
``no-audio``  turn.start then turn.end with no audio ("No audio was received")
``hang``      accepts the request and never answers (the client must time out)
any status    e.g. ``401`` or ``503``: refused at the handshake with that HTTP status

Every SSML request is recorded as an :class:`EdgeRequest` (voice, text, rate, volume), and
every handshake's query string in :attr:`EdgeStandin.handshakes`.

Use it as a context manager and point :class:`channels.tts.EdgeEngine` at :attr:`url`::

    with EdgeStandin(mp3=sine_mp3(2.0)) as standin:
        EdgeEngine(endpoint=standin.url).synthesize("你好", Voice(), timeout=5)
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import threading
import uuid
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Literal, TypeAlias
from urllib.parse import parse_qs, urlsplit
from xml.sax.saxutils import unescape

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

# Or any HTTP status as digits ("401", "503"): refused at the handshake with that status.
Mode: TypeAlias = Literal["ok", "403", "429", "no-audio", "hang"] | str

_SSML = re.compile(
    r"<voice name='(?P<voice>[^']*)'><prosody pitch='(?P<pitch>[^']*)' rate='(?P<rate>[^']*)'"
    r" volume='(?P<volume>[^']*)'>(?P<text>.*)</prosody></voice>",
    re.DOTALL,
)
_LONG_NAME = re.compile(
    r"^Microsoft Server Speech Text to Speech Voice \((?P<loc>.+), (?P<n>.+)\)$"
)
_CHUNK = 4096


@dataclass(frozen=True)
class EdgeRequest:
    """One SSML request as the service saw it."""

    voice: str
    """Short voice name, e.g. ``zh-CN-XiaoxiaoNeural`` (edge-tts sends the long form)."""
    ssml_voice: str
    text: str
    rate: str
    volume: str
    output_format: str | None


@dataclass(frozen=True)
class Handshake:
    path: str
    query: dict[str, list[str]]
    status: int


def sine_mp3(seconds: float, *, frequency: int = 440) -> bytes:
    """Real MP3 bytes in edge-tts's output format, made by ffmpeg from a sine source."""
    source = f"sine=frequency={frequency}:duration={seconds}:sample_rate=24000"
    cmd = ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", source]
    cmd += ["-ac", "1", "-c:a", "libmp3lame", "-b:a", "48k", "-f", "mp3", "pipe:1"]
    return subprocess.run(cmd, check=True, capture_output=True, timeout=60).stdout


def _short_voice(ssml_voice: str) -> str:
    m = _LONG_NAME.match(ssml_voice)
    return f"{m['loc']}-{m['n']}" if m else ssml_voice


def _split_message(raw: str) -> tuple[dict[str, str], str]:
    head, _, body = raw.partition("\r\n\r\n")
    headers = {}
    for line in head.split("\r\n"):
        key, _, value = line.partition(":")
        headers[key] = value
    return headers, body


class EdgeStandin:
    """A threaded WebSocket server on 127.0.0.1 imitating the edge-tts service."""

    def __init__(self, *, mp3: bytes, mode: Mode = "ok", retry_after: int = 30) -> None:
        self.mp3 = mp3
        self.mode: Mode = mode
        self.retry_after = retry_after
        self.requests: list[EdgeRequest] = []
        self.handshakes: list[Handshake] = []
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Future[None] | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        """The value for edge-tts's WSS_URL (it appends ``&ConnectionId=...``)."""
        return (
            f"ws://127.0.0.1:{self.port}/consumer/speech/synthesize/readaloud/edge/v1"
            "?TrustedClientToken=standin"
        )

    def __enter__(self) -> EdgeStandin:
        self._thread = threading.Thread(target=self._run, name="edge-standin", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("edge stand-in did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set_result, None)
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = self._loop.create_future()
        server: Server
        async with serve(
            self._handle,
            "127.0.0.1",
            0,
            process_request=self._process_request,
            close_timeout=1,
            ping_interval=None,
        ) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            self._ready.set()
            await self._stop

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        status = int(self.mode) if self.mode.isdigit() else 101
        with self._lock:
            self.handshakes.append(Handshake(parts.path, parse_qs(parts.query), status))
        if status == 101:
            return None
        response = connection.respond(HTTPStatus(status), HTTPStatus(status).phrase + "\n")
        if "Date" not in response.headers:  # edge-tts needs it to correct its clock after a 403
            response.headers["Date"] = formatdate(usegmt=True)
        if status == 429:
            response.headers["Retry-After"] = str(self.retry_after)
        return response

    async def _handle(self, ws: ServerConnection) -> None:
        output_format: str | None = None
        try:
            async for raw in ws:
                if not isinstance(raw, str):
                    continue
                headers, body = _split_message(raw)
                if headers.get("Path") == "speech.config":
                    config = json.loads(body)
                    output_format = config["context"]["synthesis"]["audio"]["outputFormat"]
                elif headers.get("Path") == "ssml":
                    await self._answer(ws, headers.get("X-RequestId", ""), body, output_format)
        except ConnectionClosed:
            pass

    async def _answer(
        self, ws: ServerConnection, request_id: str, ssml: str, output_format: str | None
    ) -> None:
        m = _SSML.search(ssml)
        if m is None:
            await ws.close(1007, "bad ssml")
            return
        with self._lock:
            self.requests.append(
                EdgeRequest(
                    voice=_short_voice(m["voice"]),
                    ssml_voice=m["voice"],
                    text=unescape(m["text"]),
                    rate=m["rate"],
                    volume=m["volume"],
                    output_format=output_format,
                )
            )
        if self.mode == "hang":
            await ws.wait_closed()  # until the client gives up (or the stand-in stops)
            return

        def text_frame(path: str, body: str) -> str:
            return (
                f"X-RequestId:{request_id}\r\nContent-Type:application/json; charset=utf-8\r\n"
                f"Path:{path}\r\n\r\n{body}"
            )

        def audio_frame(data: bytes) -> bytes:
            stream = f"X-RequestId:{request_id}\r\n"
            if data:
                stream += "Content-Type:audio/mpeg\r\n"
            headers = (stream + f"X-StreamId:{uuid.uuid4().hex}\r\nPath:audio\r\n").encode()
            # The length covers the headers' trailing CRLF; edge-tts skips two more bytes for it.
            return len(headers).to_bytes(2, "big") + headers + data

        await ws.send(text_frame("turn.start", '{"context":{"serviceTag":"standin"}}'))
        if self.mode == "ok":
            sentence = unescape(m["text"])
            meta = {
                "Metadata": [
                    {
                        "Type": "SentenceBoundary",
                        "Data": {
                            "Offset": 1_000_000,
                            "Duration": 10_000_000,
                            "text": {"Text": sentence, "Length": len(sentence)},
                        },
                    }
                ]
            }
            await ws.send(text_frame("audio.metadata", json.dumps(meta, ensure_ascii=False)))
            for start in range(0, len(self.mp3), _CHUNK):
                await ws.send(audio_frame(self.mp3[start : start + _CHUNK]))
            await ws.send(audio_frame(b""))
        await ws.send(text_frame("turn.end", "{}"))
