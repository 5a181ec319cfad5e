"""User-facing text in Simplified Chinese (default) and English.

Every message is written once where it is raised, in both languages, as a
:class:`Text`; the language is chosen when the text is rendered. This keeps the
two translations side by side (no catalogue to drift) and lets the lowest layer
raise errors that the CLI shows in the user's language.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["Lang", "Text", "current_lang", "detect_lang", "set_lang", "tr"]

Lang = Literal["zh", "en"]

_lang: ContextVar[Lang | None] = ContextVar("villagecast_lang", default=None)


def detect_lang(environ: Mapping[str, str] | None = None) -> Lang:
    """Pick the language from VILLAGECAST_LANG, then LC_ALL/LANG; Chinese by default.

    Only an explicit English locale switches to English: a bare ``C`` or
    ``POSIX`` locale (common on servers and old laptops) keeps Chinese.
    """
    env = os.environ if environ is None else environ
    explicit = env.get("VILLAGECAST_LANG", "").strip().lower()
    if explicit.startswith("en"):
        return "en"
    if explicit.startswith("zh"):
        return "zh"
    for var in ("LC_ALL", "LANG"):
        value = env.get(var, "").strip().lower()
        if value.startswith("en"):
            return "en"
        if value.startswith("zh"):
            return "zh"
    return "zh"


def current_lang() -> Lang:
    lang = _lang.get()
    return detect_lang() if lang is None else lang


def set_lang(lang: Lang | None) -> None:
    _lang.set(lang)


@dataclass(frozen=True)
class Text:
    """A message in both languages with its parameters, rendered on demand."""

    zh: str
    en: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def render(self, lang: Lang | None = None) -> str:
        lang = lang or current_lang()
        template = self.zh if lang == "zh" else self.en
        if not self.params:
            return template
        # Nested texts (a vendor reason inside "gave up after N attempts: ...") follow suit.
        params = {k: v.render(lang) if isinstance(v, Text) else v for k, v in self.params.items()}
        return template.format(**params)

    def __str__(self) -> str:
        return self.render()


def tr(zh: str, en: str, **params: Any) -> Text:
    """Build a bilingual message: ``tr("未知村庄 {v}", "unknown village {v}", v=vid)``."""
    return Text(zh, en, params)
