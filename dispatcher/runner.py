"""`villagecast up`: everything one machine needs, in the foreground, stopped by Ctrl-C."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from content_queue.i18n import tr
from content_queue.registry import Registry
from content_queue.settings import Settings, get_settings
from content_queue.store import Store
from dispatcher import service
from dispatcher.sweeper import run_sweeper
from dispatcher.worker import spawn_worker

__all__ = ["HttpServerFactory", "Stack", "run_up", "start_stack"]

log = logging.getLogger(__name__)

HttpServerFactory = Callable[[Settings, Store, Callable[[], Registry]], Any]
"""Starts the HTTP side instead of the bare feed server and returns it running: an object
with ``server_address`` (where the feeds are), ``shutdown()`` and ``server_close()``, and
optionally ``web_url``. The CLI passes the dashboard's (a layer above this one)."""


@dataclass
class Stack:
    """The running parts: a supervised worker process, the sweeper and the feed server."""

    settings: Settings
    env: dict[str, str]
    concurrency: int | None
    worker_loglevel: str = "WARNING"
    worker_log: Path | None = None
    """Where the worker writes its log; None means this process's stdout and stderr."""
    stop_event: threading.Event = field(default_factory=threading.Event)
    worker: subprocess.Popen[bytes] | None = None
    threads: list[threading.Thread] = field(default_factory=list)
    server: Any = None
    mqtt_broker: Any = None
    restarts: int = 0
    _log_fh: IO[bytes] | None = None

    def spawn(self) -> subprocess.Popen[bytes]:
        if self.worker_log is not None and self._log_fh is None:
            self.worker_log.parent.mkdir(parents=True, exist_ok=True)
            self._log_fh = self.worker_log.open("ab")
        return spawn_worker(
            env=self.env,
            concurrency=self.concurrency,
            sweeper=False,
            loglevel=self.worker_loglevel,
            stdout=self._log_fh,
            stderr=self._log_fh,
        )

    @property
    def feed_url(self) -> str:
        if self.server is None:
            return self.settings.resolved_feed_base_url
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def _supervise(self) -> None:
        # Restart a worker that died (killed, out of memory): the store makes that safe.
        while not self.stop_event.wait(1.0):
            if self.worker is not None and self.worker.poll() is not None:
                self.restarts += 1
                log.warning("worker exited (%s); restarting", self.worker.returncode)
                self.worker = self.spawn()

    def stop(self) -> None:
        self.stop_event.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        if self.worker is not None and self.worker.poll() is None:
            try:
                os.kill(self.worker.pid, signal.SIGTERM)  # warm shutdown: finish tasks
                self.worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.worker.pid, signal.SIGKILL)
                self.worker.wait()
            except ProcessLookupError:
                pass
        for t in self.threads:
            t.join(timeout=10)
        if self.mqtt_broker is not None:
            self.mqtt_broker.stop()
        if self._log_fh is not None:
            self._log_fh.close()


def start_stack(
    *,
    settings: Settings | None = None,
    concurrency: int | None = None,
    feed_server: bool = True,
    worker_loglevel: str = "WARNING",
    worker_log: Path | None = None,
    devices: bool = True,
    on_ready: Callable[[Stack], None] | None = None,
    http_server: HttpServerFactory | None = None,
) -> Stack:
    """Start the worker, sweeper, feed server and, for devices, the MQTT side.

    With ``devices`` and no VILLAGECAST_MQTT_URL, an embedded MQTT broker is started on
    loopback; the device listener (acks, presence, re-sync) runs in a thread.
    """
    settings = settings or get_settings()
    store = service.open_store(settings)  # migrates before the worker starts
    broker = None
    if devices and settings.mqtt_is_embedded:
        from dispatcher.embedded_mqtt import EmbeddedBroker

        broker = EmbeddedBroker(settings.resolved_mqtt_url)
        broker.start()
    if devices:
        ensure_keys(settings)
    stack = Stack(
        settings=settings,
        env=dict(os.environ),
        concurrency=concurrency,
        worker_loglevel=worker_loglevel,
        worker_log=worker_log,
        mqtt_broker=broker,
    )
    if feed_server and http_server is not None:
        stack.server = http_server(
            settings, store, lambda: service.registry_cache.get(settings.devices)
        )
    elif feed_server:
        from dispatcher.feed_server import serve_in_thread

        server, thread = serve_in_thread(
            settings, store, lambda: service.registry_cache.get(settings.devices)
        )
        stack.server = server
        stack.threads.append(thread)
        if settings.feed_base_url is None:
            # Links in feeds and clip URLs for loudspeakers must name the port really bound
            # (port 0 picks a free one).
            stack.env["VILLAGECAST_FEED_BASE_URL"] = stack.feed_url
    stack.worker = stack.spawn()
    sweeper = threading.Thread(
        target=run_sweeper,
        args=(settings,),
        kwargs={"stop": stack.stop_event},
        name="villagecast-sweeper",
        daemon=True,
    )
    supervisor = threading.Thread(
        target=stack._supervise, name="villagecast-supervisor", daemon=True
    )
    stack.threads += [sweeper, supervisor]
    if devices:
        from dispatcher.acks import run_listener

        listener = threading.Thread(
            target=run_listener,
            args=(settings,),
            kwargs={"stop": stack.stop_event},
            name="villagecast-device-listener",
            daemon=True,
        )
        stack.threads.append(listener)
        listener.start()
    sweeper.start()
    supervisor.start()
    if on_ready is not None:
        on_ready(stack)
    return stack


def ensure_keys(settings: Settings) -> None:
    """One machine on embedded defaults gets its signing keys on first start."""
    from channels.keys import Keyring

    if not (settings.keys_dir / "keyring.json").exists():
        settings.ensure_home()
        key = Keyring.init(settings.keys_dir).active()
        print(
            tr(
                "已生成设备指令签名密钥 {k}（{d}）",
                "created the device signing key {k} in {d}",
                k=key.key_id,
                d=settings.keys_dir,
            ).render(),
            flush=True,
        )


def run_up(*, concurrency: int | None = None, http_server: HttpServerFactory | None = None) -> None:
    settings = get_settings()
    # devices.yaml must be valid before anything starts: fail with its errors now.
    registry = service.registry_cache.get(settings.devices)
    from dispatcher.embedded_mqtt import scale_warning

    too_many = scale_warning(registry, settings)
    if too_many is not None:
        log.warning("%s", too_many.render("en"))
        print(tr("警告：{w}", "warning: {w}", w=too_many).render(), flush=True)
    stack = start_stack(
        settings=settings,
        concurrency=concurrency,
        worker_loglevel="INFO",
        http_server=http_server,
    )
    print(
        tr(
            "villagecast 已启动。数据目录：{home}\n电视平台订阅源：{url}/feeds/<村id>.atom"
            "（.rss / .json）\nLED 屏和广播连接 MQTT：{mqtt}{embedded}\n按 Ctrl-C 停止。",
            "villagecast is running. Data directory: {home}\nTV feeds: {url}/feeds/<village>.atom"
            " (.rss / .json)\nLED boards and loudspeakers: MQTT {mqtt}{embedded}\n"
            "Press Ctrl-C to stop.",
            home=settings.home,
            url=stack.feed_url,
            mqtt=settings.resolved_mqtt_url,
            embedded=tr("（内置，仅本机）", " (embedded, this machine only)")
            if settings.mqtt_is_embedded
            else "",
        ).render(),
        flush=True,
    )
    web_url = getattr(stack.server, "web_url", None)
    if web_url:
        print(
            tr(
                "乡镇监控页面：{url}/（账号：villagecast users add）",
                "township dashboard: {url}/ (accounts: villagecast users add)",
                url=web_url,
            ).render(),
            flush=True,
        )
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:
        while not stopping.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        print(tr("正在停止……", "stopping...").render(), flush=True)
        stack.stop()
        time.sleep(0)
