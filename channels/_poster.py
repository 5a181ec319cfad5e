"""The printed disclosure-board poster (三务公开栏): a notice as an A4 or A3 PDF.

Pure rendering (reportlab): the village's name, the category, title, dates, body, the
table (paged, header repeated on every page), the signature, a QR code that opens the
notice's TV-feed item page, and "第 i 页 / 共 n 页" on every page. A withdrawn notice
gets its own poster, "此通知已撤回", to pin over the old one.

The CJK font is embedded (subset). reportlab embeds TrueType outlines only, so the font
is a TrueType CJK font: Debian's ``fonts-wqy-zenhei`` by default (Noto CJK is CFF-based
and cannot be embedded by reportlab); ``VILLAGECAST_POSTER_FONT`` names another one.
Output is deterministic (``invariant``): the same notice renders the same bytes.
"""

from __future__ import annotations

import html
import io
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from content_queue.errors import ConfigError
from content_queue.i18n import tr
from content_queue.models import CATEGORY_LABELS, Category, local_tz
from content_queue.store import NoticeView

__all__ = [
    "FONT_CANDIDATES",
    "PAPER_SIZES",
    "Poster",
    "PosterContent",
    "Withdrawal",
    "find_font",
    "qr_matrix",
    "render_poster",
]

Paper = Literal["A4", "A3"]
PAPER_SIZES: dict[str, tuple[float, float]] = {
    "A4": (595.2755905511812, 841.8897637795277),
    "A3": (841.8897637795277, 1190.5511811023623),
}
"""Portrait page sizes in PDF points (1/72 inch), as reportlab.lib.pagesizes defines them."""

FONT_CANDIDATES: tuple[tuple[str, int], ...] = (
    ("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc", 0),
    ("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc", 0),
    ("/usr/share/fonts/truetype/arphic/uming.ttc", 0),
    ("/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf", 0),
)
"""TrueType CJK fonts looked for, in order (path, index in a .ttc collection)."""

_FONT = "VillagecastCJK"
_font_lock = threading.Lock()
_font_registered: tuple[str, int] | None = None
_MM = 72 / 25.4


@dataclass(frozen=True)
class Withdrawal:
    """What a withdrawal poster says: when, why, and the correction that replaced it."""

    at: datetime
    reason: str = ""
    superseded_by: NoticeView | None = None


@dataclass(frozen=True)
class PosterContent:
    notice: NoticeView
    place: str
    """The village's name (or the township's, for a township notice)."""
    region: str = ""
    """Where the place is, e.g. 阳谷县东城镇, shown above the board's name."""
    issuer: str = ""
    """Who signs it; default the place's village committee."""
    qr_url: str | None = None
    paper: Paper = "A4"
    withdrawal: Withdrawal | None = None


@dataclass(frozen=True)
class Poster:
    data: bytes
    pages: int
    font: str
    """The font file embedded."""


def find_font(override: Path | None = None) -> tuple[str, int]:
    """The TrueType CJK font to embed, or ConfigError saying which package to install."""
    if override is not None:
        if not override.is_file():
            raise ConfigError(
                tr(
                    "海报字体 {p} 不存在（VILLAGECAST_POSTER_FONT）",
                    "the poster font {p} does not exist (VILLAGECAST_POSTER_FONT)",
                    p=override,
                )
            )
        return str(override), 0
    for path, index in FONT_CANDIDATES:
        if Path(path).is_file():
            return path, index
    raise ConfigError(
        tr(
            "找不到可嵌入 PDF 的中文字体：请安装 fonts-wqy-zenhei（apt-get install "
            "fonts-wqy-zenhei），或用 VILLAGECAST_POSTER_FONT 指定一个 TrueType 中文字体",
            "no CJK font that can be embedded in a PDF: install fonts-wqy-zenhei (apt-get "
            "install fonts-wqy-zenhei) or name a TrueType CJK font in VILLAGECAST_POSTER_FONT",
        )
    )


def _register_font(font: tuple[str, int]) -> None:
    global _font_registered
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFError, TTFont

    with _font_lock:
        if _font_registered == font:
            return
        try:
            pdfmetrics.registerFont(TTFont(_FONT, font[0], subfontIndex=font[1]))
        except TTFError as exc:
            raise ConfigError(
                tr(
                    "字体 {p} 不能嵌入 PDF（{e}）：请使用 TrueType 字体，如 fonts-wqy-zenhei",
                    "the font {p} cannot be embedded in a PDF ({e}); use a TrueType font such "
                    "as fonts-wqy-zenhei",
                    p=font[0],
                    e=exc,
                )
            ) from exc
        _font_registered = font


def qr_matrix(url: str) -> list[list[bool]]:
    """The QR code's modules (True = dark), error correction M, without the quiet zone."""
    import segno

    qr = segno.make(url, error="m", boost_error=False, micro=False)
    return [[bool(v) for v in row] for row in qr.matrix]


def _qr_flowable(url: str, size: float) -> Any:
    """The QR code drawn straight on the canvas (a reportlab Drawing would pull in Helvetica)."""
    from reportlab.platypus import Flowable

    matrix = qr_matrix(url)
    quiet = 4  # modules of white border a scanner needs
    unit = size / (len(matrix) + 2 * quiet)

    class QrCode(Flowable):  # type: ignore[misc]
        def wrap(self, avail_width: float, avail_height: float) -> tuple[float, float]:
            return size, size

        def draw(self) -> None:
            canvas = self.canv
            canvas.setFillGray(1)
            canvas.rect(0, 0, size, size, stroke=0, fill=1)
            canvas.setFillGray(0)
            for r, row in enumerate(matrix):
                c = 0
                while c < len(row):  # one rectangle per run of dark modules
                    if not row[c]:
                        c += 1
                        continue
                    start = c
                    while c < len(row) and row[c]:
                        c += 1
                    y = size - (r + quiet + 1) * unit
                    # a hair of overlap, so no white seams show between rows
                    canvas.rect(
                        (start + quiet) * unit, y, (c - start) * unit, unit * 1.02, stroke=0, fill=1
                    )

    return QrCode()


def _esc(text: str) -> str:
    return html.escape(text, quote=False)


def _local(value: datetime) -> datetime:
    return value.astimezone(local_tz())


def _date(value: datetime) -> str:
    d = _local(value)
    return f"{d.year}年{d.month}月{d.day}日"


def _category(value: str) -> str:
    label = CATEGORY_LABELS.get(Category(value)) if value in Category._value2member_map_ else None
    return label.render("zh") if label else value


_NUMERIC = re.compile(r"^[-+]?[\d,，]+(?:\.\d+)?(?:元|亩|人)?$")


def _numeric_columns(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> set[int]:
    out = set()
    for i in range(len(columns)):
        cells = [r[i].strip() for r in rows if i < len(r) and r[i].strip()]
        if cells and all(_NUMERIC.match(c) for c in cells):
            out.add(i)
    return out


def _col_widths(columns: Sequence[str], rows: Sequence[Sequence[str]], width: float) -> list[float]:
    """Widths proportional to each column's typical text, within sensible bounds."""

    def visual(text: str) -> float:
        return sum(1.0 if ord(ch) > 0x2E7F else 0.55 for ch in text)

    wants = []
    for i, name in enumerate(columns):
        lengths = sorted(visual(r[i]) for r in rows if i < len(r)) or [0.0]
        typical = lengths[int(len(lengths) * 0.9)] if len(lengths) > 1 else lengths[0]
        wants.append(min(max(visual(name), typical, 2.0), 18.0))
    total = sum(wants)
    return [width * w / total for w in wants]


class _Styles:
    def __init__(self, scale: float) -> None:
        from reportlab.lib import colors
        from reportlab.lib.enums import TA_CENTER, TA_LEFT, TA_RIGHT
        from reportlab.lib.styles import ParagraphStyle

        def style(name: str, size: float, **kw: Any) -> ParagraphStyle:
            return ParagraphStyle(
                name,
                fontName=_FONT,
                bulletFontName=_FONT,
                fontSize=size * scale,
                leading=size * scale * 1.45,
                wordWrap="CJK",
                **kw,
            )

        self.board = style("board", 15, alignment=TA_CENTER, textColor=colors.HexColor("#9b1c1c"))
        self.region = style("region", 10, alignment=TA_CENTER, textColor=colors.HexColor("#555555"))
        self.tag = style("tag", 11, alignment=TA_LEFT, textColor=colors.HexColor("#9b1c1c"))
        self.title = style(
            "title", 22, alignment=TA_CENTER, spaceBefore=4 * scale, spaceAfter=4 * scale
        )
        self.meta = style("meta", 9.5, alignment=TA_CENTER, textColor=colors.HexColor("#444444"))
        self.body = style("body", 12, firstLineIndent=24 * scale, spaceAfter=3 * scale)
        self.caption = style(
            "caption", 11, alignment=TA_CENTER, spaceBefore=6 * scale, spaceAfter=3 * scale
        )
        self.cell = style("cell", 9.5)
        self.cell_right = style("cell_right", 9.5, alignment=TA_RIGHT)
        self.head = style("head", 9.5, alignment=TA_CENTER)
        self.sign = style("sign", 12, alignment=TA_RIGHT, spaceBefore=10 * scale)
        self.qr = style("qr", 8, alignment=TA_CENTER, textColor=colors.HexColor("#444444"))
        self.stamp = style(
            "stamp",
            40,
            alignment=TA_CENTER,
            textColor=colors.HexColor("#b00000"),
            spaceBefore=30 * scale,
            spaceAfter=20 * scale,
        )


def _canvas_class(footer: str, scale: float, pages: list[int]) -> type:
    """A canvas that writes "第 i 页 / 共 n 页" once it knows n (pages are held until save)."""
    from reportlab.pdfgen.canvas import Canvas

    class NumberedCanvas(Canvas):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._pages: list[dict[str, Any]] = []

        def showPage(self) -> None:
            self._pages.append(dict(self.__dict__))
            self._startPage()

        def save(self) -> None:
            total = len(self._pages)
            for number, state in enumerate(self._pages, start=1):
                self.__dict__.update(state)
                width = self._pagesize[0]
                self.setFont(_FONT, 8.5 * scale)
                self.setFillGray(0.3)
                self.drawCentredString(
                    width / 2, 10 * _MM * scale, f"{footer}　第 {number} 页 / 共 {total} 页"
                )
                super().showPage()
            pages.append(total)
            super().save()

    return NumberedCanvas


def render_poster(content: PosterContent, *, font: tuple[str, int] | None = None) -> Poster:
    """The poster as PDF bytes; ConfigError when no CJK font can be embedded."""
    from reportlab.lib import colors
    from reportlab.platypus import (
        CondPageBreak,
        HRFlowable,
        Paragraph,
        SimpleDocTemplate,
        Spacer,
        Table,
        TableStyle,
    )

    font = font or find_font()
    _register_font(font)
    n = content.notice
    scale = 1.0 if content.paper == "A4" else 1.35
    page = PAPER_SIZES[content.paper]
    margin = 16 * _MM * scale
    styles = _Styles(scale)
    issuer = content.issuer or (
        f"{content.place}村民委员会" if content.place.endswith("村") else f"{content.place}人民政府"
    )
    withdrawn = content.withdrawal is not None
    dates = f"公开日期：{_date(n.publish_at)}"
    if n.expires_at is not None and not withdrawn:
        dates += f"　有效期至：{_date(n.expires_at)}"
    number = f"通知第 {n.id} 号" + (f"（第 {n.revision} 版）" if n.revision > 1 else "")
    footer = f"{content.place}　{number}"

    story: list[Any] = []
    frame_width = page[0] - 2 * margin
    head_left: list[Any] = []
    if content.region:
        head_left.append(Paragraph(_esc(content.region), styles.region))
    head_left.append(Paragraph(_esc(f"{content.place}　三务公开栏"), styles.board))
    head_left.append(Paragraph(_esc(f"【{_category(n.category)}】"), styles.tag))
    qr_size = 30 * _MM * scale
    if content.qr_url:
        qr_cell = [
            _qr_flowable(content.qr_url, qr_size),
            Paragraph("扫码查看原文", styles.qr),
        ]
        head = Table(
            [[head_left, qr_cell]],
            colWidths=[frame_width - qr_size - 6 * _MM, qr_size + 6 * _MM],
            style=TableStyle(
                [
                    ("FONTNAME", (0, 0), (-1, -1), _FONT),
                    ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
                    ("ALIGN", (1, 0), (1, 0), "CENTER"),
                ]
            ),
        )
        story.append(head)
    else:
        story += head_left
    story.append(HRFlowable(width="100%", thickness=1.2 * scale, color=colors.HexColor("#9b1c1c")))

    if content.withdrawal is not None:
        w = content.withdrawal
        story.append(Paragraph("此通知已撤回", styles.stamp))
        story.append(Paragraph(_esc(n.title), styles.title))
        story.append(Paragraph(_esc(f"{number}　原{dates}"), styles.meta))
        story.append(Spacer(1, 8 * _MM * scale))
        lines = [f"上述通知已于{_date(w.at)}撤回，原张贴的通知作废，请勿再以其为准。"]
        if w.reason:
            lines.append(f"撤回原因：{w.reason}")
        if w.superseded_by is not None:
            s = w.superseded_by
            lines.append(
                f"更正后的通知为第 {s.id} 号（第 {s.revision} 版）《{s.title}》，"
                "请以更正后的通知为准。"
            )
        story += [Paragraph(_esc(line), styles.body) for line in lines]
    else:
        story.append(Paragraph(_esc(n.title), styles.title))
        story.append(Paragraph(_esc(f"{number}　{dates}"), styles.meta))
        story.append(Spacer(1, 4 * _MM * scale))
        for line in n.body.split("\n"):
            if line.strip():
                story.append(Paragraph(_esc(line.strip()), styles.body))
        if n.table and n.table.get("columns"):
            story += _table(n.table, frame_width, styles, scale)
    story.append(CondPageBreak(30 * _MM * scale))
    story.append(Paragraph(_esc(issuer), styles.sign))
    story.append(
        Paragraph(
            _esc(_date(content.withdrawal.at if content.withdrawal else n.publish_at)), styles.sign
        )
    )

    out = io.BytesIO()
    doc = SimpleDocTemplate(
        out,
        pagesize=page,
        leftMargin=margin,
        rightMargin=margin,
        topMargin=margin,
        bottomMargin=margin + 6 * _MM * scale,
        title=("【已撤回】" if withdrawn else "") + n.title,
        author=issuer,
        subject=f"{content.place} {number}",
        creator="villagecast",
        invariant=1,
        initialFontName=_FONT,
    )
    pages: list[int] = []
    doc.build(story, canvasmaker=_canvas_class(footer, scale, pages))
    return Poster(data=out.getvalue(), pages=pages[0] if pages else 0, font=font[0])


def _table(table: dict[str, Any], width: float, styles: _Styles, scale: float) -> list[Any]:
    from reportlab.lib import colors
    from reportlab.platypus import Paragraph, Table, TableStyle

    columns = [str(c) for c in table.get("columns", [])]
    rows = [[str(c) for c in r] for r in table.get("rows", [])]
    numeric = _numeric_columns(columns, rows)
    out: list[Any] = []
    if table.get("caption"):
        out.append(Paragraph(_esc(str(table["caption"])), styles.caption))
    data = [[Paragraph(_esc(c), styles.head) for c in columns]]
    total_rows = []
    for r, row in enumerate(rows, start=1):
        cells = row + [""] * (len(columns) - len(row))
        data.append(
            [
                Paragraph(_esc(c), styles.cell_right if i in numeric else styles.cell)
                for i, c in enumerate(cells)
            ]
        )
        if any(re.fullmatch(r"\s*(?:本[月期季年]?)?(?:合计|总计)\s*", c) for c in cells[:2]):
            total_rows.append(r)
    commands: list[tuple[Any, ...]] = [
        ("FONTNAME", (0, 0), (-1, -1), _FONT),
        ("GRID", (0, 0), (-1, -1), 0.5 * scale, colors.HexColor("#777777")),
        ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#f3e3e3")),
        ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
        ("TOPPADDING", (0, 0), (-1, -1), 2 * scale),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 2 * scale),
    ]
    for r in range(2, len(data), 2):
        commands.append(("BACKGROUND", (0, r), (-1, r), colors.HexColor("#f7f7f7")))
    for r in total_rows:
        commands.append(("BACKGROUND", (0, r), (-1, r), colors.HexColor("#ececec")))
        commands.append(("LINEABOVE", (0, r), (-1, r), 1.2 * scale, colors.black))
    out.append(
        Table(
            data,
            colWidths=_col_widths(columns, rows, width),
            repeatRows=1,
            style=TableStyle(commands),
            hAlign="CENTER",
        )
    )
    return out
