"""The channel interface, the channel error tree, and the registry of channel kinds.

Errors (``content_queue.errors.VillagecastError`` is the root)::

    ChannelError            something went wrong talking to a channel
    ├── ContentError        this notice cannot go to this endpoint as it is (too long,
    │                       characters the board cannot show): never retried
    ├── TransientError      try again later: 5xx, timeouts, rate limits, "system busy"
    └── PermanentError      fail now: the far side refused for good (bad key, banned)

Configuration problems (a missing secret, an endpoint removed from devices.yaml) are
``content_queue.errors.ConfigError`` and are never retried either.

Each channel subclasses :class:`Channel`, declares its :class:`ChannelLimits`, and
implements one small hook, :meth:`Channel.send`. The public :meth:`Channel.deliver` is
final: it checks content against the limits and maps every failure onto the error
tree, so the dispatcher's bookkeeping is the same for every channel. A channel that gains
from sending a claimed chunk together (one render, one store transaction, pipelined
publishes) also overrides :meth:`Channel.send_many`; :meth:`Channel.deliver_many` is its
final wrapper.
"""

from __future__ import annotations

import importlib
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Literal, final

from content_queue import redact
from content_queue.errors import ConfigError, VillagecastError
from content_queue.i18n import Text, tr
from content_queue.registry import ENDPOINT_KINDS, AnyEndpoint, EndpointKind, Registry

if TYPE_CHECKING:
    from content_queue.settings import Settings
    from content_queue.store import NoticeView, Store

__all__ = [
    "PLANNED_CHANNELS",
    "Channel",
    "ChannelError",
    "ChannelLimits",
    "ContentError",
    "Deferred",
    "DeliveryContext",
    "PermanentError",
    "SendResult",
    "TransientError",
    "get_channel",
    "register_channel",
    "secret_from_env",
]


class ChannelError(VillagecastError):
    """A channel could not take a notice; ``code`` is the vendor's code when there is one."""

    def __init__(self, text: Text, *, code: str | None = None) -> None:
        self.code = code
        super().__init__(text)


class ContentError(ChannelError):
    """The content does not fit this endpoint; retrying will not help."""


class TransientError(ChannelError):
    """Worth another try later; ``retry_after`` (seconds) when the far side said when."""

    def __init__(self, text: Text, *, code: str | None = None, retry_after: float | None = None):
        self.retry_after = retry_after
        super().__init__(text, code=code)


class Deferred(TransientError):
    """Nothing went out: the channel's own pacing says wait ``retry_after`` seconds (a
    robot's rate window is full, another notice's parts hold the group). Not a failed
    attempt: the delivery is tried again then, without using up its retry budget, so a
    backlog for one group is paced however long it is, never refused."""

    def __init__(self, text: Text, *, code: str | None = None, retry_after: float) -> None:
        super().__init__(text, code=code, retry_after=retry_after)


class PermanentError(ChannelError):
    """The far side refused for good; the delivery fails with this reason."""


@dataclass(frozen=True)
class ChannelLimits:
    """What a channel can take. ``None`` means no limit of that kind."""

    max_title_chars: int | None = None
    max_body_chars: int | None = None
    max_body_bytes: int | None = None
    """UTF-8 bytes of one message; a channel that splits long notices sets ``splits``."""
    splits: bool = False
    rate_per_minute: int | None = None
    supports_table: bool = False
    confirms: Literal["none", "fetch", "ack", "receipt"] = "none"
    """How 'delivered' is known: never, the platform fetched it, a device ack, a receipt."""
    formats: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class SendResult:
    """What the far side did: took it (``sent``) or confirmed it (``delivered``); or, for
    ``held``, nothing went out yet and the channel wants the delivery back at ``hold_until``
    (a quota window, a daily digest). A hold is not an attempt: the delivery waits
    ``scheduled`` with ``hold_reason`` shown, and keeps its attempt budget."""

    status: Literal["sent", "delivered", "held"]
    external_ref: str | None = None
    details: dict[str, Any] | None = None
    """Facts worth keeping on the delivery (e.g. which speech engine spoke)."""
    hold_until: datetime | None = None
    hold_reason: Text | None = None
    published: tuple[str, ...] = ()
    """Device command ids the broker accepted that the channel has not marked published
    itself (:meth:`Channel.send_many`): the dispatcher notes them in the transaction that
    records this outcome."""


@dataclass(frozen=True)
class DeliveryContext:
    """Everything one attempt needs; channels never reach for globals."""

    delivery_id: int
    attempt: int
    notice: NoticeView
    endpoint: AnyEndpoint
    village_id: str | None
    registry: Registry
    settings: Settings
    store: Store
    action: Literal["publish", "recall"] = "publish"
    recall_of: int | None = None
    """For a recall: the id of the publish delivery being taken back."""


class Channel(ABC):
    """One kind of endpoint. Subclasses set ``kind`` and ``limits`` and implement ``send``."""

    kind: ClassVar[EndpointKind]
    limits: ClassVar[ChannelLimits] = ChannelLimits()
    task_batch: ClassVar[int | None] = None
    """Deliveries one Celery task carries for this channel, unless VILLAGECAST_BATCH_SIZE
    is set (None: that setting's default). Fast channels take more, so a county-wide
    fan-out is a few tasks, not hundreds, each paying Celery's round trip."""
    claim_chunk: ClassVar[int] = 1
    """Deliveries a worker claims (and records) together. Above 1 only for channels whose
    sends are fast and safe to repeat (a device drops a duplicate command id), since a
    worker killed mid-chunk repeats the chunk's unrecorded sends."""

    def content_problems(self, *, title: str, body: str) -> list[Text]:
        """Why a notice cannot go to this kind of endpoint at all (empty when it can)."""
        problems: list[Text] = []
        lim = self.limits
        if lim.max_title_chars is not None and len(title) > lim.max_title_chars:
            problems.append(
                tr(
                    "标题超过 {n} 字上限",
                    "the title is longer than {n} characters",
                    n=lim.max_title_chars,
                )
            )
        if lim.max_body_chars is not None and len(body) > lim.max_body_chars:
            problems.append(
                tr(
                    "正文 {got} 字，超过 {n} 字上限",
                    "the body has {got} characters, more than the {n} allowed",
                    got=len(body),
                    n=lim.max_body_chars,
                )
            )
        if (
            not lim.splits
            and lim.max_body_bytes is not None
            and len(body.encode("utf-8")) > lim.max_body_bytes
        ):
            problems.append(
                tr(
                    "正文超过 {n} 字节上限",
                    "the body is longer than {n} bytes",
                    n=lim.max_body_bytes,
                )
            )
        return problems

    @final
    def deliver(self, ctx: DeliveryContext) -> SendResult:
        """Check the content, send, and keep every failure inside the error tree."""
        self._check(ctx)
        return self.send(ctx)

    def _check(self, ctx: DeliveryContext) -> None:
        if ctx.endpoint.kind != self.kind:
            raise ConfigError(
                tr(
                    "端点 {ep} 的类型是 {got}，不能由 {want} 渠道发送",
                    "endpoint {ep} is a {got}, not a {want}",
                    ep=ctx.endpoint.id,
                    got=ctx.endpoint.kind,
                    want=self.kind,
                )
            )
        problems = self.content_problems(title=ctx.notice.title, body=ctx.notice.body)
        if problems:
            raise ContentError(problems[0], code="content")

    @abstractmethod
    def send(self, ctx: DeliveryContext) -> SendResult:
        """Deliver one notice to one endpoint, raising the typed errors above."""

    @final
    def deliver_many(self, ctxs: Sequence[DeliveryContext]) -> list[SendResult | Exception]:
        """:meth:`deliver` for a claimed chunk: one result or error per context, in order.

        Errors are returned, not raised, so one refused endpoint does not hold up the rest;
        an unexpected exception (a bug) is returned too, for the dispatcher to log.
        """
        errors: dict[int, Exception] = {}
        ready: list[int] = []
        for i, ctx in enumerate(ctxs):
            try:
                self._check(ctx)
            except Exception as exc:
                errors[i] = exc
            else:
                ready.append(i)
        sent: list[SendResult | Exception] = []
        if ready:
            try:
                sent = self.send_many([ctxs[i] for i in ready])
                if len(sent) != len(ready):
                    raise RuntimeError(f"{type(self).__name__}.send_many lost results")
            except Exception as exc:
                sent = [exc] * len(ready)
        done = dict(zip(ready, sent, strict=True))
        return [errors[i] if i in errors else done[i] for i in range(len(ctxs))]

    def send_many(self, ctxs: Sequence[DeliveryContext]) -> list[SendResult | Exception]:
        """Send a chunk of deliveries (content already checked); one result or error per
        context, in order. The default sends one after the other."""
        results: list[SendResult | Exception] = []
        for ctx in ctxs:
            try:
                results.append(self.send(ctx))
            except Exception as exc:
                results.append(exc)
        return results

    @classmethod
    def sends_in_chunks(cls) -> bool:
        """True when the channel overrides :meth:`send_many`."""
        return cls.send_many is not Channel.send_many

    @final
    def take_back(self, ctx: DeliveryContext) -> SendResult:
        """Recall a withdrawn or superseded notice from an endpoint it reached."""
        if ctx.endpoint.kind != self.kind or ctx.action != "recall":
            raise ConfigError(
                tr(
                    "端点 {ep} 的撤回任务无效",
                    "invalid recall for endpoint {ep}",
                    ep=ctx.endpoint.id,
                )
            )
        return self.recall(ctx)

    def recall(self, ctx: DeliveryContext) -> SendResult:
        """Take a notice back: clear a board, stop a loudspeaker, delete an article, or
        send a withdrawal message where the platform cannot delete. ``ctx.notice`` is the
        withdrawn (or superseded) notice and ``ctx.recall_of`` the delivery that put it
        there. Channels that can take nothing back keep this default."""
        raise PermanentError(
            tr(
                "{kind} 渠道无法撤回已发出的内容，请人工处理",
                "the {kind} channel cannot take back what it sent; handle it by hand",
                kind=self.kind,
            ),
            code="recall_unsupported",
        )


def secret_from_env(name: str, *, endpoint_id: str) -> str:
    """Read a secret named in devices.yaml; the message names the variable, never a value."""
    value = os.environ.get(name, "")
    if not value:
        raise ConfigError(
            tr(
                "端点 {ep} 需要的密钥环境变量 {var} 未设置，请在运行工作进程的环境中设置它",
                "environment variable {var} (the secret for endpoint {ep}) is not set "
                "where the worker runs",
                ep=endpoint_id,
                var=name,
            )
        )
    # From here on this process holds the secret: keep it out of every log line.
    redact.install()
    redact.remember_secret(value)
    return value


# Kinds whose channel lands in a later issue: deliveries to them end 'skipped' until then.
PLANNED_CHANNELS: dict[str, Text] = {}

_BUILTIN: dict[str, str] = {
    "tv_feed": "channels.tv_feed:TvFeedChannel",
    "led": "channels.led:LedChannel",
    "speaker": "channels.speaker:SpeakerChannel",
    "wecom_group": "channels.wecom_group:WecomGroupChannel",
    "wechat_official_account": "channels.wechat_official_account:OfficialAccountChannel",
    "bulletin": "channels.bulletin:BulletinChannel",
}
_registered: dict[str, type[Channel]] = {}
_instances: dict[str, Channel] = {}


def register_channel(kind: str, cls: type[Channel]) -> None:
    """Plug a channel class in for a kind (used by operators' plugins and benchmarks)."""
    if kind not in ENDPOINT_KINDS:
        raise ConfigError(tr("未知的渠道类型：{k}", "unknown channel kind: {k}", k=kind))
    _registered[kind] = cls
    _instances.pop(kind, None)


def _load(spec: str) -> type[Channel]:
    module, _, name = spec.partition(":")
    cls = getattr(importlib.import_module(module), name)
    if not (isinstance(cls, type) and issubclass(cls, Channel)):
        raise ConfigError(tr("{s} 不是渠道类", "{s} is not a Channel class", s=spec))
    return cls


def get_channel(kind: str) -> Channel | None:
    """The channel for an endpoint kind, or None if it is not built yet.

    ``VILLAGECAST_CHANNEL_<KIND>=module:Class`` replaces a built-in channel (plugins,
    benchmarks with a no-op channel).
    """
    if kind in _instances:
        return _instances[kind]
    override = os.environ.get(f"VILLAGECAST_CHANNEL_{kind.upper()}")
    cls: type[Channel] | None
    if kind in _registered:
        cls = _registered[kind]
    elif override:
        cls = _load(override)
    elif kind in _BUILTIN:
        cls = _load(_BUILTIN[kind])
    else:
        cls = None
    if cls is None:
        return None
    _instances[kind] = instance = cls()
    return instance
