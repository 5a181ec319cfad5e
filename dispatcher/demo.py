"""`villagecast demo`: a few realistic notices through a real worker, shown end to end."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from content_queue.errors import VillagecastError
from content_queue.i18n import current_lang, tr
from content_queue.models import build_notice
from content_queue.registry import (
    OfficialAccountEndpoint,
    Registry,
    TvFeedEndpoint,
    WecomGroupEndpoint,
    load_registry,
)
from content_queue.settings import get_settings, reset_settings
from content_queue.store import SETTLED, STATUS_LABELS, DeliveryView, Store
from dispatcher import review, service
from dispatcher.doorbell import ring
from dispatcher.planner import KIND_LABELS
from dispatcher.runner import Stack, start_stack

__all__ = ["demo_notices", "run_demo"]


def demo_notices(registry: Registry, now: datetime) -> list[dict[str, Any]]:
    """Notices a village secretary really sends, against whatever registry is loaded."""
    townships = list(registry.townships)
    first_t = townships[0]
    first_v = next(iter(registry.townships[first_t].villages)).id
    return [
        {
            "title": "2026年10月村级财务收支公开",
            "body": (
                "根据村务公开制度，现将本村2026年10月财务收支情况公布如下。"
                "本月收入合计12,345.60元，支出合计8,210.00元。"
                "如有疑问，请于公示之日起7日内向村务监督委员会反映，监督电话12345。"
            ),
            "category": "village_finance",
            "priority": "important",
            "targets": {"villages": [first_v]},
            "table": {
                "caption": "2026年10月收支明细",
                "columns": ["项目", "收入（元）", "支出（元）"],
                "rows": [
                    ["集体土地租金", "10,000.00", ""],
                    ["上级转移支付", "2,345.60", ""],
                    ["村道路灯维修", "", "3,210.00"],
                    ["村委会办公经费", "", "5,000.00"],
                ],
            },
            "author": "demo",
        },
        {
            "title": "2026年耕地地力保护补贴发放公示",
            "body": (
                "2026年耕地地力保护补贴已核定，补贴标准为每亩112.5元，"
                "将于12月15日前通过社保卡“一卡通”发放到户。"
                "公示期7天，对公示内容有异议的，请到村委会或乡镇农业综合服务中心反映。"
            ),
            "category": "farm_subsidy",
            "targets": {"townships": [first_t]},
            "author": "demo",
        },
        {
            "title": "寒潮蓝色预警",
            "body": (
                "县气象台发布寒潮蓝色预警：受强冷空气影响，今天夜间到明天气温将下降8到10摄氏度，"
                "最低气温零下6摄氏度。请村民做好大棚、畜禽圈舍保温，老人儿童注意防寒，"
                "取暖时谨防一氧化碳中毒。"
            ),
            "category": "emergency",
            "priority": "emergency",
            "targets": {"county": True},
            "expires_at": now + timedelta(days=1),
            "author": "demo",
        },
        {
            "title": "关于召开村民代表会议的通知",
            "body": (
                "定于本周六上午9时在村委会会议室召开村民代表会议，"
                "讨论2027年村级项目安排，请各位代表准时参加。"
            ),
            "category": "meeting",
            "targets": {"townships": [first_t]},
            "channels": ["tv_feed", "wecom_group"],
            "publish_at": now + timedelta(seconds=5),
            "author": "demo",
        },
    ]


class _Ingest(BaseHTTPRequestHandler):
    """A stand-in for the TV platform's ingest endpoint: checks the HMAC, acknowledges."""

    secret = b""
    received: list[dict[str, Any]] = []  # noqa: RUF012 - shared by design for the demo

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        ts = self.headers.get("X-Villagecast-Timestamp", "")
        sig = self.headers.get("X-Villagecast-Signature", "")
        want = (
            "sha256=" + hmac.new(self.secret, f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
        )
        if not hmac.compare_digest(sig, want):
            self.send_response(403)
            self.end_headers()
            return
        self.received.append(json.loads(body))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"ok":true}')

    def log_message(self, format: str, *args: Any) -> None:
        return


def _start_ingest_standins(registry: Registry) -> list[ThreadingHTTPServer]:
    servers = []
    for ep in registry.endpoints.values():
        if isinstance(ep, TvFeedEndpoint) and ep.ingest_url and ep.ingest_secret_env:
            url = urlsplit(ep.ingest_url)
            if url.hostname not in ("127.0.0.1", "localhost"):
                continue  # only stand in for local platforms; never touch a real one
            secret = os.environ.get(ep.ingest_secret_env) or secrets.token_hex(16)
            os.environ[ep.ingest_secret_env] = secret
            handler = type("Ingest", (_Ingest,), {"secret": secret.encode(), "received": []})
            try:
                server = ThreadingHTTPServer((url.hostname, url.port or 80), handler)
            except OSError:
                continue
            threading.Thread(target=server.serve_forever, daemon=True).start()
            servers.append(server)
    return servers


def _start_wecom_standin(registry: Registry) -> Any:
    """A local stand-in for WeCom's robot webhook (refdevice.wecom_standin): the demo never
    talks to the real WeCom, whatever keys the environment holds. A key already set is
    registered with the stand-in as it is (it only ever reaches this loopback server; the
    secrets test passes distinctive ones), otherwise one is made up."""
    from refdevice.wecom_standin import WecomStandin

    robots = [ep for ep in registry.endpoints.values() if isinstance(ep, WecomGroupEndpoint)]
    standin = WecomStandin().start()
    os.environ["VILLAGECAST_WECOM_BASE_URL"] = standin.base_url
    for ep in robots:
        os.environ[ep.webhook_key_env] = standin.add_key(os.environ.get(ep.webhook_key_env))
    _say(
        "已启动模拟企业微信群机器人接口（{n} 个群）：{u}",
        "started a stand-in WeCom robot webhook ({n} groups): {u}",
        n=len(robots),
        u=standin.base_url,
    )
    return standin


def _start_wechat_standin(registry: Registry) -> Any:
    """A local stand-in for the WeChat official-account API (refdevice.wechat_mp_standin),
    knowing every account of devices.yaml with its AppSecret (the one in the environment,
    else a made-up one); wechatpy is pointed at it, never at the real WeChat."""
    from refdevice.wechat_mp_standin import WeChatMpStandin

    accounts = [ep for ep in registry.endpoints.values() if isinstance(ep, OfficialAccountEndpoint)]
    if not accounts:
        return None
    app_secrets: dict[str, str] = {}
    for ep in accounts:
        # An AppSecret is 32 hexadecimal characters.
        secret = app_secrets.get(ep.app_id) or os.environ.get(ep.app_secret_env)
        app_secrets[ep.app_id] = secret or secrets.token_hex(16)
        os.environ[ep.app_secret_env] = app_secrets[ep.app_id]
    standin = WeChatMpStandin(
        app_secrets, account_types={ep.app_id: ep.account_type for ep in accounts}
    ).start()
    os.environ["VILLAGECAST_WECHAT_BASE_URL"] = standin.url
    _say(
        "已启动模拟微信公众号接口（{n} 个公众号：{m}）：{u}",
        "started a stand-in WeChat official-account API ({n} accounts: {m}): {u}",
        n=len(accounts),
        m=", ".join(f"{ep.id} {_OA_MODES[ep.mode].render()}" for ep in accounts),
        u=standin.url,
    )
    return standin


_OA_MODES = {
    "publish": tr("发表文章", "publishes articles"),
    "mass_send": tr("群发", "mass-sends"),
}


def _held(d: DeliveryView) -> bool:
    """Held by its channel for a time of its own (an official account's mass-send digest)."""
    return d.status == "scheduled" and d.error_code == "held"


def _unconfigured_kinds(registry: Registry) -> dict[str, list[str]]:
    """Built channels none of whose endpoints can send here: the secret variables they name
    are not set (WeChat accounts, WeCom robots). The demo leaves those channels out."""
    from channels.base import get_channel

    ready: dict[str, bool] = {}
    missing: dict[str, list[str]] = {}
    for ep in registry.endpoints.values():
        if not ep.enabled or get_channel(ep.kind) is None:
            continue
        names = [v for k, v in ep.model_dump().items() if k.endswith("_env") and isinstance(v, str)]
        unset = [n for n in names if not os.environ.get(n)]
        ready[ep.kind] = ready.get(ep.kind, False) or not unset
        missing.setdefault(ep.kind, []).extend(unset)
    return {kind: missing[kind] for kind, ok in ready.items() if not ok}


def _leave_out(data: dict[str, Any], registry: Registry, kinds: set[str]) -> dict[str, Any]:
    """The notice without the channels left out, nor those its targets lack (the demo runs
    on whatever devices.yaml it is given)."""
    if not kinds and not data.get("channels"):
        return data
    t = data["targets"]
    villages = registry.resolve_villages(
        villages=t.get("villages", []),
        townships=t.get("townships", []),
        county=t.get("county", False),
    )
    present = {x.kind for x in registry.targets_for(villages)}
    keep = [k for k in (data.get("channels") or sorted(present)) if k in present and k not in kinds]
    return {**data, "channels": keep}


def _start_boards(settings: Any) -> list[Any]:
    """Reference devices for every LED board and loudspeaker in devices.yaml."""
    from dispatcher.simulate import build_devices

    devices = build_devices(settings)
    for device in devices:
        device.start()
    _say(
        "已启动 {b} 块模拟 LED 屏和 {s} 个模拟广播音箱（参考设备：校验签名，显示或播放，回执）",
        "started {b} simulated LED boards and {s} loudspeakers "
        "(reference devices: verify, show or play, ack)",
        b=sum(d.kind == "led" for d in devices),
        s=sum(d.kind == "speaker" for d in devices),
    )
    return devices


def _say(zh: str, en: str, **kw: Any) -> None:
    print(tr(zh, en, **kw).render(), flush=True)


def _wait_settled(store: Store, ids: list[int], timeout: float) -> bool:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    deadline = time.monotonic() + timeout
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[s]}"),
    ) as progress:
        task = progress.add_task(tr("投递中", "delivering").render(), total=None, s="")
        while time.monotonic() < deadline:
            deliveries = [d for nid in ids for d in store.deliveries(nid)]
            done = sum(d.status in SETTLED or _held(d) for d in deliveries)
            counts: dict[str, int] = {}
            for d in deliveries:
                counts[d.status] = counts.get(d.status, 0) + 1
            summary = " ".join(
                f"{STATUS_LABELS[s].render()} {c}" for s, c in sorted(counts.items())
            )
            progress.update(task, total=len(deliveries), completed=done, s=summary)
            if done == len(deliveries):
                return True
            time.sleep(0.3)
    return False


def run_demo(*, home: Path | None, devices: Path) -> int:
    """Run the demo; returns the exit status (0 when every delivery reached its end state)."""
    import httpx
    from rich.console import Console
    from rich.table import Table

    home = home or Path(tempfile.mkdtemp(prefix="villagecast-demo-"))
    os.environ["VILLAGECAST_HOME"] = str(home)
    os.environ["VILLAGECAST_DEVICES"] = str(devices.resolve())
    os.environ.setdefault("VILLAGECAST_FEED_PORT", "0")
    os.environ.setdefault("VILLAGECAST_SWEEP_INTERVAL", "0.5")
    # No external servers on embedded defaults: speak with the offline engine.
    os.environ.setdefault("VILLAGECAST_TTS_MODE", "offline")
    reset_settings()
    settings = get_settings()
    registry = load_registry(settings.devices)
    standins = _start_ingest_standins(registry)
    wecom = _start_wecom_standin(registry)
    wechat = _start_wechat_standin(registry)
    reset_settings()
    settings = get_settings()
    _say("数据目录：{h}", "data directory: {h}", h=home)
    _say("正在启动工作进程……", "starting the worker...")
    worker_log = home / "logs" / "worker.log"
    # No LED boards or loudspeakers: no MQTT broker, device listener or simulated devices.
    devices_here = any(ep.kind in ("led", "speaker") for ep in registry.endpoints.values())
    stack: Stack = start_stack(
        settings=settings, worker_log=worker_log, worker_loglevel="INFO", devices=devices_here
    )
    boards = _start_boards(settings) if devices_here else []
    try:
        store = service.open_store(settings)

        def _ring(ids_by_kind: Any, countdown: float | None) -> object:
            return ring(ids_by_kind, settings=settings, countdown=countdown)

        now = datetime.now(UTC)
        ids = []
        unconfigured = _unconfigured_kinds(registry)
        for kind, names in unconfigured.items():
            _say(
                "{k}没有配置密钥（环境变量 {v} 未设置），演示中不发送这个渠道",
                "{k}: no secret configured ({v} not set); the demo leaves this channel out",
                k=KIND_LABELS[kind],
                v=", ".join(names),
            )
        for data in demo_notices(registry, now):
            data = _leave_out(data, registry, set(unconfigured))
            entered = review.draft_notice(
                build_notice(data),
                principal=None,
                store=store,
                registry=registry,
                settings=settings,
                ring=_ring,
            )
            if entered.submitted is None:
                # Finance and subsidies need a second person: the village's supervisory
                # committee (村务监督委员会) approves, then it goes out.
                _say(
                    "#{id}「{t}」须经审核：由村务监督委员会成员审核通过后发出",
                    '#{id} "{t}" needs review: a supervisory committee member approves it',
                    id=entered.notice.id,
                    t=entered.notice.title,
                )
                entered = review.approve_notice(
                    entered.notice.id,
                    principal=None,
                    actor="demo-reviewer",
                    store=store,
                    registry=registry,
                    ring=_ring,
                )
            submitted = entered.submitted
            assert submitted is not None
            ids.append(submitted.notice.id)
            _say(
                "已录入 #{id}「{t}」：{n} 个投递",
                'queued #{id} "{t}": {n} deliveries',
                id=submitted.notice.id,
                t=submitted.notice.title,
                n=len(submitted.deliveries),
            )
        settled = _wait_settled(store, ids, timeout=120)
        _say(
            "模拟电视公开平台拉取各村订阅源（{u}）……",
            "acting as the TV platform: fetching every village feed from {u}...",
            u=stack.feed_url,
        )
        with httpx.Client(
            timeout=10, headers={"User-Agent": "villagecast-demo-tv-platform"}
        ) as http:
            for vid, village in registry.villages.items():
                if any(ep.kind == "tv_feed" for ep in village.endpoints):
                    http.get(f"{stack.feed_url}/feeds/{vid}.atom").raise_for_status()
        # The server records a fetch just after answering it; an official account's
        # article is confirmed by the sweeper's next question to the stand-in.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _unfinished(store, ids):
            time.sleep(0.2)
        _print_summary(store, ids, Console(), Table)
        _say(
            "模拟企业微信群共收到 {n} 条消息",
            "the stand-in WeCom groups received {n} messages",
            n=len(wecom.posted()),
        )
        if wechat is not None:
            _say(
                "模拟公众号共发表 {a} 篇文章，群发 {m} 次",
                "the stand-in official accounts published {a} articles and made {m} mass sends",
                a=len(wechat.articles),
                m=len(wechat.mass),
            )
        held = [d for nid in ids for d in store.deliveries(nid) if _held(d)]
        for d in held:
            _say(
                "#{n} 在{k} {ep} 上暂不群发：{why}",
                "#{n} waits on {k} {ep}: {why}",
                n=d.notice_id,
                k=KIND_LABELS[d.kind],
                ep=d.endpoint_id,
                why=(d.error_zh if current_lang() == "zh" else d.error_en) or "",
            )
        if held:
            _say(
                "（演示到此结束，汇总群发不会发出；正式运行时 villagecast up 到点发出）",
                "(the demo ends here, so the digest is not sent; under villagecast up it goes "
                "out at that time)",
            )
        ok = settled and not _unfinished(store, ids)
        first_village = next(iter(registry.villages))
        _say(
            "\n查看某村的订阅源：VILLAGECAST_HOME={h} villagecast feed {v} --format atom\n"
            "查看通知详情：VILLAGECAST_HOME={h} villagecast notice show {id}\n"
            "工作进程日志：{log}",
            "\nSee a village feed: VILLAGECAST_HOME={h} villagecast feed {v} --format atom\n"
            "See a notice: VILLAGECAST_HOME={h} villagecast notice show {id}\n"
            "Worker log: {log}",
            log=worker_log,
            h=home,
            v=first_village,
            id=ids[0],
        )
        if not ok:
            _say("有投递没有完成，见上表。", "some deliveries did not complete; see the table.")
        return 0 if ok else 1
    except VillagecastError:
        raise
    finally:
        for board in boards:
            board.stop()
        stack.stop()
        for server in standins:
            server.shutdown()
            server.server_close()
        wecom.stop()
        if wechat is not None:
            wechat.stop()


def _unfinished(store: Store, ids: list[int]) -> list[DeliveryView]:
    """Deliveries not yet delivered, skipped, or held for a digest."""
    return [
        d
        for nid in ids
        for d in store.deliveries(nid)
        if d.status not in ("delivered", "skipped") and not _held(d)
    ]


def _print_summary(store: Store, ids: list[int], console: Any, table_cls: Any) -> None:
    zh = current_lang() == "zh"
    table = table_cls(title="投递结果" if zh else "Deliveries")
    table.add_column("通知" if zh else "notice")
    kinds = list(KIND_LABELS)
    for k in kinds:
        table.add_column(KIND_LABELS[k].render())
    for nid in ids:
        n = store.notice(nid)
        by_kind: dict[str, dict[str, int]] = {}
        for d in store.deliveries(nid):
            by_kind.setdefault(d.kind, {}).setdefault(d.status, 0)
            by_kind[d.kind][d.status] += 1
        cells = []
        for k in kinds:
            c = by_kind.get(k, {})
            cells.append(
                " ".join(f"{STATUS_LABELS[s].render()}{n_}" for s, n_ in sorted(c.items())) or "-"
            )
        table.add_row(f"#{nid} {n.title}", *cells)
    console.print(table)
