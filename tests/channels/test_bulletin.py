"""The bulletin channel: posters written atomically into a print folder, withdrawn by a poster."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from channels.base import DeliveryContext, PermanentError, TransientError, get_channel
from channels.bulletin import BulletinChannel, bulletin_folder, poster_file
from channels.tv_feed import item_url
from content_queue.models import build_notice
from content_queue.registry import BulletinEndpoint, Registry, RegistryFile
from content_queue.settings import Settings
from content_queue.store import Claim, Outcome, PlannedDelivery, Store
from dispatcher.planner import plan_notice
from tests.channels.pdfcheck import A3, A4, page_sizes, qr_codes, texts


def make_registry(board: dict[str, Any] | None = None, *, tv: bool = True) -> Registry:
    endpoints: list[dict[str, Any]] = [
        {"id": "east-liu-board", "kind": "bulletin", **(board or {})}
    ]
    if tv:
        endpoints.append({"id": "east-liu-tv", "kind": "tv_feed"})
    doc = RegistryFile.model_validate(
        {
            "version": 1,
            "county": {"code": "371521", "name": "示例县"},
            "townships": [
                {
                    "id": "east",
                    "name": "东城镇",
                    "villages": [{"id": "east-liu", "name": "刘庄村", "endpoints": endpoints}],
                }
            ],
        }
    )
    return Registry(doc)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("VILLAGECAST_"):
            monkeypatch.delenv(key)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", feed_base_url="http://tv.example:8765")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'vc.sqlite'}")


def add(store: Store, **over: Any) -> Claim:
    data: dict[str, Any] = {
        "title": "刘庄村2026年耕地地力保护补贴发放公示",
        "body": "现将2026年耕地地力保护补贴发放情况公示如下。",
        "category": "farm_subsidy",
        "targets": {"villages": ["east-liu"]},
        "table": {
            "columns": ["户主", "身份证号", "金额（元）"],
            "rows": [["张三", "371521********0017", "1,260.00"]],
        },
        **over,
    }
    _, (delivery,) = store.add_notice(
        build_notice(data), [PlannedDelivery("east-liu-board", "bulletin", "east-liu", "east")]
    )
    (claim,) = store.claim([delivery.id], worker="t", lease_seconds=60, max_attempts=3)
    return claim


def ctx(claim: Claim, registry: Registry, settings: Settings, store: Store) -> DeliveryContext:
    return DeliveryContext(
        delivery_id=claim.delivery.id,
        attempt=claim.attempt,
        notice=claim.notice,
        endpoint=registry.endpoints["east-liu-board"],
        village_id="east-liu",
        registry=registry,
        settings=settings,
        store=store,
        action=claim.delivery.action,  # type: ignore[arg-type]
        recall_of=claim.delivery.recall_of,
    )


def test_registered_and_planned_like_any_channel() -> None:
    assert isinstance(get_channel("bulletin"), BulletinChannel)
    draft = build_notice(
        {"title": "t", "body": "b", "category": "meeting", "targets": {"villages": ["east-liu"]}}
    )
    plan = plan_notice(draft, make_registry())
    kinds = {d.kind: d.skip_reason for d in plan.deliveries}
    assert kinds == {"bulletin": None, "tv_feed": None}


def test_send_writes_the_poster_atomically(store: Store, settings: Settings) -> None:
    registry = make_registry()
    claim = add(store)
    result = BulletinChannel().deliver(ctx(claim, registry, settings, store))
    folder = settings.home / "bulletin" / "east-liu-board"
    name = f"east-liu-notice-{claim.notice.id:06d}-r1.pdf"
    assert result.status == "delivered" and result.external_ref == str(folder / name)
    assert result.details == {"file": name, "pages": 1, "paper": "A4"}
    assert sorted(p.name for p in folder.iterdir()) == [name]  # no temporary file left
    data = (folder / name).read_bytes()
    assert page_sizes(data) == [A4]
    assert "371521********0017" in texts(data)[0]
    assert qr_codes(data) == [item_url("http://tv.example:8765", "east-liu", claim.notice.id)]
    # A repeated send (a worker killed before recording) rewrites the identical file.
    BulletinChannel().deliver(ctx(claim, registry, settings, store))
    assert (folder / name).read_bytes() == data


def test_folder_and_paper_from_devices_yaml(
    tmp_path: Path, store: Store, settings: Settings
) -> None:
    absolute = tmp_path / "print"
    registry = make_registry({"folder": str(absolute), "paper": "A3"}, tv=False)
    claim = add(store)
    result = BulletinChannel().deliver(ctx(claim, registry, settings, store))
    (pdf,) = absolute.glob("*.pdf")
    assert result.details and result.details["paper"] == "A3"
    assert page_sizes(pdf.read_bytes()) == [A3]
    assert qr_codes(pdf.read_bytes()) == []  # no TV feed in this village: no QR code
    relative = BulletinEndpoint(id="b", kind="bulletin", folder="boards/liu")
    assert bulletin_folder(settings, relative) == settings.home / "boards" / "liu"


def test_recall_replaces_the_poster_with_a_withdrawal(store: Store, settings: Settings) -> None:
    registry = make_registry()
    claim = add(store)
    channel = BulletinChannel()
    channel.deliver(ctx(claim, registry, settings, store))
    store.finish(claim, Outcome("delivered"), max_attempts=3)
    withdrawal = store.withdraw(
        claim.notice.id, actor="会计", reason="身份证号 37078119900101123X 有误"
    )
    (recall,) = store.claim(
        [r.id for r in withdrawal.recalls], worker="t", lease_seconds=60, max_attempts=3
    )
    result = channel.take_back(ctx(recall, registry, settings, store))
    folder = bulletin_folder(settings, registry.endpoints["east-liu-board"])  # type: ignore[arg-type]
    old = poster_file("east-liu", claim.notice)
    new = poster_file("east-liu", recall.notice, withdrawn=True)
    assert sorted(p.name for p in folder.iterdir()) == [new]
    assert result.details and result.details["removed"] == old
    (text,) = texts((folder / new).read_bytes())
    assert "此通知已撤回" in text and "刘庄村2026年耕地地力保护补贴发放公示" in text
    # The reason is public: personal data in it is masked like everything published.
    assert "370781********123X" in text and "37078119900101123X" not in text
    again = channel.take_back(ctx(recall, registry, settings, store))  # a repeated recall
    assert again.details and again.details["removed"] is None


def test_write_errors_map_onto_the_error_tree(
    tmp_path: Path, store: Store, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    registry = make_registry({"folder": str(not_a_folder / "sub")})
    claim = add(store)
    with pytest.raises(PermanentError) as permanent:
        BulletinChannel().deliver(ctx(claim, registry, settings, store))
    assert permanent.value.code == "not_a_folder"
    assert "打印文件夹" in permanent.value.render("zh")

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(TransientError) as transient:
        BulletinChannel().deliver(ctx(claim, make_registry(), settings, store))
    assert transient.value.code == "disk_full"
    folder = settings.home / "bulletin" / "east-liu-board"
    assert list(folder.iterdir()) == []  # the half-written file was cleaned up
