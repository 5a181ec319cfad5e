"""A notice as an official-account article: its HTML, its digest, and its cover image.

The cover is drawn with Pillow and a CJK font, one per account and category. It is
deterministic (same account and category, same bytes), so its permanent media id is
uploaded once and reused; the image's hash is part of the cache key, so a new design or
font is uploaded again.
"""

from __future__ import annotations

import hashlib
import html
import io
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from content_queue.errors import ConfigError
from content_queue.i18n import Text, tr
from content_queue.models import CATEGORY_LABELS, PRIORITY_LABELS, Priority, local_tz
from content_queue.store import NoticeView

if TYPE_CHECKING:
    from PIL.ImageFont import FreeTypeFont

__all__ = [
    "COVER_SIZE",
    "Cover",
    "article_html",
    "category_label",
    "cjk_font_path",
    "digest_text",
    "local_text",
    "render_cover",
]

COVER_SIZE = (900, 383)
"""WeChat shows article covers at 2.35:1."""

# (path, face index): Simplified Chinese first. Debian: fonts-noto-cjk or fonts-wqy-zenhei.
_FONTS: tuple[tuple[str, int], ...] = (
    ("/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc", 2),
    ("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc", 2),
    ("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc", 0),
    ("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc", 0),
)

_COLOURS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    # category: (background, accent)
    "emergency": ((178, 34, 34), (255, 214, 0)),
    "village_finance": ((21, 101, 192), (255, 255, 255)),
    "farm_subsidy": ((46, 125, 50), (255, 241, 118)),
    "poverty_monitoring": ((183, 28, 28), (255, 224, 130)),
    "social_insurance": ((0, 121, 107), (255, 255, 255)),
    "land_compensation": ((93, 64, 55), (255, 224, 178)),
    "party_affairs": ((198, 40, 40), (255, 215, 0)),
    "village_affairs": ((2, 119, 189), (255, 255, 255)),
    "meeting": ((69, 90, 100), (255, 255, 255)),
}
_DEFAULT_COLOURS = ((55, 71, 79), (255, 255, 255))


def cjk_font_path() -> tuple[str, int]:
    """The first installed CJK font, or a ConfigError saying which package to install."""
    for path, index in _FONTS:
        if Path(path).exists():
            return path, index
    raise ConfigError(
        tr(
            "找不到中文字体，无法生成公众号文章封面：请安装 fonts-noto-cjk"
            "（sudo apt-get install fonts-noto-cjk，或运行 scripts/dev setup）",
            "no CJK font is installed, so article covers cannot be drawn; install "
            "fonts-noto-cjk (sudo apt-get install fonts-noto-cjk, or run scripts/dev setup)",
        )
    )


@lru_cache(maxsize=16)
def _font(size: int) -> FreeTypeFont:
    from PIL import ImageFont

    path, index = cjk_font_path()
    return ImageFont.truetype(path, size, index=index)


def _fit(text: str, width: int, size: int) -> FreeTypeFont:
    """The largest font (from ``size`` down) in which ``text`` fits ``width`` pixels."""
    while size > 16:
        font = _font(size)
        if font.getlength(text) <= width:
            return font
        size -= 4
    return _font(16)


class Cover:
    """A rendered cover: JPEG bytes and their short hash."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.sha = hashlib.sha256(data).hexdigest()[:16]


@lru_cache(maxsize=64)
def render_cover(*, category: str, label: str, account: str) -> Cover:
    """Draw the cover of an article in ``category`` (``label`` is its Chinese name)."""
    from PIL import Image, ImageDraw

    width, height = COVER_SIZE
    background, accent = _COLOURS.get(category, _DEFAULT_COLOURS)
    image = Image.new("RGB", COVER_SIZE, background)
    draw = ImageDraw.Draw(image)
    margin = 56
    draw.rectangle((margin, 70, margin + 12, height - 70), fill=accent)
    title = _fit(label, width - 2 * margin - 40, 96)
    draw.text((margin + 40, 86), label, font=title, fill=accent)
    sub = _fit(account, width - 2 * margin - 40, 44)
    draw.text((margin + 40, height - 70 - 56), account, font=sub, fill=(255, 255, 255))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=88, optimize=True)
    return Cover(out.getvalue())


# -- the article ------------------------------------------------------------------------------


def _label(table: dict[Any, Text], key: str) -> str:
    found = table.get(key)  # StrEnum keys hash like their values
    return found.render("zh") if found else key


def category_label(category: str) -> str:
    return _label(cast(dict[Any, Text], CATEGORY_LABELS), category)


def local_text(value: datetime) -> str:
    """County time, to the minute, as an article or a message shows it."""
    return value.astimezone(local_tz()).strftime("%Y-%m-%d %H:%M")


def article_html(notice: NoticeView) -> str:
    """The article body: a meta line, the paragraphs, the table, the expiry."""
    esc = html.escape
    meta = f"【{category_label(notice.category)}】"
    if notice.priority != Priority.ROUTINE:
        meta += _label(cast(dict[Any, Text], PRIORITY_LABELS), notice.priority) + " · "
    meta += f"发布时间 {local_text(notice.publish_at)}"
    grey = 'style="color:#888888;font-size:14px"'
    out = [f"<p {grey}>{esc(meta)}</p>"]
    out += [f"<p>{esc(line)}</p>" for line in notice.body.split("\n") if line.strip()]
    table = notice.table
    if table:
        rows = ['<table style="border-collapse:collapse" border="1" cellpadding="4">']
        if table.get("caption"):
            rows.append(f"<caption>{esc(str(table['caption']))}</caption>")
        rows.append("<tr>" + "".join(f"<th>{esc(str(c))}</th>" for c in table["columns"]) + "</tr>")
        for row in table.get("rows", []):
            rows.append("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>")
        rows.append("</table>")
        out.append("".join(rows))
    if notice.expires_at is not None:
        out.append(f"<p {grey}>有效期至 {esc(local_text(notice.expires_at))}</p>")
    return "\n".join(out)


def digest_text(body: str) -> str:
    """The summary under the title in chats (WeChat takes 128 characters)."""
    flat = " ".join(body.split())
    return flat if len(flat) <= 100 else flat[:99] + "…"
