"""A small QoS 1 publisher over paho-mqtt 2.x, shared by the channels that talk to devices."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from channels.base import TransientError
from content_queue.errors import ConfigError
from content_queue.i18n import tr

__all__ = [
    "BrokerAddress",
    "MqttPublisher",
    "Publisher",
    "not_confirmed",
    "parse_mqtt_url",
    "publish_all",
]

MAX_INFLIGHT = 1000
"""QoS 1 publishes this client keeps unacknowledged at once (paho's default is 20, which
turns a chunk's publishes back into round trips)."""


class Publisher(Protocol):
    def publish(self, topic: str, payload: bytes, *, timeout: float = 10.0) -> None: ...


def publish_all(
    publisher: Publisher, items: Sequence[tuple[str, bytes]], *, timeout: float = 10.0
) -> list[bool]:
    """Publish every (topic, payload); True where the broker accepted it.

    Uses the publisher's pipelined ``publish_many`` when it has one (all publishes first,
    then every PUBACK), else publishes one at a time and stops at the first failure.
    Raises :class:`TransientError` when the broker cannot be reached at all.
    """
    many = getattr(publisher, "publish_many", None)
    if many is not None:
        accepted: list[bool] = many(items, timeout=timeout)
        return accepted
    done: list[bool] = []
    for topic, payload in items:
        try:
            publisher.publish(topic, payload, timeout=timeout)
        except TransientError:
            if not done:
                raise
            break
        done.append(True)
    return done + [False] * (len(items) - len(done))


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None
    tls: bool

    def __str__(self) -> str:  # never includes a password
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse_mqtt_url(url: str) -> BrokerAddress:
    """mqtt://[user@]host[:port] or mqtts://... (a password in the URL is refused)."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ConfigError(
            tr(
                "MQTT 地址无效：应为 mqtt://用户名@主机:端口",
                "invalid MQTT URL: expected mqtt://user@host:port",
            )
        )
    if parts.password:
        raise ConfigError(
            tr(
                "MQTT 地址里不能写密码：请放在 VILLAGECAST_MQTT_PASSWORD 环境变量中",
                "do not put the MQTT password in the URL; use VILLAGECAST_MQTT_PASSWORD",
            )
        )
    tls = parts.scheme == "mqtts"
    return BrokerAddress(
        host=parts.hostname,
        port=parts.port or (8883 if tls else 1883),
        username=unquote(parts.username) if parts.username else None,
        tls=tls,
    )


def not_confirmed(timeout: float) -> TransientError:
    """The broker took no PUBACK for a command within ``timeout`` seconds."""
    return TransientError(
        tr(
            "MQTT 服务器 {t} 秒内没有确认收到指令",
            "the MQTT broker did not confirm the command within {t} s",
            t=timeout,
        ),
        code="mqtt_timeout",
    )


class MqttPublisher:
    """One connection per process (paho is not fork-safe); publishes wait for the PUBACK.

    paho keeps unacknowledged QoS 1 messages in memory only, so the store, not this
    client, is the record of what still has to go out.
    """

    _instances: ClassVar[dict[tuple[int, str], MqttPublisher]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self, url: str, *, password: str | None, keepalive: int = 30, client_id: str = ""
    ) -> None:
        self.address = parse_mqtt_url(url)
        self._password = password
        self._keepalive = keepalive
        self._connected = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"vc-pub-{socket.gethostname()}-{os.getpid()}",
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        if self.address.username:
            self._client.username_pw_set(self.address.username, password)
        if self.address.tls:
            self._client.tls_set()
        self._client.max_inflight_messages_set(MAX_INFLIGHT)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._started = False

    @classmethod
    def shared(cls, url: str, *, password: str | None, keepalive: int = 30) -> MqttPublisher:
        key = (os.getpid(), url)
        with cls._lock:
            pub = cls._instances.get(key)
            if pub is None:
                pub = cls._instances[key] = cls(url, password=password, keepalive=keepalive)
            return pub

    def _on_connect(
        self, client: mqtt.Client, userdata: object, flags: object, rc: object, props: object = None
    ) -> None:
        if not getattr(rc, "is_failure", False):
            sock = client.socket()
            if isinstance(sock, socket.socket) and sock.family != socket.AF_UNIX:
                # Pipelined publishes are many small packets: without this each burst waits
                # for Nagle and the broker's delayed ACK (about 40 ms on Linux).
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._connected.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: object, flags: object, rc: object, props: object = None
    ) -> None:
        self._connected.clear()

    def _ensure_connected(self, timeout: float) -> None:
        if not self._started:
            try:
                self._client.connect_async(self.address.host, self.address.port, self._keepalive)
            except (OSError, ValueError) as exc:
                raise self._unreachable() from exc
            self._client.loop_start()
            self._started = True
        if not self._connected.wait(timeout):
            raise self._unreachable()

    def _unreachable(self) -> TransientError:
        return TransientError(
            tr(
                "无法连接 MQTT 服务器 {addr}（服务器没启动、网络不通或账号密码不对）",
                "cannot connect to the MQTT broker {addr} (down, unreachable or wrong credentials)",
                addr=str(self.address),
            ),
            code="mqtt_unreachable",
        )

    def publish(self, topic: str, payload: bytes, *, timeout: float = 10.0) -> None:
        """QoS 1, never retained (a retained command would replay to every reconnecting device)."""
        self._ensure_connected(timeout)
        info = self._client.publish(topic, payload, qos=1, retain=False)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise self._unreachable()
        try:
            info.wait_for_publish(timeout)
        except (RuntimeError, ValueError) as exc:
            raise self._unreachable() from exc
        if not info.is_published():
            raise not_confirmed(timeout)

    def publish_many(
        self, items: Sequence[tuple[str, bytes]], *, timeout: float = 10.0
    ) -> list[bool]:
        """Publish every (topic, payload) at QoS 1 (never retained), then wait for all the
        PUBACKs together; True where the broker accepted the message within ``timeout``.

        Raises :class:`TransientError` only when nothing could be handed to the broker.
        """
        self._ensure_connected(timeout)
        infos: list[mqtt.MQTTMessageInfo | None] = []
        for topic, payload in items:
            sent = self._client.publish(topic, payload, qos=1, retain=False)
            infos.append(sent if sent.rc == mqtt.MQTT_ERR_SUCCESS else None)
        if items and not any(infos):
            raise self._unreachable()
        deadline = time.monotonic() + timeout
        accepted: list[bool] = []
        for info in infos:
            if info is not None and not info.is_published():
                # RuntimeError/ValueError: the connection dropped; not accepted, retried later
                with contextlib.suppress(RuntimeError, ValueError):
                    info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            accepted.append(info is not None and info.is_published())
        return accepted

    def close(self) -> None:
        if self._started:
            self._client.disconnect()
            self._client.loop_stop()
            self._started = False
