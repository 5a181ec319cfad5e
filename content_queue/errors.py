"""The root of villagecast's error tree, shared by every layer.

::

    VillagecastError                 anything the user should read (never a traceback)
    ├── ConfigError                  settings or devices.yaml are wrong; never retried
    │   └── RegistryError            devices.yaml problems, each with file:line:column
    ├── NoticeError                  a notice is invalid (title, targets, times, length)
    ├── NotFoundError                an id that does not exist
    ├── StoreError                   the database cannot be reached or is too old
    └── channels.base.ChannelError   (defined in channels/base.py)
        ├── ContentError             this content cannot go to this endpoint
        ├── TransientError           retry later with backoff (5xx, timeout, rate limit)
        └── PermanentError           fail now, with the vendor's code and a reason

Every error carries a bilingual :class:`~content_queue.i18n.Text`, so the CLI can
print one clear sentence in the user's language.
"""

from __future__ import annotations

from dataclasses import dataclass

from content_queue.i18n import Lang, Text, tr

__all__ = [
    "ConfigError",
    "NotFoundError",
    "NoticeError",
    "RegistryError",
    "RegistryProblem",
    "StateError",
    "StoreError",
    "VillagecastError",
]


class VillagecastError(Exception):
    """An error with a message meant for people."""

    exit_code = 1

    def __init__(self, text: Text, *, details: list[Text] | None = None) -> None:
        self.text = text
        self.details = list(details or [])
        super().__init__(text.render("en"))

    def render(self, lang: Lang | None = None) -> str:
        lines = [self.text.render(lang)]
        lines.extend("  - " + d.render(lang) for d in self.details)
        return "\n".join(lines)


class ConfigError(VillagecastError):
    """Settings or the registry are wrong: fix the configuration, retrying won't help."""

    exit_code = 2


class NoticeError(VillagecastError):
    """The notice as entered cannot be accepted."""

    exit_code = 2


class NotFoundError(VillagecastError):
    """No such notice, village or delivery."""


class StateError(VillagecastError):
    """The action does not fit the notice's state (e.g. withdrawing it twice)."""

    exit_code = 2


class StoreError(VillagecastError):
    """The database is unreachable, locked for too long, or not migrated."""


@dataclass(frozen=True)
class RegistryProblem:
    """One problem in devices.yaml, located for an editor (1-based line and column)."""

    file: str
    line: int
    column: int
    text: Text

    def render(self, lang: Lang | None = None) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.text.render(lang)}"


class RegistryError(ConfigError):
    """devices.yaml cannot be used; ``problems`` lists every finding with its position."""

    def __init__(self, problems: list[RegistryProblem], *, file: str) -> None:
        self.problems = problems
        super().__init__(
            tr(
                "{file} 有 {n} 处错误，请修改后再试",
                "{file} has {n} problem(s); fix them and try again",
                file=file,
                n=len(problems),
            )
        )

    def render(self, lang: Lang | None = None) -> str:
        return "\n".join([self.text.render(lang), *(p.render(lang) for p in self.problems)])
