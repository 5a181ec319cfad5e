"""Read devices.yaml keeping positions, so every problem names file:line:column."""

from __future__ import annotations

import codecs
import contextlib
import difflib
import math
import re
import types
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, Protocol, Union, cast, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from yaml.events import AliasEvent, NodeEvent

from content_queue.errors import RegistryError, RegistryProblem
from content_queue.i18n import Text, tr
from content_queue.registry import ENDPOINT_KINDS, Registry, RegistryFile

__all__ = ["load"]

Loc = tuple[str | int, ...]
Pos = tuple[int, int]

_STD = "tag:yaml.org,2002:"
_PLAIN = "!villagecast/plain"  # plain scalars are resolved here, by YAML 1.2 core rules
_ALIAS = "!villagecast/alias"
_TAGGED = {_STD + "int": int, _STD + "float": float, _STD + "bool": bool, _STD + "null": type(None)}
_resolve11: Callable[..., str] = yaml.resolver.Resolver().resolve
_SAFE = yaml.constructor.SafeConstructor()
_YAML11_BOOLS = frozenset(
    v for w in ("y", "yes", "n", "no", "on", "off") for v in (w, w.capitalize(), w.upper())
)
_SEXAGESIMAL = re.compile(r"[-+]?[0-9][0-9_]*(:[0-5]?[0-9])+(\.[0-9_]*)?")
_SECRET_KEYS = frozenset(
    ("secret", "key", "webhook_key", "app_secret", "password", "token", "webhook", "webhook_url")
)
_SECRET_URL = re.compile(r"https?://\S*[?&]key=", re.IGNORECASE)
_VILLAGE_KINDS = ", ".join(k for k in ENDPOINT_KINDS if k != "wechat_official_account")

_SECRET = tr(
    "密钥不能写在 devices.yaml 里：请把它放进环境变量，再用 *_env 字段写上环境变量的名字"
    "（例如 webhook_key_env: VC_WECOM_LIUZHUANG）；如果这个文件已经发给别人或提交过，请更换密钥",
    "secrets must not be written in devices.yaml; put it in an environment variable and "
    "reference its name with *_env (e.g. webhook_key_env: VC_WECOM_LIUZHUANG); if this file "
    "was shared or committed, rotate the secret",
)
_NO_ALIASES = tr(
    "不支持锚点和别名（&名字、*名字）：请把内容完整地写出来，让文件保持简单",
    "anchors and aliases (&name, *name) are not supported; write the values out in full "
    "to keep the file simple",
)


class _Mark(Protocol):
    line: int
    column: int


class _Rejected:
    """Stands in for a value already reported, so validation doesn't report it again."""


_REJECTED = _Rejected()


def _pos(mark: _Mark | None) -> Pos:
    return (mark.line + 1, mark.column + 1) if mark else (1, 1)


def _fail(file: str, where: Pos, text: Text) -> NoReturn:
    raise RegistryError([RegistryProblem(file, where[0], where[1], text)], file=file)


def _core(text: str) -> Any:
    """Resolve a plain scalar by the YAML 1.2 core schema."""
    if text in ("", "~", "null", "Null", "NULL"):
        return None
    if text in ("true", "True", "TRUE", "false", "False", "FALSE"):
        return text[0] in "tT"
    with contextlib.suppress(ValueError):  # more digits than int() takes: leave it text
        if re.fullmatch(r"[-+]?[0-9]+", text):
            return int(text)
        if re.fullmatch(r"0o[0-7]+|0x[0-9a-fA-F]+", text):
            return int(text[2:], 8 if text[1] == "o" else 16)
    if re.fullmatch(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?", text):
        return float(text)
    if re.fullmatch(r"[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)", text):
        return float(text.replace(".", ""))
    return text


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    return bool(a == b) or (isinstance(a, float) and math.isnan(a) and math.isnan(b))


def _yaml11_trap(text: str, shown: str) -> Text | None:
    """Explain a plain scalar that YAML 1.1 tools (PyYAML, older editors) read differently."""
    if text in _YAML11_BOOLS:
        return tr(
            "{v} 没有加引号：YAML 1.1 把它读成布尔值 {b}，YAML 1.2 读成文本。"
            '如果是开关，请写 {b}；如果是文本，请加引号："{v}"',
            "unquoted {v} is the boolean {b} in YAML 1.1 but text in YAML 1.2; write {b} if "
            'you mean a yes/no setting, or write it in quotes: "{v}"',
            v=shown,
            b="true" if text.lower() in ("y", "yes", "on") else "false",
        )
    if _SEXAGESIMAL.fullmatch(text):
        return tr(
            "{v} 没有加引号，看起来是时间：YAML 1.1 会把这样的值读成六十进制数字"
            '（21:30 读成 1290）。时间请加引号："{v}"',
            "unquoted {v} looks like a time; YAML 1.1 reads such values as base-60 numbers "
            '(21:30 becomes 1290), so write it in quotes: "{v}"',
            v=shown,
        )
    tag = _resolve11(yaml.ScalarNode, text, (True, False))
    old: Any = text if tag == _STD + "str" else _REJECTED  # dates, `=`: no YAML 1.2 reading
    if tag in _TAGGED:
        construct = _SAFE.yaml_constructors[tag]
        with contextlib.suppress(ValueError, yaml.YAMLError):  # PyYAML itself chokes on "0b_"
            old = construct(_SAFE, yaml.ScalarNode(tag, text))
    if _same(old, _core(text)):
        return None
    return tr(
        "{v} 没有加引号：YAML 1.1 和 YAML 1.2 会把它读成不同的值（例如 0755 在 YAML 1.1 中是"
        '八进制数 493）。如果是文本，请加引号："{v}"；如果是数字，请写普通的十进制数',
        "unquoted {v} reads differently in YAML 1.1 and YAML 1.2 (0755 is octal 493 in "
        'YAML 1.1); if it is text, write it in quotes: "{v}"; if it is a number, write a '
        "plain decimal number",
        v=shown,
    )


def _scalar(node: yaml.ScalarNode, *, echo: bool) -> tuple[Any, Text | None]:
    """A scalar's YAML 1.2 value, or the problem with it (echoing the value only if allowed)."""
    shown = node.value if echo else "…"
    if node.tag == _PLAIN:
        return _core(node.value), _yaml11_trap(node.value, shown)
    if node.tag == _STD + "str":
        return node.value, None
    if node.tag in _TAGGED and type(_core(node.value)) is _TAGGED[node.tag]:
        return _core(node.value), None
    return None, _unsupported_tag(node.tag)


def _unsupported_tag(tag: str) -> Text:
    return tr(
        "这里不支持 YAML 标签 {tag}：请删除它，直接写值",
        "the YAML tag {tag} is not supported here; remove it and write the plain value",
        tag=tag.replace(_STD, "!!"),
    )


def _is_secret_key(key: str) -> bool:
    key = key.lower()
    return key in _SECRET_KEYS or key.endswith(("_secret", "_token", "_password"))


class _Loader(yaml.SafeLoader):
    """Composes nodes only: plain scalars keep a marker tag, anchors are noted and disabled."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.anchor_positions: list[Pos] = []

    def resolve(self, kind: Any, value: Any, implicit: Any) -> str:
        if kind is yaml.ScalarNode and implicit[0]:
            return _PLAIN
        return str(super().resolve(kind, value, implicit))  # type: ignore[no-untyped-call]

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, AliasEvent):
            self.get_event()  # type: ignore[no-untyped-call]
            mark = cast("yaml.Mark", event.start_mark)  # the pure-Python parser's marks
            return yaml.ScalarNode(_ALIAS, "", mark, mark)
        if isinstance(event, NodeEvent) and event.anchor is not None:
            self.anchor_positions.append(_pos(event.start_mark))
            event.anchor = None  # never registered, so no alias can expand it
        return super().compose_node(parent, index)


class _Checker:
    """Turns the node tree into plain data, remembering positions, and collects problems."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[RegistryProblem] = []
        self.pos: dict[Loc, Pos] = {}
        self.key_pos: dict[Loc, Pos] = {}
        self.raw: dict[Loc, str] = {}  # plain scalars as written, to quote them back
        self.reported: set[Loc] = set()
        self.secrets: set[Loc] = set()

    def add(self, where: Pos, text: Text) -> None:
        self.problems.append(RegistryProblem(self.file, where[0], where[1], text))

    def reject(self, loc: Loc, where: Pos, text: Text) -> _Rejected:
        self.reported.add(loc)
        self.add(where, text)
        return _REJECTED

    def where(self, loc: Loc, *, key: bool = False) -> Pos:
        if key and loc in self.key_pos:
            return self.key_pos[loc]
        while loc and loc not in self.pos:  # a missing field: point at its nearest parent
            loc = loc[:-1]
        return self.pos.get(loc, (1, 1))

    # -- YAML nodes to data ---------------------------------------------------------------

    def convert(self, node: yaml.Node, loc: Loc) -> Any:
        here = self.pos[loc] = _pos(node.start_mark)
        if node.tag == _ALIAS:
            return self.reject(loc, here, _NO_ALIASES)
        if isinstance(node, yaml.MappingNode) and node.tag == _STD + "map":
            return self.mapping(node, loc)
        if isinstance(node, yaml.SequenceNode) and node.tag == _STD + "seq":
            return [self.convert(item, (*loc, i)) for i, item in enumerate(node.value)]
        if not isinstance(node, yaml.ScalarNode):
            return self.reject(loc, here, _unsupported_tag(node.tag))
        field = next((p for p in reversed(loc) if isinstance(p, str)), "")
        value, problem = _scalar(node, echo=not field.endswith("_env"))
        if problem is None and isinstance(value, str) and _SECRET_URL.search(value):
            problem = _SECRET
        if problem is not None:
            return self.reject(loc, here, problem)
        if node.tag == _PLAIN:
            self.raw[loc] = node.value
        return value

    def mapping(self, node: yaml.MappingNode, loc: Loc) -> dict[str, Any]:
        out: dict[str, Any] = {}
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            where = _pos(key_node.start_mark)
            key = self.key(key_node, where)
            if key is None:
                continue
            if key in first_line:
                self.add(
                    where,
                    tr(
                        "重复的键 '{k}'（第一次出现在第 {line} 行）：同一层里每个键只能写一次，"
                        "请删除或合并其中一个",
                        "duplicate key '{k}' (first on line {line}); a key may appear only once "
                        "at each level, so delete or merge one of them",
                        k=key,
                        line=first_line[key],
                    ),
                )
                continue
            first_line[key] = where[0]
            sub = (*loc, key)
            self.key_pos[sub] = where
            if _is_secret_key(key) and isinstance(value_node, yaml.ScalarNode) and value_node.value:
                self.pos[sub] = _pos(value_node.start_mark)
                self.secrets.add(sub)
                out[key] = self.reject(sub, where, _SECRET)  # the value itself is never read
            else:
                out[key] = self.convert(value_node, sub)
        return out

    def key(self, node: yaml.Node, where: Pos) -> str | None:
        if node.tag == _PLAIN and node.value == "<<":
            problem: Text = tr(
                "不支持合并键 <<：请把键完整地写出来",
                "merge keys (<<) are not supported; write the keys out in full",
            )
        elif node.tag == _ALIAS or not isinstance(node, yaml.ScalarNode):
            problem = _NO_ALIASES if node.tag == _ALIAS else tr("键必须是文本", "keys must be text")
        else:
            value, trap = _scalar(node, echo=True)
            if trap is None and isinstance(value, str):
                return value
            problem = trap or tr(
                '键必须是文本：请加引号："{k}"',
                'keys must be text; write it in quotes: "{k}"',
                k=node.value,
            )
        self.add(where, problem)
        return None

    # -- model validation -----------------------------------------------------------------

    def validation(self, exc: ValidationError) -> None:
        for err in exc.errors(include_url=False):
            loc = _data_loc(err["loc"])
            if err["type"] == "extra_forbidden":
                if loc in self.secrets:  # the secret message already covers this key
                    continue
            elif any(loc[: len(r)] == r for r in self.reported):
                continue
            self.add(*self.explain(err, loc))

    def explain(self, err: ErrorDetails, loc: Loc) -> tuple[Pos, Text]:
        kind, ctx = err["type"], err.get("ctx", {})
        field = next((p for p in reversed(loc) if isinstance(p, str)), "")
        if kind == "extra_forbidden":
            model = _model_at(err["loc"][:-1])
            names = list(model.model_fields) if model else []
            close = difflib.get_close_matches(field, names, n=1)
            return self.where(loc, key=True), tr(
                "未知的键 '{k}'，允许的键：{allowed}{hint}",
                "unknown key '{k}'; allowed keys: {allowed}{hint}",
                k=field,
                allowed=", ".join(names),
                hint=tr("（是不是想写 '{m}'？）", " (did you mean '{m}'?)", m=close[0])
                if close
                else "",
            )
        if kind == "missing":
            return self.where(loc[:-1], key=True), tr(
                "缺少必填的键 '{k}'，请补上", "missing required key '{k}'; add it", k=field
            )
        if kind in ("union_tag_invalid", "union_tag_not_found"):
            hint: Text | str = ""
            if ctx.get("tag") == "wechat_official_account":
                hint = tr(
                    "（公众号请写在顶层的 official_accounts 下）",
                    " (official accounts go under the top-level official_accounts)",
                )
            return self.where((*loc, "kind")), tr(
                "端点类型 kind 不对：{tag}；可用的类型：{kinds}{hint}",
                "wrong endpoint kind: {tag}; valid kinds: {kinds}{hint}",
                tag=ctx.get("tag", tr("（没写）", "(none)")),
                kinds=_VILLAGE_KINDS,
                hint=hint,
            )
        return self.where(loc), _wrong_value(err, field, self.raw.get(loc))

    # -- references across the file -------------------------------------------------------

    def cross_check(self, data: Any) -> None:
        top = data if isinstance(data, dict) else {}
        townships: dict[str, Loc] = {}
        villages: dict[str, Loc] = {}
        endpoints: dict[str, Loc] = {}
        devices: dict[str, Loc] = {}
        for ti, township in _dicts(top.get("townships")):
            tloc: Loc = ("townships", ti)
            self.unique(township, tloc, townships, tr("乡镇 id", "township id"))
            for vi, village in _dicts(township.get("villages")):
                vloc: Loc = (*tloc, "villages", vi)
                self.unique(village, vloc, villages, tr("村 id", "village id"))
                tv_line = 0
                for ei, ep in _dicts(village.get("endpoints")):
                    eloc: Loc = (*vloc, "endpoints", ei)
                    self.unique(ep, eloc, endpoints, tr("端点 id", "endpoint id"))
                    if ep.get("kind") in ("led", "speaker"):
                        device = tr("设备 device_id", "device_id")
                        self.unique(ep, eloc, devices, device, field="device_id")
                    if ep.get("kind") == "tv_feed" and tv_line:
                        self.add(
                            self.where((*eloc, "kind")),
                            tr(
                                "每个村只能有一个 tv_feed 端点（第 {line} 行已有一个），"
                                "请删除多余的",
                                "a village has at most one tv_feed endpoint (one is already on "
                                "line {line}); delete the extra one",
                                line=tv_line,
                            ),
                        )
                    if ep.get("kind") == "tv_feed":
                        tv_line = tv_line or self.where(eloc)[0]
        for oi, account in _dicts(top.get("official_accounts")):
            oloc: Loc = ("official_accounts", oi)
            self.unique(account, oloc, endpoints, tr("端点 id", "endpoint id"))
            for field, known in (("covers_townships", townships), ("covers_villages", villages)):
                refs = account.get(field)
                for j, ref in enumerate(refs if isinstance(refs, list) else []):
                    if isinstance(ref, str) and ref not in known:
                        self.add(
                            self.where((*oloc, field, j)),
                            tr(
                                "{field} 里的 '{ref}' 在本文件中不存在；已有的 id：{known}",
                                "{field} names '{ref}', which is not defined in this file; "
                                "known ids: {known}",
                                field=field,
                                ref=ref,
                                known=", ".join(list(known)[:12]) + (", …" * (len(known) > 12)),
                            ),
                        )
            self.check_village_tags(top, account, oloc)

    def check_village_tags(self, top: dict[str, Any], account: dict[str, Any], oloc: Loc) -> None:
        """A tagged account tags every village it covers, and only those: a mass send to a
        village without a tag would have to go to all followers."""
        tags = account.get("village_tags")
        if not isinstance(tags, dict) or not tags:
            return
        covered: list[str] = []
        wanted_townships = account.get("covers_townships")
        wanted_villages = account.get("covers_villages")
        for _, township in _dicts(top.get("townships")):
            in_township = isinstance(wanted_townships, list) and township.get("id") in (
                wanted_townships
            )
            for _, village in _dicts(township.get("villages")):
                vid = village.get("id")
                if isinstance(vid, str) and (
                    in_township or (isinstance(wanted_villages, list) and vid in wanted_villages)
                ):
                    covered.append(vid)
        for vid in tags:
            if vid not in covered:
                self.add(
                    self.where((*oloc, "village_tags", vid), key=True),
                    tr(
                        "village_tags 里的村 '{v}' 不在这个公众号覆盖的村中（covers_townships / "
                        "covers_villages）",
                        "village_tags names village '{v}', which this account does not cover "
                        "(covers_townships / covers_villages)",
                        v=vid,
                    ),
                )
        missing = [v for v in covered if v not in tags]
        if missing:
            self.add(
                self.where((*oloc, "village_tags"), key=True),
                tr(
                    "village_tags 缺少这些村的标签：{v}；按村群发时每个覆盖的村都要有关注者标签"
                    "（在公众号后台“用户管理 > 标签”中建立，填标签 id）",
                    "village_tags has no tag for: {v}; a per-village mass send needs a follower "
                    "tag for every covered village (create it under User management > Tags and "
                    "give its id)",
                    v=", ".join(missing[:12]) + (", …" * (len(missing) > 12)),
                ),
            )

    def unique(
        self, item: dict[str, Any], loc: Loc, seen: dict[str, Loc], what: Text, field: str = "id"
    ) -> None:
        value = item.get(field)
        if not isinstance(value, str):
            return
        if value not in seen:
            seen[value] = (*loc, field)
            return
        self.add(
            self.where((*loc, field)),
            tr(
                "重复的{what} '{v}'（第一次出现在第 {line} 行）："
                "{what} 在整个文件中必须唯一，请改名",
                "duplicate {what} '{v}' (first used on line {line}); each {what} must be unique "
                "in the whole file, so rename one",
                what=what,
                v=value,
                line=self.where(seen[value])[0],
            ),
        )


def _dicts(value: Any) -> list[tuple[int, dict[str, Any]]]:
    items = value if isinstance(value, list) else []
    return [(i, v) for i, v in enumerate(items) if isinstance(v, dict)]


def _data_loc(loc: tuple[int | str, ...]) -> Loc:
    out: list[str | int] = []
    for part in loc:
        # pydantic puts the discriminator tag after an endpoint's index; it is no key in the file
        after_index = len(out) >= 2 and out[-2] == "endpoints" and isinstance(out[-1], int)
        if not (after_index and part in ENDPOINT_KINDS):
            out.append(part)
    return tuple(out)


def _strip(tp: Any) -> Any:
    """``X`` from ``Annotated[X, ...]`` and ``X | None``."""
    while True:
        args = [a for a in get_args(tp) if a is not type(None)]
        if get_origin(tp) is Annotated or (_is_union(tp) and len(args) == 1):
            tp = args[0]
        else:
            return tp


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model that validated the mapping at pydantic's ``loc`` (to list its keys)."""
    tp: Any = RegistryFile
    for part in loc:
        tp = _strip(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel) and isinstance(part, str):
            field = tp.model_fields.get(part)
            tp = field.annotation if field else None
        elif get_origin(tp) is list and isinstance(part, int):
            tp = get_args(tp)[0]
        elif _is_union(tp):  # a discriminated union: ``part`` is the kind
            kinds = {get_args(m.model_fields["kind"].annotation): m for m in get_args(tp)}
            tp = kinds.get((part,))
        else:
            return None
    tp = _strip(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


_FORMS = {
    "start": (
        '24 小时制时间 HH:MM，加引号，例如 "21:30"',
        'a 24-hour time HH:MM in quotes, e.g. "21:30"',
    ),
    "code": (
        '6 位县级行政区划代码（GB/T 2260），加引号，例如 "371521"',
        'the 6-digit GB/T 2260 county code in quotes, e.g. "371521"',
    ),
    "app_id": (
        "wx 加 16 位小写十六进制数字（见公众号后台）",
        "'wx' and 16 lowercase hex digits (see the account's admin console)",
    ),
    "ingest_url": (
        "以 http:// 或 https:// 开头、不含空格的网址",
        "a URL starting with http:// or https://, without spaces",
    ),
    "": (
        "字母、数字、-、_ 或 .，以字母或数字开头，最多 64 个字符，例如 dongcheng-liuzhuang",
        "letters, digits, '-', '_' or '.', starting with a letter or digit, at most 64 "
        "characters, e.g. dongcheng-liuzhuang",
    ),
}
_TYPES = {
    "bool_type": ("{k} 必须是 true 或 false（不加引号）", "{k} must be true or false (no quotes)"),
    "int_type": ("{k} 必须是整数（不加引号）", "{k} must be a whole number (no quotes)"),
    "list_type": (
        "{k} 必须是列表（每行一个 - 项，或 [a, b]）",
        "{k} must be a list (one '- item' per line, or [a, b])",
    ),
    "string_too_short": ("{k} 不能为空", "{k} must not be empty"),
    "model_type": ("{k} 必须是“键: 值”形式的映射", "{k} must be a mapping of 'key: value' lines"),
}


def _wrong_value(err: ErrorDetails, field: str, raw: str | None) -> Text:
    kind, ctx = err["type"].replace("model_attributes_type", "model_type"), err.get("ctx", {})
    name = field or tr("文件", "the file")
    if err["input"] is None and kind.endswith("_type"):
        return tr("{k} 没有填写值", "{k} has no value; fill it in", k=name)
    if kind == "string_type" and raw is not None and not field.endswith("_env"):
        return tr(
            '{k} 必须是文本：请加引号，例如 {k}: "{v}"',
            '{k} must be text: write it in quotes, e.g. {k}: "{v}"',
            k=name,
            v=raw,
        )
    if kind == "string_type":
        return tr("{k} 必须是文本（加引号）", "{k} must be text (in quotes)", k=name)
    if kind == "string_pattern_mismatch" and field.endswith("_env"):
        return tr(
            "{k} 是保存密钥的环境变量的名字，不是密钥本身：以大写字母开头，只含大写字母、数字和 _，"
            "例如 VC_WECOM_LIUZHUANG；密钥本身请放进这个环境变量",
            "{k} is the NAME of the environment variable that holds the secret, never the secret "
            "itself: uppercase letters, digits and '_', starting with a letter, e.g. "
            "VC_WECOM_LIUZHUANG; put the secret itself in that variable",
            k=field,
        )
    if kind == "string_pattern_mismatch":
        form = tr(*_FORMS.get(field.replace("end", "start"), _FORMS[""]))
        return tr(
            "{k} 的格式不对，应为：{f}", "{k} has the wrong form; expected {f}", k=field, f=form
        )
    if kind in _TYPES:
        return tr(*_TYPES[kind], k=name)
    if kind == "literal_error":
        return tr("{k} 只能是 {e}", "{k} must be {e}", k=name, e=ctx.get("expected", "?"))
    if kind == "too_short":
        n = ctx.get("min_length")
        return tr("{k} 至少要有 {n} 项", "{k} needs at least {n} item(s)", k=name, n=n)
    if kind in ("greater_than_equal", "less_than_equal"):
        ge = kind == "greater_than_equal"
        return tr(
            "{k} 必须{op} {n}",
            "{k} must be {op} {n}",
            k=name,
            op=tr("不小于" if ge else "不大于", "at least" if ge else "at most"),
            n=ctx.get("ge" if ge else "le"),
        )
    if kind == "vc_ingest_secret":
        return tr(
            "设置了 ingest_url 就必须设置 ingest_secret_env（保存 HMAC 密钥的环境变量名）",
            "ingest_url needs ingest_secret_env (the name of the environment variable "
            "holding the HMAC secret)",
        )
    if kind == "vc_village_tags_mode":
        return tr(
            "village_tags 只用于 mode: mass_send（按村标签群发）；mode: publish 的文章所有关注者"
            "都能看到，请删除 village_tags 或改为 mode: mass_send",
            "village_tags only apply to mode: mass_send (mass sends per village tag); a "
            "published article reaches every follower, so delete village_tags or set "
            "mode: mass_send",
        )
    if kind == "vc_event_aes_key_token":
        return tr(
            "设置了 event_aes_key_env（消息加解密密钥 EncodingAESKey）就必须设置 event_token_env"
            "（服务器配置里的令牌 Token）",
            "event_aes_key_env (the EncodingAESKey) needs event_token_env (the server "
            "configuration's token)",
        )
    if kind == "vc_cadence":
        return tr(
            "{k} 要么写 every（month 每月、quarter 每季度、half_year 每半年、year 每年），"
            "要么写 months（如 [3, 9]），二者选一；不要求公开请写 enabled: false",
            "{k} needs either every (month, quarter, half_year, year) or months (e.g. [3, 9]), "
            "not both; to drop the requirement write enabled: false",
            k=name,
        )
    return tr("{k}：{msg}", "{k}: {msg}", k=name, msg=err["msg"])


def _read(path: Path, file: str) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        _fail(
            file,
            (1, 1),
            tr(
                "{f} 不存在：请复制仓库里的示例 devices.yaml，按本县情况修改，"
                "再运行 villagecast devices check {f} 检查",
                "{f} does not exist; copy the example devices.yaml from the repository, edit it "
                "for your county, then run `villagecast devices check {f}`",
                f=file,
            ),
        )
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        _fail(file, (1, 1), tr("无法读取 {f}：{r}", "cannot read {f}: {r}", f=file, r=reason))
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        column = len(data[line_start : exc.start].decode("utf-8")) + 1
        _fail(
            file,
            (data.count(b"\n", 0, exc.start) + 1, column),
            tr(
                "文件不是 UTF-8 编码（可能存成了 GBK/GB2312）：请用 UTF-8 编码另存",
                "the file is not valid UTF-8 (perhaps saved as GBK/GB2312); save it as UTF-8",
            ),
        )


def _syntax_error(file: str, text: str, exc: yaml.YAMLError) -> NoReturn:
    if isinstance(exc, yaml.reader.ReaderError):
        before = text[: exc.position]
        where = (before.count("\n") + 1, len(before) - before.rfind("\n"))
        _fail(
            file,
            where,
            tr(
                "不允许的控制字符 {c}（多半是复制粘贴带进来的）：请删除它",
                "control character {c} is not allowed (often pasted in by accident); delete it",
                c=f"U+{exc.character:04X}" if isinstance(exc.character, int) else "?",
            ),
        )
    mark = context = None
    if isinstance(exc, yaml.MarkedYAMLError):
        mark, context = exc.problem_mark or exc.context_mark, exc.context
        if context and exc.context_mark:
            context = f"{context} (line {exc.context_mark.line + 1})"
    detail = ", ".join(str(part) for part in (context, getattr(exc, "problem", None)) if part)
    _fail(
        file,
        _pos(mark),
        tr(
            "YAML 语法错误：{d}。请检查缩进（只用空格，不用 Tab）、冒号后的空格和引号是否成对",
            "YAML syntax error: {d}; check the indentation (spaces only, no tabs), the space "
            "after each colon, and that quotes are closed",
            d=detail or exc,
        ),
    )


def load(path: Path) -> Registry:
    """Read, check and validate devices.yaml; raise RegistryError listing every problem."""
    file = str(path)
    text = _read(path, file)
    checker = _Checker(file)
    try:
        loader = _Loader(text)
        try:
            root = loader.get_single_node()
        finally:
            loader.dispose()
        if root is None:
            _fail(
                file,
                (1, 1),
                tr(
                    "文件是空的：请参照示例 devices.yaml 填写",
                    "the file is empty; start from the example devices.yaml",
                ),
            )
        for where in loader.anchor_positions:
            checker.add(where, _NO_ALIASES)
        data = checker.convert(root, ())
        doc: RegistryFile | None = None
        try:
            doc = RegistryFile.model_validate(data)
        except ValidationError as exc:
            checker.validation(exc)
        checker.cross_check(data)
    except yaml.YAMLError as exc:
        _syntax_error(file, text, exc)
    except RecursionError:
        _fail(file, (1, 1), tr("嵌套层数太深", "the file is nested too deeply"))
    if checker.problems or doc is None:
        problems = sorted(checker.problems, key=lambda p: (p.line, p.column))
        raise RegistryError(problems, file=file)
    return Registry(doc, source=path)
