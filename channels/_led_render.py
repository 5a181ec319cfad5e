"""Turn a notice into LED board pages: safe character substitutions, an encoding check, layout.

Rules of :func:`prepare_text`, applied in this order. Each change is reported once as a
:class:`Replacement` named by its rule, except the two layout rows. A character still left
that the board's encoding cannot show raises :class:`EncodingProblem`, which names it.

=============  ===============================================================  ===============
rule           what happens                                                     when
=============  ===============================================================  ===============
(layout)       CR LF, CR, VT, FF, NEL, U+2028, U+2029 become a line feed;       always
               tab becomes a space
equivalent     ``m²`` -> ``㎡`` or ``平方米``; ``m³`` -> ``㎥`` or ``立方米``      board lacks it
canonical      NFC of each character with its combining marks: ``e`` + U+0301  always
               -> ``é``; compatibility ideograph U+F900 -> U+8C48 (same
               character by Unicode's definition)
invisible      removed: format characters (category Cf: zero-width space,      always
               ZWNJ, ZWJ, word joiner, BOM, soft hyphen, bidi controls, tag
               characters) and variation selectors (U+FE00-FE0F, U+E0100-
               E01EF, U+180B-180D, U+034F); the base character stays
control        removed: other C0 and C1 control characters (NUL, ESC, ...)      always
emoji          removed: pictographs U+1F000-1FAFF (emoji, flags, skin tones,    always
               enclosed alphanumeric supplement) and the keycap mark U+20E3
               (so ``1️⃣`` -> ``1``)
space          other spaces (Unicode Zs: U+00A0, U+2000-200A, U+202F,         always
               U+205F, U+3000 ideographic space) -> ``" "``
equivalent     the first form the board can show from the table below           board lacks it
compatibility  half-width and small forms (U+FF00-FFEF, U+FE50-FE6F) -> their   board lacks it
               NFKC form (``｡`` -> ``。``); full-width letters and digits are
               in all three encodings, so they are kept
symbol         removed: arrows, technical, geometric shapes, misc symbols,      board lacks it
               dingbats (U+2190-23FF, 25A0-27BF, 2900-297F, 2B00-2BFF, 〰 〽
               ㊗ ㊙); GB2312 has and keeps ★ ☆ ○ ● ◆ ■ △ → ← ※ ♀ ♂
(layout)       runs of spaces -> one space; blank lines, spaces around line     always
               breaks and at either end dropped
refuse         any other character the encoding lacks (𠮷 U+20BB7 is in        EncodingProblem
               neither GB2312 nor GBK; 镕 U+9555 is in GBK only)
=============  ===============================================================  ===============

Equivalents; the first candidate the encoding has wins. Python's ``gb2312`` codec maps
GB2312's dash A1AA to U+2015 and its middle dot A1A4 to U+30FB (GBK: U+2014 and U+00B7),
hence the first two rows.

    — U+2014                           -> ― U+2015
    · U+00B7, ・ U+30FB                 -> the other one
    • U+2022, ∙ U+2219, ‧ U+2027        -> ·, else ・
    U+2010-2013 hyphens and dashes, − -> -
    ⋯  〜  〝  〞  ¥                     -> …  ～  “  ”  ￥
    ✓ ✔ ☑ ✅                            -> √
    ✗ ✘ ✖ ❌ ❎                          -> ×
    ⑪ ... ⑳                            -> ⑾ ... ⒇
    m², ㎡                              -> ㎡, else 平方米
    m³, ㎥                              -> ㎥, else 立方米
    © ® ™                              -> (C) (R) TM

ASCII and the full-width punctuation of Chinese text (，。、；：？！“”‘’（）《》【】……) are
in all three encodings and are never touched.

Layout of :func:`paginate`: a line holds ``chars_per_line`` columns. A character whose
``unicodedata.east_asian_width`` is W, F or A (CJK, full-width forms, and the "ambiguous" ones
such as “ ” ° × that GB2312 boards draw double-byte) takes one column; every other character
(ASCII, half-width forms) takes half a column; combining marks take none. Lines break at the
end of a paragraph, after 。！？, after ，、；：and closing brackets and at spaces (preferred
when that leaves the line at least two thirds full), else between any two CJK characters.
They never break inside an ASCII word, a number (12,345.60, 2026-12-01, 12:30), between a
number and its unit (元, 年, 亩), inside 2026年12月1日 or 8时30分, inside …… or ——, before
closing punctuation (，。、）」』…% and the like) or after opening punctuation (（「『“《 and
the like): kinsoku. When nothing else fits, a long URL breaks after / . - _ = & ? #, and as a
last resort a run breaks wherever the line is full.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Literal, NamedTuple, get_args

from content_queue.i18n import Text, tr

__all__ = [
    "EMERGENCY_PREFIX",
    "BoardSpec",
    "Encoding",
    "EncodingProblem",
    "Page",
    "Priority",
    "Replacement",
    "display_columns",
    "paginate",
    "prepare_text",
    "render_pages_json",
]

Encoding = Literal["gb2312", "gbk", "utf-8"]
Priority = Literal["routine", "important", "emergency"]

EMERGENCY_PREFIX = "【紧急】"

# Preferred colour per priority; a board without any of them uses its first colour.
_PRIORITY_COLOURS: dict[str, tuple[str, ...]] = {
    "routine": ("green", "red"),
    "important": ("yellow", "red"),
    "emergency": ("red",),
}


@dataclass(frozen=True)
class BoardSpec:
    """What one LED board can show: geometry in full-width characters, encoding, colours."""

    chars_per_line: int
    lines: int
    encoding: Encoding
    colours: tuple[str, ...] = ("red", "green", "yellow")
    seconds_per_char: float = 0.35
    min_page_seconds: float = 4.0
    max_page_seconds: float = 20.0

    def __post_init__(self) -> None:
        if self.chars_per_line < 1 or self.lines < 1:
            raise ValueError("a board needs at least one line of one character")
        if self.encoding not in get_args(Encoding):
            raise ValueError(f"unsupported board encoding: {self.encoding!r}")
        if not self.colours:
            raise ValueError("a board needs at least one colour")
        if self.seconds_per_char <= 0 or not 0 < self.min_page_seconds <= self.max_page_seconds:
            raise ValueError("page timing must be positive with min <= max")


@dataclass(frozen=True)
class Page:
    """One screenful: at most ``lines`` lines, each at most ``chars_per_line`` columns."""

    lines: tuple[str, ...]
    seconds: float
    colour: str
    flash: bool
    kind: Literal["title", "body"]


@dataclass(frozen=True)
class Replacement:
    """One documented substitution made by :func:`prepare_text` (``replacement`` may be "")."""

    original: str
    replacement: str
    rule: str


class EncodingProblem(Exception):
    """Characters the board's encoding cannot show, each with its index in its part.

    ``parts[k]`` says where ``chars[k]`` is: ``"text"`` (from :func:`prepare_text`),
    ``"title"``, ``"body"``, ``"table"`` or ``"header"`` (from :func:`paginate`; for a table
    cell the index is its row, for a column label its column). ``text`` names every distinct
    character and its code point in both languages.
    """

    def __init__(
        self, chars: list[tuple[str, int]], *, encoding: str, parts: list[str] | None = None
    ) -> None:
        self.chars = chars
        self.encoding = encoding
        self.parts = parts if parts is not None else ["text"] * len(chars)
        self.text: Text = _problem_text(chars, self.parts, encoding)
        super().__init__(self.text.render("en"))

    def __str__(self) -> str:
        return self.text.render()


# -- character classes -------------------------------------------------------------------

_LINE_BREAKS = frozenset("\r\n\x0b\x0c\x85\u2028\u2029")
_SENTENCE_END = frozenset("。！？!?")
_CLAUSE = frozenset("，、；：,;:")
_CLOSING = frozenset("）」』】〕〉》〗〙〛｝”’)]}〞")
# Kinsoku after GB/T 15834-2011 and JIS X 4051; the middle dots join transliterated names.
_NO_LINE_START = _CLOSING | frozenset("，。、；：？！…‥%％℃°‰·・,.;:!?")
_NO_LINE_END = frozenset("（「『【〔〈《〖〘〚｛“‘([{〝￥＄$¥£€·・#＃")
_UNSPLIT_RUNS = frozenset("…—―‥")  # "……" and "——" are one mark each
_WIDE = frozenset({"W", "F", "A"})
_URL_BREAK_AFTER = frozenset("/.-_=&?#")
_NUMBER_SEPARATORS = frozenset("，．：／－")  # full-width 12，345．60 and 2026－12－01
_GLUED = re.compile(
    r"\d{1,4}年\d{1,2}月(?:\d{1,2}[日号])?|\d{1,2}月\d{1,2}[日号]|\d{1,2}[时点](?:\d{1,2}分|半)?"
)

_EQUIVALENT_ROWS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("\u2014", ("\u2015",)),
    ("\u00b7", ("\u30fb",)),
    ("\u30fb", ("\u00b7",)),
    ("\u2022\u2219\u2027", ("\u00b7", "\u30fb")),
    ("\u2010\u2011\u2012\u2013\u2212", ("-",)),
    ("⋯", ("…",)),
    ("〜", ("～",)),
    ("〝", ("“",)),
    ("〞", ("”",)),
    ("¥", ("￥",)),
    ("✓✔☑✅", ("√",)),
    ("✗✘✖❌❎", ("×",)),
    ("㎡", ("平方米",)),
    ("㎥", ("立方米",)),
    ("©", ("(C)",)),
    ("®", ("(R)",)),
    ("™", ("TM",)),
    *((chr(0x246A + k), (chr(0x247E + k),)) for k in range(10)),  # ⑪-⑳ -> ⑾-⒇
)
_EQUIVALENTS = {ch: candidates for chars, candidates in _EQUIVALENT_ROWS for ch in chars}
_MULTI_EQUIVALENTS: dict[str, tuple[str, ...]] = {
    "m\u00b2": ("\u33a1", "平方米"),
    "m\u00b3": ("\u33a5", "立方米"),
}
_SYMBOL_BLOCKS = ((0x2190, 0x23FF), (0x25A0, 0x27BF), (0x2900, 0x297F), (0x2B00, 0x2BFF))


@functools.lru_cache(maxsize=16384)
def _encodable(text: str, encoding: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode(encoding)
    except UnicodeEncodeError:
        return False
    return True


@functools.lru_cache(maxsize=16384)
def _units(ch: str) -> int:
    """Width in half-columns."""
    if unicodedata.combining(ch):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in _WIDE else 1


def display_columns(text: str) -> float:
    """Columns a line takes on a board: CJK and full-width 1, ASCII and half-width 1/2."""
    return sum(_units(ch) for ch in text) / 2


def _is_variation_selector(o: int) -> bool:
    return 0xFE00 <= o <= 0xFE0F or 0xE0100 <= o <= 0xE01EF or 0x180B <= o <= 0x180D


def _substitute(ch: str, encoding: str) -> tuple[str, str | None]:
    """What one character becomes and the rule that changed it (None: unchanged)."""
    if ch in "\t\n ":
        return (" " if ch == "\t" else ch), None
    o = ord(ch)
    category = unicodedata.category(ch)
    if category == "Cf" or _is_variation_selector(o) or o == 0x034F:
        return "", "invisible"
    if category == "Cc":
        return "", "control"
    if 0x1F000 <= o <= 0x1FAFF or o == 0x20E3:
        return "", "emoji"
    if category == "Zs":
        return " ", "space"
    if _encodable(ch, encoding):
        return ch, None
    for candidate in _EQUIVALENTS.get(ch, ()):
        if _encodable(candidate, encoding):
            return candidate, "equivalent"
    if 0xFF00 <= o <= 0xFFEF or 0xFE50 <= o <= 0xFE6F:
        compat = unicodedata.normalize("NFKC", ch)
        if compat != ch and _encodable(compat, encoding):
            return compat, "compatibility"
    if any(lo <= o <= hi for lo, hi in _SYMBOL_BLOCKS) or ch in "〰〽㊗㊙":
        return "", "symbol"
    return ch, None  # refused by the encoding check


def _check_encoding(encoding: str) -> None:
    if encoding not in get_args(Encoding):
        raise ValueError(f"unsupported board encoding: {encoding!r}")


def prepare_text(text: str, encoding: str) -> tuple[str, list[Replacement]]:
    """Apply the rules in the module docstring; raise EncodingProblem for what is left.

    Returns the text to show and each distinct replacement made, in order of first use.
    Preparing prepared text changes nothing. Indexes in EncodingProblem refer to ``text``.
    """
    _check_encoding(encoding)
    found: dict[Replacement, None] = {}
    chars: list[str] = []
    origins: list[int] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in _LINE_BREAKS:
            chars.append("\n")
            origins.append(i)
            i += 2 if text.startswith("\r\n", i) else 1
            continue
        multi = _multi_equivalent(text, i, encoding)
        if multi is not None:
            key, value = multi
            found.setdefault(Replacement(key, value, "equivalent"))
            chars.extend(value)
            origins.extend([i] * len(value))
            i += len(key)
            continue
        j = i + 1
        while j < n and unicodedata.combining(text[j]):
            j += 1
        cluster = text[i:j]
        composed = unicodedata.normalize("NFC", cluster)
        if composed != cluster:
            found.setdefault(Replacement(cluster, composed, "canonical"))
        for k, c in enumerate(composed):
            out, rule = _substitute(c, encoding)
            if rule is not None:
                found.setdefault(Replacement(c, out, rule))
            chars.extend(out)
            origins.extend([i if composed != cluster else i + k] * len(out))
        i = j
    kept, kept_at = _collapse_whitespace(chars, origins)
    bad = [(c, at) for c, at in zip(kept, kept_at, strict=True) if not _encodable(c, encoding)]
    if bad:
        raise EncodingProblem(bad, encoding=encoding)
    return "".join(kept), list(found)


def _multi_equivalent(text: str, i: int, encoding: str) -> tuple[str, str] | None:
    for key, candidates in _MULTI_EQUIVALENTS.items():
        if text.startswith(key, i) and not _encodable(key, encoding):
            for candidate in candidates:
                if _encodable(candidate, encoding):
                    return key, candidate
    return None


def _collapse_whitespace(chars: list[str], origins: list[int]) -> tuple[list[str], list[int]]:
    out: list[str] = []
    at: list[int] = []
    pending: str | None = None
    pending_at = 0
    for c, o in zip(chars, origins, strict=True):
        if c in " \n":
            if pending != "\n":  # a line break wins over the spaces around it
                pending, pending_at = c, (o if pending is None else pending_at)
            continue
        if pending is not None and out:
            out.append(pending)
            at.append(pending_at)
        pending = None
        out.append(c)
        at.append(o)
    return out, at


def _problem_text(chars: list[tuple[str, int]], parts: list[str], encoding: str) -> Text:
    labels = {
        "title": ("标题", "title"),
        "body": ("正文", "body"),
        "text": ("", ""),
    }
    seen: set[str] = set()
    zh: list[str] = []
    en: list[str] = []
    for (ch, index), part in zip(chars, parts, strict=True):
        if ch in seen:
            continue
        seen.add(ch)
        code = f"U+{ord(ch):04X}"
        zh_part, en_part = labels.get(part, ("", ""))
        if part == "table":
            zh.append(f"“{ch}”({code}，表格第 {index + 1} 行)")
            en.append(f'"{ch}" ({code}, table row {index + 1})')
        elif part == "header":
            zh.append(f"“{ch}”({code}，表头第 {index + 1} 列)")
            en.append(f'"{ch}" ({code}, table header column {index + 1})')
        else:
            zh.append(f"“{ch}”({code}，{zh_part}第 {index + 1} 字)")
            en.append(f'"{ch}" ({code}, {en_part + " " if en_part else ""}character {index + 1})')
    ideographs = all(unicodedata.name(ch, "").startswith("CJK ") for ch in seen)
    advice = (
        tr(
            "请改用同音常用字或拼音后重新发送",
            "replace it with a common character of the same sound or with pinyin, then send again",
        )
        if ideographs
        else tr(
            "请删除或改用文字说明后重新发送", "remove it or write it out in words, then send again"
        )
    )
    return tr(
        "LED 屏（{enc} 编码）无法显示{chars}，{advice}",
        "the LED board ({enc} encoding) cannot show {chars}; {advice}",
        enc=encoding.upper(),
        chars=tr("、".join(zh), ", ".join(en)),
        advice=advice,
    )


# -- line breaking -----------------------------------------------------------------------


class _Break(NamedTuple):
    end: int  # the line ends before p[end]
    next: int  # the next line starts at p[next]
    cls: int  # 1 sentence end, 2 clause mark or space, 3 between characters, 4 inside a URL
    level: int  # 0 normal; 1 only when nothing at level 0 fits


def _is_digit(ch: str) -> bool:
    return unicodedata.category(ch) == "Nd"


def _is_word(ch: str) -> bool:
    """Part of an ASCII-like word or number, which is never broken at level 0."""
    if ch == " ":
        return False
    eaw = unicodedata.east_asian_width(ch)
    if eaw in ("Na", "H", "N"):
        return True
    # Pinyin with tone marks, Greek and Cyrillic letters are "ambiguous" width but still letters.
    return eaw == "A" and unicodedata.category(ch)[0] in "LN" and not _is_enumerator(ch)


def _is_enumerator(ch: str) -> bool:
    return 0x2460 <= ord(ch) <= 0x24FF  # ① ⑴ ⒈: list markers stay with their item


def _breaks(p: str) -> list[_Break]:
    glued: set[int] = set()
    for m in _GLUED.finditer(p):
        glued.update(range(m.start() + 1, m.end()))
    out: list[_Break] = []
    n = len(p)
    for i in range(1, n):
        a, b = p[i - 1], p[i]
        if b == " ":
            if a in _NO_LINE_END or (i + 1 < n and p[i + 1] in _NO_LINE_START):
                continue
            out.append(_Break(i, i + 1, 1 if a in _SENTENCE_END else 2, 0))
            continue
        if a == " " or unicodedata.combining(b):
            continue
        if b in _NO_LINE_START or a in _NO_LINE_END or _is_enumerator(a):
            continue
        if a == b and a in _UNSPLIT_RUNS:
            continue
        if _is_word(a) and _is_word(b):
            in_number = i >= 2 and _is_digit(p[i - 2]) and _is_digit(b)
            if a in _URL_BREAK_AFTER and b != a and not in_number:
                out.append(_Break(i, i, 4, 1))
            continue
        in_number = (
            a in _NUMBER_SEPARATORS
            and i >= 2
            and _is_digit(p[i - 2])
            and _is_digit(b)
            and not (p[i - 2].isascii() or b.isascii())  # "2026-01-01，20:00" is two things
        )
        if (_is_digit(a) and (_is_digit(b) or not _is_word(b))) or in_number or i in glued:
            out.append(_Break(i, i, 3, 1))  # a number and its unit, or inside a date
            continue
        if a in _SENTENCE_END or (a in _CLOSING and i >= 2 and p[i - 2] in _SENTENCE_END):
            cls = 1
        elif a in _CLAUSE or a in _CLOSING:
            cls = 2
        else:
            cls = 3
        out.append(_Break(i, i, cls, 0))
    return out


def _hard_break(p: str, s: int, cap: int, prefix: list[int]) -> int:
    e = s + 1
    while e < len(p) and prefix[e + 1] - prefix[s] <= cap:
        e += 1
    candidates = [k for k in range(e, s, -1) if k == len(p) or not unicodedata.combining(p[k])]
    for k in candidates:
        if k == len(p) or (p[k] not in _NO_LINE_START and p[k - 1] not in _NO_LINE_END):
            return k
    return candidates[0] if candidates else e


def _wrap_paragraph(p: str, cap: int) -> tuple[list[str], int]:
    """Lines of at most ``cap`` half-columns (only spaces at the breaks are dropped), and how
    many breaks were a fallback or a hard break."""
    p = p.strip(" ")
    prefix = list(accumulate((_units(c) for c in p), initial=0))
    breaks = _breaks(p)
    ends = [b.end for b in breaks]
    window = cap // 3
    lines: list[str] = []
    forced = 0
    s, n = 0, len(p)
    while s < n:
        if prefix[n] - prefix[s] <= cap:
            lines.append(p[s:])
            break
        best: _Break | None = None
        preferred: _Break | None = None
        fallback: _Break | None = None
        for brk in breaks[bisect_right(ends, s) :]:
            if prefix[brk.end] - prefix[s] > cap:
                break
            if brk.level == 0:
                best = brk
                if brk.cls <= 2:
                    preferred = brk
            else:
                fallback = brk
        if (
            best is not None
            and best.cls > 2
            and preferred is not None
            and prefix[preferred.end] - prefix[s] >= cap - window
        ):
            best = preferred
        chosen = best or fallback
        forced += best is None
        if chosen is None:
            end = nxt = _hard_break(p, s, cap, prefix)
        else:
            end, nxt = chosen.end, chosen.next
        lines.append(p[s:end].rstrip(" "))
        s = nxt
        while s < n and p[s] == " ":
            s += 1
    return lines, forced


def _wrap(text: str, cap: int) -> tuple[list[str], int]:
    lines: list[str] = []
    forced = 0
    for para in text.split("\n"):
        para_lines, para_forced = _wrap_paragraph(para, cap)
        lines.extend(line for line in para_lines if line)
        forced += para_forced
    return lines, forced


# -- pages -------------------------------------------------------------------------------


class _Prepared(NamedTuple):
    title: str
    body: str
    rows: list[list[str]]
    columns: list[str] | None


def _prepare_parts(
    title: str,
    body: str,
    table: Sequence[Sequence[str]] | None,
    columns: Sequence[str] | None,
    encoding: str,
) -> _Prepared:
    bad: list[tuple[str, int]] = []
    where: list[str] = []

    def prepared(text: str, part: str, at: int | None = None) -> str:
        try:
            done = prepare_text(text, encoding)[0]
        except EncodingProblem as exc:
            bad.extend((ch, index if at is None else at) for ch, index in exc.chars)
            where.extend([part] * len(exc.chars))
            return ""
        return done if part == "body" else done.replace("\n", " ")

    result = _Prepared(
        prepared(title, "title"),
        prepared(body, "body"),
        [[prepared(str(cell), "table", r) for cell in row] for r, row in enumerate(table or [])],
        None if columns is None else [prepared(str(c), "header", k) for k, c in enumerate(columns)],
    )
    if bad:
        raise EncodingProblem(bad, encoding=encoding, parts=where)
    return result


def _row_lines(cells: Sequence[str], columns: Sequence[str] | None, cap: int) -> list[str]:
    """One table row as ``项目：金额`` lines; a label and its value share a line when they fit."""
    values = list(cells[1:])
    if columns is not None and len(columns) == len(cells) and len(cells) > 2:
        values = [
            f"{label} {v}" if label and v else v
            for label, v in zip(columns[1:], values, strict=True)
        ]
    values = [v for v in values if v.strip()]
    first = cells[0] if cells else ""
    pieces = [f"{first}：" if values else first] if first else []
    pieces += [v + "，" for v in values[:-1]] + values[-1:]
    lines: list[str] = []
    current = ""
    for piece in pieces:
        if sum(_units(c) for c in current + piece) <= cap:
            current += piece
            continue
        if current:
            lines.append(current)
        wrapped = _wrap(piece, cap)[0]
        lines.extend(wrapped[:-1])
        current = wrapped[-1] if wrapped else ""
    return [*lines, current] if current else lines


def _seconds(lines: Sequence[str], spec: BoardSpec) -> float:
    shown = sum(1 for line in lines for ch in line if ch != " ")
    seconds = min(max(shown * spec.seconds_per_char, spec.min_page_seconds), spec.max_page_seconds)
    return round(seconds, 3)


def _colour(spec: BoardSpec, priority: str) -> str:
    for colour in _PRIORITY_COLOURS.get(priority, ()):
        if colour in spec.colours:
            return colour
    return spec.colours[0]


def paginate(
    title: str,
    body: str,
    spec: BoardSpec,
    *,
    priority: Priority,
    table: Sequence[Sequence[str]] | None = None,
    columns: Sequence[str] | None = None,
) -> list[Page]:
    """Title page(s) then body pages, each fitting the board exactly.

    Title, body and table cells go through :func:`prepare_text` again (a no-op on prepared
    text), so every page is encodable; all unshowable characters of all three are reported
    together in one EncodingProblem. Table rows follow the body, one row per line, as
    ``项目：金额`` (with ``columns``, rows of three or more cells are labelled:
    ``办公费：收入 0.00，支出 320.00``). An emergency title is prefixed 【紧急】 and its pages
    flash; every page takes the priority's colour (emergency red, important yellow, routine
    green, or the board's first colour). A page shows for its non-space characters times
    ``seconds_per_char``, clamped to ``min_page_seconds``..``max_page_seconds``.
    """
    title_text, body_text, rows, labels = _prepare_parts(title, body, table, columns, spec.encoding)
    cap = spec.chars_per_line * 2
    colour = _colour(spec, priority)
    emergency = priority == "emergency"
    if emergency and not title_text.startswith(EMERGENCY_PREFIX):
        title_text = EMERGENCY_PREFIX + title_text
    title_lines = [_centre(line, cap) for line in _wrap_balanced(title_text, cap)]
    body_lines = _wrap(body_text, cap)[0] + [
        line for row in rows for line in _row_lines(row, labels, cap)
    ]
    return [
        *(
            Page(chunk, _seconds(chunk, spec), colour, emergency, "title")
            for chunk in _chunks(title_lines, spec.lines)
        ),
        *(
            Page(chunk, _seconds(chunk, spec), colour, False, "body")
            for chunk in _chunks(body_lines, spec.lines)
        ),
    ]


def _chunks(lines: list[str], size: int) -> list[tuple[str, ...]]:
    return [tuple(lines[k : k + size]) for k in range(0, len(lines), size)]


def _wrap_balanced(text: str, cap: int) -> list[str]:
    """Wrap a title into as few lines as greedy wrapping, but as even as they go."""
    lines, forced = _wrap(text, cap)
    if len(lines) < 2:
        return lines
    total = sum(_units(c) for c in text)
    for narrower in range(max(2, total // len(lines)), cap):
        candidate, candidate_forced = _wrap(text, narrower)
        if len(candidate) == len(lines) and candidate_forced <= forced:
            return candidate
    return lines


def _centre(line: str, cap: int) -> str:
    # Half-width spaces centre to within half a column.
    free = cap - sum(_units(c) for c in line)
    return " " * (free // 2) + line


def render_pages_json(pages: Sequence[Page]) -> list[dict[str, Any]]:
    """The ``body.pages`` of an ``led.show`` command; integers only (``ms``), as RFC 8785 likes."""
    return [
        {
            "lines": list(page.lines),
            "ms": round(page.seconds * 1000),
            "colour": page.colour,
            "flash": page.flash,
            "kind": page.kind,
        }
        for page in pages
    ]
