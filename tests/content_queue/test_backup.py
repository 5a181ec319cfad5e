"""Backup and restore: the same history in a fresh home, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import os
import stat
import tarfile
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from channels.keys import Keyring
from cli import app
from content_queue.backup import create_backup, read_backup, restore_backup
from content_queue.errors import ConfigError, StoreError
from content_queue.models import build_notice
from content_queue.settings import get_settings, reset_settings
from content_queue.store import Outcome, PlannedDelivery, Store

T0 = datetime(2026, 12, 1, tzinfo=UTC)
PLANS = [
    PlannedDelivery("east-liu-tv", "tv_feed", "east-liu", "east"),
    PlannedDelivery("east-liu-led", "led", "east-liu", "east"),
]


def _history(store: Store) -> None:
    """Delivered, failed, withdrawn (with a recall) and corrected notices."""
    for i in range(3):
        n, ds = store.add_notice(
            build_notice(
                {
                    "title": f"村务公开第{i}期",
                    "body": "本月收支明细见公示栏。",
                    "category": "village_affairs",
                    "targets": {"county": True},
                }
            ),
            PLANS,
            now=T0 + timedelta(minutes=i),
        )
        for c in store.claim([d.id for d in ds], worker="w", lease_seconds=5, max_attempts=3):
            outcome = Outcome("delivered") if c.delivery.kind == "tv_feed" else Outcome("failed")
            store.finish(c, outcome, max_attempts=3)
    store.withdraw(n.id, actor="secretary", reason="金额有误")


def _cli_json(*args: str) -> object:
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def _dashboard_overview() -> dict[str, object]:
    """What the county's dashboard shows on its overview page."""
    from content_queue.accounts import Principal, Role
    from content_queue.registry import load_registry
    from dashboard.queries import Filters, overview
    from dashboard.scope import Scope
    from dispatcher.service import open_store

    settings = get_settings()
    registry = load_registry(settings.devices)
    admin = Principal(user_id=1, username="admin", display_name="县管理员", role=Role.COUNTY_ADMIN)
    now = datetime.now(UTC)
    filters = Filters.make(since=T0 - timedelta(days=1), until=T0 + timedelta(days=1), now=now)
    view = overview(open_store(settings), registry, Scope.of(admin, registry), filters, now=now)
    return view.model_dump(exclude={"filters"})


def _views() -> dict[str, object]:
    notices = _cli_json("notice", "list")
    assert isinstance(notices, list)
    return {
        "list": notices,
        "show": [_cli_json("notice", "show", str(n["id"])) for n in notices],
        "audit": _cli_json("audit", "verify"),
        "dashboard": _dashboard_overview(),
    }


@pytest.fixture
def second_url(db_url: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database on the same engine as ``db_url``."""
    if db_url.startswith("postgresql"):
        return str(request.getfixturevalue("postgres").create_database())
    return f"sqlite:///{tmp_path / 'restored' / 'villagecast.sqlite'}"


@pytest.fixture
def source(home: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    monkeypatch.setenv("VILLAGECAST_DATABASE_URL", db_url)
    reset_settings()
    store = Store(db_url)
    _history(store)
    Keyring.init(get_settings().keys_dir)
    yield store
    store.engine.dispose()


def _switch_home(monkeypatch: pytest.MonkeyPatch, home: Path, url: str) -> None:
    monkeypatch.setenv("VILLAGECAST_HOME", str(home))
    monkeypatch.setenv("VILLAGECAST_DATABASE_URL", url)
    reset_settings()


def test_restore_shows_the_same_history(
    source: Store, second_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    before = _views()
    shown = before["dashboard"]
    assert isinstance(shown, dict) and len(shown["notices"]) == 3  # the history is on it
    key_id = Keyring.load(get_settings().keys_dir).active().key_id
    archive = tmp_path / "backups" / "vc-backup.tar.gz"
    made = runner.invoke(app, ["backup", "create", "--out", str(archive)])
    assert made.exit_code == 0, made.output
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600  # it holds the private key

    fresh = tmp_path / "fresh-home"
    _switch_home(monkeypatch, fresh, second_url)
    restored = runner.invoke(app, ["backup", "restore", str(archive)])
    assert restored.exit_code == 0, restored.output
    assert "审计日志校验通过" in restored.output

    assert _views() == before
    keys = get_settings().keys_dir
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    assert stat.S_IMODE((keys / f"{key_id}.pem").stat().st_mode) == 0o600
    assert Keyring.load(keys).active().key_id == key_id

    # Restoring again over what is now a used database is refused.
    again = runner.invoke(app, ["backup", "restore", str(archive)])
    assert again.exit_code != 0 and "不是空的" in again.output


def test_backup_while_workers_write_is_consistent(
    source: Store, second_url: str, tmp_path: Path
) -> None:
    stop = threading.Event()
    written: list[int] = []

    def writer() -> None:
        while not stop.is_set():
            n, _ = source.add_notice(
                build_notice(
                    {
                        "title": "并发写入",
                        "body": "内容",
                        "category": "village_affairs",
                        "targets": {"county": True},
                    }
                ),
                PLANS,
            )
            written.append(n.id)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while len(written) < 5:
            stop.wait(0.01)
        info = create_backup(
            database_url=source.url, keys_dir=tmp_path / "no-keys", out=tmp_path / "b.tar.gz"
        )
    finally:
        stop.set()
        thread.join()
    assert 3 < info.notices < 3 + len(written) + 1
    # The restore checks the audit chain verifies and ends at the recorded head.
    restore_backup(tmp_path / "b.tar.gz", database_url=second_url, keys_dir=tmp_path / "k2")
    restored = Store(second_url)
    try:
        assert len(restored.notices(limit=1000)) == info.notices
        report = restored.verify_audit()
        assert report.ok and report.head == info.audit_head
    finally:
        restored.engine.dispose()


def test_restore_refuses_another_engine_and_foreign_files(source: Store, tmp_path: Path) -> None:
    info = create_backup(database_url=source.url, keys_dir=tmp_path / "k", out=tmp_path / "b.tgz")
    other = (
        "postgresql+psycopg://vc@127.0.0.1:1/vc"
        if info.engine == "sqlite"
        else f"sqlite:///{tmp_path / 'x.sqlite'}"
    )
    with pytest.raises(ConfigError) as err:
        restore_backup(tmp_path / "b.tgz", database_url=other, keys_dir=tmp_path / "k3")
    assert "不能恢复到" in err.value.render("zh")
    junk = tmp_path / "junk.tgz"
    with tarfile.open(junk, "w:gz") as tar:
        tar.add(tmp_path / "b.tgz", arcname="something-else")
    with pytest.raises(ConfigError):
        read_backup(junk)


def test_restore_refuses_existing_keys(source: Store, second_url: str, tmp_path: Path) -> None:
    keys = get_settings().keys_dir
    create_backup(database_url=source.url, keys_dir=keys, out=tmp_path / "b.tgz")
    taken = tmp_path / "taken-keys"
    Keyring.init(taken)
    with pytest.raises(StoreError) as err:
        restore_backup(tmp_path / "b.tgz", database_url=second_url, keys_dir=taken)
    assert "不会覆盖" in err.value.render("zh")
    assert os.listdir(taken)  # untouched
