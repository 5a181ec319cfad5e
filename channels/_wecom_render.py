"""A notice as WeCom group-robot messages: markdown or text parts that fit the byte limits,
a markdown_v2 table or a CSV or PDF attachment, and the @all reminder of emergencies. Pure: no
I/O (a PDF comes from the caller's renderer).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal, cast

from channels.base import ContentError
from content_queue.i18n import Text, tr
from content_queue.models import CATEGORY_LABELS, PRIORITY_LABELS, Category, Priority, local_tz
from content_queue.store import NoticeView

__all__ = [
    "FILE_MAX_BYTES",
    "FILE_MIN_BYTES",
    "MARKDOWN_MAX_BYTES",
    "TEXT_MAX_BYTES",
    "Attachment",
    "Message",
    "MsgType",
    "Upload",
    "csv_bytes",
    "mention_all",
    "render_notice",
    "render_withdrawal",
    "split_by_bytes",
    "utf8_len",
]

TEXT_MAX_BYTES = 2048
MARKDOWN_MAX_BYTES = 4096
"""Both markdown and markdown_v2 ``content``, in UTF-8 bytes."""
FILE_MAX_BYTES = 20 * 1024 * 1024
FILE_MIN_BYTES = 5
"""upload_media refuses files of 5 bytes or less and above 20 MB."""

MsgType = Literal["text", "markdown", "markdown_v2", "file", "voice"]
Attachment = Literal["csv", "pdf"]

# Sentence ends (Chinese and ASCII), with closing quotes or brackets that belong to them.
_SENTENCE = re.compile(r"[^。！？!?；;\n]*(?:[。！？!?；;]+[”’」』）)\]]*|\n+|$)")
_CLAUSE = re.compile(r"[^，,、：:]*(?:[，,、：:]+|$)")
_URL = re.compile(r"https?://[^\s<>()（）\[\]【】，。；！？\"'“”]+")
_COLOURS = {"emergency": "warning", "important": "warning"}


def utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


@dataclass(frozen=True)
class Upload:
    """A file for ``upload_media``: its media type, the name people see, and its bytes."""

    media_type: Literal["file", "voice"]
    filename: str
    data: bytes


@dataclass(frozen=True)
class Message:
    """One message to a robot: its ledger key, type and JSON body (media ones get their
    ``media_id`` after the upload)."""

    key: str
    msgtype: MsgType
    payload: dict[str, Any] = field(default_factory=dict)
    upload: Upload | None = None

    def body(self, media_id: str | None = None) -> dict[str, Any]:
        if self.msgtype in ("file", "voice"):
            return {"msgtype": self.msgtype, self.msgtype: {"media_id": media_id}}
        return {"msgtype": self.msgtype, self.msgtype: self.payload}


def _pieces(text: str, pattern: re.Pattern[str]) -> list[str]:
    return [m.group(0) for m in pattern.finditer(text) if m.group(0)]


def _hard_cut(text: str, fits: Callable[[str], bool]) -> list[str]:
    """Cut a run with no usable boundary by characters (never inside a UTF-8 sequence)."""
    out: list[str] = []
    cur = ""
    for ch in text:
        if cur and not fits(cur + ch):
            out.append(cur)
            cur = ""
        cur += ch
    if cur:
        out.append(cur)
    return out


def split_by_bytes(text: str, fits: Callable[[str], bool]) -> list[str]:
    """Greedy parts of ``text`` that each satisfy ``fits``, cut at sentence ends, else at
    clause marks (，、：), else between characters. Parts keep their own line breaks."""
    parts: list[str] = []
    cur = ""
    for sentence in _pieces(text, _SENTENCE):
        if fits(cur + sentence):
            cur += sentence
            continue
        if cur.strip():
            parts.append(cur)
        cur = ""
        if fits(sentence):
            cur = sentence
            continue
        for clause in _pieces(sentence, _CLAUSE):
            if fits(cur + clause):
                cur += clause
                continue
            if cur.strip():
                parts.append(cur)
            cur = ""
            if fits(clause):
                cur = clause
            else:
                *whole, cur = _hard_cut(clause, fits)
                parts.extend(whole)
    if cur.strip():
        parts.append(cur)
    return [p.strip("\n") for p in parts]


def _label(labels: dict[Category, Text] | dict[Priority, Text], value: str) -> str:
    # StrEnum keys hash like their values; an unknown (newer) value is shown as it is.
    text = labels.get(cast(Any, value))
    return str(text.render("zh")) if text is not None else value


def _when(notice: NoticeView) -> str:
    return notice.publish_at.astimezone(local_tz()).strftime("%Y-%m-%d %H:%M")


def _prefix(priority: str) -> str:
    return {"emergency": "【紧急】", "important": "【重要】"}.get(priority, "")


def _links(text: str) -> str:
    """Bare addresses in the body become links (markdown shows them as plain text)."""
    return _URL.sub(lambda m: f"[{m.group(0)}]({m.group(0)})", text)


def _cell(value: object) -> str:
    return str(value).replace("|", "｜").replace("\r", " ").replace("\n", " ").strip() or " "


def _table_lines(table: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(header lines, row lines) of a markdown_v2 table."""
    columns = [_cell(c) for c in table.get("columns", [])]
    head = []
    if table.get("caption"):
        head.append(f"**{_cell(table['caption'])}**")
    head.append("| " + " | ".join(columns) + " |")
    head.append("|" + "|".join(" --- " for _ in columns) + "|")
    rows = ["| " + " | ".join(_cell(c) for c in row) + " |" for row in table.get("rows", [])]
    return head, rows


def csv_bytes(table: dict[str, Any]) -> bytes:
    """The table as CSV, UTF-8 with a BOM so that Excel on a village PC shows the Chinese."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    if table.get("caption"):
        writer.writerow([table["caption"]])
    writer.writerow(table.get("columns", []))
    writer.writerows(table.get("rows", []))
    return b"\xef\xbb\xbf" + buf.getvalue().encode("utf-8")


def _file_name(title: str, attachment: Attachment = "csv") -> str:
    safe = re.sub(r'[\\/:*?"<>|\s]+', "_", title).strip("_") or "table"
    return f"{safe[:60]}.{attachment}"


@dataclass
class _Style:
    msgtype: MsgType
    limit: int

    @property
    def markdown(self) -> bool:
        return self.msgtype != "text"


def _head(notice: NoticeView, style: _Style, *, mark: str, first: bool, village: str | None) -> str:
    title = f"{_prefix(notice.priority)}{notice.title}{mark}"
    category = _label(CATEGORY_LABELS, notice.category)
    priority = _label(PRIORITY_LABELS, notice.priority)
    where = f" · {village}" if village else ""
    if not style.markdown:
        if not first:
            return title
        return f"{title}\n{category} · {priority}{where} · 发布时间：{_when(notice)}"
    lines = [f"### {title}"]
    if first:
        if style.msgtype == "markdown":
            colour = _COLOURS.get(notice.priority, "info")
            lines.append(f'<font color="{colour}">{category} · {priority}</font>')
            lines.append(f'<font color="comment">发布时间：{_when(notice)}{where}</font>')
        else:  # markdown_v2 has no colours: a quote sets the facts apart
            lines.append(f"> **{category} · {priority}**")
            lines.append(f"> 发布时间：{_when(notice)}{where}")
    return "\n".join(lines)


@lru_cache(maxsize=64)
def _split_rendered(body: str, *, markdown: bool, room: int) -> tuple[str, ...]:
    """The body's parts, rendered, each at most ``room`` bytes. Kept for the next group: a
    county-wide notice is the same body for every village, and village names come in a few
    byte lengths."""
    render = _links if markdown else (lambda t: t)

    def fits(chunk: str) -> bool:
        return utf8_len(render(chunk.strip("\n"))) <= room

    return tuple(render(c) for c in split_by_bytes(body, fits))


def _mark(i: int, n: int) -> str:
    return f"（{i}/{n}）" if n > 1 else ""


def render_notice(
    notice: NoticeView,
    *,
    fmt: Literal["markdown", "text"],
    markdown_v2: bool,
    village: str | None = None,
    attachment: Attachment = "csv",
    pdf: Callable[[], bytes] | None = None,
) -> list[Message]:
    """The written messages of a notice, in sending order: parts, then the table as a file
    (CSV, or PDF made by ``pdf`` when it is needed), then (emergencies in markdown) a text
    that mentions @all."""
    table = notice.table if notice.table and notice.table.get("columns") else None
    as_v2_table = table is not None and fmt == "markdown" and markdown_v2
    if fmt == "text":
        style = _Style("text", TEXT_MAX_BYTES)
    else:
        style = _Style("markdown_v2" if as_v2_table else "markdown", MARKDOWN_MAX_BYTES)
    body = notice.body.strip()
    attach = table is not None and not as_v2_table
    if attach:
        body += f"\n\n（明细表见附件《{_file_name(notice.title, attachment)}》）"
    # Room for the longest head any part can get (the first, with a two-digit part mark).
    room = style.limit - utf8_len(
        _head(notice, style, mark="（99/99）", first=True, village=village)
    )
    room -= 2  # the blank line between head and text
    chunks = list(_split_rendered(body, markdown=style.markdown, room=room))
    if as_v2_table:
        assert table is not None
        chunks = _with_table(chunks, table, room)
    if len(chunks) > 99:
        raise ContentError(
            tr(
                "通知太长：企业微信群需要分成 {n} 条消息（最多 99 条）",
                "the notice is too long: it would take {n} WeCom messages (at most 99)",
                n=len(chunks),
            ),
            code="too_long",
        )
    messages: list[Message] = []
    for i, chunk in enumerate(chunks, 1):
        head = _head(notice, style, mark=_mark(i, len(chunks)), first=i == 1, village=village)
        content = f"{head}\n\n{chunk}"
        if utf8_len(content) > style.limit:  # the split above makes this unreachable
            raise ContentError(
                tr("消息超过企业微信字节上限", "a message exceeds WeCom's byte limit"),
                code="too_long",
            )
        payload: dict[str, Any] = {"content": content}
        if style.msgtype == "text" and i == 1 and notice.priority == "emergency":
            payload["mentioned_list"] = ["@all"]
        messages.append(Message(f"part:{i}", style.msgtype, payload))
    if attach:
        assert table is not None
        if attachment == "pdf":
            if pdf is None:
                raise ValueError("a PDF attachment needs its renderer")
            data = pdf()
        else:
            data = csv_bytes(table)
        if len(data) > FILE_MAX_BYTES:
            raise ContentError(
                tr("表格超过企业微信附件 20 MB 上限", "the table exceeds WeCom's 20 MB file limit"),
                code="too_long",
            )
        upload = Upload("file", _file_name(notice.title, attachment), data)
        messages.append(Message("file:table", "file", upload=upload))
    if style.markdown and notice.priority == "emergency":
        messages.append(mention_all(notice.title))
    return messages


def _with_table(chunks: list[str], table: dict[str, Any], room: int) -> list[str]:
    """Body parts followed by the table, split by rows with the header repeated."""
    head, rows = _table_lines(table)
    pieces: list[str] = []
    cur: list[str] = []

    def text(lines: Sequence[str]) -> str:
        return "\n".join([*head, *lines])

    for row in rows:
        if utf8_len(text([row])) > room:
            raise ContentError(
                tr(
                    "表格中有一行太长，企业微信一条消息放不下",
                    "a table row is too long for one WeCom message",
                ),
                code="too_long",
            )
        if cur and utf8_len(text([*cur, row])) > room:
            pieces.append(text(cur))
            cur = []
        cur.append(row)
    pieces.append(text(cur))
    out = list(chunks)
    if out and utf8_len(out[-1] + "\n\n" + pieces[0]) <= room:
        out[-1] = out[-1] + "\n\n" + pieces[0]
        pieces = pieces[1:]
    return out + pieces


def mention_all(title: str, *, withdrawn: bool = False) -> Message:
    """Markdown cannot mention @all: a short text after it does (WeCom's text message)."""
    what = "撤回" if withdrawn else "紧急通知"
    content = f"【{what}】{title}：请大家立即查看上面的消息，并相互转告。"
    return Message("mention:all", "text", {"content": content, "mentioned_list": ["@all"]})


def render_withdrawal(
    notice: NoticeView, *, fmt: Literal["markdown", "text"], village: str | None = None
) -> list[Message]:
    """The message that takes a notice back where a robot cannot delete: title, time, and
    "此前发布的通知已撤回"."""
    when = _when(notice)
    instead = "以更正后的通知为准" if notice.state == "superseded" else "以村里后续通知为准"
    sentence = (
        f"{village + '于' if village else ''}{when} 发布的通知《{notice.title}》已撤回，"
        f"请不要再按该通知办理，{instead}。"
    )
    if fmt == "text":
        content = f"【撤回】{notice.title}\n此前发布的通知已撤回。\n{sentence}"
        payload: dict[str, Any] = {"content": content}
        if notice.priority == "emergency":
            payload["mentioned_list"] = ["@all"]
        return [Message("recall", "text", payload)]
    content = (
        f"### 【撤回】{notice.title}\n"
        f'<font color="warning">此前发布的通知已撤回</font>\n'
        f'<font color="comment">原发布时间：{when}</font>\n\n{sentence}'
    )
    messages = [Message("recall", "markdown", {"content": content})]
    if notice.priority == "emergency":
        messages.append(mention_all(notice.title, withdrawn=True))
    return messages
