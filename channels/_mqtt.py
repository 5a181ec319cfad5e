"""A small QoS 1 publisher over paho-mqtt 2.x, shared by the channels that talk to devices."""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass
from typing import ClassVar, Protocol
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from channels.base import TransientError
from content_queue.errors import ConfigError
from content_queue.i18n import tr

__all__ = ["BrokerAddress", "MqttPublisher", "Publisher", "parse_mqtt_url"]


class Publisher(Protocol):
    def publish(self, topic: str, payload: bytes, *, timeout: float = 10.0) -> None: ...


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
            raise TransientError(
                tr(
                    "MQTT 服务器 {t} 秒内没有确认收到指令",
                    "the MQTT broker did not confirm the command within {t} s",
                    t=timeout,
                ),
                code="mqtt_timeout",
            )

    def close(self) -> None:
        if self._started:
            self._client.disconnect()
            self._client.loop_stop()
            self._started = False
