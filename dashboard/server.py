"""Running the dashboard: uvicorn on the web address and, for the TV platform and the
loudspeakers, the feed address (public paths only), from one process.

``web_host:web_port`` (loopback by default) serves everything; ``feed_host:feed_port``
serves only ``/feeds``, ``/audio`` and ``/healthz``, so exposing the feeds to the cable
operator's network never exposes the login page. When both are the same address, one
listener serves everything.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from content_queue.accounts import Accounts
from content_queue.errors import ConfigError
from content_queue.i18n import tr
from content_queue.settings import Settings
from content_queue.store import Store
from dispatcher.feed_server import RegistryLoader
from dispatcher.service import Ringer

__all__ = ["DashboardServer", "bind", "serve_forever", "start_in_thread"]

log = logging.getLogger(__name__)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            tr(
                "无法监听 {h}:{p}（{e}）：端口被占用？请换一个端口（VILLAGECAST_WEB_PORT / "
                "VILLAGECAST_FEED_PORT）",
                "cannot listen on {h}:{p} ({e}); is the port taken? choose another "
                "(VILLAGECAST_WEB_PORT / VILLAGECAST_FEED_PORT)",
                h=host,
                p=port,
                e=exc.strerror or exc,
            )
        ) from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@dataclass
class DashboardServer:
    """A running dashboard; quacks like the stdlib feed server for ``Stack`` (address of
    the feed listener, ``shutdown()``, ``server_close()``)."""

    server: uvicorn.Server
    web: socket.socket
    feeds: socket.socket | None
    thread: threading.Thread | None = None
    sockets: list[socket.socket] = field(default_factory=list)

    @property
    def web_url(self) -> str:
        return _url(self.web)

    @property
    def feed_url(self) -> str:
        return _url(self.feeds or self.web)

    @property
    def server_address(self) -> tuple[str, int]:
        host, port = (self.feeds or self.web).getsockname()[:2]
        return host, port

    def shutdown(self) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=15)

    def server_close(self) -> None:
        for sock in self.sockets:
            sock.close()


def make_server(
    settings: Settings,
    store: Store,
    registry_loader: RegistryLoader,
    *,
    ring: Ringer | None = None,
    accounts: Accounts | None = None,
    feeds: bool = True,
    log_level: str = "warning",
) -> DashboardServer:
    from dashboard.app import create_app

    web = bind(settings.web_host, settings.web_port)
    sockets = [web]
    feed_sock = None
    # Port 0 asks for a free port each: two listeners, never one.
    same = (settings.feed_host, settings.feed_port) == (settings.web_host, settings.web_port)
    same = same and settings.web_port != 0
    if feeds and not same:
        try:
            feed_sock = bind(settings.feed_host, settings.feed_port)
        except ConfigError:
            web.close()
            raise
        sockets.append(feed_sock)
    settings.feeds_dir.mkdir(parents=True, exist_ok=True)
    app = create_app(
        settings=settings,
        store=store,
        registry_loader=registry_loader,
        ring=ring,
        accounts=accounts,
        public_ports=frozenset({feed_sock.getsockname()[1]}) if feed_sock else frozenset(),
    )
    proxy: dict[str, Any] = {"proxy_headers": False}
    if settings.web_forwarded_allow_ips:
        proxy = {"proxy_headers": True, "forwarded_allow_ips": settings.web_forwarded_allow_ips}
    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=5,
        **proxy,
    )
    return DashboardServer(uvicorn.Server(config), web, feed_sock, sockets=sockets)


def start_in_thread(
    settings: Settings,
    store: Store,
    registry_loader: RegistryLoader,
    *,
    ring: Ringer | None = None,
    accounts: Accounts | None = None,
) -> DashboardServer:
    """Start the dashboard (and the feed listener) in a daemon thread, ready on return."""
    srv = make_server(settings, store, registry_loader, ring=ring, accounts=accounts)
    srv.thread = threading.Thread(
        target=srv.server.run,
        kwargs={"sockets": srv.sockets},
        name="villagecast-dashboard",
        daemon=True,
    )
    srv.thread.start()
    deadline = time.monotonic() + 30
    while not srv.server.started:
        if not srv.thread.is_alive() or time.monotonic() > deadline:
            srv.server_close()
            raise ConfigError(tr("监控页面服务没有启动", "the dashboard did not start"))
        time.sleep(0.02)
    log.info("dashboard on %s, feeds on %s", srv.web_url, srv.feed_url)
    return srv


def serve_forever(settings: Settings, store: Store, registry_loader: RegistryLoader) -> None:
    """``villagecast serve``: in the foreground until Ctrl-C or SIGTERM."""
    srv = make_server(settings, store, registry_loader, log_level="info")
    print(
        tr(
            "监控页面：{web}/  （电视订阅源和音频：{feeds}/feeds/<村id>.atom）\n按 Ctrl-C 停止。",
            "dashboard: {web}/  (TV feeds and audio: {feeds}/feeds/<village>.atom)\n"
            "Press Ctrl-C to stop.",
            web=srv.web_url,
            feeds=srv.feed_url,
        ).render(),
        flush=True,
    )
    try:
        srv.server.run(sockets=srv.sockets)
    finally:
        srv.server_close()
