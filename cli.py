"""villagecast's command line: enter a notice once, watch it reach every channel.

Heavy modules (Celery, SQLAlchemy, feed rendering) are imported inside the commands,
so ``villagecast --help`` stays fast on an old laptop.

No ``from __future__ import annotations`` here: typer reads every command's signature
each time it builds the command tree (every start, ``--help`` too), and string
annotations are evaluated again at each read; real ones are built once, at import. Names
imported only for type checking are quoted where used.
"""

import json
import os
import re
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from typer.core import TyperGroup

from content_queue.errors import VillagecastError
from content_queue.i18n import Lang, current_lang, detect_lang, set_lang, tr

if TYPE_CHECKING:
    from collections.abc import Callable

    from content_queue.settings import Settings
    from content_queue.store import DeliveryView, NoticeView, Store

__all__ = ["app", "main"]

_HELP_LANG: Lang = detect_lang()


def h(zh: str, en: str) -> str:
    """Help text in the language chosen by the environment (help is built at import time)."""
    return zh if _HELP_LANG == "zh" else en


# typer's usage errors (its vendored click) speak English; the common ones get Chinese here.
_UsageError: type[Exception] = typer.BadParameter.__mro__[1]
_USAGE_ZH = [
    (re.compile(r"^Missing option '(.+)'\.?$"), "缺少选项 {0}"),
    (re.compile(r"^Missing argument '(.+)'\.?$"), "缺少参数 {0}"),
    (re.compile(r"^No such option: (\S+)"), "没有这个选项：{0}"),
    (re.compile(r"^No such command '([^']+)'"), "没有这个命令：{0}"),
    (re.compile(r"^Invalid value for '(.+?)': (.*)$", re.S), "选项 {0} 的值无效：{1}"),
    (re.compile(r"^Got unexpected extra arguments? \((.*)\)$"), "多余的参数：{0}"),
    (re.compile(r"^Option '(.+)' requires an argument\.?$"), "选项 {0} 需要一个值"),
]


def _usage_zh(message: str) -> str:
    for pattern, template in _USAGE_ZH:
        m = pattern.match(message)
        if m:
            return template.format(*m.groups())
    return message


class _Group(TyperGroup):
    """Turns every VillagecastError into one clear sentence and an exit status."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except _UsageError as exc:
            if current_lang() == "zh" and hasattr(exc, "format_message"):
                translated = _usage_zh(str(exc.format_message()))
                # MissingParameter builds its text on demand, so replace what is shown.
                setattr(exc, "format_message", lambda: translated)  # noqa: B010
            raise
        except VillagecastError as exc:
            typer.secho(exc.render(), err=True, fg="red")
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            typer.secho(tr("已中断", "interrupted").render(), err=True, fg="yellow")
            raise typer.Exit(130) from None
        except Exception as exc:
            # typer's own control flow (Exit, Abort, usage errors) passes through untouched.
            if type(exc).__module__.startswith(("typer", "click")):
                raise
            _crash(exc)


def _crash(exc: BaseException) -> NoReturn:
    """An unexpected error: one sentence for the user, the traceback to a log file."""
    import traceback

    from content_queue.redact import redact

    log_hint = ""
    try:
        from content_queue.settings import get_settings

        path = get_settings().home / "logs" / "crash.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as fh:
            fh.write(redact(f"--- {datetime.now().isoformat()} {' '.join(sys.argv)}\n"))
            # A request's URL in an exception can carry a webhook key or an access token.
            fh.write(redact("".join(traceback.format_exception(exc))))
        log_hint = str(path)
    except Exception:
        log_hint = "-"
    if os.environ.get("VILLAGECAST_DEBUG"):
        print(redact("".join(traceback.format_exception(exc))), file=sys.stderr, end="")
    typer.secho(
        tr(
            "内部错误（{e}）。详细信息已写入 {log}，请把它发给技术支持。",
            "internal error ({e}). Details were written to {log}; please send it to support.",
            e=type(exc).__name__,
            log=log_hint,
        ).render(),
        err=True,
        fg="red",
    )
    raise typer.Exit(70)


def _typer(help_zh: str, help_en: str) -> typer.Typer:
    return typer.Typer(
        cls=_Group,
        help=h(help_zh, help_en),
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
        rich_markup_mode=None,
    )


app = _typer(
    "villagecast：通知录入一次，自动发到村微信群、公众号、LED 屏、广播和电视公开平台。",
    "villagecast: enter a notice once; it reaches WeChat groups, official accounts, "
    "LED boards, loudspeakers and the TV disclosure platform.",
)
notice_app = _typer("录入和查看通知", "add and inspect notices")
devices_app = _typer("检查 devices.yaml（村、乡镇和设备登记）", "check devices.yaml")
keys_app = _typer("设备指令签名密钥", "signing keys for device commands")
mqtt_app = _typer("MQTT 服务器配置", "MQTT broker configuration")
device_app = _typer("参考设备与模拟器", "the reference device and simulator")
audit_app = _typer("审计日志：查看和校验", "the audit log: show and verify")
users_app = _typer(
    "监控页面的账号（乡镇、县、村）", "dashboard accounts (township, county, village)"
)
template_app = _typer(
    "公开模板：村级财务、惠农补贴、防返贫监测、征地补偿、会议、应急预警",
    "disclosure templates: finance, subsidies, monitoring, land, meetings, warnings",
)
app.add_typer(notice_app, name="notice")
app.add_typer(template_app, name="template")
app.add_typer(audit_app, name="audit")
app.add_typer(devices_app, name="devices")
app.add_typer(keys_app, name="keys")
app.add_typer(mqtt_app, name="mqtt")
app.add_typer(device_app, name="device")
app.add_typer(users_app, name="users")


@app.callback()
def _root(
    lang: Annotated[
        str | None,
        typer.Option("--lang", help=h("界面语言：zh 或 en", "interface language: zh or en")),
    ] = None,
) -> None:
    set_lang(None)  # each invocation decides afresh (tests run many in one process)
    if lang is not None:
        if lang not in ("zh", "en"):
            raise typer.BadParameter(h("只能是 zh 或 en", "must be zh or en"), param_hint="--lang")
        set_lang("zh" if lang == "zh" else "en")
        os.environ["VILLAGECAST_LANG"] = lang  # worker processes started from here follow


# -- helpers -------------------------------------------------------------------------------


def _settings() -> "Settings":
    from content_queue.settings import get_settings

    return get_settings()


def _store(settings: "Settings") -> "Store":
    from dispatcher.service import open_store

    return open_store(settings)


def _echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, ensure_ascii=False, indent=2, default=str))


def _ts(value: datetime | None) -> str:
    if value is None:
        return "-"
    from content_queue.models import local_tz

    return value.astimezone(local_tz()).strftime("%Y-%m-%d %H:%M:%S")


def _parse_time(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value.strip().replace(" ", "T", 1))
    except ValueError:
        from content_queue.errors import NoticeError

        raise NoticeError(
            tr(
                "{opt} 的时间格式不对：{v}（请写成 2026-12-01T08:00）",
                "{opt}: not a valid time: {v} (write it like 2026-12-01T08:00)",
                opt=option,
                v=value,
            )
        ) from None


def _label(mapping: dict[Any, Any], key: Any) -> str:
    text = mapping.get(key)
    return text.render() if text is not None else str(key)


def delivery_json(
    d: "DeliveryView", attempts: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": d.id,
        "endpoint": d.endpoint_id,
        "kind": d.kind,
        "action": d.action,
        "recall_of": d.recall_of,
        "village": d.village_id,
        "township": d.township_id,
        "status": d.status,
        "attempts": d.attempts,
        "error": d.error(current_lang()),
        "error_code": d.error_code,
        "sent_at": d.sent_at.isoformat() if d.sent_at else None,
        "delivered_at": d.delivered_at.isoformat() if d.delivered_at else None,
        "updated_at": d.updated_at.isoformat(),
        "details": d.details,
    }
    if attempts is not None:
        out["attempt_log"] = [
            {
                "number": a["number"],
                "started_at": a["started_at"].isoformat(),
                "finished_at": a["finished_at"].isoformat() if a["finished_at"] else None,
                "outcome": a["outcome"],
                "error_code": a["error_code"],
                "error": a["error_zh"] if current_lang() == "zh" else a["error_en"],
            }
            for a in attempts
        ]
    return out


def notice_json(n: "NoticeView") -> dict[str, Any]:
    return {
        "id": n.id,
        "title": n.title,
        "body": n.body,
        "category": n.category,
        "priority": n.priority,
        "targets": n.targets,
        "channels": n.channels,
        "table": n.table,
        "publish_at": n.publish_at.isoformat(),
        "expires_at": n.expires_at.isoformat() if n.expires_at else None,
        "author": n.author,
        "revision": n.revision,
        "supersedes": n.supersedes_id,
        "state": n.state,
        "created_at": n.created_at.isoformat(),
    }


# -- notice ------------------------------------------------------------------------------


@notice_app.command("add", help=h("录入一条通知并发往所有渠道", "queue a notice for every channel"))
def notice_add(
    title: Annotated[str | None, typer.Option("--title", help=h("标题", "title"))] = None,
    category: Annotated[
        str | None,
        typer.Option(
            "--category",
            help=h(
                "类别：poverty_monitoring 防返贫监测, village_finance 村级财务, farm_subsidy "
                "惠农补贴, social_insurance 社保医保, land_compensation 征地拆迁, party_affairs "
                "党务, village_affairs 村务, meeting 会议, emergency 应急, other 其他",
                "category: poverty_monitoring, village_finance, farm_subsidy, social_insurance, "
                "land_compensation, party_affairs, village_affairs, meeting, emergency, other",
            ),
        ),
    ] = None,
    body: Annotated[str | None, typer.Option("--body", help=h("正文", "body text"))] = None,
    body_file: Annotated[
        Path | None,
        typer.Option(
            "--body-file", help=h("从文件读取正文（UTF-8）", "read the body from a UTF-8 file")
        ),
    ] = None,
    village: Annotated[
        list[str] | None,
        typer.Option("--village", help=h("发往的村（可重复）", "target village (repeatable)")),
    ] = None,
    township: Annotated[
        list[str] | None,
        typer.Option("--township", help=h("发往整个乡镇（可重复）", "whole township (repeatable)")),
    ] = None,
    county: Annotated[
        bool, typer.Option("--county", help=h("发往全县", "the whole county"))
    ] = False,
    channel: Annotated[
        list[str] | None,
        typer.Option(
            "--channel",
            help=h(
                "只发这些渠道：wecom_group, wechat_official_account, led, speaker, tv_feed, "
                "bulletin",
                "only these channels: wecom_group, wechat_official_account, led, speaker, "
                "tv_feed, bulletin",
            ),
        ),
    ] = None,
    priority: Annotated[
        str | None,
        typer.Option(
            "--priority",
            help=h(
                "routine 普通（默认）, important 重要, emergency 紧急",
                "routine (default), important, emergency",
            ),
        ),
    ] = None,
    publish_at: Annotated[
        str | None,
        typer.Option(
            "--publish-at",
            help=h("定时发布，如 2026-12-01T08:00", "publish later, e.g. 2026-12-01T08:00"),
        ),
    ] = None,
    expires_at: Annotated[
        str | None, typer.Option("--expires-at", help=h("失效时间", "expiry time"))
    ] = None,
    author: Annotated[str | None, typer.Option("--author", help=h("发布人", "author"))] = None,
    table_file: Annotated[
        Path | None,
        typer.Option(
            "--table-file",
            help=h("附带表格（CSV，首行为表头）", "attach a table (CSV, header row first)"),
        ),
    ] = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help=h("显示进度直到全部投递完成", "show progress until every delivery settles"),
        ),
    ] = False,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout", help=h("--wait 最长等待秒数", "--wait gives up after this many seconds")
        ),
    ] = 600.0,
    mask_personal_data: Annotated[
        bool,
        typer.Option(
            "--mask-personal-data",
            help=h(
                "把身份证号、手机号、银行卡号按公示惯例打码后发布（默认拒绝发布）",
                "mask resident IDs, mobiles and bank cards in the published style "
                "(by default such a notice is refused)",
            ),
        ),
    ] = False,
    template: Annotated[
        str | None,
        typer.Option(
            "--template",
            help=h(
                "用模板填写标题、正文、类别和表格（villagecast template list 查看）",
                "fill title, body, category and table from a template (see template list)",
            ),
        ),
    ] = None,
    data_file: Annotated[
        Path | None,
        typer.Option(
            "--data", help=h("模板的数据文件（CSV 或 XLSX）", "the template's data (CSV or XLSX)")
        ),
    ] = None,
    field: Annotated[
        list[str] | None,
        typer.Option(
            "--field",
            help=h("模板字段：名称=值（可重复）", "a template field: NAME=VALUE (repeatable)"),
        ),
    ] = None,
    keep_draft: Annotated[
        bool,
        typer.Option("--draft", help=h("只存为草稿，稍后提交审核", "keep it as a draft for now")),
    ] = False,
    bypass_review: Annotated[
        str | None,
        typer.Option(
            "--bypass-review",
            metavar="REASON",
            help=h(
                "紧急通知免审发布，须写明理由（记入审计日志，乡镇可见）",
                "send an emergency without review, with the reason (audited)",
            ),
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help=h("输出 JSON", "print JSON"))] = False,
) -> None:
    from content_queue.errors import NoticeError
    from content_queue.models import build_notice
    from dispatcher.review import draft_notice
    from dispatcher.service import registry_cache

    if body is not None and body_file is not None:
        raise NoticeError(
            tr(
                "--body 和 --body-file 只能用一个",
                "give the body with --body or --body-file, not both",
            )
        )
    if template is None and (data_file is not None or field):
        raise NoticeError(
            tr("--data 和 --field 要和 --template 一起用", "--data and --field need --template")
        )
    targets = {"villages": village or [], "townships": township or [], "county": county}
    settings = _settings()
    registry = registry_cache.get(settings.devices) if template is not None else None
    filled: dict[str, Any] = {}
    template_warnings: list[Any] = []
    if template is not None:
        assert registry is not None
        result = _fill_template(template, data_file, field or [], registry, targets)
        filled, template_warnings = result.notice_fields(), list(result.warnings)
    if body_file is not None:
        body = _read_text(body_file)
    for opt, value in (("--title", title), ("--category", category)):
        if value is None and opt.removeprefix("--") not in filled:
            raise NoticeError(
                tr(
                    "缺少选项 {opt}（或用 --template 从模板填写）",
                    "Missing option '{opt}' (or fill it from a --template)",
                    opt=opt,
                )
            )
    if body is None and "body" not in filled:
        raise NoticeError(
            tr(
                "请用 --body 或 --body-file 给出正文（二选一），或用 --template 从模板填写",
                "give the body with --body or --body-file (one of them), or fill it from a "
                "--template",
            )
        )
    data: dict[str, Any] = {
        **filled,
        "targets": targets,
        "channels": channel or None,
        "author": author or os.environ.get("USER", ""),
        "personal_data": "mask" if mask_personal_data else "block",
    }
    overrides: dict[str, Any] = {
        "title": title,
        "body": body,
        "category": category,
        "priority": priority,
        "publish_at": _parse_time(publish_at, "--publish-at"),
        "expires_at": _parse_time(expires_at, "--expires-at"),
    }
    data.update({k: v for k, v in overrides.items() if v is not None})
    data.setdefault("priority", "routine")
    if table_file is not None:
        data["table"] = _read_table(table_file)
    data = {k: v for k, v in data.items() if v is not None}
    draft = build_notice(data)
    if registry is None:
        registry = registry_cache.get(settings.devices)
    store = _store(settings)
    reviewed = draft_notice(
        draft,
        principal=_principal(settings, store),
        store=store,
        registry=registry,
        settings=settings,
        ring=_ringer(settings),
        bypass_reason=bypass_review,
        keep_as_draft=keep_draft,
        source={"template": template} if template else None,
    )
    if reviewed.submitted is None:
        _print_waiting(reviewed.notice, as_json=as_json)
        return
    submitted = reviewed.submitted
    n = submitted.notice
    if as_json and not wait:
        _echo_json(
            {
                **notice_json(n),
                "template": template,
                "deliveries": len(submitted.deliveries),
                "queued": submitted.rung,
                "warnings": [w.render() for w in [*template_warnings, *submitted.warnings]],
            }
        )
        return
    if not as_json:
        _print_submitted(submitted)
        for w in template_warnings:
            typer.secho(w.render(), fg="yellow")
    if wait:
        _wait(store, n.id, timeout=timeout, quiet=as_json)
        if as_json:
            _echo_json(
                {
                    **notice_json(n),
                    "deliveries": [delivery_json(d) for d in store.deliveries(n.id)],
                }
            )


def _print_waiting(n: "NoticeView", *, as_json: bool) -> None:
    if as_json:
        _echo_json({**notice_json(n), "deliveries": 0, "queued": False, "warnings": []})
        return
    if n.state == "draft":
        typer.echo(
            tr(
                "已存为草稿 #{id}「{t}」；提交审核：villagecast notice submit {id}",
                'saved draft #{id} "{t}"; send it to review: villagecast notice submit {id}',
                id=n.id,
                t=n.title,
            ).render()
        )
        return
    typer.secho(
        tr(
            "通知 #{id}「{t}」已提交审核：需另一人审核通过后才会发出"
            "（villagecast notice approve {id}，或在监控页面审核）",
            'notice #{id} "{t}" awaits review: another person must approve it before it '
            "goes out (villagecast notice approve {id}, or on the dashboard)",
            id=n.id,
            t=n.title,
        ).render(),
        fg="yellow",
    )


def _principal(settings: "Settings", store: "Store") -> Any:
    """Who is acting: the CLI's signed-in account, or None on an installation without
    accounts (single-operator mode). Once accounts exist, acting needs `villagecast login`."""
    from content_queue.accounts import Accounts, NotAllowed

    accounts = Accounts(store)
    if not any(u.active for u in accounts.users()):
        return None
    token = os.environ.get("VILLAGECAST_CLI_TOKEN", "")
    path = _session_file(settings)
    if not token and path.exists():
        token = path.read_text(encoding="utf-8").strip()
    info = accounts.session(token) if token else None
    if info is None:
        raise NotAllowed(
            tr(
                "请先登录：villagecast login 用户名（本系统已启用账号）",
                "log in first: villagecast login USERNAME (accounts are in use here)",
            )
        )
    return info.principal


def _session_file(settings: "Settings") -> Path:
    return settings.home / "cli-session"


def _actor_name(principal: Any, author: str | None) -> str:
    return str(principal.username) if principal is not None else _actor(author)


def _read_text(path: Path) -> str:
    from content_queue.errors import NoticeError

    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NoticeError(tr("找不到文件 {p}", "file not found: {p}", p=path)) from None
    except UnicodeDecodeError:
        raise NoticeError(
            tr(
                "文件 {p} 不是 UTF-8 编码，请另存为 UTF-8 后再试",
                "{p} is not UTF-8; save it as UTF-8 and try again",
                p=path,
            )
        ) from None
    except OSError as exc:
        raise NoticeError(
            tr("无法读取 {p}：{e}", "cannot read {p}: {e}", p=path, e=exc.strerror)
        ) from None


def _read_table(path: Path) -> dict[str, Any]:
    import csv
    import io

    from content_queue.errors import NoticeError

    rows = [r for r in csv.reader(io.StringIO(_read_text(path).lstrip("\ufeff"))) if any(r)]
    if not rows:
        raise NoticeError(tr("表格文件 {p} 是空的", "the table file {p} is empty", p=path))
    return {"caption": None, "columns": rows[0], "rows": rows[1:]}


def _ringer(settings: "Settings") -> Any:
    from dispatcher.doorbell import ring

    def _ring(ids_by_kind: Any, countdown: float | None) -> object:
        return ring(ids_by_kind, settings=settings, countdown=countdown)

    return _ring


def _print_submitted(submitted: Any) -> None:
    from dispatcher.planner import KIND_LABELS

    n = submitted.notice
    by_kind = submitted.plan.by_kind()
    parts = "，".join(f"{_label(KIND_LABELS, k)} {c}" for k, c in sorted(by_kind.items()))
    typer.echo(
        tr(
            "已保存通知 #{id}「{title}」：{nv} 个村，共 {nd} 个投递（{parts}）",
            'saved notice #{id} "{title}": {nv} village(s), {nd} deliveries ({parts})',
            id=n.id,
            title=n.title,
            nv=len(submitted.plan.villages),
            nd=len(submitted.deliveries),
            parts=parts,
        ).render()
    )
    skipped = [d for d in submitted.deliveries if d.status == "skipped"]
    if skipped:
        typer.secho(
            tr(
                "其中 {n} 个投递的渠道尚未上线，已跳过",
                "{n} deliveries go to channels not built yet and were skipped",
                n=len(skipped),
            ).render(),
            fg="yellow",
        )
    if n.publish_at > datetime.now(n.publish_at.tzinfo) and any(
        d.status == "scheduled" for d in submitted.deliveries
    ):
        typer.echo(tr("将于 {t} 发布", "will be published at {t}", t=_ts(n.publish_at)).render())
    for w in submitted.warnings:
        typer.secho(w.render(), fg="yellow")
    if submitted.ring_error is not None:
        typer.secho(submitted.ring_error.render(), fg="yellow")


def _wait(
    store: "Store",
    notice_id: int,
    *,
    timeout: float,
    quiet: bool,
    fetch: "Callable[[], list[DeliveryView]] | None" = None,
) -> None:
    """A live progress bar until every delivery has left the dispatcher's hands."""
    fetch = fetch or (lambda: [d for d in store.deliveries(notice_id) if d.action == "publish"])
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from content_queue.store import SETTLED, STATUS_LABELS

    console = Console(stderr=True, quiet=quiet)
    deadline = time.monotonic() + timeout
    last_change = time.monotonic()
    last_summary = ""
    hinted = False
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[summary]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task(tr("投递中", "delivering").render(), total=None, summary="")
        while True:
            deliveries = fetch()
            done = sum(1 for d in deliveries if d.status in SETTLED)
            counts: dict[str, int] = {}
            for d in deliveries:
                counts[d.status] = counts.get(d.status, 0) + 1
            summary = " ".join(f"{_label(STATUS_LABELS, s)} {c}" for s, c in sorted(counts.items()))
            if summary != last_summary:
                last_summary, last_change = summary, time.monotonic()
            progress.update(task, total=len(deliveries), completed=done, summary=summary)
            if done == len(deliveries):
                break
            if not hinted and time.monotonic() - last_change > 15:
                hinted = True
                progress.console.print(
                    tr(
                        "[yellow]15 秒没有进展：工作进程在运行吗？"
                        "（villagecast worker 或 villagecast up）",
                        "[yellow]no progress for 15 s: is a worker running? "
                        "(villagecast worker or villagecast up)",
                    ).render()
                )
            if time.monotonic() > deadline:
                progress.stop()
                typer.secho(
                    tr(
                        "等待超时：通知已保存，投递会在后台继续（villagecast notice show {id}）",
                        "timed out waiting: the notice is saved and delivery goes on "
                        "(villagecast notice show {id})",
                        id=notice_id,
                    ).render(),
                    err=True,
                    fg="yellow",
                )
                raise typer.Exit(3)
            time.sleep(0.3)
    if not quiet:
        _print_deliveries(fetch())


def _village_names() -> dict[str, str]:
    """Village names for display; ids when devices.yaml cannot be read right now."""
    try:
        from dispatcher.service import registry_cache

        registry = registry_cache.get(_settings().devices)
    except VillagecastError:
        return {}
    return {vid: v.name for vid, v in registry.villages.items()}


def _print_deliveries(deliveries: "list[DeliveryView]") -> None:
    from rich.console import Console
    from rich.table import Table

    from content_queue.store import STATUS_LABELS
    from dispatcher.planner import KIND_LABELS

    colours = {
        "delivered": "green",
        "sent": "cyan",
        "failed": "red",
        "expired": "magenta",
        "skipped": "dim",
        "cancelled": "dim",
    }
    zh = current_lang() == "zh"
    names = _village_names()
    table = Table(show_lines=False)
    table.add_column("村" if zh else "village", no_wrap=True)
    table.add_column("渠道" if zh else "channel", no_wrap=True)
    table.add_column("端点" if zh else "endpoint", overflow="fold")
    table.add_column("状态" if zh else "status", no_wrap=True)
    table.add_column("次数" if zh else "tries", justify="right")
    table.add_column("说明" if zh else "detail", overflow="fold", ratio=2)
    recall = "（撤回）" if zh else " (recall)"
    for d in deliveries:
        colour = colours.get(d.status, "yellow")
        village = names.get(d.village_id, d.village_id) if d.village_id else "-"
        table.add_row(
            village,
            _label(KIND_LABELS, d.kind) + (recall if d.action == "recall" else ""),
            d.endpoint_id,
            f"[{colour}]{_label(STATUS_LABELS, d.status)}[/]",
            str(d.attempts),
            d.error(current_lang()) or "",
        )
    Console().print(table)


@notice_app.command("list", help=h("列出最近的通知", "list recent notices"))
def notice_list(
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 20,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    from rich.console import Console
    from rich.table import Table

    from content_queue.models import CATEGORY_LABELS, Category

    store = _store(_settings())
    notices = store.notices(limit=limit)
    counts = store.delivery_counts([n.id for n in notices])
    if as_json:
        _echo_json([{**notice_json(n), "deliveries": dict(counts[n.id])} for n in notices])
        return
    if not notices:
        typer.echo(tr("还没有通知", "no notices yet").render())
        return
    zh = current_lang() == "zh"
    table = Table()
    for zh_name, en_name in (
        ("编号", "id"),
        ("标题", "title"),
        ("类别", "category"),
        ("发布时间", "publish"),
        ("投递", "deliveries"),
    ):
        table.add_column(zh_name if zh else en_name)
    for n in notices:
        c = counts[n.id]
        cat = (
            CATEGORY_LABELS.get(Category(n.category))
            if n.category in Category._value2member_map_
            else None
        )
        table.add_row(
            str(n.id),
            n.title
            + (
                " [dim](撤回)[/]"
                if n.state == "withdrawn" and zh
                else " [dim](withdrawn)[/]"
                if n.state == "withdrawn"
                else ""
            ),
            cat.render() if cat else n.category,
            _ts(n.publish_at),
            _counts_text(c),
        )
    Console().print(table)


def _counts_text(c: Any) -> str:
    from content_queue.store import STATUS_LABELS

    return " ".join(f"{_label(STATUS_LABELS, s)}{n}" for s, n in sorted(c.items()))


@notice_app.command("show", help=h("查看一条通知及其每个投递", "show a notice and every delivery"))
def notice_show(
    notice_id: Annotated[int, typer.Argument(metavar="ID")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    store = _store(_settings())
    n = store.notice(notice_id)
    deliveries = store.deliveries(notice_id)
    if as_json:
        _echo_json(
            {
                **notice_json(n),
                "deliveries": [delivery_json(d, store.attempts(d.id)) for d in deliveries],
            }
        )
        return
    from content_queue.models import CATEGORY_LABELS, PRIORITY_LABELS, Category, Priority
    from content_queue.store import NOTICE_STATE_LABELS

    typer.echo(f"#{n.id} {n.title}")
    typer.echo(
        tr(
            "类别：{c}  优先级：{p}  发布：{pub}  失效：{exp}  状态：{s}",
            "category: {c}  priority: {p}  publish: {pub}  expires: {exp}  state: {s}",
            c=_label(CATEGORY_LABELS, Category(n.category)),
            p=_label(PRIORITY_LABELS, Priority(n.priority)),
            pub=_ts(n.publish_at),
            exp=_ts(n.expires_at),
            s=_label(NOTICE_STATE_LABELS, n.state),
        ).render()
    )
    if n.supersedes_id is not None:
        typer.echo(
            tr(
                "第 {rev} 版，更正通知 #{old}",
                "revision {rev}, correcting notice #{old}",
                rev=n.revision,
                old=n.supersedes_id,
            ).render()
        )
    typer.echo("")
    typer.echo(n.body)
    typer.echo("")
    _print_deliveries(deliveries)


def _actor(author: str | None) -> str:
    return author or os.environ.get("USER", "") or "cli"


def _recalls_of(store: "Store", notice_id: int) -> "Callable[[], list[DeliveryView]]":
    return lambda: [d for d in store.deliveries(notice_id) if d.action == "recall"]


@notice_app.command(
    "withdraw",
    help=h(
        "撤回一条通知：未发出的取消，已发出的从每个渠道撤下（LED 清屏、广播停播、推送撤回说明）",
        "withdraw a notice: cancel what has not gone out, take it back from every channel "
        "it reached (boards cleared, loudspeakers stopped, a withdrawal message)",
    ),
)
def notice_withdraw(
    notice_id: Annotated[int, typer.Argument(metavar="ID")],
    reason: Annotated[
        str,
        typer.Option("--reason", help=h("撤回原因（记入审计日志）", "why (kept in the audit log)")),
    ] = "",
    author: Annotated[str | None, typer.Option("--author", help=h("操作人", "who"))] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help=h("显示撤回进度", "show progress until it settles"))
    ] = False,
    timeout: Annotated[float, typer.Option("--timeout")] = 600.0,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    from dispatcher.review import withdraw_as
    from dispatcher.service import registry_cache

    settings = _settings()
    store = _store(settings)
    principal = _principal(settings, store)
    done = withdraw_as(
        notice_id,
        principal=principal,
        actor=_actor_name(principal, author),
        store=store,
        registry=registry_cache.get(settings.devices),
        ring=_ringer(settings),
        reason=reason,
    )
    w = done.withdrawal
    if not as_json:
        typer.echo(
            tr(
                "已撤回通知 #{id}：{c} 个未发出的投递已取消，{r} 个已发出的端点正在撤下",
                "withdrew notice #{id}: {c} deliveries not yet sent were cancelled, "
                "{r} endpoint(s) it reached are being recalled",
                id=notice_id,
                c=w.cancelled,
                r=len(w.recalls),
            ).render()
        )
        if done.ring_error is not None:
            typer.secho(done.ring_error.render(), fg="yellow")
    if wait and w.recalls:
        _wait(store, notice_id, timeout=timeout, quiet=as_json, fetch=_recalls_of(store, notice_id))
    if as_json:
        _echo_json(
            {
                **notice_json(store.notice(notice_id)),
                "cancelled": w.cancelled,
                "recalls": [
                    delivery_json(d)
                    for d in (_recalls_of(store, notice_id)() if wait else w.recalls)
                ],
            }
        )


@notice_app.command(
    "correct",
    help=h(
        "更正一条通知：发出新版本，并从每个渠道撤下旧版本",
        "correct a notice: send a new revision and take the old one back everywhere",
    ),
)
def notice_correct(
    notice_id: Annotated[int, typer.Argument(metavar="ID")],
    title: Annotated[
        str | None, typer.Option("--title", help=h("新标题（默认不变）", "new title"))
    ] = None,
    body: Annotated[str | None, typer.Option("--body", help=h("新正文", "new body"))] = None,
    body_file: Annotated[
        Path | None, typer.Option("--body-file", help=h("从文件读取新正文", "new body from a file"))
    ] = None,
    table_file: Annotated[
        Path | None, typer.Option("--table-file", help=h("新表格（CSV）", "new table (CSV)"))
    ] = None,
    expires_at: Annotated[
        str | None, typer.Option("--expires-at", help=h("新的失效时间", "new expiry time"))
    ] = None,
    reason: Annotated[
        str, typer.Option("--reason", help=h("更正原因（记入审计日志）", "why (audit log)"))
    ] = "",
    author: Annotated[str | None, typer.Option("--author", help=h("操作人", "who"))] = None,
    mask_personal_data: Annotated[
        bool,
        typer.Option(
            "--mask-personal-data",
            help=h("个人信息按公示惯例打码", "mask personal data in the published style"),
        ),
    ] = False,
    wait: Annotated[bool, typer.Option("--wait", help=h("显示进度", "show progress"))] = False,
    timeout: Annotated[float, typer.Option("--timeout")] = 600.0,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    from content_queue.errors import NoticeError
    from content_queue.models import build_notice
    from dispatcher.review import review_correction
    from dispatcher.service import registry_cache

    if body is not None and body_file is not None:
        raise NoticeError(
            tr("--body 和 --body-file 只能用一个", "give --body or --body-file, not both")
        )
    if body_file is not None:
        body = _read_text(body_file)
    if title is None and body is None and table_file is None and expires_at is None:
        raise NoticeError(
            tr(
                "没有要更正的内容：请给出 --title、--body、--body-file、--table-file "
                "或 --expires-at",
                "nothing to correct: give --title, --body, --body-file, --table-file or "
                "--expires-at",
            )
        )
    settings = _settings()
    store = _store(settings)
    old = store.notice(notice_id)
    now = datetime.now(old.publish_at.tzinfo)
    data: dict[str, Any] = {
        "title": title if title is not None else old.title,
        "body": body if body is not None else old.body,
        "category": old.category,
        "priority": old.priority,
        "targets": old.targets,
        "channels": old.channels,
        "table": _read_table(table_file) if table_file is not None else old.table,
        "publish_at": old.publish_at if old.publish_at > now else None,
        "expires_at": _parse_time(expires_at, "--expires-at") if expires_at else old.expires_at,
        "author": _actor(author),
        "revision": old.revision + 1,
        "supersedes": old.id,
        "personal_data": "mask" if mask_personal_data else "block",
    }
    draft = build_notice({k: v for k, v in data.items() if v is not None})
    registry = registry_cache.get(settings.devices)
    principal = _principal(settings, store)
    reviewed = review_correction(
        draft,
        principal=principal,
        actor=_actor_name(principal, author),
        store=store,
        registry=registry,
        settings=settings,
        ring=_ringer(settings),
        reason=reason,
    )
    if reviewed.submitted is None:
        _print_waiting(reviewed.notice, as_json=as_json)
        return
    submitted = reviewed.submitted
    assert reviewed.withdrawal is not None
    w = reviewed.withdrawal
    n = submitted.notice
    if not as_json:
        typer.echo(
            tr(
                "通知 #{old} 已由第 {rev} 版（#{id}）更正；旧版本正在从 {r} 个端点撤下",
                "notice #{old} is corrected by revision {rev} (#{id}); the old one is being "
                "recalled from {r} endpoint(s)",
                old=notice_id,
                rev=n.revision,
                id=n.id,
                r=len(w.recalls),
            ).render()
        )
        _print_submitted(submitted)
    if wait:

        def both() -> "list[DeliveryView]":
            fresh = [d for d in store.deliveries(n.id) if d.action == "publish"]
            return [*fresh, *_recalls_of(store, notice_id)()]

        _wait(store, n.id, timeout=timeout, quiet=as_json, fetch=both)
    if as_json:
        _echo_json(
            {
                **notice_json(store.notice(n.id)),
                "deliveries": [delivery_json(d) for d in store.deliveries(n.id)],
                "recalls": [delivery_json(d) for d in _recalls_of(store, notice_id)()],
            }
        )


@notice_app.command(
    "submit", help=h("把草稿或被驳回的通知提交审核", "send a draft (or rejected) notice to review")
)
def notice_submit(
    notice_id: Annotated[int, typer.Argument(metavar="ID")],
    author: Annotated[str | None, typer.Option("--author", help=h("操作人", "who"))] = None,
) -> None:
    from dispatcher.review import resubmit_notice
    from dispatcher.service import registry_cache

    settings = _settings()
    store = _store(settings)
    principal = _principal(settings, store)
    n = resubmit_notice(
        notice_id,
        principal=principal,
        actor=_actor_name(principal, author),
        store=store,
        registry=registry_cache.get(settings.devices),
    )
    _print_waiting(n, as_json=False)


@notice_app.command(
    "approve",
    help=h(
        "审核通过并发出（不能审核自己起草的通知）",
        "approve a notice and send it (never one you drafted)",
    ),
)
def notice_approve(
    notice_id: Annotated[int, typer.Argument(metavar="ID")],
    author: Annotated[
        str | None, typer.Option("--author", help=h("审核人（无账号时）", "reviewer (no accounts)"))
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help=h("显示进度", "show progress"))] = False,
    timeout: Annotated[float, typer.Option("--timeout")] = 600.0,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    from dispatcher.review import approve_notice
    from dispatcher.service import registry_cache

    settings = _settings()
    store = _store(settings)
    principal = _principal(settings, store)
    reviewed = approve_notice(
        notice_id,
        principal=principal,
        actor=_actor_name(principal, author),
        store=store,
        registry=registry_cache.get(settings.devices),
        ring=_ringer(settings),
    )
    assert reviewed.submitted is not None
    if not as_json:
        typer.echo(
            tr(
                "通知 #{id} 已审核通过，正在发出", "notice #{id} approved and sent", id=notice_id
            ).render()
        )
        _print_submitted(reviewed.submitted)
    if wait:
        _wait(store, notice_id, timeout=timeout, quiet=as_json)
    if as_json:
        _echo_json(
            {
                **notice_json(store.notice(notice_id)),
                "deliveries": [delivery_json(d) for d in store.deliveries(notice_id)],
            }
        )


@notice_app.command("reject", help=h("驳回通知并写明理由", "reject a notice, with the reason"))
def notice_reject(
    notice_id: Annotated[int, typer.Argument(metavar="ID")],
    reason: Annotated[str, typer.Option("--reason", help=h("驳回理由", "why"))],
    author: Annotated[
        str | None, typer.Option("--author", help=h("审核人（无账号时）", "reviewer (no accounts)"))
    ] = None,
) -> None:
    from dispatcher.review import reject_notice
    from dispatcher.service import registry_cache

    settings = _settings()
    store = _store(settings)
    principal = _principal(settings, store)
    reject_notice(
        notice_id,
        principal=principal,
        actor=_actor_name(principal, author),
        reason=reason,
        store=store,
        registry=registry_cache.get(settings.devices),
    )
    typer.echo(
        tr(
            "通知 #{id} 已驳回：{r}（起草人可用 villagecast notice correct 修改后重新提交）",
            "notice #{id} rejected: {r} (its author can fix it with notice correct)",
            id=notice_id,
            r=reason,
        ).render()
    )


@app.command("login", help=h("以账号登录命令行（12 小时有效）", "log the CLI in (12 hours)"))
def login(
    username: Annotated[str, typer.Argument(metavar="USERNAME")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help=h("从标准输入读取密码", "password from stdin"))
    ] = False,
) -> None:
    from datetime import timedelta

    from content_queue.accounts import Accounts, NotAllowed

    settings = _settings()
    accounts = Accounts(_store(settings))
    password = _read_password(password_stdin, confirm=False)
    principal = accounts.authenticate(username, password, address="cli")
    if principal is None:
        raise NotAllowed(tr("用户名或密码不对", "wrong username or password"))
    token, info = accounts.create_session(
        principal, lifetime=timedelta(hours=12), address="cli", user_agent="villagecast-cli"
    )
    path = _session_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(token)
    typer.echo(
        tr(
            "已登录为 {u}，有效期到 {t}",
            "logged in as {u} until {t}",
            u=principal.username,
            t=_ts(info.expires_at),
        ).render()
    )


@app.command("logout", help=h("退出命令行登录", "log the CLI out"))
def logout() -> None:
    from content_queue.accounts import Accounts

    settings = _settings()
    path = _session_file(settings)
    if path.exists():
        Accounts(_store(settings)).end_session(path.read_text(encoding="utf-8").strip())
        path.unlink()
    typer.echo(tr("已退出登录", "logged out").render())


@notice_app.command(
    "export",
    help=h("把通知导出为 CAP 1.2 警报（XML）", "export a notice as a CAP 1.2 alert (XML)"),
)
def notice_export(
    notice_id: Annotated[int, typer.Argument(metavar="ID")],
    fmt: Annotated[str, typer.Option("--format", help=h("格式：cap", "format: cap"))] = "cap",
    out: Annotated[
        Path | None, typer.Option("--out", help=h("写入文件（默认输出到屏幕）", "write to a file"))
    ] = None,
) -> None:
    from content_queue.cap import export_alert
    from content_queue.errors import NoticeError
    from dispatcher.service import registry_cache

    if fmt != "cap":
        raise NoticeError(
            tr("不支持的格式 {f}（可用：cap）", "unknown format {f} (use cap)", f=fmt)
        )
    settings = _settings()
    store = _store(settings)
    n = store.notice(notice_id)
    villages = sorted(
        {d.village_id for d in store.deliveries(notice_id) if d.village_id is not None}
    )
    superseded = store.notice(n.supersedes_id) if n.supersedes_id else None
    data = export_alert(
        n,
        registry=registry_cache.get(settings.devices),
        villages=villages,
        superseded=superseded,
    )
    if out is None:
        sys.stdout.write(data.decode("utf-8"))
    else:
        out.write_bytes(data)
        typer.echo(tr("已写入 {p}", "wrote {p}", p=out).render())


@notice_app.command(
    "import",
    help=h(
        "导入 CAP 1.2 警报（如县气象预警）：按地区编码发给对应的村；更新即更正，取消即撤回",
        "import a CAP 1.2 alert (e.g. a county weather warning) for the villages its area "
        "codes name; an Update corrects, a Cancel withdraws",
    ),
)
def notice_import(
    path: Annotated[Path, typer.Argument(metavar="FILE.xml")],
    author: Annotated[str | None, typer.Option("--author", help=h("操作人", "who"))] = None,
    wait: Annotated[bool, typer.Option("--wait", help=h("显示进度", "show progress"))] = False,
    timeout: Annotated[float, typer.Option("--timeout")] = 600.0,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    from content_queue.errors import NoticeError
    from dispatcher.service import import_cap, registry_cache

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise NoticeError(
            tr("无法读取 {p}：{e}", "cannot read {p}: {e}", p=path, e=exc.strerror)
        ) from None
    settings = _settings()
    store = _store(settings)
    done = import_cap(
        data,
        store=store,
        registry=registry_cache.get(settings.devices),
        ring=_ringer(settings),
        actor=_actor(author),
    )
    labels = {
        "added": tr("已导入为通知 #{id}", "imported as notice #{id}", id=done.notice_id),
        "corrected": tr("已更正为通知 #{id}", "corrected as notice #{id}", id=done.notice_id),
        "withdrawn": tr("已撤回通知 #{id}", "withdrew notice #{id}", id=done.notice_id),
    }
    if not as_json:
        typer.echo(
            tr(
                "CAP 警报 {ident}（{t}）：{what}",
                "CAP alert {ident} ({t}): {what}",
                ident=done.alert.identifier,
                t=done.alert.msg_type,
                what=labels[done.action],
            ).render()
        )
        if done.submitted is not None:
            _print_submitted(done.submitted)
    fetch = _recalls_of(store, done.notice_id) if done.action == "withdrawn" else None
    if wait:
        _wait(store, done.notice_id, timeout=timeout, quiet=as_json, fetch=fetch)
    if as_json:
        _echo_json(
            {
                "identifier": done.alert.identifier,
                "msg_type": done.alert.msg_type,
                "action": done.action,
                "notice": notice_json(store.notice(done.notice_id)),
                "deliveries": [delivery_json(d) for d in store.deliveries(done.notice_id)],
            }
        )


# -- audit -------------------------------------------------------------------------------


@audit_app.command(
    "verify",
    help=h(
        "校验审计日志的哈希链：发现被改动、删除或插入的记录",
        "check the audit log's hash chain: find edited, deleted or inserted entries",
    ),
)
def audit_verify(
    expect_head: Annotated[
        str | None,
        typer.Option(
            "--expect-head",
            help=h(
                "上次记下的最新哈希：检查此后没有记录被截掉",
                "the head hash written down earlier: checks nothing was cut off the end",
            ),
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    store = _store(_settings())
    report = store.verify_audit()
    problems = [(i, t.render()) for i, t in report.problems]
    cut = False
    if expect_head and not problems:
        known = {e["hash"] for e in store.audit_entries(limit=None)}
        cut = expect_head not in known
        if cut:
            problems.append(
                (
                    0,
                    tr(
                        "记下的哈希 {h} 不在日志中：日志末尾的记录被删除过",
                        "the head {h} written down earlier is not in the log: entries were "
                        "cut off the end",
                        h=expect_head[:16],
                    ).render(),
                )
            )
    if as_json:
        _echo_json(
            {
                "ok": not problems,
                "entries": report.count,
                "head": report.head,
                "problems": [{"id": i, "problem": p} for i, p in problems],
            }
        )
    elif not problems:
        typer.secho(
            tr(
                "审计日志完整：共 {n} 条，最新哈希 {h}（请记下，下次用 --expect-head 核对）",
                "the audit log is intact: {n} entries, head {h} (write it down and check it "
                "next time with --expect-head)",
                n=report.count,
                h=report.head,
            ).render(),
            fg="green",
        )
    else:
        typer.secho(
            tr(
                "审计日志被改动过（{n} 处问题）：",
                "the audit log was tampered with ({n} problem(s)):",
                n=len(problems),
            ).render(),
            fg="red",
            err=True,
        )
        for _, p in problems:
            typer.echo(f"  - {p}", err=True)
    if problems:
        raise typer.Exit(1)


@audit_app.command("show", help=h("查看审计日志", "show the audit log"))
def audit_show(
    notice: Annotated[
        int | None, typer.Option("--notice", help=h("某条通知", "one notice"))
    ] = None,
    actor: Annotated[str | None, typer.Option("--actor", help=h("操作人", "who"))] = None,
    action: Annotated[
        str | None,
        typer.Option("--action", help=h("动作，如 notice.withdraw", "e.g. notice.withdraw")),
    ] = None,
    since: Annotated[str | None, typer.Option("--since", help=h("起始时间", "from"))] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=100000)] = 50,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    store = _store(_settings())
    rows = store.audit_entries(
        notice_id=notice,
        actor=actor,
        action=action,
        since=_parse_time(since, "--since"),
        limit=limit,
    )
    if as_json:
        _echo_json([{**r, "at": r["at"].isoformat()} for r in rows])
        return
    from rich.console import Console
    from rich.table import Table

    zh = current_lang() == "zh"
    table = Table()
    for zh_name, en_name in (
        ("序号", "id"),
        ("时间", "time"),
        ("操作人", "actor"),
        ("动作", "action"),
        ("通知", "notice"),
        ("详情", "details"),
    ):
        table.add_column(zh_name if zh else en_name, overflow="fold")
    for r in rows:
        table.add_row(
            str(r["id"]),
            _ts(r["at"]),
            r["actor"],
            r["action"],
            str(r["notice_id"] or "-"),
            json.dumps(r["details"], ensure_ascii=False),
        )
    Console().print(table)


# -- status, devices, feed -----------------------------------------------------------------


@app.command(
    "status",
    help=h("按乡镇、村、渠道统计投递状态", "delivery counts by township, village and channel"),
)
def status(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    from rich.console import Console
    from rich.table import Table

    from content_queue.store import STATUS_LABELS
    from dispatcher.planner import KIND_LABELS

    store = _store(_settings())
    rows = store.status_rows()
    grouped: dict[tuple[str, str, str], dict[str, int]] = {}
    for township, village, kind, st, count in rows:
        key = (township or "-", village or "-", kind)
        grouped.setdefault(key, {})[st] = count
    if as_json:
        _echo_json(
            [
                {"township": t, "village": v, "kind": k, "counts": c}
                for (t, v, k), c in sorted(grouped.items())
            ]
        )
        return
    if not grouped:
        typer.echo(tr("还没有任何投递", "no deliveries yet").render())
        return
    zh = current_lang() == "zh"
    table = Table()
    table.add_column("乡镇" if zh else "township")
    table.add_column("村" if zh else "village")
    table.add_column("渠道" if zh else "channel")
    statuses = [
        "delivered",
        "sent",
        "pending",
        "scheduled",
        "sending",
        "failed",
        "expired",
        "skipped",
        "cancelled",
    ]
    for s in statuses:
        table.add_column(_label(STATUS_LABELS, s), justify="right")
    for (t, v, k), c in sorted(grouped.items()):
        cells = []
        for s in statuses:
            value = c.get(s, 0)
            cells.append(f"[red]{value}[/]" if s == "failed" and value else str(value or ""))
        table.add_row(t, v, _label(KIND_LABELS, k), *cells)
    Console().print(table)


@devices_app.command(
    "check",
    help=h("检查 devices.yaml，有错误时退出码为 1", "validate devices.yaml (exit 1 on errors)"),
)
def devices_check(
    path: Annotated[Path | None, typer.Argument(metavar="[PATH]")] = None,
) -> None:
    from content_queue.registry import load_registry

    target = path or _settings().devices
    try:
        registry = load_registry(target)
    except VillagecastError as exc:
        typer.secho(exc.render(), err=True, fg="red")
        raise typer.Exit(1) from None
    kinds: dict[str, int] = {}
    for ep in registry.endpoints.values():
        kinds[ep.kind] = kinds.get(ep.kind, 0) + 1
    from dispatcher.planner import KIND_LABELS

    typer.secho(
        tr(
            "{p} 没有问题：{t} 个乡镇，{v} 个村，{e} 个端点（{k}）",
            "{p} is valid: {t} township(s), {v} village(s), {e} endpoint(s) ({k})",
            p=target,
            t=len(registry.townships),
            v=len(registry.villages),
            e=len(registry.endpoints),
            k="，".join(f"{_label(KIND_LABELS, k)} {n}" for k, n in sorted(kinds.items())),
        ).render(),
        fg="green",
    )


@devices_app.command(
    "schema",
    help=h(
        "输出 devices.yaml 的 JSON Schema（供编辑器使用）", "print the JSON Schema of devices.yaml"
    ),
)
def devices_schema() -> None:
    from content_queue.registry_schema import registry_json_schema

    _echo_json(registry_json_schema())


@app.command("feed", help=h("输出某村的电视公开平台订阅源", "print a village's TV platform feed"))
def feed(
    village: Annotated[str, typer.Argument(metavar="VILLAGE")],
    fmt: Annotated[str, typer.Option("--format", help="atom | rss | json")] = "atom",
) -> None:
    from channels.tv_feed import village_feed
    from dispatcher.service import registry_cache

    if fmt not in ("atom", "rss", "json"):
        raise typer.BadParameter(
            h("只能是 atom、rss 或 json", "must be atom, rss or json"), param_hint="--format"
        )
    settings = _settings()
    data = village_feed(
        _store(settings), registry_cache.get(settings.devices), settings, village, fmt
    )
    sys.stdout.buffer.write(data)
    if not data.endswith(b"\n"):
        sys.stdout.buffer.write(b"\n")


# -- devices over MQTT (LED boards, loudspeakers) ------------------------------------------


@devices_app.command(
    "status",
    help=h("列出 LED 屏和广播的在线状态与当前内容", "online state and content of every device"),
)
def devices_status(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    from rich.console import Console
    from rich.table import Table

    from content_queue.registry import LedEndpoint, SpeakerEndpoint
    from dispatcher.service import registry_cache

    settings = _settings()
    store = _store(settings)
    known = {d.device_id: d for d in store.devices()}
    registry = registry_cache.get(settings.devices)
    rows = []
    for ep in registry.endpoints.values():
        if isinstance(ep, (LedEndpoint, SpeakerEndpoint)):
            d = known.get(ep.device_id)
            rows.append(
                {
                    "device": ep.device_id,
                    "endpoint": ep.id,
                    "kind": ep.kind,
                    "village": registry.endpoint_village.get(ep.id),
                    "state": d.state if d else "unknown",
                    "last_seen": d.last_seen.isoformat() if d and d.last_seen else None,
                    "firmware": d.firmware if d else None,
                    "showing": d.showing if d else [],
                    "history": [
                        {"state": st, "at": at.isoformat(), "fresh_boot": fresh}
                        for st, at, fresh in store.presence_history(ep.device_id, limit=5)
                    ],
                }
            )
    if as_json:
        _echo_json(rows)
        return
    zh = current_lang() == "zh"
    names = _village_names()
    states = {"online": ("在线", "online", "green"), "offline": ("离线", "offline", "red")}
    table = Table()
    for zh_name, en_name in (
        ("设备", "device"),
        ("村", "village"),
        ("类型", "kind"),
        ("状态", "state"),
        ("最后在线", "last seen"),
        ("正在显示", "showing"),
    ):
        table.add_column(zh_name if zh else en_name)
    for r in rows:
        label = states.get(str(r["state"]), ("未知", "unknown", "yellow"))
        table.add_row(
            str(r["device"]),
            names.get(str(r["village"]), str(r["village"])),
            "LED" if r["kind"] == "led" else ("广播" if zh else "speaker"),
            f"[{label[2]}]{label[0] if zh else label[1]}[/]",
            _ts(datetime.fromisoformat(str(r["last_seen"]))) if r["last_seen"] else "-",
            ", ".join(str(c) for c in r["showing"]) if isinstance(r["showing"], list) else "",
        )
    Console().print(table)


@keys_app.command(
    "init", help=h("生成签名密钥对（私钥文件权限 600）", "create the signing key pair")
)
def keys_init(
    force: Annotated[
        bool, typer.Option("--force", help=h("覆盖已有密钥", "overwrite existing keys"))
    ] = False,
) -> None:
    from channels.keys import Keyring

    settings = _settings()
    settings.ensure_home()
    keyring = Keyring.init(settings.keys_dir, force=force)
    typer.echo(
        tr(
            "已生成签名密钥 {k}（{d}）。用 villagecast keys export 导出公钥给设备。",
            "created signing key {k} in {d}; give devices the public key with "
            "`villagecast keys export`",
            k=keyring.active().key_id,
            d=settings.keys_dir,
        ).render()
    )


@keys_app.command(
    "rotate",
    help=h("轮换签名密钥，旧钥在过渡期内仍有效", "rotate the signing key with an overlap window"),
)
def keys_rotate(overlap_days: Annotated[int, typer.Option("--overlap-days", min=1)] = 30) -> None:
    from channels.keys import Keyring

    settings = _settings()
    new = Keyring.load(settings.keys_dir).rotate(overlap_days=overlap_days)
    typer.echo(
        tr(
            "新签名密钥 {k} 已启用；旧密钥在 {n} 天内仍被设备接受，请在此期间给所有设备下发新公钥",
            "new signing key {k} is active; devices keep accepting the old one for {n} days",
            k=new.key_id,
            n=overlap_days,
        ).render()
    )


@keys_app.command(
    "export", help=h("导出设备需要的公钥（JSON）", "print the public keys devices need (JSON)")
)
def keys_export() -> None:
    from channels.keys import Keyring

    _echo_json(Keyring.load(_settings().keys_dir).export_public())


@mqtt_app.command(
    "config",
    help=h(
        "为 devices.yaml 生成 mosquitto 配置、密码文件和 ACL",
        "write a mosquitto config, password file and ACL for devices.yaml",
    ),
)
def mqtt_config(
    out: Annotated[Path, typer.Option("--out", help=h("输出目录", "output directory"))] = Path(
        "mosquitto"
    ),
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir", help=h("mosquitto 持久化目录", "mosquitto persistence directory")
        ),
    ] = None,
    listen_host: Annotated[str, typer.Option("--listen-host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 1883,
    tls_cafile: Annotated[Path | None, typer.Option("--tls-cafile")] = None,
    tls_certfile: Annotated[Path | None, typer.Option("--tls-certfile")] = None,
    tls_keyfile: Annotated[Path | None, typer.Option("--tls-keyfile")] = None,
    tls_port: Annotated[int, typer.Option("--tls-port")] = 8883,
) -> None:
    from channels._mqtt import parse_mqtt_url
    from dispatcher.mqtt_config import (
        CREDENTIALS_FILE,
        TlsOptions,
        generate,
        load_credentials,
        write,
    )
    from dispatcher.service import registry_cache

    settings = _settings()
    registry = registry_cache.get(settings.devices)
    cred_path = out / CREDENTIALS_FILE
    existing = load_credentials(cred_path) if cred_path.exists() else None
    tls = None
    if tls_cafile or tls_certfile or tls_keyfile:
        if not (tls_cafile and tls_certfile and tls_keyfile):
            raise typer.BadParameter(
                h(
                    "TLS 需要同时给出 --tls-cafile、--tls-certfile 和 --tls-keyfile",
                    "TLS needs --tls-cafile, --tls-certfile and --tls-keyfile together",
                )
            )
        tls = TlsOptions(
            cafile=tls_cafile, certfile=tls_certfile, keyfile=tls_keyfile, port=tls_port
        )
    user = parse_mqtt_url(settings.mqtt_url).username if settings.mqtt_url else None
    config = generate(
        registry,
        prefix=settings.mqtt_prefix,
        listen_host=listen_host,
        port=port,
        data_dir=(data_dir or out / "data").resolve(),
        dispatcher_user=user or "villagecast-dispatcher",
        existing_credentials=existing,
        tls=tls,
    )
    paths = write(config, out)
    typer.echo(
        tr(
            "已写入 {d}：{files}（{n} 个账号）。"
            "密码只在 credentials.json 中（权限 600），请妥善保管。",
            "wrote {files} to {d} ({n} identities). Passwords are only in credentials.json "
            "(mode 600).",
            n=len(config.credentials),
            d=out,
            files=", ".join(p.name for p in paths),
        ).render()
    )


@device_app.command(
    "simulate",
    help=h(
        "运行 devices.yaml 中的模拟 LED 屏和广播（或 N 个合成设备）",
        "run simulated boards and loudspeakers",
    ),
)
def device_simulate(
    count: Annotated[
        int | None,
        typer.Option(
            "--count",
            help=h(
                "改为运行 N 个合成设备 sim-0000…", "run N synthetic devices sim-0000... instead"
            ),
        ),
    ] = None,
    device: Annotated[
        list[str] | None, typer.Option("--device", help=h("只运行这些设备", "only these devices"))
    ] = None,
) -> None:
    from dispatcher.simulate import run_simulator

    run_simulator(_settings(), count=count, only=device or None)


@app.command(
    "listen",
    help=h(
        "运行设备监听（回执与在线状态；up 已包含）",
        "run the device listener (acks and presence; part of `up`)",
    ),
)
def listen(
    instance: Annotated[
        str | None,
        typer.Option(
            "--instance",
            help=h(
                "同一台机器运行多个监听时，给每个起一个名字（决定 MQTT 客户端 ID）",
                "a name for this listener when one machine runs several (sets its MQTT client id)",
            ),
        ),
    ] = None,
) -> None:
    import logging
    import signal
    import threading

    from dispatcher.acks import listener_client_id, run_listener

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        run_listener(_settings(), stop=stop, client_id=listener_client_id(instance))
    except KeyboardInterrupt:
        stop.set()


@app.command(
    "speak",
    help=h(
        "试听：生成广播将要播出的内容（文字稿或音频），不会发送",
        "hear (or read) what the loudspeakers will say, without broadcasting",
    ),
)
def speak(
    text: Annotated[str | None, typer.Argument(metavar="[TEXT]")] = None,
    notice_id: Annotated[
        int | None, typer.Option("--notice", help=h("通知编号", "notice id"))
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help=h("音频文件", "audio file"))] = None,
    fmt: Annotated[str, typer.Option("--format", help="mp3 | amr")] = "mp3",
    engine: Annotated[str | None, typer.Option("--engine", help="edge | offline")] = None,
    script_only: Annotated[
        bool, typer.Option("--script-only", help=h("只输出文字稿", "print the script only"))
    ] = False,
) -> None:
    from channels._audio import ClipCache, synthesize_clip
    from channels._speech_text import normalise
    from channels.speaker import script_for, synthesis_slots
    from channels.tts import Synthesizer, Voice

    if (text is None) == (notice_id is None):
        raise typer.BadParameter(h("请给出 TEXT 或 --notice（二选一）", "give TEXT or --notice"))
    if fmt not in ("mp3", "amr") or engine not in (None, "edge", "offline"):
        raise typer.BadParameter(h("格式为 mp3|amr，引擎为 edge|offline", "mp3|amr; edge|offline"))
    settings = _settings()
    script = (
        normalise(text) if text is not None else script_for(_store(settings).notice(notice_id or 0))
    )
    typer.echo(script)
    if script_only:
        return
    mode = engine or settings.tts_mode
    clips, synthesis, _ = synthesize_clip(
        ClipCache.for_settings(settings),
        Synthesizer(mode=mode),  # type: ignore[arg-type]
        script=script,
        voice=Voice(),
        fmt="amr" if fmt == "amr" else "mp3",
        limit=synthesis_slots(settings).hold(),  # counts against the workers' bound
    )
    target = out or Path(f"villagecast-speak.{fmt}")
    if len(clips) == 1:
        target.write_bytes(clips[0].path.read_bytes())
        written = [target]
    else:  # AMR for WeCom is split into clips of at most 60 s
        written = []
        for i, clip in enumerate(clips, start=1):
            part = target.with_name(f"{target.stem}-{i}{target.suffix}")
            part.write_bytes(clip.path.read_bytes())
            written.append(part)
    spoke = synthesis.engine if synthesis else tr("缓存", "cache").render()
    typer.secho(
        tr(
            "已写入 {files}（{s:.1f} 秒，引擎：{e}）",
            "wrote {files} ({s:.1f} s, engine: {e})",
            files=", ".join(str(p) for p in written),
            s=sum(c.duration_s for c in clips),
            e=spoke,
        ).render(),
        err=True,
    )


# -- dashboard accounts --------------------------------------------------------------------


def _read_password(password_stdin: bool, *, confirm: bool = True) -> str:
    """From stdin (one line) or a hidden prompt; never from an argument (shell history)."""
    if password_stdin:
        line = sys.stdin.readline()
        return line.rstrip("\r\n")
    return str(
        typer.prompt(
            tr("密码", "password").render(),
            hide_input=True,
            confirmation_prompt=confirm,
        )
    )


@users_app.command(
    "add",
    help=h(
        "创建账号：乡镇工作人员（--township）、县级管理员、村支书或监督委员会成员（--village）",
        "create an account: township officer (--township), county admin, secretary or "
        "reviewer (--village)",
    ),
)
def users_add(
    username: Annotated[str, typer.Argument(metavar="USERNAME")],
    role: Annotated[
        str,
        typer.Option(
            "--role",
            help=h(
                "角色：township_officer 乡镇工作人员, county_admin 县级管理员, "
                "secretary 村支书/村会计（只读）, reviewer 村务监督委员会成员（只读）",
                "role: township_officer, county_admin, secretary (read-only), reviewer",
            ),
        ),
    ],
    township: Annotated[
        str | None, typer.Option("--township", help=h("所属乡镇（乡镇工作人员）", "township"))
    ] = None,
    village: Annotated[
        list[str] | None,
        typer.Option("--village", help=h("所在的村（可重复）", "village (repeatable)")),
    ] = None,
    name: Annotated[str, typer.Option("--name", help=h("显示的姓名", "display name"))] = "",
    password_stdin: Annotated[
        bool,
        typer.Option(
            "--password-stdin", help=h("从标准输入读取密码（一行）", "read the password from stdin")
        ),
    ] = False,
) -> None:
    from content_queue.accounts import AccountError, Accounts, Role
    from dispatcher.service import registry_cache

    if role not in Role._value2member_map_:
        raise AccountError(
            tr(
                "未知的角色：{r}（可选 {all}）",
                "unknown role: {r} (one of {all})",
                r=role,
                all=", ".join(r.value for r in Role),
            )
        )
    settings = _settings()
    registry = registry_cache.get(settings.devices)
    password = _read_password(password_stdin)
    user = Accounts(_store(settings)).add_user(
        username=username,
        password=password,
        role=Role(role),
        township_id=township,
        villages=village or [],
        display_name=name,
        registry=registry,
    )
    typer.echo(
        tr(
            "已创建账号 {u}（{role}）。用 villagecast serve（或 up）启动监控页面后登录。",
            "created {u} ({role}); log in once `villagecast serve` (or `up`) runs",
            u=user.username,
            role=user.role.value,
        ).render()
    )


@users_app.command("list", help=h("列出账号", "list accounts"))
def users_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    from content_queue.accounts import ROLE_LABELS, Accounts

    users = Accounts(_store(_settings())).users()
    rows = [
        {
            "username": u.username,
            "name": u.display_name,
            "role": u.role.value,
            "township": u.township_id,
            "villages": u.villages,
            "active": u.active,
            "last_login_at": u.last_login_at.isoformat() if u.last_login_at else None,
        }
        for u in users
    ]
    if as_json:
        _echo_json(rows)
        return
    if not users:
        typer.echo(tr("还没有账号（villagecast users add）", "no accounts yet").render())
        return
    from rich.console import Console
    from rich.table import Table

    zh = current_lang() == "zh"
    table = Table()
    for zh_name, en_name in (
        ("用户名", "username"),
        ("姓名", "name"),
        ("角色", "role"),
        ("范围", "scope"),
        ("状态", "state"),
        ("最近登录", "last login"),
    ):
        table.add_column(zh_name if zh else en_name)
    for u in users:
        scope = u.township_id or "、".join(u.villages) or ("全县" if zh else "county")
        table.add_row(
            u.username,
            u.display_name,
            ROLE_LABELS[u.role].render(),
            scope,
            ("正常" if zh else "active") if u.active else ("已停用" if zh else "disabled"),
            _ts(u.last_login_at),
        )
    Console().print(table)


@users_app.command(
    "passwd",
    help=h("修改密码（该账号的所有登录会失效）", "change a password (signs out everywhere)"),
)
def users_passwd(
    username: Annotated[str, typer.Argument(metavar="USERNAME")],
    password_stdin: Annotated[
        bool,
        typer.Option(
            "--password-stdin", help=h("从标准输入读取密码（一行）", "read the password from stdin")
        ),
    ] = False,
) -> None:
    from content_queue.accounts import Accounts

    accounts = Accounts(_store(_settings()))
    accounts.user(username)  # a clear error before asking for a password
    ended = accounts.set_password(username, _read_password(password_stdin))
    typer.echo(
        tr(
            "已修改 {u} 的密码，{n} 个登录已失效",
            "changed the password of {u}; {n} session(s) ended",
            u=username,
            n=ended,
        ).render()
    )


@users_app.command(
    "disable", help=h("停用账号（立即退出所有登录）", "disable an account (signs out at once)")
)
def users_disable(username: Annotated[str, typer.Argument(metavar="USERNAME")]) -> None:
    from content_queue.accounts import Accounts

    Accounts(_store(_settings())).set_active(username, False)
    typer.echo(tr("已停用 {u}", "disabled {u}", u=username).render())


@users_app.command("enable", help=h("重新启用账号", "enable an account again"))
def users_enable(username: Annotated[str, typer.Argument(metavar="USERNAME")]) -> None:
    from content_queue.accounts import Accounts

    Accounts(_store(_settings())).set_active(username, True)
    typer.echo(tr("已启用 {u}", "enabled {u}", u=username).render())


@app.command(
    "serve",
    help=h(
        "运行乡镇监控页面（也提供电视订阅源和音频；up 已包含）",
        "run the township dashboard (also serves the TV feeds and audio; part of `up`)",
    ),
)
def serve() -> None:
    import logging

    from dashboard.server import serve_forever
    from dispatcher.service import registry_cache

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = _settings()
    registry_cache.get(settings.devices)  # devices.yaml must be valid: its errors now
    serve_forever(settings, _store(settings), lambda: registry_cache.get(settings.devices))


# -- running -------------------------------------------------------------------------------


@app.command(
    "worker",
    help=h(
        "运行 Celery 工作进程（含补发器和语音合成工作进程）",
        "run the Celery worker (with the sweeper and the speech synthesis worker)",
    ),
)
def worker(
    concurrency: Annotated[int | None, typer.Option("--concurrency", min=1)] = None,
    no_sweeper: Annotated[bool, typer.Option("--no-sweeper")] = False,
    no_synthesis: Annotated[
        bool,
        typer.Option(
            "--no-synthesis",
            help=h(
                "不启动语音合成工作进程（vc.synthesis 队列由别处处理）",
                "start no speech synthesis worker (vc.synthesis is consumed elsewhere)",
            ),
        ),
    ] = False,
    loglevel: Annotated[str, typer.Option("--loglevel")] = "INFO",
    queues: Annotated[
        str | None,
        typer.Option(
            "--queues",
            "-Q",
            help=h(
                "只处理这些队列（逗号分隔，如 vc.led,vc.speaker），每种渠道可单独配进程数",
                "consume only these queues (comma-separated, e.g. vc.led,vc.speaker) so each "
                "channel kind gets its own pool",
            ),
        ),
    ] = None,
) -> None:
    from dispatcher.worker import parse_queues, run_worker

    kinds = parse_queues(queues) if queues else None
    run_worker(
        concurrency=concurrency,
        sweeper=not no_sweeper,
        synthesis=not no_synthesis,
        loglevel=loglevel,
        **({"kinds": kinds} if kinds else {}),
    )


@app.command(
    "sweep",
    help=h("运行一次补发器（或用 --forever 持续运行）", "run the sweeper once (or --forever)"),
)
def sweep(forever: Annotated[bool, typer.Option("--forever")] = False) -> None:
    from dispatcher.service import sweep_once

    settings = _settings()
    if forever:
        from dispatcher.sweeper import main as sweeper_main

        sweeper_main([])
        return
    report = sweep_once(store=_store(settings), settings=settings, ring=_ringer(settings))
    typer.echo(
        tr(
            "补发 {r} 个，定时到期 {rel} 个，回收 {rec} 个，放弃 {g} 个，过期 {e} 个",
            "rang {r}, released {rel}, reclaimed {rec}, gave up {g}, expired {e}",
            r=report.rung,
            rel=report.released,
            rec=report.reclaimed,
            g=report.gave_up,
            e=report.expired,
        ).render()
    )


@app.command(
    "up",
    help=h(
        "单机一键运行：存储、内置消息队列、工作进程、补发器、订阅源服务",
        "run everything for one machine in the foreground",
    ),
)
def up(
    concurrency: Annotated[int | None, typer.Option("--concurrency", min=1)] = None,
) -> None:
    from dashboard.server import start_in_thread
    from dispatcher.runner import run_up

    # The dashboard serves the feeds and clips too (on the feed address, public paths only).
    run_up(concurrency=concurrency, http_server=start_in_thread)


@app.command(
    "demo",
    help=h(
        "演示：用示例 devices.yaml 发送几条真实格式的通知",
        "queue a few realistic notices and show them delivered",
    ),
)
def demo(
    home: Annotated[
        Path | None,
        typer.Option(
            "--home",
            help=h(
                "演示数据目录（默认新建临时目录）", "data directory (default: a new temporary one)"
            ),
        ),
    ] = None,
    devices: Annotated[Path, typer.Option("--devices")] = Path("devices.yaml"),
) -> None:
    from dispatcher.demo import run_demo

    raise typer.Exit(run_demo(home=home, devices=devices))


@app.command(
    "bench",
    help=h(
        "运行基准测试套件（需源码目录）；选项同 python -m bench --help",
        "run the benchmark suite (from a source checkout); options: python -m bench --help",
    ),
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def bench(ctx: typer.Context) -> None:
    # The suite lives in the checkout (bench/ is not installed) and runs as its own process
    # tree; nothing of it is imported here, so the CLI starts as fast as before.
    import subprocess

    from content_queue.errors import ConfigError

    root = Path(__file__).resolve().parent
    if not (root / "bench" / "suite.py").is_file():
        raise ConfigError(
            tr(
                "基准测试需在源码目录中运行（{path} 下没有 bench/）",
                "the benchmarks run from a source checkout (no bench/ under {path})",
                path=str(root),
            )
        )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    raise typer.Exit(subprocess.call([sys.executable, "-m", "bench", *ctx.args], env=env))


# -- templates, posters, the disclosure calendar -------------------------------------------


def _template_place(registry: Any, targets: dict[str, Any]) -> str:
    """The name a templated notice speaks for: its one village, its one township, or the
    county."""
    villages, townships = targets["villages"], targets["townships"]
    if len(villages) == 1 and not townships and not targets["county"]:
        return str(registry.village_name(villages[0]))
    if len(townships) == 1 and not villages and not targets["county"]:
        township = registry.townships.get(townships[0])
        if township is not None:
            return str(township.name)
    return str(registry.doc.county.name)


def _fill_template(
    name: str, data_file: Path | None, fields: list[str], registry: Any, targets: dict[str, Any]
) -> Any:
    from content_queue.models import local_tz
    from content_queue.templates import fill_template, get_template

    return fill_template(
        get_template(name),
        data_file=data_file,
        fields=fields,
        place=_template_place(registry, targets),
        now=datetime.now(local_tz()),
    )


@template_app.command("list", help=h("列出全部模板", "list the templates"))
def template_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    from content_queue.models import CATEGORY_LABELS
    from content_queue.templates import TEMPLATES

    if as_json:
        _echo_json(
            [
                {
                    "name": t.name,
                    "label": t.label.render(),
                    "category": t.category.value,
                    "summary": t.summary.render(),
                    "fields": [f.label for f in t.fields],
                    "columns": [c.label for c in t.columns],
                }
                for t in TEMPLATES.values()
            ]
        )
        return
    from rich.console import Console
    from rich.table import Table

    zh = current_lang() == "zh"
    table = Table()
    table.add_column("模板" if zh else "template", no_wrap=True)
    table.add_column("名称（类别）" if zh else "name (category)", overflow="fold")
    table.add_column("说明" if zh else "summary", overflow="fold")
    for t in TEMPLATES.values():
        table.add_row(
            t.name,
            f"{t.label.render()}（{_label(CATEGORY_LABELS, t.category)}）",
            t.summary.render(),
        )
    Console().print(table)
    typer.echo(
        tr(
            "查看字段、示例数据和预览：villagecast template show 模板",
            "fields, an example data file and a preview: villagecast template show NAME",
        ).render()
    )


def _write_example(template: Any, path: Path) -> None:
    import csv
    import io

    text = template.example_csv()
    if path.suffix.lower() == ".xlsx":
        from openpyxl import Workbook

        wb = Workbook()
        ws = wb.active
        for row in csv.reader(io.StringIO(text)):
            ws.append(row)
        wb.save(path)
    else:
        path.write_text(text, encoding="utf-8-sig")  # the BOM makes Excel read UTF-8


@template_app.command(
    "show",
    help=h(
        "模板的字段、示例数据文件和预览（可用 --data 预览自己的数据，不会保存）",
        "a template's fields, an example data file and a preview (--data previews your own "
        "data; nothing is saved)",
    ),
)
def template_show(
    name: Annotated[str, typer.Argument(metavar="NAME")],
    data_file: Annotated[
        Path | None,
        typer.Option("--data", help=h("用这个数据文件预览", "preview with this data file")),
    ] = None,
    field: Annotated[
        list[str] | None,
        typer.Option("--field", help=h("字段：名称=值（可重复）", "NAME=VALUE (repeatable)")),
    ] = None,
    village: Annotated[
        str | None, typer.Option("--village", help=h("以这个村的名义预览", "preview for a village"))
    ] = None,
    example: Annotated[
        bool,
        typer.Option(
            "--example", help=h("只输出示例数据文件（CSV）", "print only the example CSV")
        ),
    ] = False,
    write_example: Annotated[
        Path | None,
        typer.Option(
            "--write-example",
            help=h("把示例数据写成文件（.csv 或 .xlsx）", "write the example data (.csv or .xlsx)"),
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    import csv
    import io

    from channels._speech_text import spoken_script
    from content_queue.models import local_tz
    from content_queue.templates import get_template
    from content_queue.templates._data import apply_fields, rows_to_data

    template = get_template(name)
    example_csv = template.example_csv()
    if example:
        typer.echo(example_csv, nl=False)
        return
    if write_example is not None:
        _write_example(template, write_example)
        typer.echo(tr("已写入 {p}", "wrote {p}", p=write_example).render())
        return
    place = "示例村"
    if village is not None:
        from dispatcher.service import registry_cache

        registry = registry_cache.get(_settings().devices)
        registry.resolve_villages(villages=[village])
        place = registry.village_name(village)
    if data_file is not None or field:
        from content_queue.templates import load_template_data

        data = load_template_data(template, data_file=data_file, fields=field or [])
    else:
        rows = list(enumerate(csv.reader(io.StringIO(example_csv)), start=1))
        data = apply_fields(rows_to_data(rows, template, source="example.csv"), [], template)
    filled = template.fill(data, place=place, now=datetime.now(local_tz()))
    table = filled.table.model_dump() if filled.table else None
    spoken = spoken_script(
        title=filled.title,
        body=filled.body,
        category=filled.category.value,
        priority=filled.priority.value,
        table=table,
    )
    specs: list[dict[str, Any]] = [
        {
            "name": s.label,
            "key": s.key,
            "required": s.required,
            "help": s.help.render(),
            "aliases": list(s.aliases),
            "masked": s.mask,
        }
        for s in (*template.fields, *template.columns)
    ]
    if as_json:
        _echo_json(
            {
                "name": template.name,
                "label": template.label.render(),
                "category": template.category.value,
                "fields": specs[: len(template.fields)],
                "columns": specs[len(template.fields) :],
                "example": example_csv,
                "preview": {
                    **filled.notice_fields(),
                    "spoken": spoken,
                    "warnings": [w.render() for w in filled.warnings],
                },
            }
        )
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    zh = current_lang() == "zh"
    typer.echo(f"{template.name}：{template.label.render()}")
    typer.echo(template.summary.render())
    for title_zh, title_en, group in (
        (
            "字段（写在数据文件开头：名称,值；或 --field 名称=值）",
            "fields (NAME,VALUE lines at the top of the data file, or --field NAME=VALUE)",
            specs[: len(template.fields)],
        ),
        (
            "表格的列（表头可用名称或别名）",
            "table columns (header names or aliases)",
            specs[len(template.fields) :],
        ),
    ):
        if not group:
            continue
        t = Table(title=title_zh if zh else title_en, title_justify="left")
        for zh_name, en_name in (
            ("名称", "name"),
            ("必填", "required"),
            ("说明", "help"),
            ("别名", "aliases"),
        ):
            t.add_column(zh_name if zh else en_name, overflow="fold")
        for spec in group:
            t.add_row(
                str(spec["name"]),
                ("是" if zh else "yes") if spec["required"] else "",
                str(spec["help"]),
                "、".join(spec["aliases"]),
            )
        console.print(t)
    typer.echo("")
    typer.echo(tr("示例数据文件（CSV）：", "example data file (CSV):").render())
    typer.echo(example_csv)
    typer.echo(tr("预览：", "preview:").render())
    typer.echo(f"  {filled.title}")
    for line in filled.body.split("\n"):
        typer.echo(f"  {line}")
    if table:
        t = Table(title=table.get("caption"))
        for col in table["columns"]:
            t.add_column(col, overflow="fold")
        for row in table["rows"]:
            t.add_row(*row)
        console.print(t)
    typer.echo(tr("广播稿：", "spoken by loudspeakers:").render())
    typer.echo(f"  {spoken}")
    for w in filled.warnings:
        typer.secho(w.render(), fg="yellow")


@notice_app.command(
    "print",
    help=h(
        "把通知生成三务公开栏海报（PDF，含二维码）",
        "render a notice as a disclosure-board poster (PDF with a QR code)",
    ),
)
def notice_print(
    notice_id: Annotated[int, typer.Argument(metavar="ID")],
    size: Annotated[
        str, typer.Option("--size", help=h("纸张：A4 或 A3", "paper: A4 or A3"))
    ] = "A4",
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help=h("输出文件（默认当前目录；- 表示标准输出）", "output file (- for stdout)"),
        ),
    ] = None,
    village: Annotated[
        str | None,
        typer.Option("--village", help=h("发往多个村时选一个村", "which village, if several")),
    ] = None,
) -> None:
    from channels.bulletin import poster_file, render_notice_poster
    from content_queue.errors import NoticeError
    from dispatcher.service import registry_cache

    paper = size.upper()
    if paper not in ("A4", "A3"):
        raise typer.BadParameter(h("只能是 A4 或 A3", "must be A4 or A3"), param_hint="--size")
    settings = _settings()
    store = _store(settings)
    registry = registry_cache.get(settings.devices)
    n = store.notice(notice_id)
    targets = n.targets
    villages = registry.resolve_villages(
        villages=[v for v in targets.get("villages", []) if v in registry.villages],
        townships=[t for t in targets.get("townships", []) if t in registry.townships],
        county=bool(targets.get("county")),
    )
    if village is None:
        if len(villages) != 1:
            raise NoticeError(
                tr(
                    "通知 {id} 发往 {n} 个村，请用 --village 选一个：{ids}",
                    "notice {id} goes to {n} villages; choose one with --village: {ids}",
                    id=n.id,
                    n=len(villages),
                    ids=", ".join(villages[:20]) + (" …" if len(villages) > 20 else ""),
                )
            )
        village = villages[0]
    elif village not in villages:
        raise NoticeError(
            tr(
                "通知 {id} 没有发往 {v}",
                "notice {id} does not go to {v}",
                id=n.id,
                v=village,
            )
        )
    poster = render_notice_poster(
        n, village_id=village, registry=registry, settings=settings, store=store, paper=paper
    )
    if out is not None and str(out) == "-":
        sys.stdout.buffer.write(poster.data)
        sys.stdout.buffer.flush()
        return
    path = out or Path(poster_file(village, n, withdrawn=n.state != "active"))
    path.write_bytes(poster.data)
    typer.echo(
        tr(
            "已生成海报 {p}（{paper}，{pages} 页）",
            "wrote the poster {p} ({paper}, {pages} page(s))",
            p=path,
            paper=paper,
            pages=poster.pages,
        ).render()
    )


@app.command(
    "calendar",
    help=h(
        "公开日历：哪些村哪类公开到期或逾期",
        "the disclosure calendar: which villages are due or overdue with what",
    ),
)
def disclosure_calendar(
    village: Annotated[
        list[str] | None, typer.Option("--village", help=h("只看这些村", "only these villages"))
    ] = None,
    township: Annotated[
        list[str] | None,
        typer.Option("--township", help=h("只看这些乡镇", "only these townships")),
    ] = None,
    show_all: Annotated[
        bool, typer.Option("--all", help=h("也列出已按时公开的", "also list what is done"))
    ] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    from dispatcher.calendar import disclosure_status, rule_text
    from dispatcher.service import registry_cache

    settings = _settings()
    registry = registry_cache.get(settings.devices)
    chosen = None
    if village or township:
        chosen = registry.resolve_villages(villages=village or [], townships=township or [])
    rows = disclosure_status(_store(settings), registry, villages=chosen)
    if not show_all:
        rows = [r for r in rows if r.state != "done"]
    if as_json:
        _echo_json([r.to_json() for r in rows])
        return
    if not rows:
        typer.echo(tr("所有村的必需公开都已按时完成", "every required disclosure is done").render())
        return
    colour = {"overdue": "red", "due": "yellow", "done": "green"}
    for r in rows:
        last = (
            tr(
                "上次公开：#{id}（{t}）",
                "last: #{id} ({t})",
                id=r.last_notice_id,
                t=_ts(r.last_published_at)[:10],
            )
            if r.last_notice_id and r.last_notice_id != r.notice_id
            else tr("从未公开", "never disclosed")
            if not r.last_notice_id
            else ""
        )
        typer.secho(
            tr(
                "{state}  {township} {village}  {cat}  {rule}，截止 {due}{done}  {last}",
                "{state}  {township} {village}  {cat}  {rule}, due {due}{done}  {last}",
                state=r.state_text(),
                township=r.township_name,
                village=r.village_name,
                cat=r.category_label,
                rule=rule_text(r.rule),
                due=r.due.isoformat(),
                done=tr("，已公开 #{id}", ", done: #{id}", id=r.notice_id) if r.notice_id else "",
                last=last,
            )
            .render()
            .rstrip(),
            fg=colour[r.state],
        )
    overdue = sum(1 for r in rows if r.state == "overdue")
    due = sum(1 for r in rows if r.state == "due")
    typer.echo(
        tr(
            "共 {o} 项逾期，{d} 项待公开",
            "{o} overdue, {d} due",
            o=overdue,
            d=due,
        ).render()
    )


# -- operations: schema, health, backups (issue #9) ----------------------------------------

db_app = _typer("数据库表结构：查看与升级", "the store's schema: show and upgrade")
backup_app = _typer("备份与恢复（数据库和签名密钥）", "back up and restore the store and keys")
app.add_typer(db_app, name="db")
app.add_typer(backup_app, name="backup")


def _print_schema(status: Any) -> None:
    typer.echo(
        tr(
            "数据库：{u}\n当前版本：{c}\n最新版本：{h}",
            "database: {u}\ncurrent revision: {c}\nhead revision: {h}",
            u=status.url,
            c=",".join(status.current) or tr("（空）", "(empty)"),
            h=",".join(status.head),
        ).render()
    )


@db_app.command("current", help=h("显示数据库表结构版本", "show the schema revision"))
def db_current(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    from content_queue.dbadmin import schema_status

    status = schema_status(_settings().resolved_database_url)
    if as_json:
        _echo_json(
            {
                "url": status.url,
                "current": list(status.current),
                "head": list(status.head),
                "up_to_date": status.up_to_date,
            }
        )
    else:
        _print_schema(status)
    if not status.up_to_date:
        if not as_json:
            typer.secho(
                tr("需要升级：运行 villagecast db upgrade", "run villagecast db upgrade").render(),
                fg="yellow",
            )
        raise typer.Exit(1)


@db_app.command(
    "upgrade",
    help=h(
        "把数据库升级到最新表结构（可重复运行）",
        "upgrade the store to the newest schema (idempotent)",
    ),
)
def db_upgrade() -> None:
    from content_queue.dbadmin import upgrade

    settings = _settings()
    settings.ensure_home()
    before, after = upgrade(settings.resolved_database_url)
    if before.up_to_date:
        typer.echo(
            tr(
                "表结构已是最新（{h}），无需升级",
                "the schema is already at head ({h}); nothing to do",
                h=",".join(after.head),
            ).render()
        )
        return
    typer.secho(
        tr(
            "已升级：{a} → {b}",
            "upgraded: {a} -> {b}",
            a=",".join(before.current) or tr("（空）", "(empty)"),
            b=",".join(after.current),
        ).render(),
        fg="green",
    )


@app.command(
    "doctor",
    help=h(
        "检查所有组件（数据库、消息队列、MQTT、密钥、语音、凭据、磁盘）并给出修复方法",
        "check every component and say how to fix what is wrong",
    ),
)
def doctor(
    cert: Annotated[
        list[Path] | None,
        typer.Option(
            "--cert",
            help=h(
                "同时检查这个 PEM 证书的有效期（可重复）",
                "also check this PEM certificate's expiry (repeatable)",
            ),
        ),
    ] = None,
    offline: Annotated[
        bool,
        typer.Option("--offline", help=h("不检查外网服务", "skip checks of internet services")),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    from dispatcher.doctor import exit_code, render, run_doctor

    checks = run_doctor(_settings(), certificates=cert or [], online=not offline)
    if as_json:
        _echo_json([c.as_json() for c in checks])
    else:
        typer.echo(render(checks))
    raise typer.Exit(exit_code(checks))


@backup_app.command(
    "create",
    help=h(
        "备份数据库和签名密钥（运行中也可以做，文件权限 600）",
        "back up the store and the signing keys (safe while running; file mode 600)",
    ),
)
def backup_create(
    out: Annotated[Path, typer.Option("--out", help=h("备份文件", "backup file"))],
) -> None:
    from content_queue.backup import create_backup

    settings = _settings()
    info = create_backup(
        database_url=settings.resolved_database_url, keys_dir=settings.keys_dir, out=out
    )
    typer.secho(
        tr(
            "已备份到 {p}：{n} 条通知，审计 {c} 条（最新哈希 {h}），密钥文件 {k} 个。"
            "\n备份含签名私钥，请离线加密保存。",
            "backed up to {p}: {n} notices, {c} audit entries (head {h}), {k} key file(s)."
            "\nThe backup holds the signing private key: keep it offline and encrypted.",
            p=str(out),
            n=info.notices,
            c=info.audit_entries,
            h=info.audit_head[:16],
            k=len(info.key_files),
        ).render(),
        fg="green",
    )


@backup_app.command(
    "restore",
    help=h(
        "把备份恢复到新的（空的）数据库和数据目录",
        "restore a backup into a new, empty database and data directory",
    ),
)
def backup_restore(file: Annotated[Path, typer.Argument(metavar="FILE")]) -> None:
    from content_queue.backup import restore_backup

    settings = _settings()
    settings.ensure_home()
    info = restore_backup(
        file, database_url=settings.resolved_database_url, keys_dir=settings.keys_dir
    )
    typer.secho(
        tr(
            "已恢复 {t} 的备份：{n} 条通知，审计日志校验通过（最新哈希 {h}）",
            "restored the backup of {t}: {n} notices, the audit log verifies (head {h})",
            t=info.created_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
            n=info.notices,
            h=info.audit_head[:16],
        ).render(),
        fg="green",
    )


def main() -> None:
    """Console-script entry point."""
    from content_queue.redact import install

    install()
    app()


if __name__ == "__main__":
    main()
