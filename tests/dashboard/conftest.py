"""A real dashboard (uvicorn on free loopback ports) over a small county, and its people."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher
from sqlalchemy import update

from content_queue.accounts import Accounts, Role
from content_queue.db import Delivery
from content_queue.models import build_notice
from content_queue.registry import Registry, load_registry
from content_queue.settings import Settings
from content_queue.store import DeliveryView, NoticeView, Store, utcnow
from dashboard.server import DashboardServer, start_in_thread
from dispatcher.service import submit_notice
from tests.conftest import SMALL_DEVICES

PASSWORD = "correct-horse-9"


def fast_hasher() -> PasswordHash:
    """Argon2id with small parameters: the same code path, milliseconds per hash."""
    return PasswordHash((Argon2Hasher(time_cost=1, memory_cost=1024, parallelism=1),))


@dataclass
class Rings:
    """Records doorbells instead of sending them to a broker."""

    calls: list[dict[str, list[int]]] = field(default_factory=list)

    def __call__(self, ids_by_kind: Mapping[str, Sequence[int]], countdown: float | None) -> int:
        self.calls.append({k: list(v) for k, v in ids_by_kind.items()})
        return 1


@dataclass
class County:
    settings: Settings
    store: Store
    registry: Registry
    accounts: Accounts
    server: DashboardServer
    rings: Rings
    clients: list[httpx.Client] = field(default_factory=list)

    @property
    def web(self) -> str:
        return self.server.web_url

    @property
    def feeds(self) -> str:
        return self.server.feed_url

    def notice(self, title: str, targets: dict[str, object]) -> tuple[NoticeView, list[int]]:
        sub = submit_notice(
            build_notice(
                {
                    "title": title,
                    "body": "定于本周六上午9时在村委会会议室召开村民代表会议。",
                    "category": "meeting",
                    "targets": targets,
                }
            ),
            store=self.store,
            registry=self.registry,
            ring=None,
        )
        return sub.notice, [d.id for d in sub.deliveries]

    def delivery(self, notice_id: int, endpoint: str) -> DeliveryView:
        (d,) = [x for x in self.store.deliveries(notice_id) if x.endpoint_id == endpoint]
        return d

    def set_status(self, delivery_id: int, status: str, **values: object) -> None:
        now = utcnow()
        extra: dict[str, object] = {"status": status, "updated_at": now, **values}
        if status in ("failed", "delivered", "expired") and "finished_at" not in values:
            extra["finished_at"] = now
        with self.store.session() as s:
            s.execute(update(Delivery).where(Delivery.id == delivery_id).values(**extra))

    def fail(self, delivery_id: int, code: str = "device_unknown_key") -> None:
        self.set_status(
            delivery_id,
            "failed",
            attempts=3,
            error_code=code,
            error_zh="设备不认识签名密钥（请给设备下发新的公钥）",
            error_en="the device does not know the signing key",
        )

    def client(self, username: str | None = None) -> httpx.Client:
        """A client for the web listener, signed in as ``username`` (csrf in .headers)."""
        c = httpx.Client(base_url=self.web, timeout=10, follow_redirects=False)
        self.clients.append(c)
        if username is not None:
            r = c.post("/api/v1/login", json={"username": username, "password": PASSWORD})
            assert r.status_code == 200, r.text
            c.headers["X-CSRF-Token"] = r.json()["csrf_token"]
        return c


@pytest.fixture
def county(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[County]:
    for key in list(os.environ):
        if key.startswith("VILLAGECAST_") and key != "VILLAGECAST_REQUIRE_SERVICES":
            monkeypatch.delenv(key)
    devices = tmp_path / "devices.yaml"
    devices.write_text(SMALL_DEVICES, encoding="utf-8")
    registry = load_registry(devices)
    settings = Settings(
        home=tmp_path / "home",
        devices=devices,
        web_port=0,
        feed_port=0,
        offline_alert_minutes=30,
    )
    settings.ensure_home()
    store = Store(settings.resolved_database_url)
    accounts = Accounts(store, hasher=fast_hasher())
    people: list[tuple[str, Role, str | None, list[str]]] = [
        ("county", Role.COUNTY_ADMIN, None, []),
        ("east", Role.TOWNSHIP_OFFICER, "east", []),
        ("west", Role.TOWNSHIP_OFFICER, "west", []),
        ("liu", Role.SECRETARY, None, ["east-liu"]),
        ("liu-reviewer", Role.REVIEWER, None, ["east-liu"]),
    ]
    for name, role, township, villages in people:
        accounts.add_user(
            username=name,
            password=PASSWORD,
            role=role,
            township_id=township,
            villages=villages,
            registry=registry,
        )
    rings = Rings()
    server = start_in_thread(settings, store, lambda: registry, ring=rings, accounts=accounts)
    county = County(settings, store, registry, accounts, server, rings)
    try:
        yield county
    finally:
        for c in county.clients:
            c.close()
        server.shutdown()
        server.server_close()


def at(value: str) -> datetime:
    return datetime.fromisoformat(value)
