"""Turn a written notice into the Mandarin a loudspeaker should say, with no digits left.

Rules, applied in this order (each step sees the output of the one before):

==============  ======================  =======================================
rule            written                 said
==============  ======================  =======================================
width, emoji    １２ｋｇ🎉★◆, ＡＢ       十二千克, AB (full width folded, emoji dropped)
links           详见https://x.gov.cn/a  网址见通知原文
e-mail          邮箱：wang@x.cn         电子邮箱见通知原文
list markers    1. 1、 （1） ① 1️⃣       第一，  (bullets • - * and ===, --- dropped)
masked numbers  138****1234             尾号幺二三四的手机号
                370781********1234      尾号一二三四的身份证号
ID-like         18/15-digit IDs         尾号一二三四的身份证号 (GB 11643 check)
                12+ digits, cards       尾号…的银行卡号 (Luhn), else 尾号…的号码
                身份证号：3707…         身份证号：尾号一二三四 (kind named before)
dates           2026-12-01, 2026.12     二零二六年十二月一日, 二零二六年十二月
                12/1（周二）, 于12/1    十二月一日，周二 (a date only in context)
mobile          13812345678             幺三八，幺二三四，五六七八
landline        0635-1234567            零六三五，幺二三四五六七
hotline         拨打12345, 12345热线    幺二三四五 (context words; 110户 stays)
times           8:30, 08:05, 12:00      八点三十分, 八点零五分, 十二点
ratios          3:7, 3×4米              三比七, 三乘四米
weekdays        星期1, 周7              星期一, 周日
ranges          3-5天, 3~5              三到五天, 三到五
years           2026年, 2026-2027年     二零二六年, 二零二六到二零二七年
temperature     -6℃, 零下6°C, -3度      零下六摄氏度, 零下三度
percent         12.5%, 10%-20%, 3‰      百分之十二点五, …到百分之二十, 千分之三
money           12,345.60元             一万二千三百四十五元六角
                ￥100, 5.5块, 3.5万元   一百元, 五块五角, 三点五万元
units           ㎡ m² m³ km kg /亩       平方米 平方米 立方米 公里 千克 每亩
fractions, No.  1/3, No.12              三分之一, 第十二号
numbers         1,200 -3 0.50 2个 2000  一千二百 负三 零点五 两个 两千
digit strings   007, 7-11 bare digits   零零七, digit by digit with 幺
punctuation     , . ; : ! ? 、（）【】  ，。；：！？ pauses; brackets become ，
whitespace      line breaks, spaces     。 at a bare line end; a space before a
                                        phone or ID becomes ，; others dropped
==============  ======================  =======================================

Conversions go through cn2an (``an2cn`` in low, direct and rmb modes). Its ``transform``
is not used: it converts every digit run as a quantity (phone numbers included) and reports
its own failures as warnings.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from datetime import date
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

import cn2an  # type: ignore[import-untyped]

from content_queue.privacy import gb11643_check, luhn_ok

__all__ = [
    "CLOSING",
    "EMERGENCY_CLOSING",
    "EMERGENCY_OPENING",
    "REPEAT_HINT",
    "normalise",
    "script_sentences",
    "spoken_script",
    "table_sentences",
]

# --- cn2an, typed ---------------------------------------------------------------------------

_UPPER = str.maketrans("壹贰叁肆伍陆柒捌玖拾佰仟", "一二三四五六七八九十百千")


def _an2cn(text: str, mode: str) -> str:
    return str(cn2an.an2cn(text, mode))


def _digits(text: str, *, yao: bool = False) -> str:
    """Digit by digit; 幺 for 1 where numbers are dialled or keyed in."""
    out = _an2cn(text, "direct") if text else ""
    return out.replace("一", "幺") if yao else out


def _liang(said: str) -> str:
    # Spoken Mandarin says 两千 / 两万 / 两亿, never 二千 when a number starts with it.
    if said[:2] in ("二千", "二万", "二亿", "二元", "二块"):
        return "两" + said[1:]
    return said


def _number(text: str) -> str:
    """A quantity: "12,345.60" -> 一万二千三百四十五点六, "-3" -> 负三."""
    text = text.replace(",", "")
    sign = "负" if text.startswith("-") else ""
    text = text.lstrip("-")
    whole, _, frac = text.partition(".")
    frac = frac.rstrip("0")
    if not whole.isdigit() or len(whole) > 12 or (frac and not frac.isdigit()) or len(frac) > 8:
        return sign + _digits(text.replace(".", ""))
    said = _an2cn(f"{int(whole)}.{frac}" if frac else str(int(whole)), "low")
    return sign + _liang(said)


def _money(text: str, unit: str = "元") -> str:
    """An amount in yuan through cn2an's rmb mode, said in everyday (not banking) characters."""
    try:
        value = Decimal(text.replace(",", "")).quantize(Decimal("0.01"), ROUND_HALF_UP)
    except InvalidOperation:
        return _number(text) + unit
    if abs(value) >= Decimal(10) ** 12:
        return _number(text) + unit
    said = _an2cn(format(value, "f"), "rmb").translate(_UPPER).removesuffix("整")
    sign = "负" if said.startswith("负") else ""
    said = said.removeprefix("负")
    if said.startswith("一十"):  # cn2an drops the leading 一 of 一十 in low mode only
        said = said[1:]
    return sign + _liang(said.replace("元", unit))


# --- patterns -------------------------------------------------------------------------------

_NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_CJK = "\u3400-\u4dbf\u4e00-\u9fff"
_STOPS = "。；！？\n"
_MEASURE = (
    "个|户|人|名|位|次|项|条|家|辆|台|头|只|张|本|间|套|座|处|所|亩|公斤|斤|吨|千克|克|公里|"
    "米|平方|立方|小时|分钟|天|周|批|组|份|元|块|角|万|亿|千|百|岁|年|月|日|号|时|点|分|秒|倍|度|"
    "册|件|株|棵|箱|袋|瓶|盒|栋|层|室|宗|笔|例|多|余|几|%|‰|℃|km|kg|m|g|t|h|L"
)
_MEASURE_RE = re.compile(rf"\s*(?:{_MEASURE})")
_LIANG_AFTER = re.compile(
    r"\s*(?:个|户|人|名|位|次|项|条|家|辆|台|头|只|张|本|间|套|座|处|所|亩|公斤|斤|吨|千克|公里|"
    r"小时|天|周|批|份|点|件|株|棵|箱|袋|瓶|盒|栋|层|笔|倍)"
)

_FULLWIDTH = {c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F) if chr(c) not in "，：；！？（）～"}
_FULLWIDTH[0x3000] = 0x20
_FRACTIONS = {"½": "二分之一", "⅓": "三分之一", "⅔": "三分之二", "¼": "四分之一", "¾": "四分之三"}
_ROMAN = dict(zip("ⅠⅡⅢⅣⅤⅥⅦⅧⅨⅩⅪⅫ", [*"一二三四五六七八九十", "十一", "十二"], strict=True))


def _enumerators() -> dict[str, int]:
    found: dict[str, int] = {}
    for lo, hi in ((0x2460, 0x249B), (0x24EB, 0x24FF), (0x2776, 0x2793), (0x3251, 0x32BF)):
        for code in range(lo, hi + 1):
            value = unicodedata.numeric(chr(code), 0)
            if value >= 1 and value == int(value):
                found[chr(code)] = int(value)
    return found


_ENUM_CHARS = _enumerators()
_ENUM_CLASS = "".join(_ENUM_CHARS)

_URL = re.compile(
    r"(?:请?(?:详见|访问|登录|登陆|浏览)\s*)?(?:(?:网址|网站|链接)[:：]?\s*)?"
    r"(?:(?:https?://|www\.)[^\s，。；！？、）)】」』\"'<>]+"
    r"|[A-Za-z0-9.-]+\.(?:gov\.cn|com\.cn|org\.cn|net\.cn|com|cn|net|org)(?:/[^\s，。；！？、]*)?)",
    re.ASCII,
)
_EMAIL = re.compile(
    r"(?:(?:(?:电子)?邮箱|[Ee]-?mail)[:：]?\s*)?[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}",
    re.ASCII,
)
_LINE_MARKER = re.compile(r"^\s*(?:(\d{1,2})[.、)）](?!\d)|[（(](\d{1,2})[)）])\s*", re.ASCII)
_BULLET = re.compile(r"^\s*(?:[•·●○◦▪▫■□◆◇★☆►▶▸➢➤✓✔√※]+|[-*+](?=\s))\s*")
_RULE_LINE = re.compile(r"^[\s=\-*_~#—─━•·.。★☆◆◇■□]*$")
_INLINE_ENUM = re.compile(
    rf"(?<!第)(?:[（(](\d{{1,2}}|[一二三四五六七八九十]{{1,3}})[)）]|([{_ENUM_CLASS}])|(\d)\ufe0f?\u20e3)"
)

_MASKED = re.compile(
    r"(?<![0-9A-Za-z*＊×])(?:(\d{1,14})(?:[*＊×]{2,}|[xX]{3,})(\d{0,5}[\dXx])"
    r"|[*＊×]{4,}(\d{3,5}[\dXx]))(?![0-9A-Za-z])"
)
_MASKED_HEAD = re.compile(r"(?<!\d)\d{3,}[*＊×]{3,}(?![0-9A-Za-z*])")
_SPACED_LONG = re.compile(
    r"(?<!\d)(?:\d{6} \d{8} \d{3}[\dXx]|\d{4}(?:[ -]\d{4}){2,3}(?:[ -]\d{1,4})?)(?![\dA-Za-z])",
    re.ASCII,
)
_LONG = re.compile(r"(?<!\d)(?:\d{17}[Xx](?![\dA-Za-z])|\d{12,}(?!\d))", re.ASCII)
_NAMED = re.compile(r"身份证|证件|手机|电话|联系方式|银行卡|卡号|账号|帐号|账户|号码|编号|尾号")
_PLUS86 = re.compile(r"\+\s*86[-\s]?(?=1[3-9]\d)")
_MOBILE = re.compile(r"(?<!\d)(1[3-9]\d)[-\s]?(\d{4})[-\s]?(\d{4})(?!\d)", re.ASCII)
_SERVICE = re.compile(r"(?<!\d)(400|800)[-\s]?(\d{3})[-\s]?(\d{4})(?!\d)", re.ASCII)
_LANDLINE = re.compile(r"(?<!\d)(?:[（(](0\d{2,3})[)）]\s*|(0\d{2,3})[-—\s])(\d{7,8})(?!\d)")
_LANDLINE_BARE = re.compile(r"(?<![\d-])(0\d{9,11})(?!\d)", re.ASCII)
_SHORT = re.compile(r"(?<![\d.:：])(\d{3,8})(?!\d|\.\d|\s*[:：]\d)", re.ASCII)
_PHONE_BEFORE = re.compile(
    r"电话|热线|拨打|致电|联系|咨询|举报|投诉|报警|火警|急救|求助|手机|号码|专线|分机|值班|QQ|微信"
)
_PHONE_AFTER = re.compile(
    rf"(?:\s*[、或和及与/]\s*\d{{3,8}})*\s*[{_CJK}]{{0,8}}?(?:热线|电话|专线|平台|报警|急救|求助)"
)

_ISO_DATE = re.compile(r"(?<![\d.])((?:19|20)\d{2})([-/.])(\d{1,2})\2(\d{1,2})(?![\d.])", re.ASCII)
_YEAR_MONTH = re.compile(r"(?<![\d.])((?:19|20)\d{2})[./](\d{1,2})(?![\d./%]|\s*[元万块])")
_SLASH = re.compile(r"(?<![\d/.])(\d{1,2})/(\d{1,2})(?![\d/.])", re.ASCII)
_DATE_BEFORE = re.compile(r"(?:于|在|截至|截止|从|自|日期|时间|定于)[:：]?\s*$")
_DATE_AFTER = re.compile(
    r"\s*(?:[（(]?(?:周|星期|礼拜)|前|起|止|至|到|[-~～]\s*\d|上午|下午|中午|晚|早|开始|当天|当日)"
)
_TIME = r"([01]?\d|2[0-4])\s*[:：]\s*([0-5]\d)(?:[:：]([0-5]\d))?"
_TIMES = re.compile(
    rf"(?<![\d:：.])(?:{_TIME})(?:\s*([-~～—–至到])\s*{_TIME})?(?![\d:：])", re.ASCII
)
_RATIO = re.compile(rf"(?<![\d:：])({_NUM})\s*[:：]\s*({_NUM})(?![\d:：])", re.ASCII)
_WEEKDAY = re.compile(
    r"(星期|礼拜)([1-7])(?!\d)|(?<!每)(周)([1-7])(?![\d.]|次|个|天|回|年|岁|名|期|内|以|左右)"
)
_TIMES_SIGN = re.compile(r"(?<=\d)\s*(?:[×*]|[xX](?=\s*\d))\s*(?=\d)")
_RANGE = re.compile(r"(?<=[0-9年月日号点时分万亿%‰℃])\s*(?:[~～]|[-—–]{1,2})\s*(?=-?\d)")
_YEAR = re.compile(
    r"(?<![\d.])((?:19|20)\d{2})(?=\s*(?:年|学年|到\s*(?:19|20)\d{2}\s*(?:年|学年))|[〕\]］】）)])"
)
_TEMP = re.compile(
    rf"(?:(零下|(?<![0-9A-Za-z])-)\s*)?({_NUM})\s*(?:℃|摄氏度)?\s*(?:到|至)\s*"
    rf"(?:(零下|-)\s*)?({_NUM})\s*(?:℃|摄氏度)"
    rf"|(?:(零下|(?<![0-9A-Za-z])-)\s*)?({_NUM})\s*(?:℃|摄氏度)"
    rf"|(零下|(?<![0-9A-Za-z])-)\s*({_NUM})\s*度(?!电)"  # a negative 度 is a temperature
)
_SIGNED = rf"(?:(?<![0-9A-Za-z])-)?{_NUM}"
_PERCENT = re.compile(
    rf"({_SIGNED})\s*(%|‰)?\s*(?:到|至)\s*(-?{_NUM})\s*(%|‰)|({_SIGNED})\s*(%|‰)", re.ASCII
)
_MONEY = re.compile(
    rf"[￥¥]\s*({_SIGNED})(?:\s*(万|亿))?(?:\s*元)?|({_SIGNED})\s*(元|块)", re.ASCII
)
_UNITS = [
    (r"㎡|m²|m2|M2", "平方米"),
    (r"㎥|m³|m3|M3", "立方米"),
    (r"㎞|km|KM|Km", "公里"),
    (r"㎏|kg|KG|Kg", "千克"),
    (r"kWh|kwh|KWH", "千瓦时"),
    (r"kW|kw|KW", "千瓦"),
    (r"㎝|cm", "厘米"),
    (r"㎜|mm", "毫米"),
    (r"ml|mL", "毫升"),
    (r"min", "分钟"),
    (r"m", "米"),
    (r"g", "克"),
    (r"t", "吨"),
    (r"h", "小时"),
    (r"L", "升"),
]
_UNIT = re.compile(r"(?<=[\d/])\s*(" + "|".join(p for p, _ in _UNITS) + r")(?![A-Za-z²³])")
_UNIT_NAMES = [(re.compile(rf"^(?:{p})$"), name) for p, name in _UNITS]
_FRACTION = re.compile(rf"(?<![\d/])({_NUM})\s*/\s*({_NUM})(?![\d/])", re.ASCII)
_PER = re.compile(
    r"(?<=[元块角斤克吨米里升人户次瓶袋个件度时])\s*/\s*"
    r"(?=亩|斤|公斤|千克|克|吨|人|户|月|年|天|日|周|次|小时|分钟|平方米|立方米|公里|米|升|个|件|株|棵|"
    r"头|只|间|套|份|瓶|袋|箱|度|千瓦时)"
)
_NUMBER_NO = re.compile(r"(?<![A-Za-z])(?:No|NO|no)\s*\.?\s*(\d+)", re.ASCII)
_PLAIN = re.compile(rf"(?:(?<![0-9A-Za-z.])-)?{_NUM}", re.ASCII)
_PAUSE = str.maketrans(
    ",、.!?;:()（）[]【】〔〕〖〗|…—~～&",
    "，，。！？；：，，，，，，，，，，，，，。，到到和",
)
_PUNCT = "，。；：！？"
_PUNCT_RUN = re.compile(rf"[{_PUNCT}\s]*[{_PUNCT}][{_PUNCT}\s]*")
_LATIN_SPACE = re.compile(r"(?<=[A-Za-z]) +(?=[A-Za-z])")


# --- steps ----------------------------------------------------------------------------------


def _preclean(text: str) -> str:
    text = unicodedata.normalize("NFC", text).translate(_FULLWIDTH)
    out: list[str] = []
    for ch in text:
        cat = unicodedata.category(ch)
        if cat == "Nd":
            out.append(str(unicodedata.decimal(ch)))
        elif ch in "\n\r\u2028\u2029\x0b\x0c\x1c\x1d\x1e\x85":
            out.append("\n")
        elif cat == "Zs" or ch == "\t":
            out.append(" ")
        elif cat in ("Cf", "Cc", "Cs", "Co", "Cn") or "\ufe00" <= ch <= "\ufe0e":
            continue  # U+FE0F stays: with U+20E3 it makes keycap list markers (1️⃣)
        elif ch in _FRACTIONS:
            out.append(_FRACTIONS[ch])
        elif ch in _ROMAN:
            out.append(_ROMAN[ch])
        else:
            out.append(ch)
    text = "".join(out)
    text = re.sub(r"(?<=\d)\s*[．·](?=\d)", ".", text)
    text = re.sub(r"°\s*[Cc](?![A-Za-z])", "℃", text)
    text = re.sub(r"(?<=\d)\s*°(?![CcFf])", "度", text)
    return text


def _lines(text: str) -> str:
    kept: list[str] = []
    for raw in text.split("\n"):
        line = raw.strip()
        if not line or _RULE_LINE.match(line):
            continue
        line = _LINE_MARKER.sub(lambda m: f"第{_number(m[1] or m[2])}，", line, count=1)
        line = _BULLET.sub("", line, count=1)
        kept.append(re.sub(r"[=\-_~#─━]{3,}|[★☆◆◇■□]{2,}", "，", line))
    # A line break ends a sentence unless the line already ends with a pause.
    return "".join(
        line + ("" if i == len(kept) - 1 or line[-1:] in "，。；：！？,.;:!?、" else "。")
        for i, line in enumerate(kept)
    )


def _inline_enum(m: re.Match[str]) -> str:
    # The leading pause separates the item from the one before; runs of pauses collapse later.
    if m[1]:
        return f"，第{_number(m[1]) if m[1].isdigit() else m[1]}，"
    value = _ENUM_CHARS[m[2]] if m[2] else int(m[3])
    return f"，第{_number(str(value))}，"


def _clause_before(s: str, start: int, width: int = 10) -> str:
    before = s[max(0, start - width) : start]
    cut = max(before.rfind(c) for c in _STOPS)
    return before[cut + 1 :]


def _id_kind(digits: str) -> str:
    if len(digits) == 18 and _gb11643_ok(digits):
        return "身份证号"
    if (
        len(digits) == 15
        and digits.isdigit()
        and _valid_date("19" + digits[6:8], digits[8:10], digits[10:12])
    ):
        return "身份证号"
    if 13 <= len(digits) <= 19 and digits.isdigit() and luhn_ok(digits):
        return "银行卡号"
    return "号码"


def _gb11643_ok(value: str) -> bool:
    return bool(re.fullmatch(r"\d{17}[\dXx]", value)) and value[-1].upper() == gb11643_check(
        value[:17]
    )


def _valid_date(y: str, m: str, d: str) -> bool:
    try:
        date(int(y), int(m), int(d))
    except ValueError:
        return False
    return True


def _gap(m: re.Match[str]) -> str:
    """A pause where the writer put a space before a number: "王主任 138…" -> 王主任，幺三八…"""
    return "，" if m.start() and m.string[m.start() - 1].isspace() else ""


def _tail(m: re.Match[str], kind: str, tail: str) -> str:
    before = _clause_before(m.string, m.start())
    phone = kind == "手机号" or (kind == "号码" and "电话" in before)
    said = _digits(tail.upper().replace("X", ""), yao=phone)
    if tail.upper().endswith("X"):
        said += "叉"
    # "身份证号：尾号一二三四" rather than "身份证号：尾号一二三四的身份证号".
    if _NAMED.search(before):
        return f"{_gap(m)}尾号{said}"
    return f"{_gap(m)}尾号{said}的{kind}"


def _mask(text: str) -> str:
    def masked(m: re.Match[str]) -> str:
        head, tail = m[1] or "", m[2] or m[3]
        total = m.end() - m.start()
        if total == 11 and head.startswith("1"):
            kind = "手机号"
        elif total in (15, 18):
            kind = "身份证号"
        elif 16 <= total <= 19:
            kind = "银行卡号"
        else:
            kind = "号码"
        return _tail(m, kind, tail[-4:])

    def long(m: re.Match[str]) -> str:
        digits = re.sub(r"[ -]", "", m[0])
        return _tail(m, _id_kind(digits), digits[-4:])

    text = _MASKED.sub(masked, text)
    text = _MASKED_HEAD.sub("号码已隐去", text)
    text = _SPACED_LONG.sub(lambda m: long(m) if len(re.sub(r"\D", "", m[0])) >= 12 else m[0], text)
    return _LONG.sub(long, text)


def _phones(text: str) -> str:
    text = _MOBILE.sub(
        lambda m: _gap(m) + "，".join(_digits(g, yao=True) for g in m.groups()), text
    )
    text = _SERVICE.sub(lambda m: "，".join(_digits(g, yao=True) for g in m.groups()), text)
    text = _LANDLINE.sub(
        lambda m: f"{_digits(m[1] or m[2], yao=True)}，{_digits(m[3], yao=True)}", text
    )

    def bare(m: re.Match[str]) -> str:
        code = 3 if m[1][1] in "12" else 4  # 010 and 02x are the only 3-digit area codes
        return f"{_digits(m[1][:code], yao=True)}，{_digits(m[1][code:], yao=True)}"

    text = _LANDLINE_BARE.sub(bare, text)

    def short(m: re.Match[str]) -> str:
        after = m.string[m.end() : m.end() + 24]
        if _MEASURE_RE.match(after):
            return m[0]
        before = _clause_before(m.string, m.start(), 8)
        if _PHONE_BEFORE.search(before) or before.endswith("转") or _PHONE_AFTER.match(after):
            return _digits(m[1], yao=True)
        return m[0]

    return _SHORT.sub(short, text)


def _dates(text: str) -> str:
    def iso(m: re.Match[str]) -> str:
        y, mo, d = m[1], m[3], m[4]
        if not _valid_date(y, mo, d):
            return m[0]
        return f"{_digits(y)}年{_number(mo)}月{_number(d)}日"

    text = _ISO_DATE.sub(iso, text)
    text = _YEAR_MONTH.sub(
        lambda m: f"{_digits(m[1])}年{_number(m[2])}月" if 1 <= int(m[2]) <= 12 else m[0], text
    )

    def slash(m: re.Match[str]) -> str:
        a, b = int(m[1]), int(m[2])
        is_date = _valid_date("2000", m[1], m[2])
        contextual = _DATE_BEFORE.search(m.string[max(0, m.start() - 6) : m.start()]) or (
            _DATE_AFTER.match(m.string[m.end() : m.end() + 6])
        )
        if is_date and (contextual or a > b):
            return f"{_number(m[1])}月{_number(m[2])}日"
        return f"{_number(m[2])}分之{_number(m[1])}"

    return _SLASH.sub(slash, text)


def _clock(h: str, mi: str, sec: str | None) -> str:
    said = ("两" if int(h) == 2 else _number(h)) + "点"
    if int(mi):
        said += ("零" if int(mi) < 10 else "") + _number(mi) + "分"
    if sec and int(sec):
        said += ("" if int(mi) else "零") + _number(sec) + "秒"
    return said


def _times(text: str) -> str:
    def sub(m: re.Match[str]) -> str:
        said = _clock(m[1], m[2], m[3])
        if m[4]:
            said += "到" + _clock(m[5], m[6], m[7])
        return said

    text = _TIMES.sub(sub, text)
    return _RATIO.sub(lambda m: f"{_number(m[1])}比{_number(m[2])}", text)


def _weekdays(text: str) -> str:
    names = "一二三四五六日"
    return _WEEKDAY.sub(
        lambda m: (m[1] or m[3]) + names[int(m[2] or m[4]) - 1],
        text,
    )


def _temperatures(text: str) -> str:
    def deg(sign: str | None, value: str) -> str:
        return ("零下" if sign else "") + _number(value)

    def sub(m: re.Match[str]) -> str:
        if m[2] is not None:
            return f"{deg(m[1], m[2])}到{deg(m[3], m[4])}摄氏度"
        if m[6] is not None:
            return f"{deg(m[5], m[6])}摄氏度"
        return f"{deg(m[7], m[8])}度"

    return _TEMP.sub(sub, text)


def _percentages(text: str) -> str:
    def pct(value: str, sign: str) -> str:
        lead = "千分之" if sign == "‰" else "百分之"
        if value.startswith("-"):
            return "负" + lead + _number(value[1:])
        return lead + _number(value)

    def sub(m: re.Match[str]) -> str:
        if m[1] is not None:
            return f"{pct(m[1], m[2] or m[4])}到{pct(m[3], m[4])}"
        return pct(m[5], m[6])

    return _PERCENT.sub(sub, text)


def _amounts(text: str) -> str:
    def sub(m: re.Match[str]) -> str:
        if m[1] is not None:
            return _number(m[1]) + m[2] + "元" if m[2] else _money(m[1])
        return _money(m[3], m[4])

    return _MONEY.sub(sub, text)


def _units(text: str) -> str:
    def sub(m: re.Match[str]) -> str:
        return next(name for pat, name in _UNIT_NAMES if pat.match(m[1]))

    text = _UNIT.sub(sub, text)
    text = _FRACTION.sub(lambda m: f"{_number(m[2])}分之{_number(m[1])}", text)
    return _PER.sub("每", text)


def _plain(text: str) -> str:
    def sub(m: re.Match[str]) -> str:
        raw = m[0]
        body = raw.lstrip("-")
        after = m.string[m.end() : m.end() + 4]
        if "," not in body and "." not in body:
            if len(body) > 2 and body.startswith("0"):
                return ("负" if raw.startswith("-") else "") + _digits(body, yao=True)
            if len(body) >= 7 and not _MEASURE_RE.match(after):
                return _digits(body, yao=True)
            if (
                body == "2"
                and not raw.startswith("-")
                and _LIANG_AFTER.match(after)
                and m.string[max(0, m.start() - 1) : m.start()] != "第"
            ):
                return "两"
        return _number(raw)

    return _PLAIN.sub(sub, text)


def _speakable(ch: str) -> str:
    if ch in _PUNCT or ch == " " or ch == "〇":
        return ch
    cat = unicodedata.category(ch)
    if cat.startswith("L"):
        return ch
    if cat in ("Sm", "So") and "ARROW" in unicodedata.name(ch, ""):
        return "，"
    return ""


def _punctuation(text: str) -> str:
    text = re.sub(r"—{2,}|-{2,}|_{2,}|={2,}", "，", text)
    text = re.sub(r"(?<=[一二三四五六日天])\s*[-—–]\s*(?=周|星期)", "到", text)
    text = re.sub(rf"(?<=[{_CJK}])\s*/\s*(?=[{_CJK}])", "或", text)
    text = text.translate(_PAUSE).replace("\n", "。")
    text = unicodedata.normalize("NFC", "".join(_speakable(ch) for ch in text))
    text = re.sub(r"\s+", " ", text)
    text = _LATIN_SPACE.sub("\0", text).replace(" ", "").replace("\0", " ")

    def run(m: re.Match[str]) -> str:
        marks = [c for c in m[0] if c in _PUNCT]
        for strong in ("。！？", "；", "："):
            hit = [c for c in marks if c in strong]
            if hit:
                return hit[0]
        return "，"

    text = _PUNCT_RUN.sub(run, text)
    return text.lstrip(_PUNCT + " ").rstrip("， ")


_STEPS: Sequence[Callable[[str], str]] = (
    lambda t: _URL.sub("网址见通知原文", _EMAIL.sub("电子邮箱见通知原文", t)),
    _lines,
    lambda t: _INLINE_ENUM.sub(_inline_enum, t),
    lambda t: _mask(_PLUS86.sub("", t)),
    _dates,
    _phones,
    _times,
    _weekdays,
    lambda t: _TIMES_SIGN.sub("乘", t),
    lambda t: _RANGE.sub("到", t),
    lambda t: _YEAR.sub(lambda m: _digits(m[1]), t),
    _temperatures,
    _percentages,
    _amounts,
    _units,
    lambda t: _NUMBER_NO.sub(lambda m: f"第{m[1]}号", t),
    _plain,
    lambda t: re.sub(r"\d+", lambda m: _digits(m[0]), t),
    _punctuation,
)


def normalise(text: str) -> str:
    """What the loudspeaker should say for ``text``: Mandarin characters and pauses, no digits."""
    text = _preclean(text)
    for step in _STEPS:
        text = step(text)
    return text


# --- tables and the script ------------------------------------------------------------------

_LABEL_HEADER = re.compile(r"项目|摘要|事项|名称|内容|用途|科目|说明")
_TOTAL_ROW = re.compile(r"^\s*(?:本[月期季年]?|累计)?(?:合计|总计|小计|累计)")
_EMPTY_CELL = {"", "-", "—", "/", "无", "0", "0.0", "0.00"}
_HEADER_UNIT = re.compile(r"^(.*?)\s*[（(]\s*([^）)]{1,4})\s*[)）]\s*$")


def _full_stop(said: str) -> str:
    said = said.rstrip("，；：")
    return said + "。" if said and said[-1] not in "。！？" else said


def _amount(cell: str) -> Decimal | None:
    cleaned = re.sub(r"[,，\s￥¥元]", "", cell)
    if cleaned in _EMPTY_CELL:
        return None
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


def _said_amount(value: Decimal, unit: str) -> str:
    if unit == "万元":
        return _number(format(value.normalize(), "f")) + "万元"
    return _money(format(value, "f"))


def _split_header(header: str) -> tuple[str, str]:
    m = _HEADER_UNIT.match(header)
    return (m[1], m[2]) if m else (header, "")


def _money_column(columns: list[str], word: str) -> int | None:
    # Only a column that is the income or expenditure itself: "人均纯收入" in a poverty
    # monitoring list is a household's income, not the village's, and must not be summed.
    pattern = re.compile(rf"(?:本[月期季年]|当[月期])?{word}(?:金额|数|额)?")
    return next(
        (i for i, c in enumerate(columns) if pattern.fullmatch(_split_header(c)[0].strip())),
        None,
    )


def _finance_sentences(columns: list[str], rows: list[list[str]], cap: int) -> list[str]:
    income = _money_column(columns, "收入")
    expense = _money_column(columns, "支出")
    amount_cols = {i for i in (income, expense) if i is not None}
    label = next(
        (i for i, c in enumerate(columns) if _LABEL_HEADER.search(c) and i not in amount_cols),
        next((i for i in range(len(columns)) if i not in amount_cols), None),
    )
    when = next((i for i, c in enumerate(columns) if re.search(r"日期|时间|月份", c)), None)
    named = [(income, "收入"), (expense, "支出")]
    units = {i: ("万元" if "万元" in columns[i] else "元") for i in amount_cols}
    totals = {i: Decimal(0) for i in amount_cols}
    sentences: list[str] = []
    read = 0
    for row in rows:
        name = row[label] if label is not None else ""
        if any(_TOTAL_ROW.match(row[i]) for i in (label, when) if i is not None):
            continue  # the table's own total row: totals are recomputed, never read twice
        parts = [row[when]] if when is not None and when != label and row[when].strip() else []
        if name.strip():
            parts.append(name)
        for idx, word in named:
            if idx is None:
                continue
            value = _amount(row[idx])
            if value is None:
                continue
            totals[idx] += value
            parts.append(word + _said_amount(value, units[idx]))
        said = _full_stop(normalise("，".join(parts)))
        if not said:
            continue
        read += 1
        if read <= cap:
            sentences.append(said)
    if read > cap:
        sentences.append(f"其余{_number(str(read - cap))}项见通知原文。")
    summary = [
        f"{word}合计{_said_amount(totals[idx], units[idx])}"
        for idx, word in named
        if idx is not None
    ]
    sentences.append("，".join(summary) + "。")
    return sentences


def table_sentences(table: Mapping[str, Any], *, max_rows: int = 50) -> list[str]:
    """Sentences for a notice table; finance tables get per-row lines and computed totals."""
    columns = [str(c) for c in table.get("columns") or []]
    rows = [[str(c) if c is not None else "" for c in r] for r in table.get("rows") or []]
    rows = [r + [""] * (len(columns) - len(r)) for r in rows]
    sentences: list[str] = []
    caption = _full_stop(normalise(str(table.get("caption") or "")))
    if caption:
        sentences.append(caption)
    if not columns:
        return sentences
    if _money_column(columns, "收入") is not None or _money_column(columns, "支出") is not None:
        return sentences + _finance_sentences(columns, rows, max_rows)
    headers = [_split_header(c) for c in columns]
    for row in rows[:max_rows]:
        cells: list[str] = []
        for (name, unit), cell in zip(headers, row, strict=False):
            if not cell.strip():
                continue
            if not cells and _TOTAL_ROW.match(cell):
                cells.append(cell.strip())  # "合计，金额：…", not "户主：合计"
                continue
            if unit and re.fullmatch(_NUM, cell.strip().replace("，", ",")):
                cell = cell.strip() + unit
            cells.append(f"{name}：{cell}")
        said = _full_stop(normalise("，".join(cells)))
        if said:
            sentences.append(said)
    if len(rows) > max_rows:
        sentences.append(f"其余{_number(str(len(rows) - max_rows))}项见通知原文。")
    return sentences


_INTRO = "各位村民请注意，"
_INTROS = {
    "village_finance": "现在公开本村财务收支情况。",
    "farm_subsidy": "现在播送一则惠农补贴公示。",
    "poverty_monitoring": "现在播送一则防返贫监测公示。",
    "social_insurance": "现在播送一则社保医保通知。",
    "land_compensation": "现在播送一则征地补偿公示。",
    "party_affairs": "现在播送一则党务公开通知。",
    "village_affairs": "现在播送一则村务公开通知。",
    "meeting": "现在播送一则会议通知。",
}
EMERGENCY_OPENING = "紧急通知！紧急通知！各位村民请注意："
EMERGENCY_CLOSING = "请大家立即做好防范，相互转告。"
CLOSING = "以上通知，请相互转告。"
REPEAT_HINT = "下面再播送一遍。"


def spoken_script(
    *,
    title: str,
    body: str,
    category: str,
    priority: str,
    table: Mapping[str, Any] | None = None,
    repeat_hint: bool = False,
) -> str:
    """The whole announcement: intro, title, body, table sentences, closing.

    ``repeat_hint`` adds a line telling listeners the notice follows again, for a clip
    that the plan plays more than once in a row.
    """
    emergency = category == "emergency" or priority == "emergency"
    if emergency:
        intro = EMERGENCY_OPENING
    elif category in _INTROS:
        intro = _INTRO + _INTROS[category]
    elif priority == "important":
        intro = _INTRO + "现在播送一则重要通知。"
    else:
        intro = _INTRO + "现在播送一则通知。"
    parts = [normalise(intro), _full_stop(normalise(title)), _full_stop(normalise(body))]
    if table:
        parts.extend(table_sentences(table))
    parts.append(normalise(EMERGENCY_CLOSING if emergency else CLOSING))
    if repeat_hint:
        parts.append(normalise(REPEAT_HINT))
    return "".join(parts)


_SENTENCE_END = re.compile(r"(?<=[。！？；])")


def script_sentences(script: str, *, max_chars: int = 100) -> list[str]:
    """Split a script at sentence ends for clip splitting; long sentences split at commas.

    100 characters is about 25 s of Mandarin at normal speed (espeak-ng says a 35-character
    sentence in 8 s), so a sentence stays inside one 60 s AMR clip even at half speed.
    """
    pieces: list[str] = []
    for sentence in _SENTENCE_END.split(script):
        sentence = sentence.strip()
        if not sentence:
            continue
        if len(sentence) <= max_chars:
            pieces.append(sentence)
            continue
        current = ""
        for clause in re.split(r"(?<=[，：])", sentence):
            if current and len(current) + len(clause) > max_chars:
                pieces.append(current)
                current = ""
            current += clause
            while len(current) > max_chars:
                pieces.append(current[:max_chars])
                current = current[max_chars:]
        if current:
            pieces.append(current)
    return pieces
