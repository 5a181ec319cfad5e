"""The device listener's MQTT connection, in a process of its own.

mosquitto sends a client at most ``max_inflight_messages`` (20) QoS 1 messages at a time
and queues the rest, up to ``max_queued_messages``; beyond that it DROPS them. The ack
listener takes one ack per device per notice, so it must read and PUBACK fast. paho makes
about eight system calls per message (select, three reads, the wake-up pipe, the PUBACK),
each one a release and re-acquisition of the GIL: next to a busy thread (the listener's own
database work, the dashboard, the sweeper) every one waits up to a switch interval (5 ms),
and the intake fell to about a hundred messages a second. In the 10-minute soak mosquitto
dropped 2,833 acks for the listener this way (docs/performance.md).

So the connection lives here, in a process that does nothing else: a paho thread that
appends each message to a list, and a writer thread that hands them to the parent through
a pipe (stdout), many to a write. The parent reads big chunks (one system call for hundreds
of messages) and does the database work at its own pace. stdin closing (the parent stopping
or dying) disconnects and exits, after the last messages are written.

Frames on stdout: kind (1 byte), retained (1 byte), topic length (2 bytes), payload length
(4 bytes), topic, payload. Kinds: ``M`` a message, ``C`` connected, ``D`` disconnected,
``W`` a warning for the parent's log (its text in the payload).

Run as ``python -m dispatcher.mqtt_intake '<json>'``: host, port, tls, username,
password_env (the variable's name; the password itself never appears in argv), prefix,
keepalive, client_id.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["HEADER", "IntakeConfig", "frame", "frames", "main"]

HEADER = struct.Struct("!ccHI")


@dataclass(frozen=True)
class IntakeConfig:
    host: str
    port: int
    tls: bool
    username: str | None
    password_env: str
    prefix: str
    keepalive: int
    client_id: str

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> IntakeConfig:
        return cls(**json.loads(text))


def frame(kind: bytes, topic: str = "", payload: bytes = b"", retained: bool = False) -> bytes:
    raw = topic.encode("utf-8")
    return (
        HEADER.pack(kind, b"\x01" if retained else b"\x00", len(raw), len(payload)) + raw + payload
    )


def frames(buffer: bytearray) -> Iterator[tuple[bytes, str, bytes, bool]]:
    """Complete frames at the start of ``buffer`` (consumed from it): kind, topic, payload,
    retained. A partial frame stays in the buffer for the next read."""
    pos = 0
    end = len(buffer)
    while end - pos >= HEADER.size:
        kind, retained, tlen, plen = HEADER.unpack_from(buffer, pos)
        stop = pos + HEADER.size + tlen + plen
        if stop > end:
            break
        start = pos + HEADER.size
        topic = bytes(buffer[start : start + tlen]).decode("utf-8", "replace")
        yield kind, topic, bytes(buffer[start + tlen : stop]), retained == b"\x01"
        pos = stop
    del buffer[:pos]


class _Outbox:
    """Frames waiting for the pipe; the writer takes them all at once."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.items: list[bytes] = []
        self.cond = threading.Condition()
        self.closed = False

    def put(self, item: bytes) -> None:
        with self.cond:
            self.items.append(item)
            if len(self.items) == 1:
                self.cond.notify()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify()

    def run(self) -> None:
        while True:
            with self.cond:
                while not self.items and not self.closed:
                    self.cond.wait()
                items, self.items = self.items, []
                done = self.closed and not items
            if done:
                return
            view = memoryview(b"".join(items))
            try:
                while view:
                    view = view[os.write(self.fd, view) :]
            except (BrokenPipeError, OSError):
                os._exit(0)  # the parent is gone: so is the reason to run


def main(argv: list[str] | None = None) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    # Ctrl-C and a service manager's SIGTERM reach the whole process group: the parent
    # decides when to stop (it closes stdin), so the last messages are still handed over.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    args = sys.argv[1:] if argv is None else argv
    cfg = IntakeConfig.from_json(args[0])
    out = _Outbox(sys.stdout.fileno())
    writer = threading.Thread(target=out.run, name="intake-writer", daemon=True)
    writer.start()

    def warn(text: str) -> None:
        out.put(frame(b"W", payload=text.encode("utf-8")))

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=cfg.client_id,
        clean_session=False,  # acks sent while the listener is down wait in the broker
        protocol=mqtt.MQTTv311,
    )
    if cfg.username:
        client.username_pw_set(cfg.username, os.environ.get(cfg.password_env) or None)
    if cfg.tls:
        client.tls_set()

    def on_connect(
        client: mqtt.Client, userdata: object, flags: object, rc: object, props: object = None
    ) -> None:
        if getattr(rc, "is_failure", False):
            warn(f"listener: broker refused the connection ({rc})")
            return
        sock = client.socket()
        if isinstance(sock, socket.socket) and sock.family != socket.AF_UNIX:
            # Each PUBACK goes out at once: the broker keeps only a few messages in flight
            # to this client, and Nagle would hold the next PUBACK for its delayed ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.subscribe([(f"{cfg.prefix}/dev/+/ack", 1), (f"{cfg.prefix}/dev/+/state", 1)])
        out.put(frame(b"C"))

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        out.put(frame(b"M", msg.topic, bytes(msg.payload), bool(msg.retain)))

    client.on_connect = on_connect
    client.on_disconnect = lambda *_a, **_k: out.put(frame(b"D"))
    client.on_message = on_message
    client.reconnect_delay_set(1, 30)
    client.connect_async(cfg.host, cfg.port, cfg.keepalive)
    client.loop_start()
    sys.stdin.buffer.read()  # until the parent closes it (stop) or dies
    client.disconnect()
    client.loop_stop()
    out.close()
    writer.join(timeout=30)


if __name__ == "__main__":
    main()
