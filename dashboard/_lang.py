"""The language of one dashboard request: ``?lang=``, then the ``vc_lang`` cookie, then the
server default (``VILLAGECAST_LANG``; Chinese unless it says English).

The language is passed explicitly to every renderer (``Text.render(lang)``, a ``lang``
variable in each template context), never through a process-wide variable, so two
requests served at the same time cannot see each other's choice.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jinja2 import pass_context
from jinja2.runtime import Context
from starlette.requests import Request

from content_queue.i18n import Lang, Text, detect_lang

__all__ = [
    "LANG_COOKIE",
    "html_lang",
    "parse_lang",
    "request_lang",
    "server_lang",
    "template_globals",
]

LANG_COOKIE = "vc_lang"
LANG_COOKIE_SECONDS = 365 * 24 * 3600


def parse_lang(value: str | None) -> Lang | None:
    """``en``, ``en-US``, ``zh``, ``zh-CN`` ... -> the language; anything else -> None."""
    v = (value or "").strip().lower()
    if v == "en" or v.startswith(("en-", "en_")):
        return "en"
    if v == "zh" or v.startswith(("zh-", "zh_")):
        return "zh"
    return None


def server_lang(configured: str | None) -> Lang:
    """The default for requests that chose nothing: ``VILLAGECAST_LANG`` only.

    The server process's own ``LANG``/``LC_ALL`` is the machine's locale (a systemd unit or
    a container image often says ``en_US.UTF-8``), not the township staff's, so unlike the
    CLI it does not switch the pages to English."""
    return detect_lang({"VILLAGECAST_LANG": configured or ""})


def _accept_language(header: str) -> Lang | None:
    """The first of en/zh in ``Accept-Language`` (weights in order, as clients send them)."""
    ranked: list[tuple[float, int, Lang]] = []
    for i, part in enumerate(header.split(",")):
        tag, _, params = part.strip().partition(";")
        lang = parse_lang(tag)
        if lang is None:
            continue
        q = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                q = float(params[2:])
            except ValueError:
                q = 0.0
        if q > 0:
            ranked.append((-q, i, lang))
    return min(ranked)[2] if ranked else None


def request_lang(request: Request, default: Lang, *, api: bool = False) -> Lang:
    """``?lang=``, then the cookie, then (API calls only) ``Accept-Language``, then default.

    Pages ignore ``Accept-Language`` on purpose: a secretary's browser may well be an
    English build, and Chinese stays the default unless someone chooses English."""
    chosen = parse_lang(request.query_params.get("lang")) or parse_lang(
        request.cookies.get(LANG_COOKIE)
    )
    if chosen is None and api:
        chosen = _accept_language(request.headers.get("accept-language", ""))
    return chosen or default


def html_lang(lang: Lang) -> str:
    return "en" if lang == "en" else "zh-CN"


def _lang_of(ctx: Context) -> Lang:
    lang = ctx.get("lang")
    if lang not in ("zh", "en"):
        # A template rendered without the request's language (or a macro imported
        # without context) would silently fall back to one language: refuse instead.
        raise RuntimeError("template rendered without a 'lang' in its context")
    return "en" if lang == "en" else "zh"


@pass_context
def _t(ctx: Context, zh: str, en: str, **params: Any) -> str:
    """``{{ t("失败 {n}", "{n} failed", n=3) }}``: both translations side by side."""
    return Text(zh, en, params).render(_lang_of(ctx))


@pass_context
def _pick(ctx: Context, zh: str | None, en: str | None) -> str:
    """A value stored in both languages (``error_zh``/``error_en``); Chinese if the
    English one is missing (rows written before a channel had an English message)."""
    if _lang_of(ctx) == "en" and en:
        return en
    return zh or en or ""


def _label_lookup(labels: Mapping[str, Text]) -> Any:
    @pass_context
    def label(ctx: Context, key: str | None) -> str:
        if key is None:
            return "-"
        text = labels.get(str(key))
        return text.render(_lang_of(ctx)) if text else str(key)

    return label


def _options(labels: Mapping[str, Text]) -> Any:
    @pass_context
    def options(ctx: Context) -> list[tuple[str, str]]:
        lang = _lang_of(ctx)
        return [(key, text.render(lang)) for key, text in labels.items()]

    return options


@pass_context
def _switch_url(ctx: Context, lang: str) -> str:
    """This page in the other language: the same path and filters, without a flash
    message (it was rendered in the old language) or the live-refresh flag."""
    request: Request | None = ctx.get("request")
    if request is None:
        return f"?lang={lang}"
    from urllib.parse import urlencode

    keep = [
        (k, v)
        for k, v in request.query_params.multi_items()
        if k not in ("lang", "msg", "err", "partial")
    ]
    path = request.url.path
    if not path.startswith("/") or path.startswith("//"):
        path = "/"  # never a link to another site
    return f"{path}?{urlencode([*keep, ('lang', lang)])}"


@pass_context
def _duration(ctx: Context, seconds: float | None) -> str:
    if seconds is None:
        return "-"
    lang = _lang_of(ctx)
    minutes = int(seconds // 60)
    if minutes < 60:
        return Text("{m} 分钟", "{m} min", {"m": minutes}).render(lang)
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return Text("{h} 小时 {m} 分", "{h} h {m} min", {"h": hours, "m": minutes}).render(lang)
    return Text("{d} 天 {h} 小时", "{d} d {h} h", {"d": hours // 24, "h": hours % 24}).render(lang)


def template_globals(
    *,
    kinds: Mapping[str, Text],
    roles: Mapping[str, Text],
    categories: Mapping[str, Text],
    notice_states: Mapping[str, Text],
    device_states: Mapping[str, Text],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(globals, filters) for the Jinja environment: every one reads ``lang`` from the
    template context it is called in."""
    return (
        {
            "t": _t,
            "pick": _pick,
            "kind_name": _label_lookup(kinds),
            "kind_options": _options(kinds),
            "role_label": _label_lookup(roles),
            "category_label": _label_lookup(categories),
            "category_options": _options(categories),
            "notice_state": _label_lookup(notice_states),
            "device_state": _label_lookup(device_states),
            "device_state_options": _options(device_states),
            "switch_url": _switch_url,
        },
        {"duration": _duration},
    )
