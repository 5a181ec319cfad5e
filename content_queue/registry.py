"""The village, township and device registry (devices.yaml) as validated models.

The file is loaded by :func:`load_registry`, which keeps line numbers so every
problem names ``file:line:column``. Secrets are never in the file: endpoints
name the environment variable that holds them (``*_env`` fields).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from content_queue.errors import NoticeError
from content_queue.i18n import tr

__all__ = [
    "CALENDAR_CATEGORIES",
    "DEFAULT_CALENDAR",
    "ENDPOINT_KINDS",
    "ID_PATTERN",
    "BulletinEndpoint",
    "Cadence",
    "County",
    "DisclosureCalendar",
    "Endpoint",
    "EndpointKind",
    "LedEndpoint",
    "OfficialAccountEndpoint",
    "QuietHours",
    "Registry",
    "RegistryFile",
    "SpeakerEndpoint",
    "Target",
    "Township",
    "TvFeedEndpoint",
    "Village",
    "VillageDefaults",
    "WecomGroupEndpoint",
    "load_registry",
]

EndpointKind = Literal[
    "wecom_group", "wechat_official_account", "led", "speaker", "tv_feed", "bulletin"
]
ENDPOINT_KINDS: tuple[EndpointKind, ...] = (
    "wecom_group",
    "wechat_official_account",
    "led",
    "speaker",
    "tv_feed",
    "bulletin",
)

Ident = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="Letters, digits, '-', '_' or '.', at most 64 characters.",
    ),
]
EnvVarName = Annotated[
    str,
    Field(
        pattern=r"^[A-Z][A-Z0-9_]{0,127}$",
        description="Name of the environment variable that holds the secret (not the secret).",
    ),
]
HHMM = Annotated[str, Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$", description="24-hour HH:MM")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class QuietHours(_Model):
    """Hours when routine broadcasts are held (e.g. 21:30-06:30); emergencies ignore them."""

    start: HHMM
    end: HHMM


class VillageDefaults(_Model):
    quiet_hours: QuietHours | None = None
    voice: str | None = None


class _EndpointBase(_Model):
    id: Ident
    name: str | None = None
    enabled: bool = True


class WecomGroupEndpoint(_EndpointBase):
    """A village WeChat group reached through a WeCom group robot."""

    kind: Literal["wecom_group"]
    webhook_key_env: EnvVarName
    format: Literal["markdown", "text"] = "markdown"
    markdown_v2: bool = False
    attachment: Literal["csv", "pdf"] = "csv"
    """A table the group cannot get as ``markdown_v2`` goes as this file: CSV (opens in
    Excel) or PDF (the notice as its disclosure-board poster, for phones)."""
    voice: bool = False


Colour = Literal["red", "green", "yellow", "white", "blue"]


def _default_colours() -> list[Colour]:
    return ["red", "green", "yellow"]


class LedEndpoint(_EndpointBase):
    """An LED board subscribing over MQTT."""

    kind: Literal["led"]
    device_id: Ident
    encoding: Literal["gb2312", "gbk", "utf-8"] = "gb2312"
    chars_per_line: int = Field(default=16, ge=4, le=200)
    """Full-width (Chinese) characters per line; ASCII counts half."""
    lines: int = Field(default=2, ge=1, le=32)
    colours: list[Colour] = Field(default_factory=_default_colours)
    max_chars: int = Field(default=512, ge=8, le=10000)
    """Longest body this board takes (more would page for too long)."""


class SpeakerEndpoint(_EndpointBase):
    """A loudspeaker (广播“村村响”) subscribing over MQTT."""

    kind: Literal["speaker"]
    device_id: Ident
    zone: str | None = None


class TvFeedEndpoint(_EndpointBase):
    """The village's page on the cable-TV disclosure platform (pulled feed, optional push)."""

    kind: Literal["tv_feed"]
    ingest_url: Annotated[str, Field(pattern=r"^https?://\S+$")] | None = None
    ingest_secret_env: EnvVarName | None = None

    @model_validator(mode="after")
    def _secret_with_url(self) -> TvFeedEndpoint:
        if self.ingest_url and not self.ingest_secret_env:
            raise PydanticCustomError(
                "vc_ingest_secret",
                "ingest_url needs ingest_secret_env (the environment variable holding the "
                "HMAC secret)",
            )
        return self


class BulletinEndpoint(_EndpointBase):
    """The village's disclosure board (三务公开栏): posters written as PDFs to a print folder."""

    kind: Literal["bulletin"]
    folder: str | None = Field(default=None, min_length=1)
    """Where the PDFs go (a printer's hot folder, a shared folder): absolute, or relative to
    the data directory; default ``<home>/bulletin/<endpoint id>``."""
    paper: Literal["A4", "A3"] = "A4"


Endpoint = Annotated[
    WecomGroupEndpoint | LedEndpoint | SpeakerEndpoint | TvFeedEndpoint | BulletinEndpoint,
    Field(discriminator="kind"),
]

# -- the disclosure calendar ---------------------------------------------------------------

CALENDAR_CATEGORIES: tuple[str, ...] = (
    "village_finance",
    "farm_subsidy",
    "poverty_monitoring",
    "social_insurance",
    "land_compensation",
    "party_affairs",
    "village_affairs",
)
"""Notice categories that can have a required cadence (content_queue.models.Category)."""

_WINDOW_MONTHS: dict[str, tuple[int, ...]] = {
    "month": tuple(range(1, 13)),
    "quarter": (1, 4, 7, 10),
    "half_year": (1, 7),
    "year": (1,),
}


class Cadence(_Model):
    """How often a category must be disclosed: in each window (a month, a quarter, or the
    configured months) a notice of that category must go out by ``due_day`` of the
    window's first month (village finance: every month by the 10th, for the month before)."""

    every: Literal["month", "quarter", "half_year", "year"] | None = None
    months: list[Annotated[int, Field(ge=1, le=12)]] | None = None
    """Only these months open a window (farm subsidies paid in spring and autumn: [3, 9])."""
    due_day: int = Field(default=10, ge=1, le=31)
    """Day of the window's first month by which the notice is due (31 = the month's last day)."""
    enabled: bool = True
    """false turns off a default or county-wide requirement for one village."""

    @model_validator(mode="after")
    def _one_rule(self) -> Cadence:
        if self.enabled and (self.every is None) == (self.months is None):
            raise PydanticCustomError(
                "vc_cadence", "give either every (month, quarter, half_year, year) or months"
            )
        if self.months is not None and not self.months:
            raise PydanticCustomError("vc_cadence", "months must list at least one month")
        return self

    def window_months(self) -> tuple[int, ...]:
        """The months (1-12) in which a window opens."""
        if self.months is not None:
            return tuple(sorted(set(self.months)))
        return _WINDOW_MONTHS[self.every or "month"]


class DisclosureCalendar(_Model):
    """Required cadence per category; a category not named keeps the default (or none)."""

    village_finance: Cadence | None = None
    farm_subsidy: Cadence | None = None
    poverty_monitoring: Cadence | None = None
    social_insurance: Cadence | None = None
    land_compensation: Cadence | None = None
    party_affairs: Cadence | None = None
    village_affairs: Cadence | None = None

    def rules(self) -> dict[str, Cadence]:
        return {c: r for c in CALENDAR_CATEGORIES if (r := getattr(self, c)) is not None}


DEFAULT_CALENDAR: dict[str, Cadence] = {
    # 三务公开: finance monthly (by the 10th, for the month before); party and village
    # affairs at least quarterly. Subsidy and monitoring lists follow local payment and
    # review dates, so they are required only where devices.yaml says when.
    "village_finance": Cadence(every="month", due_day=10),
    "party_affairs": Cadence(every="quarter", due_day=15),
    "village_affairs": Cadence(every="quarter", due_day=15),
}


class OfficialAccountEndpoint(_EndpointBase):
    """A township or county WeChat official account covering some villages.

    ``publish`` posts each notice as an article (free publish: no push, no quota);
    ``mass_send`` pushes it to followers, tagged per village, within the account's quota."""

    kind: Literal["wechat_official_account"] = "wechat_official_account"
    app_id: Annotated[str, Field(pattern=r"^wx[0-9a-f]{16}$")]
    app_secret_env: EnvVarName
    mode: Literal["publish", "mass_send"] = "publish"
    account_type: Literal["subscription", "service"] = "subscription"
    """Mass-send quota: a subscription account sends once a day, a service account's
    followers each receive at most four mass sends a month."""
    village_tags: dict[Ident, Annotated[int, Field(ge=0)]] = Field(default_factory=dict)
    """Follower tag id of each covered village (mass_send); empty: send to all followers."""
    digest_time: HHMM = "18:00"
    """County time of the daily digest that gathers what the quota held back (mass_send)."""
    author: Annotated[str, Field(max_length=16)] | None = None
    """Author shown on articles (WeChat allows 16 characters)."""
    covers_townships: list[Ident] = Field(default_factory=list)
    covers_villages: list[Ident] = Field(default_factory=list)
    event_token_env: EnvVarName | None = None
    """The variable holding the token of the account's server configuration (服务器配置):
    WeChat then pushes publish results to ``/wechat/events/<id>`` (channels/_oa_events.py)."""
    event_aes_key_env: EnvVarName | None = None
    """The variable holding the EncodingAESKey of that configuration when its message
    encryption is safe mode (安全模式) or compatible mode (兼容模式): events must then come
    encrypted. Unset: plaintext mode (明文模式)."""

    @model_validator(mode="after")
    def _aes_key_needs_token(self) -> OfficialAccountEndpoint:
        if self.event_aes_key_env and not self.event_token_env:
            raise PydanticCustomError(
                "vc_event_aes_key_token",
                "event_aes_key_env needs event_token_env (the server configuration's token)",
            )
        return self

    @model_validator(mode="after")
    def _tags_need_mass_send(self) -> OfficialAccountEndpoint:
        if self.village_tags and self.mode != "mass_send":
            raise PydanticCustomError(
                "vc_village_tags_mode",
                "village_tags only apply to mode: mass_send (publish reaches every follower)",
            )
        return self


class Village(_Model):
    id: Ident
    name: str = Field(min_length=1)
    code: Annotated[
        str | None,
        Field(pattern=r"^\d{12}$", description="12-digit statistical area code (统计用区划代码)"),
    ] = None
    quiet_hours: QuietHours | None = None
    voice: str | None = None
    calendar: DisclosureCalendar | None = None
    """Overrides of the county's disclosure calendar for this village, per category."""
    endpoints: list[Endpoint] = Field(default_factory=list)


class Township(_Model):
    id: Ident
    name: str = Field(min_length=1)
    code: Annotated[
        str | None, Field(pattern=r"^\d{9}$", description="9-digit township area code")
    ] = None
    villages: list[Village] = Field(default_factory=list)


class County(_Model):
    code: Annotated[str, Field(pattern=r"^\d{6}$", description="GB/T 2260 county code")]
    name: str = Field(min_length=1)


class RegistryFile(_Model):
    """The whole devices.yaml document."""

    version: Literal[1]
    county: County
    defaults: VillageDefaults = VillageDefaults()
    calendar: DisclosureCalendar | None = None
    """The county's disclosure calendar (on top of DEFAULT_CALENDAR); villages may override."""
    townships: list[Township] = Field(min_length=1)
    official_accounts: list[OfficialAccountEndpoint] = Field(default_factory=list)


@dataclass(frozen=True)
class Target:
    """One endpoint a notice can reach, with where it sits in the county."""

    endpoint_id: str
    kind: EndpointKind
    village_id: str | None
    """None for official accounts, which serve several villages."""
    township_id: str | None


_ANY_ENDPOINT = (
    WecomGroupEndpoint | LedEndpoint | SpeakerEndpoint | TvFeedEndpoint | BulletinEndpoint
)
AnyEndpoint = _ANY_ENDPOINT | OfficialAccountEndpoint


class Registry:
    """Indexes over a validated :class:`RegistryFile`.

    Build it with :func:`load_registry`, which also rejects duplicate ids and dangling
    references; a Registry made directly from a model trusts that those checks passed."""

    def __init__(self, doc: RegistryFile, *, source: Path | None = None) -> None:
        self.doc = doc
        self.source = source
        self.townships: dict[str, Township] = {t.id: t for t in doc.townships}
        self.villages: dict[str, Village] = {}
        self.village_township: dict[str, str] = {}
        self.endpoints: dict[str, AnyEndpoint] = {}
        self.endpoint_village: dict[str, str | None] = {}
        for township in doc.townships:
            for village in township.villages:
                self.villages[village.id] = village
                self.village_township[village.id] = township.id
                for ep in village.endpoints:
                    self.endpoints[ep.id] = ep
                    self.endpoint_village[ep.id] = village.id
        self.official_accounts: dict[str, OfficialAccountEndpoint] = {}
        for oa in doc.official_accounts:
            self.official_accounts[oa.id] = oa
            self.endpoints[oa.id] = oa
            self.endpoint_village[oa.id] = None

    # -- lookups -------------------------------------------------------------------------

    def villages_for_area_code(self, code: str) -> set[str] | None:
        """Villages an administrative area code covers: the county's 6 digits, a
        township's 9 or a village's 12 (a shorter code covers every village under it);
        None when the code is not in this county."""
        county = self.doc.county.code
        if not code.isdigit() or not (code.startswith(county) or county.startswith(code)):
            return None
        if len(code) <= len(county):
            return set(self.villages)
        # A code covers a village when it is a prefix of the village's own code or of
        # its township's (a township code covers the whole township).
        found = {
            v.id
            for t in self.doc.townships
            for v in t.villages
            if (v.code is not None and v.code.startswith(code))
            or (t.code is not None and t.code.startswith(code))
        }
        return found or None

    def endpoint(self, endpoint_id: str) -> AnyEndpoint | None:
        return self.endpoints.get(endpoint_id)

    def village_name(self, village_id: str) -> str:
        village = self.villages.get(village_id)
        return village.name if village else village_id

    def quiet_hours(self, village_id: str) -> QuietHours | None:
        village = self.villages.get(village_id)
        if village and village.quiet_hours:
            return village.quiet_hours
        return self.doc.defaults.quiet_hours

    def calendar_for(self, village_id: str) -> dict[str, Cadence]:
        """The cadence each category needs in this village: the defaults, then the county's
        calendar, then the village's own, category by category; disabled ones left out."""
        rules = dict(DEFAULT_CALENDAR)
        if self.doc.calendar is not None:
            rules.update(self.doc.calendar.rules())
        village = self.villages.get(village_id)
        if village is not None and village.calendar is not None:
            rules.update(village.calendar.rules())
        return {c: r for c, r in rules.items() if r.enabled}

    def covered_villages(self, oa: OfficialAccountEndpoint) -> set[str]:
        covered = set(oa.covers_villages)
        for tid in oa.covers_townships:
            covered.update(v.id for v in self.townships[tid].villages)
        return covered

    def resolve_villages(
        self,
        *,
        villages: Iterable[str] = (),
        townships: Iterable[str] = (),
        county: bool = False,
    ) -> list[str]:
        """Turn a notice's targets into village ids (in registry order), or say what is unknown."""
        villages, townships = list(villages), list(townships)
        problems = [
            tr("未知的村：{v}（请检查 devices.yaml 中的村 id）", "unknown village: {v}", v=v)
            for v in villages
            if v not in self.villages
        ] + [
            tr("未知的乡镇：{t}（请检查 devices.yaml 中的乡镇 id）", "unknown township: {t}", t=t)
            for t in townships
            if t not in self.townships
        ]
        if problems:
            raise NoticeError(
                tr("通知的发送对象有误", "the notice's targets are invalid"), details=problems
            )
        wanted: set[str] = set(villages)
        for tid in townships:
            wanted.update(v.id for v in self.townships[tid].villages)
        if county:
            wanted.update(self.villages)
        return [vid for vid in self.villages if vid in wanted]

    def targets_for(self, village_ids: Iterable[str]) -> list[Target]:
        """Every enabled endpoint serving these villages, official accounts once each."""
        chosen = set(village_ids)
        out: list[Target] = []
        for vid in self.villages:
            if vid not in chosen:
                continue
            for ep in self.villages[vid].endpoints:
                if ep.enabled:
                    out.append(Target(ep.id, ep.kind, vid, self.village_township[vid]))
        for oa in self.official_accounts.values():
            if oa.enabled and self.covered_villages(oa) & chosen:
                out.append(Target(oa.id, oa.kind, None, None))
        return out


ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
"""Ids of townships, villages, endpoints and devices (also safe in URLs and file names)."""


def load_registry(path: Path | str) -> Registry:
    """Load and validate devices.yaml; raises RegistryError naming file:line:column."""
    from content_queue._registry_loader import load  # local: keeps YAML out of light imports

    return load(Path(path))
