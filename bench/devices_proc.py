"""A farm of simulated LED boards in ONE process, for the LED fan-out benchmark.

    python bench/devices_proc.py --port 1883 --count 5000 --keyring public-keys.json

Each board is one paho-mqtt client (MQTT 3.1.1, persistent session, its own client id),
but no client has a thread: a single ``selectors`` loop drives them all through paho's
external-loop interface (``on_socket_open``/``on_socket_register_write`` callbacks,
``loop_read``/``loop_write``/``loop_misc``). Per command a board does what the reference
device does (``refdevice.device.ReferenceDevice.handle``: verify the Ed25519 signature
against the public keyring, drop duplicates with a ReplayGuard, honour expiry, show, and
ack ``shown`` on its ack topic at QoS 1) minus persistence: nothing is written to disk.

Boards announce ``online`` (retained, QoS 1, with a Last Will) once subscribed, with
``fresh_boot`` false: they stand for boards that have been running all along, so the
dispatcher's re-sync after a power loss is not part of what is measured.

Protocol on stdout (one line each, flushed):

    READY {"devices": N, "seconds": s}        every board is connected and subscribed
    FAILED {...}                              not all subscribed within --connect-timeout
    STATS {...}                               on SIGUSR1: counters so far
    SUMMARY {...}                             on SIGTERM/SIGINT, just before exiting
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import selectors
import signal
import socket
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from channels.keys import load_public_keyring  # noqa: E402
from channels.protocol import encode, topic_ack, topic_cmd, topic_state  # noqa: E402
from refdevice.device import ReferenceDevice  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import Mapping

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from paho.mqtt.reasoncodes import ReasonCode

    from channels.protocol import Command

__all__ = ["DeviceFarm", "FarmBoard", "main"]

log = logging.getLogger("bench.devices_proc")

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE


FARM_SHOWING = 50
"""Notices a farm board keeps on display, the newest. The reference device keeps every
notice until it expires, and scans what it shows for each command; the soak (a notice a
second to the same boards for 10 minutes, none expiring) left each board holding hundreds,
and the farm's CPU grew 80% in 5 minutes (0.40 -> 0.72 of a core at 1,000 boards) while
the dispatcher's part stayed level: the drift was the farm's. A board shows a rotation of a
few dozen at most."""


class FarmBoard(ReferenceDevice):
    """The reference device's command handling, without its state file (no persistence)."""

    def _save(self) -> None:
        """Nothing is persisted: the farm measures the protocol, not a board's flash."""

    def _show(self, command: Command) -> str | None:
        result = super()._show(command)
        while len(self._showing) > FARM_SHOWING:
            del self._showing[next(iter(self._showing))]  # the oldest first
        return result

    def presence(self, state: Literal["online", "offline"], at: int) -> bytes:
        return self._state(state, at, fresh=False)


class _Slot:
    """One board and its paho client, as the selector's ``data``."""

    __slots__ = (
        "ack_topic",
        "board",
        "client",
        "cmd_topic",
        "connected_at",
        "reconnect_at",
        "state_topic",
        "subscribed",
    )

    def __init__(self, board: FarmBoard, client: mqtt.Client, prefix: str) -> None:
        self.board = board
        self.client = client
        self.cmd_topic = topic_cmd(prefix, board.device_id)
        self.ack_topic = topic_ack(prefix, board.device_id)
        self.state_topic = topic_state(prefix, board.device_id)
        self.subscribed = False
        self.connected_at = 0
        self.reconnect_at: float | None = None


class DeviceFarm:
    """N boards, one selector, one thread."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        device_ids: list[str],
        keyring: Mapping[str, Ed25519PublicKey],
        prefix: str = "vc/v1",
        keepalive: int = 60,
        max_skew: int = 300,
        window: int = 100,
        presence: bool = True,
        kind: Literal["led", "speaker"] = "led",
    ) -> None:
        self.host, self.port, self.prefix = host, port, prefix
        self.keepalive = keepalive
        self.window = window
        self.presence = presence
        self.selector = selectors.DefaultSelector()
        self.slots: list[_Slot] = []
        for device_id in device_ids:
            board = FarmBoard(
                device_id=device_id,
                host=host,
                port=port,
                keyring=keyring,
                state_dir=Path("/nonexistent"),  # never written: _save is a no-op
                prefix=prefix,
                max_skew=max_skew,
                kind=kind,
            )
            self.slots.append(_Slot(board, self._client(device_id), prefix))
        self.subscribed = 0
        self.connecting = 0
        self.next_to_connect = 0
        self.commands = 0
        self.acks = 0
        self.handle_seconds = 0.0
        self.disconnects = 0
        self.failures: Counter[str] = Counter()
        self.first_command_at: float | None = None
        self.last_ack_at: float | None = None
        self.stop_requested = False
        self.stats_requested = False

    # -- paho wiring ----------------------------------------------------------------------

    def _client(self, device_id: str) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=device_id,
            clean_session=False,  # commands sent while a board is away wait in the broker
            protocol=mqtt.MQTTv311,
        )
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        return client

    def _on_socket_open(self, client: mqtt.Client, slot: _Slot, sock: Any) -> None:
        self.selector.register(sock, _READ, slot)

    def _on_socket_close(self, client: mqtt.Client, slot: _Slot, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(sock)

    def _on_register_write(self, client: mqtt.Client, slot: _Slot, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.modify(sock, _READ | _WRITE, slot)

    def _on_unregister_write(self, client: mqtt.Client, slot: _Slot, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.modify(sock, _READ, slot)

    def _on_connect(
        self,
        client: mqtt.Client,
        slot: _Slot,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: object,
    ) -> None:
        if reason.is_failure:
            self.failures[f"connect: {reason}"] += 1
            return
        client.subscribe(slot.cmd_topic, qos=1)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        slot: _Slot,
        mid: int,
        reasons: list[ReasonCode],
        properties: object,
    ) -> None:
        if any(r.is_failure for r in reasons):
            self.failures["subscribe refused"] += 1
            return
        if self.presence:
            client.publish(
                slot.state_topic,
                slot.board.presence("online", slot.connected_at),
                qos=1,
                retain=True,
            )
        if not slot.subscribed:
            slot.subscribed = True
            self.subscribed += 1
            self.connecting -= 1

    def _on_message(self, client: mqtt.Client, slot: _Slot, msg: mqtt.MQTTMessage) -> None:
        if msg.topic != slot.cmd_topic:
            return
        t0 = time.perf_counter()
        if self.first_command_at is None:
            self.first_command_at = time.time()
        self.commands += 1
        try:
            ack = slot.board.handle(bytes(msg.payload), retained=bool(msg.retain))
        except Exception:  # as the reference device: no ack, the dispatcher re-sends
            log.exception("%s: failed to handle a command", slot.board.device_id)
            self.failures["handle crashed"] += 1
            return
        client.publish(slot.ack_topic, encode(ack), qos=1, retain=False)
        self.acks += 1
        self.last_ack_at = time.time()
        self.handle_seconds += time.perf_counter() - t0

    def _on_disconnect(
        self,
        client: mqtt.Client,
        slot: _Slot,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: object,
    ) -> None:
        if self.stop_requested:
            return
        self.disconnects += 1
        slot.reconnect_at = time.monotonic() + 1.0
        log.warning("%s: connection lost (%s)", slot.board.device_id, reason)

    # -- the loop -------------------------------------------------------------------------

    def _connect(self, slot: _Slot) -> None:
        client = slot.client
        client.user_data_set(slot)
        slot.connected_at = int(time.time())
        if self.presence:
            client.will_set(
                slot.state_topic,
                slot.board.presence("offline", slot.connected_at),
                qos=1,
                retain=True,
            )
        client.connect(self.host, self.port, self.keepalive)

    def _reconnect(self, slot: _Slot) -> None:
        slot.reconnect_at = None
        try:
            slot.connected_at = int(time.time())
            slot.client.reconnect()
        except OSError as exc:
            self.failures[f"reconnect: {type(exc).__name__}"] += 1
            slot.reconnect_at = time.monotonic() + 2.0

    def _start_more(self) -> None:
        while self.connecting < self.window and self.next_to_connect < len(self.slots):
            slot = self.slots[self.next_to_connect]
            self.next_to_connect += 1
            try:
                self._connect(slot)
            except OSError as exc:
                self.failures[f"connect: {type(exc).__name__}"] += 1
                continue
            self.connecting += 1

    def _poll(self, timeout: float) -> None:
        for key, events in self.selector.select(timeout):
            slot: _Slot = key.data
            client = slot.client
            if events & _READ:
                client.loop_read()
            if events & _WRITE and client.socket() is not None:
                client.loop_write()

    def _misc(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.reconnect_at is not None and now >= slot.reconnect_at:
                self._reconnect(slot)
            elif slot.client.socket() is not None:
                slot.client.loop_misc()

    def connect_all(self, timeout: float) -> bool:
        """Connect and subscribe every board (at most ``window`` handshakes at a time)."""
        start = time.monotonic()
        deadline = start + timeout
        next_report = start + 10
        while self.subscribed < len(self.slots):
            now = time.monotonic()
            if self.stop_requested or now > deadline:
                return False
            if self.stats_requested:
                self.stats_requested = False
                _say("STATS", self.stats())
            if now >= next_report:  # progress on stderr: a slow broker shows here
                log.warning(
                    "%d/%d boards subscribed after %.0f s",
                    self.subscribed,
                    len(self.slots),
                    now - start,
                )
                next_report = now + 10
            self._start_more()
            self._poll(0.05)
        return True

    def run(self) -> None:
        """Serve commands until SIGTERM/SIGINT."""
        next_misc = time.monotonic() + 1.0
        while not self.stop_requested:
            self._poll(0.2)
            if self.stats_requested:
                self.stats_requested = False
                _say("STATS", self.stats())
            if time.monotonic() >= next_misc:
                self._misc()
                next_misc = time.monotonic() + 1.0

    def close(self) -> None:
        """Disconnect cleanly (no Last Will), flushing what is queued, within a few seconds."""
        self.stop_requested = True
        for slot in self.slots:
            if slot.client.socket() is not None:
                slot.client.disconnect()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and self.selector.get_map():
            self._poll(0.05)
        for slot in self.slots:
            sock = slot.client.socket()
            if isinstance(sock, socket.socket):
                sock.close()
        self.selector.close()

    def stats(self) -> dict[str, Any]:
        shown = sum(len(s.board.shown) for s in self.slots)
        reasons: Counter[str] = Counter()
        for slot in self.slots:
            reasons.update(reason for _, reason in slot.board.rejections)
        duplicates = reasons.pop("replayed", 0)
        return {
            "devices": len(self.slots),
            "subscribed": self.subscribed,
            "commands": self.commands,
            "shown": shown,
            "duplicates": duplicates,
            "rejected": dict(reasons),
            "acks": self.acks,
            "disconnects": self.disconnects,
            "failures": dict(self.failures),
            "handle_seconds": round(self.handle_seconds, 3),
            "cpu_seconds": round(time.process_time(), 3),
            "first_command_at": self.first_command_at,
            "last_ack_at": self.last_ack_at,
        }


def _say(tag: str, data: dict[str, Any]) -> None:
    print(f"{tag} {json.dumps(data, sort_keys=True)}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, required=True, help="number of boards")
    parser.add_argument(
        "--id-format",
        default="led-{i:05d}",
        help="device id of board i (default led-{i:05d}, as bench/led.py's devices.yaml)",
    )
    parser.add_argument("--keyring", type=Path, required=True, help="`villagecast keys export`")
    parser.add_argument("--prefix", default="vc/v1")
    parser.add_argument("--keepalive", type=int, default=60)
    parser.add_argument("--max-skew", type=int, default=300)
    parser.add_argument("--window", type=int, default=100, help="handshakes in flight")
    parser.add_argument("--connect-timeout", type=float, default=300)
    parser.add_argument("--no-presence", action="store_true", help="no online/offline messages")
    parser.add_argument(
        "--kind",
        choices=["led", "speaker"],
        default="led",
        help="speaker: each fetches and verifies the clip and acks `played` (plays not run)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    keyring = load_public_keyring(json.loads(args.keyring.read_text(encoding="utf-8")))
    farm = DeviceFarm(
        host=args.host,
        port=args.port,
        device_ids=[args.id_format.format(i=i) for i in range(args.count)],
        keyring=keyring,
        prefix=args.prefix,
        keepalive=args.keepalive,
        max_skew=args.max_skew,
        window=args.window,
        presence=not args.no_presence,
        kind=args.kind,
    )

    def _stop(*_: object) -> None:
        farm.stop_requested = True

    def _stats(*_: object) -> None:
        farm.stats_requested = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGUSR1, _stats)
    t0 = time.monotonic()
    try:
        if not farm.connect_all(args.connect_timeout):
            _say("FAILED", farm.stats() | {"seconds": round(time.monotonic() - t0, 3)})
            return 1
        _say("READY", {"devices": args.count, "seconds": round(time.monotonic() - t0, 3)})
        gc.freeze()  # the boards and their clients: no full collection walks them again
        farm.run()
        _say("SUMMARY", farm.stats())
    finally:
        farm.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
