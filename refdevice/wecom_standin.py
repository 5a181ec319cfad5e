"""A local stand-in for WeCom's group-robot webhook API, for tests, the demo and benchmarks.

It implements what villagecast uses, as WeCom documents it, on a real HTTP server (a free
loopback port, HTTP/1.1 keep-alive):

- ``POST /cgi-bin/webhook/send?key=KEY`` with JSON ``text`` (``content`` at most 2,048 UTF-8
  bytes, ``mentioned_list`` a list of strings), ``markdown`` / ``markdown_v2`` (4,096 bytes),
  ``file`` and ``voice`` (a ``media_id`` this robot uploaded, of that type, at most 3 days old);
- ``POST /cgi-bin/webhook/upload_media?key=KEY&type=file|voice``, multipart field ``media``:
  files of 6 bytes to 20 MB (a ``.pdf`` must be a whole PDF: ``%PDF-`` first, ``%%EOF`` at
  the end; the stand-in's own check, stricter than WeCom's); voice must start with the AMR
  header ``#!AMR\\n``, be at most 2 MB and play at most 60 s (counted from its AMR-NB
  frames, 20 ms each).

Errors come back as HTTP 200 with ``{"errcode": N, "errmsg": ...}``: 93000 unknown key,
45009 more than ``rate`` messages in ``window`` seconds for one key (enforced here too),
40058 bad JSON, missing or oversized content, 40008 unknown msgtype, 44004 empty text,
40007 unknown media id, 40005 bad upload type, 44001 no file, 40004 not AMR (or a broken
PDF), 40006 bad size.
:meth:`WecomStandin.fail_next` scripts the next responses for a key (an errcode, an HTTP
status, or a delay before answering, with the message posted or not), and every request is
kept in :attr:`WecomStandin.records` so tests can count side effects.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import socket
import sys
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["Fault", "Media", "Record", "WecomStandin", "amr_duration"]

TEXT_MAX = 2048
MARKDOWN_MAX = 4096
FILE_MAX = 20 * 1024 * 1024
VOICE_MAX = 2 * 1024 * 1024
VOICE_MAX_SECONDS = 60.0
MEDIA_TTL = 3 * 24 * 3600.0
AMR_MAGIC = b"#!AMR\n"
# AMR-NB storage format (RFC 4867 section 5): frame size in bytes, header byte included,
# by frame type; types 9-15 carry no speech bits.
_AMR_FRAME_BYTES = [13, 14, 16, 18, 20, 21, 27, 32, 6, 1, 1, 1, 1, 1, 1, 1]


def _is_pdf(data: bytes) -> bool:
    """A whole PDF: the header first, the end-of-file marker within its last bytes (a file
    cut short by a broken upload fails this)."""
    return data.startswith(b"%PDF-") and b"%%EOF" in data[-1024:]


def amr_duration(data: bytes) -> float | None:
    """Seconds of AMR-NB audio (20 ms a frame), or None if the file is not well formed."""
    if not data.startswith(AMR_MAGIC):
        return None
    pos, frames = len(AMR_MAGIC), 0
    while pos < len(data):
        size = _AMR_FRAME_BYTES[(data[pos] >> 3) & 0x0F]
        if pos + size > len(data):
            return None
        pos += size
        frames += 1
    return frames * 0.02


@dataclass
class Fault:
    """A scripted answer: ``errcode`` (HTTP 200), or an HTTP ``status``; ``delay`` seconds
    before answering; ``posted`` true means the message is posted anyway (a lost answer)."""

    errcode: int | None = None
    status: int | None = None
    delay: float = 0.0
    posted: bool = False
    path: str = "send"


@dataclass(frozen=True)
class Media:
    media_id: str
    key: str
    type: str
    filename: str
    data: bytes
    at: float


@dataclass(frozen=True)
class Record:
    """One request as the stand-in saw it, and what it answered."""

    at: float
    """time.monotonic() when the request arrived."""
    path: str
    key: str
    errcode: int | None
    status: int
    posted: bool
    """A message went into the group (only ``send``, errcode 0 or a posted fault)."""
    body: dict[str, Any] | None = None
    media: Media | None = None

    @property
    def msgtype(self) -> str | None:
        return None if self.body is None else self.body.get("msgtype")

    @property
    def content(self) -> str:
        if self.body is None:
            return ""
        inner = self.body.get(str(self.body.get("msgtype")), {})
        return str(inner.get("content", "")) if isinstance(inner, dict) else ""


@dataclass
class _State:
    keys: set[str] = field(default_factory=set)
    faults: dict[str, deque[Fault]] = field(default_factory=lambda: defaultdict(deque))
    records: list[Record] = field(default_factory=list)
    media: dict[str, Media] = field(default_factory=dict)
    posted_at: dict[str, deque[float]] = field(default_factory=lambda: defaultdict(deque))
    outage_until: float = 0.0
    outage_script: tuple[Fault, ...] = ()
    outage_served: int = 0


def _multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """name -> (filename, data) of a multipart/form-data body."""
    m = re.search(r'boundary="?([^";]+)"?', content_type)
    if not m:
        return {}
    out: dict[str, tuple[str | None, bytes]] = {}
    for chunk in body.split(b"--" + m.group(1).encode("latin-1")):
        head, sep, data = chunk.partition(b"\r\n\r\n")
        if not sep:
            continue
        headers = head.decode("utf-8", "replace")
        name = re.search(r'name="([^"]*)"', headers)
        filename = re.search(r'filename="([^"]*)"', headers)
        if name:
            out[name.group(1)] = (filename.group(1) if filename else None, data[:-2])
    return out


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.conns.add(self.connection)
        # Headers and body leave in separate writes: without this, Nagle's algorithm and the
        # client's delayed ACK add 40 ms to every answer on loopback.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _answer(self, status: int, payload: dict[str, Any] | None) -> None:
        data = (
            json.dumps(payload, ensure_ascii=False).encode("utf-8")
            if payload is not None
            else b"<html><body>bad gateway</body></html>"
        )
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if payload else "text/html")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        path = url.path.rsplit("/", 1)[-1]
        if not url.path.startswith("/cgi-bin/webhook/") or path not in ("send", "upload_media"):
            self._answer(404, {"errcode": 404, "errmsg": "not found"})
            return
        standin = self.server.standin
        status, payload, delay = standin.handle(path, query, body, self.headers)
        if delay:
            time.sleep(delay)
        try:
            self._answer(status, payload)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
            return


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog is 5: workers that send to many robots at once open
    # more connections than that together, and a full backlog drops them on the floor.
    request_queue_size = 128
    standin: WecomStandin
    conns: set[socket.socket]

    def shutdown_request(self, request: Any) -> None:
        self.conns.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client killed between two requests on a kept-alive connection (the chaos
        # suite SIGKILLs workers) resets it while the handler waits for the next request
        # line: not the stand-in's error. Anything else is printed as socketserver does.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class WecomStandin:
    """The stand-in server; use as a context manager or call start() and stop()."""

    def __init__(
        self,
        *,
        rate: int = 20,
        window: float = 60.0,
        host: str = "127.0.0.1",
        latency: float = 0.0,
    ) -> None:
        self.rate = rate
        self.latency = latency
        """Seconds every answer waits (after the request is handled): WeCom's round trip
        from a county office, for benchmarks; 0 on loopback."""
        self.window = window
        self.host = host
        self._state = _State()
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> WecomStandin:
        server = _Server((self.host, 0), _Handler)
        server.standin = self
        server.conns = set()
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            # Keep-alive connections of clients still open: close them, not the GC.
            for conn in list(self._server.conns):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            self._server = None

    def __enter__(self) -> WecomStandin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._server is not None, "not started"
        return f"http://{self.host}:{self._server.server_address[1]}"

    # -- scripting -------------------------------------------------------------------------

    def add_key(self, key: str | None = None) -> str:
        """Register a robot (a new random key unless given); unknown keys get 93000."""
        key = key or secrets.token_hex(18)
        with self._lock:
            self._state.keys.add(key)
        return key

    def remove_key(self, key: str) -> None:
        """The group owner removed the robot: its key now gets 93000."""
        with self._lock:
            self._state.keys.discard(key)

    def fail_next(self, key: str, fault: Fault, *, times: int = 1) -> None:
        with self._lock:
            self._state.faults[key].extend(Fault(**fault.__dict__) for _ in range(times))

    def outage(self, seconds: float, script: Sequence[Fault]) -> None:
        """For the next ``seconds``, answer every message sent to any robot with the
        faults of ``script`` in turn (after any ``fail_next`` faults): WeCom having a bad
        minute. Uploads are not affected."""
        if not script:
            raise ValueError("an outage needs at least one fault")
        with self._lock:
            self._state.outage_until = time.monotonic() + seconds
            self._state.outage_script = tuple(script)
            self._state.outage_served = 0

    @property
    def outage_served(self) -> int:
        """How many requests the last :meth:`outage` answered with a fault."""
        with self._lock:
            return self._state.outage_served

    def reset(self) -> None:
        with self._lock:
            keys = set(self._state.keys)
            self._state = _State(keys=keys)

    # -- what happened ---------------------------------------------------------------------

    @property
    def records(self) -> list[Record]:
        with self._lock:
            return list(self._state.records)

    def posted(self, key: str | None = None) -> list[Record]:
        """Messages that went into groups (of one key), in arrival order."""
        return [r for r in self.records if r.posted and (key is None or r.key == key)]

    def media(self, media_id: str) -> Media | None:
        with self._lock:
            return self._state.media.get(media_id)

    def iter_posted_by_key(self) -> Iterator[tuple[str, list[Record]]]:
        by_key: dict[str, list[Record]] = defaultdict(list)
        for r in self.posted():
            by_key[r.key].append(r)
        yield from by_key.items()

    # -- the protocol ----------------------------------------------------------------------

    def handle(
        self, path: str, query: dict[str, str], body: bytes, headers: Any
    ) -> tuple[int, dict[str, Any] | None, float]:
        key = query.get("key", "")
        now = time.monotonic()
        with self._lock:
            state = self._state
            faults = state.faults.get(key)
            fault = None
            if faults and faults[0].path == path:
                fault = faults.popleft()
            elif path == "send" and now < state.outage_until and key in state.keys:
                script = state.outage_script
                fault = script[state.outage_served % len(script)]
                state.outage_served += 1
            if key not in state.keys:
                return self._record(path, key, now, 93000, "invalid webhook url", body=None)
            if fault is not None and not fault.posted:
                if fault.status is not None:
                    state.records.append(Record(now, path, key, None, fault.status, False))
                    return fault.status, None, fault.delay
                # An errcode, or (only a delay) a request that hangs and is lost: -1 when the
                # answer finally comes, long after the client gave up.
                code = fault.errcode if fault.errcode is not None else -1
                status, payload, _ = self._record(path, key, now, code, "scripted", body=None)
                return status, payload, fault.delay
            if path == "upload_media":
                status, payload, _ = self._upload(key, query, body, headers, now)
            else:
                status, payload, _ = self._send(key, body, now)
            return status, payload, max(self.latency, fault.delay if fault is not None else 0.0)

    def _record(
        self,
        path: str,
        key: str,
        now: float,
        errcode: int,
        errmsg: str,
        *,
        body: dict[str, Any] | None,
        posted: bool = False,
        media: Media | None = None,
        extra: dict[str, Any] | None = None,
    ) -> tuple[int, dict[str, Any], float]:
        self._state.records.append(Record(now, path, key, errcode, 200, posted, body, media))
        hint = f"{errmsg}, more info at https://open.work.weixin.qq.com/devtool/query?e={errcode}"
        return (
            200,
            {"errcode": errcode, "errmsg": "ok" if errcode == 0 else hint, **(extra or {})},
            0.0,
        )

    def _send(self, key: str, raw: bytes, now: float) -> tuple[int, dict[str, Any], float]:
        try:
            body = json.loads(raw.decode("utf-8"))
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except (UnicodeDecodeError, ValueError):
            return self._record("send", key, now, 40058, "invalid json", body=None)
        msgtype = body.get("msgtype")
        inner = body.get(str(msgtype))
        if msgtype not in ("text", "markdown", "markdown_v2", "file", "voice"):
            return self._record("send", key, now, 40008, "invalid message type", body=body)
        if not isinstance(inner, dict):
            return self._record("send", key, now, 40058, f"missing {msgtype}", body=body)
        if msgtype in ("text", "markdown", "markdown_v2"):
            content = inner.get("content")
            if not isinstance(content, str) or not content:
                code = 44004 if msgtype == "text" else 40058
                return self._record("send", key, now, code, "empty content", body=body)
            limit = TEXT_MAX if msgtype == "text" else MARKDOWN_MAX
            if len(content.encode("utf-8")) > limit:
                return self._record(
                    "send",
                    key,
                    now,
                    40058,
                    f"{msgtype}.content exceed max length {limit}",
                    body=body,
                )
            mentioned = inner.get("mentioned_list", [])
            if not isinstance(mentioned, list) or not all(isinstance(m, str) for m in mentioned):
                return self._record("send", key, now, 40058, "invalid mentioned_list", body=body)
        else:
            media = self._state.media.get(str(inner.get("media_id", "")))
            if (
                media is None
                or media.key != key
                or media.type != msgtype
                or now - media.at > MEDIA_TTL
            ):
                return self._record("send", key, now, 40007, "invalid media_id", body=body)
        window = self._state.posted_at[key]
        while window and now - window[0] >= self.window:
            window.popleft()
        if len(window) >= self.rate:
            return self._record("send", key, now, 45009, "api freq out of limit", body=body)
        window.append(now)
        return self._record("send", key, now, 0, "ok", body=body, posted=True)

    def _upload(
        self, key: str, query: dict[str, str], raw: bytes, headers: Any, now: float
    ) -> tuple[int, dict[str, Any], float]:
        kind = query.get("type", "")
        if kind not in ("file", "voice"):
            return self._record("upload_media", key, now, 40005, "invalid type", body=None)
        parts = _multipart(str(headers.get("Content-Type", "")), raw)
        if "media" not in parts or parts["media"][0] is None:
            return self._record("upload_media", key, now, 44001, "empty media data", body=None)
        filename, data = parts["media"]
        assert filename is not None
        if kind == "file" and not 5 < len(data) <= FILE_MAX:
            return self._record("upload_media", key, now, 40006, "invalid file size", body=None)
        if kind == "file" and filename.lower().endswith(".pdf") and not _is_pdf(data):
            return self._record("upload_media", key, now, 40004, "invalid pdf file", body=None)
        if kind == "voice":
            seconds = amr_duration(data)
            if seconds is None:
                return self._record("upload_media", key, now, 40004, "invalid voice", body=None)
            if len(data) > VOICE_MAX or seconds > VOICE_MAX_SECONDS:
                return self._record("upload_media", key, now, 40006, "voice too large", body=None)
        media = Media(secrets.token_urlsafe(24), key, kind, filename, data, now)
        self._state.media[media.media_id] = media
        extra = {"type": kind, "media_id": media.media_id, "created_at": str(int(time.time()))}
        return self._record("upload_media", key, now, 0, "ok", body=None, media=media, extra=extra)
