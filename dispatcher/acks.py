"""The device listener: records acks and presence, and re-syncs devices that lost memory.

The MQTT connection runs in a child process of its own (dispatcher/mqtt_intake.py), so
the work here never slows the reading and PUBACKing that keep mosquitto from dropping
acks. Messages are handled in the order they arrive, by one thread of their own; runs of
acks are recorded up to ``ACK_BATCH`` to a transaction (a county-wide fan-out brings
thousands of ``shown`` acks within a second or two).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from channels._device import command_id_for, dispatch_command, publisher_for
from channels._mqtt import parse_mqtt_url
from channels.keys import Keyring
from channels.led import build_show_command
from channels.protocol import Ack, DeviceState, parse_topic
from channels.speaker import resync_play_command as speaker_resync
from content_queue.errors import StoreError, VillagecastError
from content_queue.loudspeakers import record_play
from content_queue.once import claim_once
from content_queue.registry import LedEndpoint, Registry, SpeakerEndpoint
from content_queue.settings import Settings
from content_queue.store import DeviceAck, Store, utcnow
from dispatcher import service
from dispatcher.mqtt_intake import IntakeConfig, frames
from dispatcher.synthesis import shared_synthesizer

__all__ = ["DeviceListener", "run_listener"]

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 16 * 1024
FRESH_BOOT_CLAIM_SECONDS = 7 * 86400
ACK_BATCH = 300
"""Acks recorded in one transaction at most (a few ms of SQLite writer lock)."""
STORE_RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0)
"""Waits before recording a batch of acks again while the database cannot be reached."""

_Message = tuple[str, bytes, bool]  # topic, payload, retained


class DeviceListener:
    """Subscribes to every device's ack and state topics (persistent session, QoS 1)."""

    def __init__(self, settings: Settings, store: Store, *, client_id: str | None = None) -> None:
        self.settings = settings
        self.store = store
        self.address = parse_mqtt_url(settings.resolved_mqtt_url)
        self.connected = threading.Event()
        self.client_id = client_id or listener_client_id()
        self.intake = IntakeConfig(
            host=self.address.host,
            port=self.address.port,
            tls=self.address.tls,
            username=self.address.username,
            password_env=settings.mqtt_password_env,
            prefix=settings.mqtt_prefix,
            keepalive=settings.mqtt_keepalive_seconds,
            client_id=self.client_id,
        )
        self._inbox: queue.Queue[_Message | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._reader: threading.Thread | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # stop() sees every intake process started

    def _spawn(self) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)  # this very code, not an install
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        return subprocess.Popen(
            [sys.executable, "-m", "dispatcher.mqtt_intake", self.intake.to_json()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )

    def _read(self) -> None:
        """Take the intake process's frames; start it again should it die."""
        while True:
            with self._lock:
                if self._stopping.is_set():
                    return
                proc = self._proc = self._spawn()
            assert proc.stdout is not None
            fd = proc.stdout.fileno()
            buffer = bytearray()
            while chunk := os.read(fd, 1 << 18):
                buffer += chunk
                for kind, topic, payload, retained in frames(buffer):
                    if kind == b"M":
                        self._inbox.put((topic, payload, retained))
                    elif kind == b"C":
                        self.connected.set()
                    elif kind == b"D":
                        self.connected.clear()
                    elif kind == b"W":
                        log.warning("%s", payload.decode("utf-8", "replace"))
            self.connected.clear()
            proc.stdout.close()
            code = proc.wait()
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            if not self._stopping.is_set():
                log.warning(
                    "listener: the MQTT intake process exited (%s); starting it again", code
                )
                self._stopping.wait(1)

    def _drain(self) -> None:
        """The listener's own thread: handle messages in order, runs of acks in batches."""
        while True:
            item = self._inbox.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < ACK_BATCH:
                try:
                    more = self._inbox.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self.handle_many(batch)
                    return
                batch.append(more)
            self.handle_many(batch)

    def handle_many(self, messages: Sequence[_Message]) -> None:
        """Handle messages in order; consecutive acks are recorded together."""
        acks: list[tuple[str, bytes]] = []
        for topic, payload, retained in messages:
            parsed = parse_topic(self.settings.mqtt_prefix, topic)
            if parsed is not None and parsed[1] == "ack":
                acks.append((topic, payload))
                continue
            if acks:
                self._record_acks_patiently(acks)
                acks = []
            with _guard(topic):
                self.handle(topic, payload, retained=retained)
        if acks:
            self._record_acks_patiently(acks)

    def _record_acks_patiently(self, acks: Sequence[tuple[str, bytes]]) -> None:
        """Record acks, waiting out a database that is briefly unreachable or locked.

        The broker has them PUBACKed already and will not send them again: given up, they
        wait for the sweeper to re-send the commands after ``ack_timeout_seconds``."""
        for delay in (*STORE_RETRY_DELAYS, None):
            try:
                self.record_acks(acks)
                return
            except StoreError as exc:
                if delay is None or self._stopping.is_set():
                    log.warning(
                        "listener could not record %d ack(s): %s; the sweeper will ask the "
                        "devices again",
                        len(acks),
                        exc.render("en"),
                    )
                    return
                log.info(
                    "listener: database unavailable (%s); again in %g s", exc.render("en"), delay
                )
                time.sleep(delay)
            except VillagecastError as exc:
                log.warning("listener could not record acks: %s", exc.render("en"))
                return
            except Exception:
                log.exception("listener failed on acks")
                return

    def _parse_ack(self, topic: str, payload: bytes) -> tuple[DeviceAck, int | None] | None:
        """The ack a message carries, and the play time it reports (a loudspeaker's)."""
        parsed = parse_topic(self.settings.mqtt_prefix, topic)
        if parsed is None or parsed[1] != "ack" or len(payload) > MAX_MESSAGE_BYTES:
            return None
        device_id = parsed[0]
        try:
            ack = Ack.model_validate(json.loads(payload))
        except (ValueError, ValidationError):
            log.warning("listener: malformed ack from %s", device_id)
            return None
        if ack.device != device_id:
            log.warning("listener: %s sent an ack in another device's name", device_id)
            return None
        device_ack = DeviceAck(
            device_id=device_id,
            command_id=ack.command,
            status=ack.status,
            reason=ack.reason,
            detail=ack.detail,
        )
        return device_ack, ack.play_at

    def record_acks(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Record ack messages (topic, payload) in order, many to a transaction."""
        parsed = [a for a in (self._parse_ack(t, p) for t, p in messages) if a is not None]
        if not parsed:
            return
        acks = [ack for ack, _ in parsed]
        statuses = self.store.record_acks(acks)
        for (ack, play_at), status in zip(parsed, statuses, strict=True):
            log.debug("ack %s from %s: %s -> %s", ack.command_id, ack.device_id, ack.status, status)
            if play_at is not None:  # one play of a loudspeaker's plan heard in full
                record_play(
                    self.store, device_id=ack.device_id, command_id=ack.command_id, play_at=play_at
                )
        log.info("recorded %d ack(s)", len(acks))

    def handle(self, topic: str, payload: bytes, *, retained: bool = False) -> None:
        parsed = parse_topic(self.settings.mqtt_prefix, topic)
        if parsed is None or len(payload) > MAX_MESSAGE_BYTES:
            return
        device_id, channel = parsed
        if channel == "ack":
            self.record_acks([(topic, payload)])
        elif channel == "state":
            if not payload:
                return  # a cleared retained message
            try:
                state = DeviceState.model_validate(json.loads(payload))
            except (ValueError, ValidationError):
                log.warning("listener: malformed state from %s", device_id)
                return
            if state.device != device_id:
                return
            # A live message is dated by its arrival (a Last Will carries the time of the
            # connect it was registered with); a retained one replayed on reconnect by its own.
            at = datetime.fromtimestamp(state.at, tz=UTC) if retained else utcnow()
            rebooted = state.state == "online" and state.fresh_boot
            if rebooted:
                # Every listener receives the message (several may run): one re-syncs the
                # device, and the same boot replayed as a retained message is not re-synced.
                rebooted = claim_once(
                    self.store,
                    f"fresh_boot:{device_id}:{state.at!r}",
                    holder=self.client_id,
                    ttl_seconds=FRESH_BOOT_CLAIM_SECONDS,
                )
            self.store.record_presence(
                device_id=device_id,
                state=state.state,
                at=at,
                firmware=state.firmware,
                capabilities=state.capabilities,
                showing=state.showing,
                fresh_boot=state.fresh_boot and rebooted,
            )
            if rebooted:
                self.sync(device_id)

    def sync(self, device_id: str) -> int:
        """Re-send what is still valid to a device that came back with no memory of it."""
        try:
            registry: Registry = service.registry_cache.get(self.settings.devices)
            keyring = Keyring.load(self.settings.keys_dir)
        except VillagecastError as exc:
            log.warning("cannot sync %s: %s", device_id, exc.render("en"))
            return 0
        endpoint = next(
            (
                ep
                for ep in registry.endpoints.values()
                if isinstance(ep, LedEndpoint | SpeakerEndpoint) and ep.device_id == device_id
            ),
            None,
        )
        if endpoint is None:
            return 0
        publisher = publisher_for(self.settings)
        sent = 0
        seq = int(time.time())
        for notice, _, delivery_id, kind in self.store.sync_candidates(device_id):
            if kind != endpoint.kind:
                continue
            now = utcnow()
            command_id = command_id_for(delivery_id, sync_seq=seq)
            try:
                if isinstance(endpoint, SpeakerEndpoint):
                    # Only the plays still to come that no ack reported (None: nothing left).
                    command = speaker_resync(
                        store=self.store,
                        notice=notice,
                        endpoint=endpoint,
                        registry=registry,
                        delivery_id=delivery_id,
                        command_id=command_id,
                        keyring=keyring,
                        settings=self.settings,
                        synthesizer=shared_synthesizer(self.settings.tts_mode),
                        now=now,
                    )
                    if command is None:
                        continue
                else:
                    command = build_show_command(
                        notice=notice,
                        endpoint=endpoint,
                        delivery_id=delivery_id,
                        command_id=command_id,
                        keyring=keyring,
                        settings=self.settings,
                        now=now,
                    )
                dispatch_command(
                    command,
                    store=self.store,
                    settings=self.settings,
                    publisher=publisher,
                    sync=True,
                )
                sent += 1
            except VillagecastError as exc:
                log.warning(
                    "sync of delivery %s to %s failed: %s", delivery_id, device_id, exc.render("en")
                )
        log.info("synced %d notice(s) to %s after a fresh boot", sent, device_id)
        return sent

    def start(self) -> None:
        self._stopping.clear()
        self._worker = threading.Thread(target=self._drain, name="vc-listener", daemon=True)
        self._worker.start()
        self._reader = threading.Thread(target=self._read, name="vc-listener-intake", daemon=True)
        self._reader.start()

    def stop(self) -> None:
        """Disconnect, then record what already arrived before returning."""
        with self._lock:
            self._stopping.set()
            proc = self._proc
        if proc is not None and proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()  # the intake disconnects, writes what it has, exits
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self._reader is not None:
            self._reader.join(timeout=30)
            self._reader = None
        if self._worker is not None:
            self._inbox.put(None)
            self._worker.join(timeout=30)
            self._worker = None


@contextmanager
def _guard(what: str) -> Iterator[None]:
    """A message that cannot be recorded is logged; the listener goes on."""
    try:
        yield
    except VillagecastError as exc:  # database briefly unavailable: QoS 1 won't redeliver
        log.warning("listener could not record %s: %s", what, exc.render("en"))
    except Exception:
        log.exception("listener failed on %s", what)


def listener_client_id(instance: str | None = None) -> str:
    """Stable per machine (and instance): the broker keeps this session's queued acks while
    the listener restarts. Two listeners must not share one, or they evict each other."""
    base = f"villagecast-listener-{socket.gethostname()}"
    return f"{base}-{instance}" if instance else base


def run_listener(
    settings: Settings, *, stop: threading.Event, client_id: str | None = None
) -> None:
    """Run until ``stop`` is set (a thread in `up`, or `villagecast listen`)."""
    listener = DeviceListener(settings, service.open_store(settings), client_id=client_id)
    listener.start()
    try:
        stop.wait()
    finally:
        listener.stop()
