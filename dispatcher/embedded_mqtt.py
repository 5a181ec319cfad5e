"""An embedded MQTT 3.1.1 broker (amqtt) for one machine, so a fresh install needs no server.

It listens on loopback only and accepts anonymous clients: it serves `villagecast up`,
the demo and simulated devices on the same machine. Real boards and loudspeakers on a
network connect to mosquitto with the configuration `villagecast mqtt config` writes
(per-device identities and ACLs); commands are signed either way, so a rogue publisher
on the embedded broker still cannot make a device show anything.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any
from urllib.parse import urlsplit

from content_queue.errors import ConfigError
from content_queue.i18n import Text, tr
from content_queue.registry import Registry
from content_queue.settings import Settings

__all__ = ["EMBEDDED_DEVICE_LIMIT", "EmbeddedBroker", "scale_warning"]

log = logging.getLogger(__name__)

EMBEDDED_DEVICE_LIMIT = 300
"""Devices beyond which the embedded broker is the wrong choice: amqtt compares every
retained presence message with each new subscription and every message with every
subscription, so connecting is quadratic (1,000 boards took 57 s to connect and 5,000 did
not connect in 5 minutes; mosquitto connects 5,000 in under a second, docs/performance.md)."""


def scale_warning(registry: Registry, settings: Settings) -> Text | None:
    """Why a county this size should run mosquitto, when it is on the embedded broker."""
    if not settings.mqtt_is_embedded:
        return None
    devices = sum(1 for ep in registry.endpoints.values() if ep.kind in ("led", "speaker"))
    if devices <= EMBEDDED_DEVICE_LIMIT:
        return None
    return tr(
        "devices.yaml 中有 {n} 台 LED 屏和广播，内置 MQTT 服务器只适合几百台以内："
        "设备越多连接越慢，上千台时可能连不上。请安装 mosquitto，"
        "用 villagecast mqtt config 生成配置，并设置 VILLAGECAST_MQTT_URL。",
        "devices.yaml has {n} LED boards and loudspeakers; the embedded MQTT broker suits a "
        "few hundred at most (connecting slows down with every device, and thousands may not "
        "connect at all). Install mosquitto, write its configuration with "
        "`villagecast mqtt config`, and set VILLAGECAST_MQTT_URL.",
        n=devices,
    )


def _drop_startup_failure(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Broker startup failed")


class EmbeddedBroker:
    """amqtt in a background thread with its own event loop."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 1883
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ConfigError(
                tr(
                    "内置 MQTT 服务器只监听本机地址；"
                    "局域网设备请使用 mosquitto（villagecast mqtt config）",
                    "the embedded MQTT broker listens on loopback only; use mosquitto for "
                    "devices on a network (villagecast mqtt config)",
                )
            )
        self.host, self.port = host, port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broker: Any = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self, *, timeout: float = 15.0) -> None:
        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.WARNING)
        # A failed start is reported below as one clear error, not amqtt's traceback.
        logging.getLogger("amqtt.broker").addFilter(_drop_startup_failure)
        self._thread = threading.Thread(target=self._run, name="villagecast-mqtt", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            raise ConfigError(
                tr(
                    "内置 MQTT 服务器无法在 {h}:{p} 启动（端口被占用？）：{e}。"
                    "同一台机器上的第二套 villagecast 请设置 VILLAGECAST_EMBEDDED_MQTT_PORT",
                    "the embedded MQTT broker could not start on {h}:{p} (port in use?): {e}. "
                    "A second villagecast on one machine needs its own "
                    "VILLAGECAST_EMBEDDED_MQTT_PORT",
                    h=self.host,
                    p=self.port,
                    e=type(self._error).__name__ if self._error else "timeout",
                )
            )

    def _run(self) -> None:
        from amqtt.broker import Broker

        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
        try:
            self._broker = Broker(config, loop=loop)
            loop.run_until_complete(self._broker.start())
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(self._broker.shutdown())
        loop.close()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._error is None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=15)
