"""A reference LED board / loudspeaker speaking device protocol v1 over MQTT (paho-mqtt 2.x)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from channels.keys import load_public_keyring
from channels.protocol import (
    SUCCESS_STATUS,
    Ack,
    AckStatus,
    Command,
    DeviceState,
    Rejection,
    RejectReason,
    ReplayGuard,
    encode,
    topic_ack,
    topic_cmd,
    topic_state,
    verify_command,
)
from content_queue.errors import VillagecastError
from content_queue.i18n import tr
from refdevice.player import Player, SimulatedSink, Sink, Slot, slots_for

if TYPE_CHECKING:
    import httpx
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from paho.mqtt.reasoncodes import ReasonCode

__all__ = ["DeviceConnectionError", "ReferenceDevice", "main", "simulate"]

log = logging.getLogger(__name__)

CAPABILITIES: dict[str, list[str]] = {
    "led": ["led.show", "led.clear"],
    "speaker": ["speaker.play", "speaker.stop"],
}
_RANK = {"emergency": 0, "important": 1, "routine": 2}
_STATE_FORMAT = 1


class DeviceConnectionError(VillagecastError):
    """The broker could not be reached, or refused this device."""


class _BadClip(ValueError):
    """The clip of a speaker.play could not be fetched or did not match its hash."""


class _BadBody(ValueError):
    pass


_http: httpx.Client | None = None
_http_lock = threading.Lock()


def _http_client() -> httpx.Client:
    """One HTTP client per process (keep-alive, TLS set up once) for every simulated speaker."""
    global _http
    with _http_lock:
        if _http is None:
            import httpx

            _http = httpx.Client(timeout=10)
        return _http


class ReferenceDevice:
    """One board or speaker: verifies, de-duplicates, acts, acks and reports presence.

    ``shown`` lists (command id, notice, delivery) each time something was actually
    displayed or played, so duplicates are visible; ``rejections`` lists refused command
    ids with the reason (a duplicate is recorded there as ``replayed`` even though its ack
    repeats the original success). The replay guard, what is showing and, for a speaker,
    which plays of each plan are done are written to ``state_dir/<device_id>.json`` before
    each ack, so a restart neither replays nor forgets.

    A speaker plays through ``refdevice.player.Player`` (emergency pre-emption, play
    windows); ``sink`` decides how a play sounds and lasts (default: a simulation waiting
    ``play_speed`` x the real duration), ``tick`` how often the player looks at ``clock``
    when nothing wakes it (a test clock calls ``wake()`` after moving).
    """

    def __init__(
        self,
        *,
        device_id: str,
        host: str,
        port: int,
        keyring: Mapping[str, Ed25519PublicKey],
        state_dir: Path,
        prefix: str = "vc/v1",
        username: str | None = None,
        password: str | None = None,
        kind: Literal["led", "speaker"] = "led",
        keepalive: int = 30,
        max_skew: int = 300,
        firmware: str = "villagecast-ref/1",
        clock: Callable[[], float] = time.time,
        sink: Sink | None = None,
        play_speed: float = 0.01,
        tick: float = 1.0,
    ) -> None:
        self.device_id = device_id
        self.host = host
        self.port = port
        self.keyring = keyring
        self.state_path = state_dir / f"{device_id}.json"
        self.prefix = prefix
        self.kind = kind
        self.keepalive = keepalive
        self.max_skew = max_skew
        self.firmware = firmware
        self.capabilities = CAPABILITIES[kind]
        self._username = username
        self._password = password
        self._clock = clock
        self.shown: list[tuple[str, int, int]] = []
        self.rejections: list[tuple[str, RejectReason]] = []
        self._showing: dict[str, Command] = {}
        self._played: dict[int, int] = {}  # speaker: delivery -> expires_at, so a sync won't replay
        self.clips: dict[str, bytes] = {}
        """speaker: the verified clip of each accepted command."""
        self.plays: list[tuple[str, int, int]] = []
        """speaker: (command id, play number, time it ended) for every play heard in full."""
        self.restarted: list[tuple[str, int]] = []
        """speaker: (command id, play number) of plays heard in full after an interruption."""
        self._done: dict[str, list[int]] = {}  # speaker: command -> planned times played/dropped
        self._guard = ReplayGuard()
        self._lock = threading.RLock()
        self.player = Player(
            name=device_id,
            lock=self._lock,
            clock=clock,
            sink=sink or SimulatedSink(play_speed),
            on_played=self._played_slot,
            on_dropped=self._dropped_slot,
            tick=tick,
        )
        self._client: mqtt.Client | None = None
        self._fresh_boot = True
        self._birth_pending = True
        self._session_at = 0
        self._ready = threading.Event()
        self._birth: mqtt.MQTTMessageInfo | None = None
        self._failure: str | None = None
        self._crashing = False

    # -- what the device is doing ---------------------------------------------------------

    @property
    def showing(self) -> dict[str, Command]:
        """Unexpired commands on show (or queued to play), emergencies first."""
        now = int(self._clock())
        with self._lock:
            live = [c for c in self._showing.values() if c.expires_at > now]
        live.sort(key=lambda c: _RANK[c.priority])
        return {c.id: c for c in live}

    @property
    def fresh_boot(self) -> bool:
        """True when the last start found no state file (nothing remembered)."""
        return self._fresh_boot

    def handle(self, payload: bytes, *, retained: bool = False) -> Ack:
        """Process one command payload and return the ack to publish (no MQTT needed)."""
        now = int(self._clock())
        with self._lock:
            self._prune(now)
            result = verify_command(
                payload,
                device_id=self.device_id,
                keyring=self.keyring,
                now=now,
                max_skew=self.max_skew,
                guard=self._guard,
            )
            if isinstance(result, Rejection):
                if result.reason == "replayed" and result.command is not None:
                    # The first ack may have been lost: say again what happened, do nothing.
                    self.rejections.append((result.command.id, "replayed"))
                    log.info("%s: duplicate %s ignored", self.device_id, result.command.id)
                    return self._ack(
                        result.command,
                        SUCCESS_STATUS[result.command.kind],
                        now,
                        detail="duplicate: already carried out, not repeated",
                    )
                return self._reject(result, now)
            command = result
            if retained:
                return self._reject(
                    Rejection("unsupported", "retained commands are refused", command.id, command),
                    now,
                )
            if command.kind not in self.capabilities:
                return self._reject(
                    Rejection(
                        "unsupported", f"a {self.kind} cannot {command.kind}", command.id, command
                    ),
                    now,
                )
            try:
                detail = self._act(command)
            except _BadBody as exc:
                return self._reject(Rejection("malformed", str(exc), command.id, command), now)
            except _BadClip as exc:
                return self._reject(Rejection("bad_clip", str(exc), command.id, command), now)
            self._guard.remember(command.id, command.expires_at)
            self._save()
            return self._ack(command, SUCCESS_STATUS[command.kind], now, detail=detail)

    def _act(self, command: Command) -> str | None:
        if command.kind == "led.show":
            return self._show(command)
        if command.kind == "speaker.play":
            return self._play(command)
        removed = self._remove(command)
        log.info("%s: %s removed %s", self.device_id, command.kind, ", ".join(removed) or "nothing")
        return f"removed {len(removed)}"

    def _show(self, command: Command) -> str | None:
        for old in list(self._showing.values()):
            if old.kind != "led.show" or old.notice != command.notice:
                continue
            if old.delivery == command.delivery or old.revision > command.revision:
                # A sync (new id, same delivery) or a stale revision: nothing new to display.
                if old.delivery == command.delivery:
                    del self._showing[old.id]
                    self._showing[command.id] = command
                return f"already showing {old.id} (notice {old.notice} rev {old.revision})"
            del self._showing[old.id]  # an older revision of the same notice
        self._showing[command.id] = command
        self.shown.append((command.id, command.notice, command.delivery))
        title = str(command.body.get("title", ""))[:60]
        log.info(
            "%s shows notice %d rev %d [%s] %s",
            self.device_id,
            command.notice,
            command.revision,
            command.priority,
            title,
        )
        return None

    def _play(self, command: Command) -> str | None:
        if command.delivery in self._played:
            return f"delivery {command.delivery} already played"
        clip = command.body.get("clip")
        plays = command.body.get("plays") or [command.issued_at]
        window = command.body.get("window_s")
        if not (isinstance(clip, dict) and isinstance(clip.get("url"), str)):
            raise _BadBody("speaker.play needs body.clip.url and body.clip.sha256")
        if not (isinstance(plays, list) and all(type(t) is int for t in plays)):
            raise _BadBody("body.plays must be a list of unix times")
        if window is not None and not (type(window) is int and window >= 0):
            raise _BadBody("body.window_s must be a whole number of seconds")
        self.clips[command.id] = self._fetch_clip(clip["url"], str(clip.get("sha256", "")))
        self._played[command.delivery] = command.expires_at
        self._showing[command.id] = command
        slots, dropped = slots_for(command, now=int(self._clock()))
        if dropped:
            self._done[command.id] = dropped
        self.player.add(slots)
        log.info(
            "%s accepted notice %d rev %d [%s]: %d play(s), %d missed",
            self.device_id,
            command.notice,
            command.revision,
            command.priority,
            len(slots),
            len(dropped),
        )
        missed = f", {len(dropped)} missed while it was on its way" if dropped else ""
        return f"{len(slots)} play(s) planned{missed}"

    def _fetch_clip(self, url: str, sha256: str) -> bytes:
        """Download and verify a clip: a mismatching hash is refused, never played."""
        import hashlib

        import httpx

        try:
            data = _http_client().get(url).raise_for_status().content
        except httpx.HTTPError as exc:
            raise _BadClip(f"cannot fetch the clip: {type(exc).__name__}") from exc
        if hashlib.sha256(data).hexdigest() != sha256:
            raise _BadClip("the clip's SHA-256 does not match")
        return data

    def _played_slot(self, slot: Slot, now: int) -> None:
        """The player heard a play out in full: remember it, then ack it with its slot."""
        command = slot.command
        with self._lock:
            if command.id not in self._showing:
                return  # stopped meanwhile
            self._done.setdefault(command.id, []).append(slot.at)
            self.shown.append((command.id, command.notice, command.delivery))
            self.plays.append((command.id, slot.number, now))
            detail = f"play {slot.number}/{slot.total}"
            if slot.restarts:
                self.restarted.append((command.id, slot.number))
                detail += ", played again from the start after an emergency interrupted it"
            self._save()
            client = self._client
        if client is not None:
            ack = self._ack(command, "played", now, detail=detail, play_at=slot.at)
            client.publish(topic_ack(self.prefix, self.device_id), encode(ack), qos=1)

    def _dropped_slot(self, slot: Slot, why: str) -> None:
        log.warning(
            "%s: play %d/%d of notice %d not played: %s",
            self.device_id,
            slot.number,
            slot.total,
            slot.command.notice,
            why,
        )
        with self._lock:
            if slot.command.id in self._showing:
                self._done.setdefault(slot.command.id, []).append(slot.at)
                self._save()

    def wake(self) -> None:
        """Let the player look at the clock now (after a test clock moved)."""
        self.player.wake()

    def _remove(self, command: Command) -> list[str]:
        body = command.body
        target = "led.show" if command.kind == "led.clear" else "speaker.play"
        by_id = set(body) == {"command"} and isinstance(body["command"], str)
        if not by_id and not (set(body) == {"notice"} and type(body["notice"]) is int):
            raise _BadBody(f'{command.kind} body must be {{"command": id}} or {{"notice": n}}')
        removed = [
            c.id
            for c in self._showing.values()
            if c.kind == target
            and (c.id == body["command"] if by_id else c.notice == body["notice"])
        ]
        for command_id in removed:
            del self._showing[command_id]
            self._done.pop(command_id, None)
        if target == "speaker.play" and removed:
            self.player.cancel(removed)
        return removed

    def _prune(self, now: int) -> None:
        self._guard.prune(now)
        for command_id in [c.id for c in self._showing.values() if c.expires_at <= now]:
            del self._showing[command_id]
        self._done = {c: done for c, done in self._done.items() if c in self._showing}
        margin = self._guard.margin
        self._played = {d: exp for d, exp in self._played.items() if exp + margin > now}

    def _ack(
        self,
        command: Command,
        status: AckStatus,
        now: int,
        *,
        detail: str | None = None,
        play_at: int | None = None,
    ) -> Ack:
        return Ack(
            v=1,
            command=command.id,
            device=self.device_id,
            status=status,
            reason=None,
            detail=detail,
            at=now,
            delivery=command.delivery,
            play_at=play_at,
        )

    def _reject(self, rejection: Rejection, now: int) -> Ack:
        command_id = rejection.command_id or ""
        self.rejections.append((command_id, rejection.reason))
        log.warning(
            "%s rejected %s: %s (%s)",
            self.device_id,
            command_id or "?",
            rejection.reason,
            rejection.detail,
        )
        return Ack(
            v=1,
            command=command_id,
            device=self.device_id,
            status="rejected",
            reason=rejection.reason,
            detail=rejection.detail[:200],
            at=now,
            delivery=rejection.command.delivery if rejection.command else None,
        )

    # -- state file -----------------------------------------------------------------------

    def _load(self) -> bool:
        """Read the state file; False when there was none (a fresh boot)."""
        with self._lock:
            self._showing, self._played, self._guard = {}, {}, ReplayGuard()
            self._done = {}
            try:
                data = json.loads(self.state_path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                return False
            except (OSError, ValueError):
                log.exception("%s: unreadable state file, starting empty", self.device_id)
                return False
            try:
                if data.get("format") != _STATE_FORMAT or data.get("device") != self.device_id:
                    raise ValueError("state file of another format or device")
                self._guard = ReplayGuard.from_json(data["guard"])
                for item in data["showing"]:
                    command = Command.model_validate(item)
                    self._showing[command.id] = command
                self._played = {int(d): int(exp) for d, exp in data["played"].items()}
                self._done = {
                    str(c): [int(t) for t in times] for c, times in data.get("done", {}).items()
                }
            except (ValueError, KeyError, TypeError, AttributeError):
                log.exception("%s: damaged state file, starting empty", self.device_id)
                self._showing, self._played, self._guard = {}, {}, ReplayGuard()
                self._done = {}
                return False
            return True

    def _resume_plans(self) -> None:
        """After a restart with memory: queue what is left of every plan, nothing twice."""
        now = int(self._clock())
        with self._lock:
            self.player.clear()
            for command in self._showing.values():
                if command.kind != "speaker.play" or command.expires_at <= now:
                    continue
                slots, dropped = slots_for(
                    command, now=now, done=set(self._done.get(command.id, ()))
                )
                if dropped:
                    self._done.setdefault(command.id, []).extend(dropped)
                self.player.add(slots)

    def _save(self) -> None:
        data: dict[str, Any] = {
            "format": _STATE_FORMAT,
            "device": self.device_id,
            "guard": self._guard.to_json(),
            "showing": [c.model_dump() for c in self._showing.values()],
            "played": {str(d): exp for d, exp in self._played.items()},
            "done": self._done,
        }
        directory = self.state_path.parent
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{self.state_path.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, ensure_ascii=False, separators=(",", ":"))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.state_path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    # -- MQTT -----------------------------------------------------------------------------

    def _state(self, state: Literal["online", "offline"], at: int, *, fresh: bool) -> bytes:
        online = state == "online"
        return encode(
            DeviceState(
                v=1,
                device=self.device_id,
                state=state,
                at=at,
                firmware=self.firmware,
                capabilities=list(self.capabilities),
                fresh_boot=fresh,
                showing=list(self.showing) if online else [],
            )
        )

    def start(self, *, timeout: float = 10) -> None:
        """Connect (persistent session), subscribe to commands, announce ``online``."""
        if self._client is not None:
            raise RuntimeError(f"{self.device_id} is already started")
        self._fresh_boot = not self._load()
        if self.kind == "speaker":
            self._resume_plans()
            self.player.start()
        self._birth_pending = True
        self._ready.clear()
        self._birth = None
        self._failure = None
        self._crashing = False
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.device_id,
            clean_session=False,  # commands sent while the device was away wait in the broker
            protocol=mqtt.MQTTv311,
        )
        if self._username is not None:
            client.username_pw_set(self._username, self._password)
        client.reconnect_delay_set(1, 30)
        client.on_pre_connect = self._on_pre_connect
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        self._client = client
        deadline = time.monotonic() + timeout
        try:
            client.connect(self.host, self.port, self.keepalive)
        except OSError as exc:
            self._client = None
            raise self._unreachable() from exc
        client.loop_start()
        if not self._ready.wait(timeout) or self._failure is not None:
            self._abandon()
            raise self._unreachable(self._failure)
        birth = self._birth
        try:
            if birth is not None:
                birth.wait_for_publish(max(0.1, deadline - time.monotonic()))
        except (RuntimeError, ValueError):
            pass
        if birth is None or not birth.is_published():
            self._abandon()
            raise self._unreachable("the broker did not confirm the online message")

    def stop(self) -> None:
        """Say ``offline`` (retained), then disconnect cleanly."""
        self.player.stop()
        client, self._client = self._client, None
        if client is None:
            return
        info = client.publish(
            topic_state(self.prefix, self.device_id),
            self._state("offline", int(self._clock()), fresh=False),
            qos=1,
            retain=True,
        )
        with contextlib.suppress(RuntimeError, ValueError):
            info.wait_for_publish(5)
        client.disconnect()
        client.loop_stop()

    def crash(self) -> None:
        """Drop the connection without DISCONNECT, as a power cut would: the broker sends
        the Last Will."""
        self.player.stop()
        client, self._client = self._client, None
        if client is None:
            return
        self._crashing = True  # stops paho's automatic reconnect (see _on_pre_connect)
        sock = client.socket()
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        client.loop_stop()

    def _abandon(self) -> None:
        self.player.stop()
        client, self._client = self._client, None
        if client is not None:
            self._crashing = True
            client.disconnect()
            client.loop_stop()

    def _unreachable(self, why: str | None = None) -> DeviceConnectionError:
        return DeviceConnectionError(
            tr(
                "设备 {dev} 无法连接 MQTT 服务器 {host}:{port}（{why}）",
                "device {dev} cannot connect to the MQTT broker {host}:{port} ({why})",
                dev=self.device_id,
                host=self.host,
                port=self.port,
                why=why or "unreachable or no answer",
            )
        )

    def _on_pre_connect(self, client: mqtt.Client, userdata: object) -> None:
        if self._crashing:
            raise ConnectionAbortedError("device crashed")  # paho treats OSError as "retry later"
        # The will is fixed at connect time, so it carries the same `at` as the birth that
        # follows: a consumer that ignores presence older than the last seen keeps both.
        self._session_at = int(self._clock())
        client.will_set(
            topic_state(self.prefix, self.device_id),
            self._state("offline", self._session_at, fresh=False),
            qos=1,
            retain=True,
        )

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: object,
    ) -> None:
        if reason.is_failure:
            self._failure = str(reason)
            log.warning("%s: broker refused the connection: %s", self.device_id, reason)
            self._ready.set()
            return
        client.subscribe(topic_cmd(self.prefix, self.device_id), qos=1)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reasons: list[ReasonCode],
        properties: object,
    ) -> None:
        if any(r.is_failure for r in reasons):
            self._failure = "subscription to its command topic refused"
            self._ready.set()
            return
        # Announced only once subscribed, so a sync the dispatcher sends in reply arrives.
        fresh = self._fresh_boot and self._birth_pending
        self._birth_pending = False
        self._birth = client.publish(
            topic_state(self.prefix, self.device_id),
            self._state("online", self._session_at, fresh=fresh),
            qos=1,
            retain=True,
        )
        log.info("%s online (fresh_boot=%s)", self.device_id, fresh)
        self._ready.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: object,
    ) -> None:
        if reason.is_failure and not self._crashing:
            log.warning("%s: connection lost (%s), reconnecting", self.device_id, reason)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic != topic_cmd(self.prefix, self.device_id):
            return
        try:
            ack = self.handle(bytes(msg.payload), retained=bool(msg.retain))
        except Exception:
            # Without an ack the dispatcher re-sends; the device must keep running.
            log.exception("%s: failed to handle a command", self.device_id)
            return
        client.publish(topic_ack(self.prefix, self.device_id), encode(ack), qos=1, retain=False)


def simulate(devices: list[ReferenceDevice], *, until: threading.Event) -> None:
    """Start every device, run until ``until`` is set, then stop them all."""
    started: list[ReferenceDevice] = []
    try:
        for device in devices:
            device.start()
            started.append(device)
        until.wait()
    finally:
        for device in started:
            try:
                device.stop()
            except Exception:
                log.exception("%s did not stop cleanly", device.device_id)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m refdevice.device --device ID --host H --port P --keyring FILE --state-dir D``."""
    parser = argparse.ArgumentParser(prog="python -m refdevice.device", description=__doc__)
    parser.add_argument("--device", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--keyring", type=Path, required=True, help="`villagecast keys export`")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--prefix", default="vc/v1")
    parser.add_argument("--kind", choices=["led", "speaker"], default="led")
    parser.add_argument("--username")
    parser.add_argument("--password-env", help="name of the variable holding the password")
    parser.add_argument("--keepalive", type=int, default=30)
    parser.add_argument("--max-skew", type=int, default=300)
    parser.add_argument(
        "--play-speed",
        type=float,
        default=0.01,
        help="speaker: a simulated play lasts this fraction of the clip's real duration",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        keyring = load_public_keyring(json.loads(args.keyring.read_text(encoding="utf-8")))
    except (OSError, ValueError, VillagecastError) as exc:
        log.error("cannot read the public keys in %s: %s", args.keyring, exc)
        return 2
    device = ReferenceDevice(
        device_id=args.device,
        host=args.host,
        port=args.port,
        keyring=keyring,
        state_dir=args.state_dir,
        prefix=args.prefix,
        username=args.username,
        password=os.environ.get(args.password_env) if args.password_env else None,
        kind=args.kind,
        keepalive=args.keepalive,
        max_skew=args.max_skew,
        play_speed=args.play_speed,
    )
    until = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: until.set())
    try:
        simulate([device], until=until)
    except DeviceConnectionError as exc:
        log.error("%s", exc.render("en"))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
