"""Personal data in a notice: find it before anything reaches a public channel, and mask it.

What is found (also in full-width digits, and split by spaces or hyphens):

    resident_id   18-character resident identity number whose GB 11643-1999 check
                  character (MOD 11-2, ``X``/``x`` for 10) is right and whose birth date
                  is a real date
    legacy_id     15-digit first-generation identity number with a real birth date
    mobile        11-digit mainland mobile number (1[3-9]...), optionally after +86 / 86
    bank_card     16 to 19 digits passing the Luhn check

Masking follows the style used on village disclosure boards: ``138****1234``,
``370781********1234``, ``370781*****1234`` and ``6222 **** **** 1234``.

Ordinary numbers (dates, amounts, notice numbers, landlines, areas) are left alone: a
number is personal data only when its length, prefix and check digit all say so.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal

from content_queue.i18n import Text, tr

__all__ = [
    "KIND_LABELS",
    "Finding",
    "FindingKind",
    "find_personal_data",
    "gb11643_check",
    "luhn_ok",
    "mask_text",
    "scan_notice",
]

FindingKind = Literal["resident_id", "legacy_id", "mobile", "bank_card"]

KIND_LABELS: dict[str, Text] = {
    "resident_id": tr("身份证号", "resident ID number"),
    "legacy_id": tr("15 位旧身份证号", "15-digit legacy ID number"),
    "mobile": tr("手机号", "mobile number"),
    "bank_card": tr("银行卡号", "bank card number"),
}

# Full-width digits and X map to ASCII one code point for one, so offsets survive.
_FULLWIDTH = str.maketrans("０１２３４５６７８９Ｘｘ＋", "0123456789Xx+")
_SEP = re.escape(" \u3000\u00a0-\u2010\u2011\u2012\u2013\u2014\uff0d")
# Groups of digits joined by single separators; an ID may end in X.
_RUN = re.compile(
    rf"(?<![0-9A-Za-z])(?:\+?86[{_SEP}]?)?\d+(?:[{_SEP}]\d+)*(?:[{_SEP}]?[Xx])?(?![0-9A-Za-z])"
)
_GROUP = re.compile(r"\d+[Xx]?|[Xx]")
_MAX_LEN = 19
_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK = "10X98765432"


def gb11643_check(first17: str) -> str:
    """The check character of an 18-character resident ID (GB 11643-1999, MOD 11-2)."""
    total = sum(int(c) * w for c, w in zip(first17, _WEIGHTS, strict=True))
    return _CHECK[total % 11]


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = int(c)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _real_date(y: int, m: int, d: int) -> bool:
    try:
        date(y, m, d)
    except ValueError:
        return False
    return True


def _classify(s: str) -> FindingKind | None:
    """What a separator-free candidate is, if it is personal data."""
    n = len(s)
    if n == 18 and s[:17].isdigit() and s[0] in "12345678":
        year, month, day = int(s[6:10]), int(s[10:12]), int(s[12:14])
        birth_ok = 1900 <= year <= 2100 and _real_date(year, month, day)
        if birth_ok and s[17].upper() == gb11643_check(s[:17]):
            return "resident_id"
    if not s.isdigit():
        return None
    if (
        n == 15
        and s[0] in "12345678"
        and _real_date(1900 + int(s[6:8]), int(s[8:10]), int(s[10:12]))
    ):
        return "legacy_id"
    if n == 11 and s[0] == "1" and s[1] in "3456789":
        return "mobile"
    if n == 13 and s.startswith("86") and s[2] == "1" and s[3] in "3456789":
        return "mobile"
    if 16 <= n <= 19 and s[0] != "0" and luhn_ok(s):
        return "bank_card"
    return None


@dataclass(frozen=True)
class Finding:
    kind: FindingKind
    start: int
    end: int
    """Offsets in the text (the matched span, separators included)."""
    digits: str
    """The number without separators, in ASCII."""
    where: str = "body"
    """``title``, ``body``, or ``table[row,column]`` (1-based)."""

    @property
    def masked(self) -> str:
        s = self.digits
        if self.kind == "mobile":
            core = s[-11:]
            prefix = "+86 " if len(s) == 13 else ""
            return f"{prefix}{core[:3]}****{core[-4:]}"
        if self.kind in ("resident_id", "legacy_id"):
            return s[:6] + "*" * (len(s) - 10) + s[-4:].upper()
        stars = " ".join(["****"] * ((len(s) - 8 + 3) // 4))
        return f"{s[:4]} {stars} {s[-4:]}"

    def describe(self) -> Text:
        return tr(
            "{where}中有{kind}（{masked}）",
            "{kind} in the {where_en} ({masked})",
            where=_where_zh(self.where),
            where_en=self.where,
            kind=KIND_LABELS[self.kind],
            masked=self.masked,
        )


def _where_zh(where: str) -> str:
    if where == "title":
        return "标题"
    if where == "body":
        return "正文"
    m = re.fullmatch(r"table\[(\d+),(\d+)\]", where)
    return f"表格第 {m.group(1)} 行第 {m.group(2)} 列" if m else where


def _plausible_split(groups: Sequence[re.Match[str]]) -> bool:
    """People split numbers into groups of three or more (138 1234 5678, 6222 0212 ...);
    a run of small numbers (a pasted table: "2 3 4 5 6 7 ...") is not one number."""
    parts = [g.group(0) for g in groups]
    if parts[0] == "86":
        parts = parts[1:]
    if parts and parts[-1] in ("X", "x"):
        parts = parts[:-1]
    return all(len(p) >= 3 for p in parts)


def _candidates(groups: Sequence[re.Match[str]]) -> Iterator[tuple[int, int, str, FindingKind]]:
    """Greedy, left to right: the longest run of adjacent groups that is personal data."""
    i = 0
    while i < len(groups):
        # Only spans of at most 19 characters can be personal data: bounded work even for
        # a table of thousands of space-separated numbers.
        j_max, length = i, 0
        while j_max < len(groups) and length + len(groups[j_max].group(0)) <= _MAX_LEN:
            length += len(groups[j_max].group(0))
            j_max += 1
        for j in range(j_max, i, -1):
            if j - i > 1 and not _plausible_split(groups[i:j]):
                continue
            joined = "".join(g.group(0) for g in groups[i:j])
            kind = _classify(joined)
            if kind is not None:
                yield groups[i].start(), groups[j - 1].end(), joined.upper(), kind
                i = j
                break
        else:
            i += 1


def find_personal_data(text: str, *, where: str = "body") -> list[Finding]:
    """Every piece of personal data in ``text``, in order."""
    ascii_text = text.translate(_FULLWIDTH)
    found: list[Finding] = []
    for run in _RUN.finditer(ascii_text):
        base = run.start()
        groups = list(_GROUP.finditer(run.group(0)))
        for start, end, digits, kind in _candidates(groups):
            if start == groups[0].start() and run.group(0).startswith("+"):
                start = 0  # the + of +86 goes with the number
            found.append(Finding(kind, base + start, base + end, digits, where))
    return found


def mask_text(text: str, findings: Sequence[Finding]) -> str:
    """``text`` with each finding replaced by its masked form."""
    out, last = [], 0
    for f in sorted(findings, key=lambda f: f.start):
        out.append(text[last : f.start])
        out.append(f.masked)
        last = f.end
    out.append(text[last:])
    return "".join(out)


@dataclass(frozen=True)
class ScanResult:
    findings: list[Finding]
    title: str
    body: str
    table: dict[str, Any] | None
    """The notice's parts with every finding masked."""


def scan_notice(title: str, body: str, table: dict[str, Any] | None) -> ScanResult:
    """Find personal data in a notice's title, body and table; also return it masked."""
    findings: list[Finding] = []
    t = find_personal_data(title, where="title")
    b = find_personal_data(body, where="body")
    findings += t + b
    masked_table = None
    if table is not None:
        rows: list[list[str]] = []
        for r, row in enumerate(table.get("rows", []), start=1):
            cells = []
            for c, cell in enumerate(row, start=1):
                fs = find_personal_data(str(cell), where=f"table[{r},{c}]")
                findings += fs
                cells.append(mask_text(str(cell), fs))
            rows.append(cells)
        masked_table = {**table, "rows": rows}
    return ScanResult(findings, mask_text(title, t), mask_text(body, b), masked_table)
