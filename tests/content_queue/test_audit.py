"""The audit log is a hash chain: any edited, deleted or cut-off entry is detected."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from cli import app
from content_queue.models import NoticeDraft, build_notice
from content_queue.settings import get_settings
from content_queue.store import Outcome, PlannedDelivery, Store

T0 = datetime(2026, 12, 1, tzinfo=UTC)
PLAN = [PlannedDelivery("a-tv", "tv_feed", "a", "t")]


def _notice(title: str = "村务公开") -> NoticeDraft:
    return build_notice(
        {"title": title, "body": "内容", "category": "village_affairs", "targets": {"county": True}}
    )


def _history(store: Store) -> None:
    for i in range(3):
        n, (d,) = store.add_notice(_notice(f"通知{i}"), PLAN, now=T0)
        (c,) = store.claim([d.id], worker="w", lease_seconds=5, max_attempts=3, now=T0)
        store.finish(c, Outcome("sent"), max_attempts=3, now=T0)
    store.withdraw(n.id, actor="secretary", reason="写错了", now=T0)


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    """The chain on SQLite and on PostgreSQL (which serialises it by an advisory lock)."""
    s = Store(db_url)
    _history(s)
    yield s
    s.engine.dispose()


def test_every_action_is_chained_and_verifies(store: Store) -> None:
    entries = store.audit_entries()
    assert [e["action"] for e in entries] == ["notice.add"] * 3 + ["notice.withdraw"]
    report = store.verify_audit()
    assert report.ok and report.count == 4 and report.head == entries[-1]["hash"]


def test_an_edited_entry_is_detected(store: Store) -> None:
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE audit_log SET actor = 'someone-else' WHERE id = 2"))
    report = store.verify_audit()
    assert [i for i, _ in report.problems] == [2]
    assert "被改动过" in report.problems[0][1].render("zh")


def test_a_deleted_entry_is_detected(store: Store) -> None:
    with store.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_log WHERE id = 2"))
    report = store.verify_audit()
    assert [i for i, _ in report.problems] == [3]
    assert "删除" in report.problems[0][1].render("zh")


def test_rehashing_an_edit_still_breaks_the_next_link(store: Store) -> None:
    from content_queue.audit import entry_hash

    with store.engine.begin() as conn:
        row = conn.execute(text("SELECT at, prev_hash FROM audit_log WHERE id = 2")).one()
        forged = entry_hash(
            at=datetime.fromisoformat(str(row.at)).replace(tzinfo=UTC),
            actor="forger",
            action="notice.add",
            notice_id=2,
            details={},
            prev_hash=row.prev_hash,
        )
        conn.execute(
            text("UPDATE audit_log SET actor='forger', details='{}', hash=:h WHERE id = 2"),
            {"h": forged},
        )
    assert [i for i, _ in store.verify_audit().problems] == [3]


def test_cli_verify_and_show(home: Path) -> None:
    store = Store(get_settings().resolved_database_url)
    _history(store)
    runner = CliRunner()
    ok = runner.invoke(app, ["audit", "verify"])
    assert ok.exit_code == 0 and "审计日志完整：共 4 条" in ok.output
    head = json.loads(runner.invoke(app, ["audit", "verify", "--json"]).output)["head"]
    shown = json.loads(
        runner.invoke(app, ["audit", "show", "--action", "notice.withdraw", "--json"]).output
    )
    assert [(e["actor"], e["details"]["reason"]) for e in shown] == [("secretary", "写错了")]
    # Cutting the last entry off leaves a valid chain, but not the head written down.
    with store.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_log WHERE id = 4"))
    assert runner.invoke(app, ["audit", "verify"]).exit_code == 0
    cut = runner.invoke(app, ["audit", "verify", "--expect-head", head])
    assert cut.exit_code == 1 and "日志末尾的记录被删除过" in cut.output
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE audit_log SET details = '{\"x\": 1}' WHERE id = 1"))
    bad = runner.invoke(app, ["audit", "verify"])
    assert bad.exit_code == 1 and "第 1 条的内容与其哈希不符" in bad.output


def test_upgrade_seals_entries_written_before_the_chain(tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine

    import content_queue.store as store_module

    url = f"sqlite:///{tmp_path / 'old.db'}"
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(store_module.__file__).parent / "migrations"))
    engine = create_engine(url)
    with engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0004")
        for i in range(3):
            conn.execute(
                text(
                    "INSERT INTO audit_log (at, actor, action, notice_id, details) VALUES"
                    " ('2026-11-25 00:00:00.000000', 'cli', 'notice.add', :n, '{\"k\": 1}')"
                ),
                {"n": i + 1},
            )
        conn.commit()
    engine.dispose()
    store = Store(url)
    report = store.verify_audit()
    assert report.ok and report.count == 3
    # The store keeps chaining after the upgrade.
    store.add_notice(_notice(), PLAN, now=T0)
    assert store.verify_audit().count == 4 and store.verify_audit().ok
