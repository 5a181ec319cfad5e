"""Village WeChat groups through WeCom group robots (企业微信群机器人), over the webhook API.

Features
    formats       ``markdown`` (default): title, category and priority in colour, publish time,
                  bare addresses as links; ``text`` where the endpoint says ``format: text``;
                  a notice's table as a ``markdown_v2`` table where the endpoint allows it
                  (``markdown_v2: true``), otherwise as an attachment (``upload_media`` type
                  ``file``) sent after the text: CSV (UTF-8 with BOM; default) or, with
                  ``attachment: pdf``, the notice's A4 disclosure-board poster with the table
                  (channels/_poster.py, CJK font embedded)
    byte limits   ``text.content`` 2,048 bytes, ``markdown(_v2).content`` 4,096 bytes (UTF-8):
                  longer notices are split at sentence ends, each part marked (1/3) ... and
                  sent in order; files 5 bytes to 20 MB; voice AMR, 2 MB, 60 s
    voice         endpoints with ``voice: true`` also get the notice spoken (the loudspeakers'
                  script and clip cache, AMR-NB clips of at most 60 s, channels/_audio.py),
                  uploaded with ``type=voice`` and sent after the written parts
    emergencies   ``text`` parts mention ``@all`` (``mentioned_list``); markdown cannot
                  mention everyone (WeCom documents ``<@userid>`` only), so after the markdown
                  parts a short ``text`` with ``mentioned_list: ["@all"]`` pings the group
    rate          20 messages a minute per robot, for every worker on every machine
                  (content_queue.shared_limits over ``rate_events``); uploads are not messages
    ordering      one delivery at a time per robot: a send lock in ``kv_entries`` owned by the
                  delivery, held while its parts go out and across its own reschedules, so
                  parts of two notices never interleave in one group
    chunks        a task's deliveries (25) are claimed together and sent in rounds: one write
                  transaction per round records the last answers and reserves every ready
                  robot's next message, then those requests go out side by side (a thread
                  pool, ``parallel`` robots at once) or, while answers come within
                  ``inline_max_seconds`` (2 ms: a stand-in or proxy next door), one after
                  the other on the worker's thread; one robot's deliveries go one after
                  the other
    acks          none: errcode 0 means WeCom posted it in the group, so the delivery ends
                  ``delivered`` (nothing else would ever confirm it)
    idempotency   ``send_parts``: an accepted part is never sent again; see "Unknown outcome"
    recall        robots cannot delete: a withdrawal message ("此前发布的通知已撤回") names the
                  notice and its time, through the same limiter, lock and ledger
    config keys   devices.yaml ``kind: wecom_group``, ``webhook_key_env`` (the variable holding
                  the key, never the key), ``format``, ``markdown_v2``, ``attachment``, ``voice``;
                  settings ``wecom_base_url`` (VILLAGECAST_WECOM_BASE_URL),
                  ``wecom_rate_per_minute``, ``wecom_rate_window_seconds``,
                  ``wecom_max_wait_seconds``, ``http_timeout_seconds``, ``tts_mode``,
                  ``poster_font``

Pacing: wait briefly, else reschedule
    When a robot's window is full (or another delivery holds its lock), the worker sleeps if
    room comes within ``wecom_max_wait_seconds`` (default 5 s, never more than a quarter of
    the lease). Longer, it raises TransientError with ``retry_after`` = when room comes, so
    the delivery goes back to ``pending`` with that due time. Waiting long would hold a
    worker process (and its batch of 25 other groups) idle on one robot and put the lease at
    risk; rescheduling every time would cost a delivery attempt and a doorbell for a slot that
    frees in a second. A delivery needs room for all its remaining messages (up to the limit)
    before its first part goes, so a notice normally arrives in one piece; if it is
    interrupted after some parts, the lock stays with it until its retry is due.

Unknown outcome (the policy)
    A request that left and got no answer (read/write timeout, connection dropped, or a
    worker killed between request and record) may or may not have been posted. Emergencies
    are sent again (a duplicate warning is better than a missing one). Anything else is not:
    the part is marked ``unknown`` and the delivery fails with code ``unknown_outcome`` and a
    Chinese explanation, so township staff look in the group and resend by hand if needed.
    A request that never left (connection refused, pool timeout) is simply retried.

Errors (one table, :data:`ERRCODES`; every response's ``errcode`` is read, HTTP 200 or not)
    TransientError  -1 busy, 45009 frequency limit, 45033 concurrency limit, 40007 media id
                    expired (uploaded again), HTTP 5xx / 429, timeouts, connection errors,
                    an answer that is not WeCom's JSON
    PermanentError  93000 invalid key (the group owner must add the robot again and the key be
                    updated), 40058 invalid parameter (e.g. content too long), 40008, 44004,
                    40004/40005/40006/44001 attachments, other HTTP 4xx (wrong base URL or
                    proxy), unknown codes (shown with WeCom's errmsg), ``unknown_outcome``
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, ClassVar, Literal, TypeVar

import httpx
from sqlalchemy.orm import Session

from channels._wecom_render import (
    MARKDOWN_MAX_BYTES,
    Message,
    Upload,
    render_notice,
    render_withdrawal,
)
from channels.base import (
    Channel,
    ChannelError,
    ChannelLimits,
    ContentError,
    Deferred,
    DeliveryContext,
    PermanentError,
    SendResult,
    TransientError,
    secret_from_env,
)
from content_queue.errors import ConfigError
from content_queue.i18n import Text, tr
from content_queue.part_ledger import (
    PartRecord,
    PartStatus,
    mark_accepted_many_in,
    mark_finished_in,
    mark_sending_many_in,
    parts_of,
    parts_of_many,
)
from content_queue.redact import redact
from content_queue.registry import EndpointKind, WecomGroupEndpoint
from content_queue.settings import Settings
from content_queue.shared_limits import (
    LockRequest,
    RateLimiter,
    acquire_lock_in,
    acquire_locks_in,
    lock_rows_in,
    release_lock_in,
    release_locks_in,
)
from content_queue.store import Store

__all__ = ["ERRCODES", "WecomGroupChannel", "explain_errcode", "robot_id"]

SEND_PATH = "/cgi-bin/webhook/send"
UPLOAD_PATH = "/cgi-bin/webhook/upload_media"

Kind = Literal["transient", "permanent"]

ERRCODES: dict[int, tuple[Kind, Text]] = {
    -1: ("transient", tr("企业微信系统繁忙，稍后重试", "WeCom is busy; will retry")),
    45009: (
        "transient",
        tr(
            "机器人发送太频繁（每分钟最多 20 条），稍后重试",
            "the robot sent too often (20 a minute at most); will retry",
        ),
    ),
    45033: ("transient", tr("企业微信并发调用超限，稍后重试", "too many concurrent calls")),
    40007: (
        "transient",
        tr(
            "附件的 media_id 无效或已过期（3 天），将重新上传",
            "the attachment's media_id is invalid or expired (3 days); it will be uploaded again",
        ),
    ),
    93000: (
        "permanent",
        tr(
            "机器人的 webhook 密钥无效（机器人可能已被移出群或删除）："
            "请群主重新添加机器人并更新密钥（环境变量 {env}）",
            "the robot's webhook key is invalid (the robot was removed or deleted): ask the "
            "group owner to add the robot again and update the key (environment variable {env})",
        ),
    ),
    40058: (
        "permanent",
        tr(
            "企业微信认为请求参数不合法（如内容超长或缺少字段）：{msg}",
            "WeCom says a parameter is invalid (content too long or a field missing): {msg}",
        ),
    ),
    40008: ("permanent", tr("企业微信不支持这种消息类型", "WeCom does not take this message type")),
    44004: ("permanent", tr("消息内容为空", "the message content is empty")),
    40004: ("permanent", tr("附件的文件类型不被企业微信接受", "WeCom refused the file type")),
    40005: ("permanent", tr("附件的上传类型不合法", "invalid upload type")),
    40006: (
        "permanent",
        tr(
            "附件大小不合法（文件 5 字节到 20 MB，语音不超过 2 MB）",
            "invalid attachment size (files 5 bytes to 20 MB, voice 2 MB at most)",
        ),
    ),
    44001: ("permanent", tr("上传的附件为空", "the uploaded file is empty")),
}
"""errcode -> transient or permanent, with the reason shown to the township. Any other
non-zero code is permanent and shows WeCom's errmsg (see :func:`explain_errcode`)."""


def explain_errcode(code: int, errmsg: str, *, env: str) -> ChannelError:
    """The typed error for a WeCom errcode; ``env`` names the key's variable (never the key)."""
    # A proxy or a future WeCom may echo the request URL, key included, in errmsg.
    msg = redact(errmsg)[:200]
    kind, text = ERRCODES.get(
        code,
        (
            "permanent",
            tr(
                "企业微信返回错误码 {code}：{msg}",
                "WeCom answered with error code {code}: {msg}",
            ),
        ),
    )
    text = Text(text.zh, text.en, {"env": env, "msg": msg, "code": code})
    if kind == "transient":
        return TransientError(text, code=str(code))
    return PermanentError(text, code=str(code))


def robot_id(key: str) -> str:
    """A name for a robot that is safe to store and log: two endpoints sharing a key are one
    robot (one budget, one lock)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:20]


class _PartFailed(Exception):
    """A part did not go through: ``status`` says whether it may have been posted."""

    def __init__(self, error: ChannelError, status: PartStatus) -> None:
        super().__init__(error.code)
        self.error = error
        self.status = status


@dataclass
class _Job:
    ctx: DeliveryContext
    key: str
    env: str
    robot: str
    messages: list[Message]
    resend_unknown: bool

    @property
    def owner(self) -> str:
        return f"delivery:{self.ctx.delivery_id}"

    @property
    def lock_key(self) -> str:
        return f"wecom:lock:{self.robot}"

    @property
    def rate_key(self) -> str:
        return f"wecom:{self.robot}"


_T = TypeVar("_T")
_Write = Callable[[Session, datetime], object]


@dataclass
class _Run:
    """One delivery's progress through :meth:`WecomGroupChannel._run_many`."""

    job: _Job
    pending: list[tuple[int, Message]]
    """(seq, message) not yet accepted, in order."""
    started_any: bool
    """Some part of it is in the group (from an earlier attempt or this one)."""
    index: int = 0
    sent: int = 0
    not_before: float = 0.0
    """Monotonic time before which its next reservation is not tried (a short wait)."""
    media_id: str | None = None
    """The current message's upload, done (kept across a short wait)."""
    reserved_at: datetime | None = None
    """When the current message's rate slot was taken (its event's time)."""
    result: int | BaseException | None = None

    @property
    def message(self) -> Message:
        return self.pending[self.index][1]


@dataclass
class _Writes:
    """What a round's requests came back with, written at the start of the next
    transaction (the one reserving the next parts, or the last one): a commit per round,
    not per message."""

    limiter: RateLimiter
    accepted: list[tuple[int, str, int, str | None]] = field(default_factory=list)
    retimed: list[tuple[str, datetime, datetime]] = field(default_factory=list)
    """Rate events moved to when their answer came (content_queue.shared_limits, "Time")."""
    releases: list[tuple[str, str]] = field(default_factory=list)
    calls: list[_Write] = field(default_factory=list)
    """The rare writes (failures, an unknown outcome), in order."""
    call_keys: set[str] = field(default_factory=set)

    def call(self, lock_key: str, write: _Write) -> None:
        self.calls.append(write)
        self.call_keys.add(lock_key)

    @property
    def keys(self) -> set[str]:
        """The kv rows these writes touch."""
        return self.call_keys | {k for k, _ in self.releases}

    @property
    def touches_locks(self) -> bool:
        return bool(self.calls or self.releases)

    def __bool__(self) -> bool:
        return bool(self.accepted or self.touches_locks)

    def flush(self, s: Session, now: datetime) -> None:
        mark_accepted_many_in(s, self.accepted, now=now)
        self.limiter.retime_in(s, self.retimed)
        for write in self.calls:
            write(s, now)
        if self.calls:
            s.flush()  # ORM writes first: the Core statements that follow read their rows
        release_locks_in(s, self.releases, now=now)

    def clear(self) -> None:
        """After the transaction that flushed them committed."""
        self.accepted.clear()
        self.retimed.clear()
        self.releases.clear()
        self.calls.clear()
        self.call_keys.clear()


def _round_keys(runs: Sequence[_Run], limiter: RateLimiter) -> set[str]:
    """The kv rows a round's reservations touch: the robots' locks and limiter guards."""
    keys = {r.job.lock_key for r in runs}
    if limiter.enabled:
        keys |= {limiter.guard_key(r.job.rate_key) for r in runs}
    return keys


_NOT_YET = RuntimeError("not sent")
"""A placeholder in :meth:`WecomGroupChannel.send_many`'s results, always replaced."""

_POOLS: dict[int, ThreadPoolExecutor] = {}
_CLIENTS: dict[int, httpx.Client] = {}
_CLIENTS_LOCK = threading.Lock()


@atexit.register
def _close_clients() -> None:
    with _CLIENTS_LOCK:
        for client in _CLIENTS.values():
            client.close()
        _CLIENTS.clear()
        for pool in _POOLS.values():
            pool.shutdown(wait=False)
        _POOLS.clear()


def _shared_pool(size: int) -> ThreadPoolExecutor:
    """The threads that send to several robots at once; one pool per process (as the
    client). Requests wait on the network, not the GIL."""
    pid = os.getpid()
    with _CLIENTS_LOCK:
        pool = _POOLS.get(pid)
        if pool is None:
            _POOLS.clear()  # a pool's threads do not survive a fork
            pool = _POOLS[pid] = ThreadPoolExecutor(size, thread_name_prefix="wecom-send")
        return pool


def _shared_client() -> httpx.Client:
    """One keep-alive client per process (never across a fork: Celery's prefork pool).
    Timeouts are given per request, from the settings of the moment."""
    pid = os.getpid()
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(pid)
        if client is None:
            _CLIENTS.clear()
            client = _CLIENTS[pid] = httpx.Client(
                headers={"User-Agent": "villagecast-wecom/1"},
                # Keep a connection for each robot a chunk sends to at once.
                limits=httpx.Limits(max_connections=100, max_keepalive_connections=64),
            )
        return client


_PDFS: dict[tuple[object, ...], bytes] = {}


def _table_pdf(ctx: DeliveryContext, village: str | None) -> bytes:
    """The notice with its table as the disclosure-board poster (channels/_poster.py: A4,
    CJK font embedded, table paged with its header), the PDF a group gets as an attachment.
    The last few are kept: a worker sends one notice to many groups."""
    from channels._poster import PosterContent, find_font, render_poster

    n, font = ctx.notice, ctx.settings.poster_font
    key = (n.id, n.revision, n.state, village, font)
    data = _PDFS.get(key)
    if data is None:
        registry = ctx.registry
        township_id = registry.village_township.get(ctx.village_id or "")
        township = registry.townships[township_id].name if township_id else ""
        region = f"{registry.doc.county.name}{township}"
        content = PosterContent(notice=n, place=village or region, region=region)
        data = render_poster(content, font=find_font(font)).data
        if len(_PDFS) >= 16:
            _PDFS.pop(next(iter(_PDFS)))
        _PDFS[key] = data
    return data


def _now() -> datetime:
    return datetime.now(UTC)


def _unknown_outcome(label: str, total: int) -> PermanentError:
    return PermanentError(
        tr(
            "第 {part} 条消息（共 {total} 条）发出后没有收到企业微信的答复，"
            "无法确认群里是否已收到。为避免重复刷屏，非紧急通知不自动重发：请到村微信群查看，缺少时手动补发",
            "message {part} of {total} got no answer from WeCom, so whether the group received "
            "it is unknown. Non-emergency notices are not sent again automatically (to avoid "
            "duplicates): check the village group and resend by hand if it is missing",
            part=label,
            total=total,
        ),
        code="unknown_outcome",
    )


class WecomGroupChannel(Channel):
    kind: ClassVar[EndpointKind] = "wecom_group"
    limits: ClassVar[ChannelLimits] = ChannelLimits(
        max_title_chars=80,
        max_body_bytes=MARKDOWN_MAX_BYTES,
        splits=True,
        rate_per_minute=20,
        supports_table=True,
        confirms="none",
        formats=("markdown", "text", "markdown_v2", "file", "voice"),
    )
    # A task's deliveries are claimed and sent together: their robots are different groups,
    # sent to side by side, with one ledger transaction per round of messages. Safe to
    # claim together: the ledger keeps an accepted part from going twice, and a chunk's
    # waits are bounded as one delivery's were (a quarter lease at most).
    claim_chunk: ClassVar[int] = 25
    parallel: ClassVar[int] = 25
    """Robots sent to at once from one worker process (a whole chunk)."""
    inline_max_seconds: ClassVar[float] = 0.002
    """A round's requests go one after the other on the worker's own thread while they
    come back within this (a proxy or a stand-in next door); two slower ones in a row send
    the rest of the round, and the rounds of the next ``fan_out_seconds``, side by side on
    the pool. On loopback a request costs a few tenths of a millisecond of CPU and
    handing it to a thread costs as much again; against WeCom's tens of milliseconds the
    threads are what makes a chunk fast."""
    fan_out_seconds: ClassVar[float] = 10.0

    def __init__(
        self,
        client: httpx.Client | None = None,
        *,
        synthesizer: Any = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._client = client
        self._synthesizer = synthesizer
        self._sleep = sleep
        # Monotonic time until which rounds go straight to the pool (answers were slow).
        self._fan_out_until = 0.0

    # -- the hooks -------------------------------------------------------------------------

    def send(self, ctx: DeliveryContext) -> SendResult:
        job, details = self._prepare(ctx)
        return self._result(job, details, self._run(job))

    def send_many(self, ctxs: Sequence[DeliveryContext]) -> list[SendResult | Exception]:
        """A claimed chunk: every group's messages rendered, then sent in rounds, the
        robots side by side (see :meth:`_run_many`)."""
        results: list[SendResult | Exception] = []
        prepared: list[tuple[int, _Job, dict[str, Any]]] = []
        for i, ctx in enumerate(ctxs):
            try:
                job, details = self._prepare(ctx)
            except Exception as exc:
                results.append(exc)
                continue
            results.append(_NOT_YET)
            prepared.append((i, job, details))
        outcomes = self._run_many([job for _, job, _ in prepared])
        for (i, job, details), outcome in zip(prepared, outcomes, strict=True):
            if isinstance(outcome, Exception):
                results[i] = outcome
            elif isinstance(outcome, BaseException):
                raise outcome  # KeyboardInterrupt, SystemExit: not a delivery's failure
            else:
                results[i] = self._result(job, details, outcome)
        return results

    def _prepare(self, ctx: DeliveryContext) -> tuple[_Job, dict[str, Any]]:
        endpoint = self._endpoint(ctx)
        village = ctx.registry.village_name(ctx.village_id) if ctx.village_id else None
        messages = render_notice(
            ctx.notice,
            fmt=endpoint.format,
            markdown_v2=endpoint.markdown_v2,
            village=village,
            attachment=endpoint.attachment,
            pdf=partial(_table_pdf, ctx, village),
        )
        details: dict[str, Any] = {}
        if endpoint.voice:
            voice_messages, details = self._voice(ctx)
            messages += voice_messages
        return self._job(ctx, endpoint, messages), details

    def _result(self, job: _Job, details: dict[str, Any], sent: int) -> SendResult:
        details = {**details, **self._details(job, sent)}
        return SendResult("delivered", external_ref=f"wecom:{job.robot}", details=details)

    def recall(self, ctx: DeliveryContext) -> SendResult:
        endpoint = self._endpoint(ctx)
        if ctx.recall_of is not None:
            original = parts_of(ctx.store, ctx.recall_of)
            if not any(p.status in ("accepted", "unknown", "sending") for p in original.values()):
                # Nothing of it can be in the group: saying "withdrawn" would only confuse.
                return SendResult("delivered", details={"recall": "nothing_reached_the_group"})
        village = ctx.registry.village_name(ctx.village_id) if ctx.village_id else None
        messages = render_withdrawal(ctx.notice, fmt=endpoint.format, village=village)
        job = self._job(ctx, endpoint, messages)
        sent = self._run(job)
        details = {"recall": "withdrawal_message", **self._details(job, sent)}
        return SendResult("delivered", external_ref=f"wecom:{job.robot}", details=details)

    # -- preparing -------------------------------------------------------------------------

    def _endpoint(self, ctx: DeliveryContext) -> WecomGroupEndpoint:
        if not isinstance(ctx.endpoint, WecomGroupEndpoint):
            raise ConfigError(tr("端点不是企业微信群机器人", "the endpoint is not a WeCom robot"))
        return ctx.endpoint

    def _job(
        self, ctx: DeliveryContext, endpoint: WecomGroupEndpoint, messages: list[Message]
    ) -> _Job:
        key = secret_from_env(endpoint.webhook_key_env, endpoint_id=endpoint.id)
        return _Job(
            ctx=ctx,
            key=key,
            env=endpoint.webhook_key_env,
            robot=robot_id(key),
            messages=messages,
            resend_unknown=ctx.notice.priority == "emergency",
        )

    def _voice(self, ctx: DeliveryContext) -> tuple[list[Message], dict[str, Any]]:
        """The notice spoken as AMR clips (synthesized once per script for every village)."""
        from channels._audio import ClipCache, synthesize_clip
        from channels.speaker import script_for, synthesis_slots, voice_for
        from channels.tts import Synthesizer

        if self._synthesizer is None:
            self._synthesizer = Synthesizer(mode=ctx.settings.tts_mode)
        try:
            clips, synthesis, hit = synthesize_clip(
                ClipCache.for_settings(ctx.settings),
                self._synthesizer,
                script=script_for(ctx.notice),
                voice=voice_for(ctx.registry, ctx.village_id),
                fmt="amr",
                # The machine-wide bound on syntheses; never waiting past a quarter lease.
                limit=synthesis_slots(ctx.settings).hold(timeout=ctx.settings.lease_seconds / 4),
            )
        except ContentError as exc:
            # The written notice still goes; the delivery says why it was not spoken.
            return [], {"voice": "skipped", "voice_reason": exc.text.render("zh")}
        messages = [
            Message(
                f"voice:{i}",
                "voice",
                upload=Upload("voice", f"notice-{ctx.notice.id}-{i}.amr", clip.path.read_bytes()),
            )
            for i, clip in enumerate(clips, 1)
        ]
        details = {
            "voice_clips": [c.sha256 for c in clips],
            "voice_seconds": round(sum(c.duration_s for c in clips), 1),
            "engine": synthesis.engine if synthesis else "cached",
            "cache_hit": hit,
        }
        return messages, details

    @staticmethod
    def _details(job: _Job, sent: int) -> dict[str, Any]:
        kinds = [m.msgtype for m in job.messages]
        return {
            "robot": job.robot,
            "messages": len(job.messages),
            "sent_now": sent,
            "parts": sum(m.key.startswith("part:") for m in job.messages),
            "format": next((k for k in kinds if k != "text"), "text"),
            "attachment": any(m.msgtype == "file" for m in job.messages),
            "mention_all": any("@all" in m.payload.get("mentioned_list", []) for m in job.messages),
        }

    # -- sending ---------------------------------------------------------------------------

    def _run(self, job: _Job) -> int:
        """Send what the ledger has not seen accepted, in order; returns how many went now."""
        (result,) = self._run_many([job])
        if isinstance(result, BaseException):
            raise result
        return result

    def _run_many(self, jobs: Sequence[_Job]) -> list[int | BaseException]:
        """Send several deliveries' messages, each in order, the robots side by side.

        Works in rounds. Each round is one write transaction that writes what the last
        round's requests came back with (``accepted`` parts, failures, released locks) and
        reserves the next message of every robot that is ready (its send lock, a rate slot,
        the part marked ``sending``); then those requests go out together, at most one per
        robot. Deliveries to one robot run one after the other, as they would one per task.
        Returns, per job, the messages sent now or the error that ended it.
        """
        if not jobs:
            return []
        settings, store = jobs[0].ctx.settings, jobs[0].ctx.store
        known = parts_of_many(store, [j.ctx.delivery_id for j in jobs])
        limiter = RateLimiter(settings.wecom_rate_per_minute, settings.wecom_rate_window_seconds)
        writes = _Writes(limiter)
        runs = [self._start(job, known[job.ctx.delivery_id], writes) for job in jobs]
        queues: dict[str, deque[_Run]] = {}
        for run in runs:
            if run.result is None:
                queues.setdefault(run.job.robot, deque()).append(run)
        budget = min(settings.wecom_max_wait_seconds, settings.lease_seconds / 4)
        deadline = time.monotonic() + budget
        try:
            self._rounds(queues, writes, store=store, limiter=limiter, deadline=deadline)
        except BaseException:
            # What came back must outlive a round that failed (the store, a worker shutting
            # down): an accepted part left `sending` would be an unknown outcome on retry.
            if writes:
                with contextlib.suppress(Exception):
                    self._transact(store, writes, set(), lambda s, now: [])
            raise
        if writes:
            self._transact(store, writes, set(), lambda s, now: [])
        return [r.result if r.result is not None else 0 for r in runs]

    def _rounds(
        self,
        queues: dict[str, deque[_Run]],
        writes: _Writes,
        *,
        store: Store,
        limiter: RateLimiter,
        deadline: float,
    ) -> None:
        """The rounds of :meth:`_run_many`, until every robot's queue is done."""
        while queues:
            heads = [q[0] for q in queues.values()]
            clock = time.monotonic()
            ready = [r for r in heads if r.not_before <= clock]
            if not ready:
                self._sleep(max(0.0, min(r.not_before for r in heads) - clock))
                continue
            uploads = [r for r in ready if r.message.upload is not None and r.media_id is None]
            if uploads:
                got = self._each(uploads, self._upload_current)
                for run, media in zip(uploads, got, strict=True):
                    if isinstance(media, BaseException):
                        self._failed(run, media, writes)
                    else:
                        run.media_id = media
                ready = [r for r in ready if r.result is None]
            go: list[_Run] = []
            if ready:
                go = self._transact(
                    store,
                    writes,
                    _round_keys(ready, limiter),
                    partial(self._reserve, ready=ready, limiter=limiter, deadline=deadline),
                )
            answers = self._each(go, self._post_current)
            answered = _now()
            for run, answer in zip(go, answers, strict=True):
                if limiter.enabled and run.reserved_at is not None:
                    # Whatever the answer, the far side counted the request before it came.
                    writes.retimed.append((run.job.rate_key, run.reserved_at, answered))
                if isinstance(answer, BaseException):
                    self._failed(run, answer, writes)
                    continue
                seq, message = run.pending[run.index]
                writes.accepted.append((run.job.ctx.delivery_id, message.key, seq, answer))
                run.started_any = True
                run.sent += 1
                run.index += 1
                run.media_id = None
                if run.index == len(run.pending):
                    run.result = run.sent
                    writes.releases.append((run.job.lock_key, run.job.owner))
            for robot in list(queues):
                queue = queues[robot]
                while queue and queue[0].result is not None:
                    queue.popleft()
                if not queue:
                    del queues[robot]

    def _start(self, job: _Job, done: Mapping[str, PartRecord], writes: _Writes) -> _Run:
        """What is left of a delivery, from its ledger; ends it at once when nothing is
        (a repeat) or when a part's outcome is unknown and it may not be sent again."""
        pending = [
            (seq, m)
            for seq, m in enumerate(job.messages, 1)
            if m.key not in done or done[m.key].status != "accepted"
        ]
        run = _Run(job, pending, started_any=any(p.status == "accepted" for p in done.values()))
        if not pending:
            writes.releases.append((job.lock_key, job.owner))
            run.result = 0
            return run
        doubtful = [
            m for _, m in pending if m.key in done and done[m.key].status in ("sending", "unknown")
        ]
        if doubtful and not job.resend_unknown:
            first = doubtful[0]
            seq = next(i for i, m in pending if m is first)
            delivery_id = job.ctx.delivery_id

            def give_up(s: Session, now: datetime) -> None:
                for m in doubtful:
                    mark_finished_in(
                        s,
                        delivery_id=delivery_id,
                        part_key=m.key,
                        status="unknown",
                        now=now,
                        error_code=done[m.key].error_code or "worker_lost",
                    )
                release_lock_in(s, job.lock_key, owner=job.owner, now=now)

            writes.call(job.lock_key, give_up)
            run.result = _unknown_outcome(str(seq), len(job.messages))
        return run

    def _each(self, runs: Sequence[_Run], fn: Callable[[_Run], _T]) -> list[_T | BaseException]:
        """``fn`` for every run: one after the other on this thread while answers come
        fast, side by side on the shared pool once one is slow (see
        :attr:`inline_max_seconds`). One request per robot per round either way, so the
        order of a robot's messages does not depend on it."""

        def call(run: _Run) -> _T | BaseException:
            try:
                return fn(run)
            except Exception as exc:
                return exc

        if len(runs) <= 1:
            return [call(r) for r in runs]
        pool = _shared_pool(self.parallel)
        if time.monotonic() < self._fan_out_until:
            return list(pool.map(call, runs))
        results: list[_T | BaseException] = []
        slow = 0
        for i, run in enumerate(runs):
            started = time.monotonic()
            results.append(call(run))
            finished = time.monotonic()
            # Two slow answers in a row, not one: a loopback request now and then takes a
            # few milliseconds (a collection, the scheduler), a far side does every time.
            slow = slow + 1 if finished - started > self.inline_max_seconds else 0
            if slow >= 2 and i + 1 < len(runs):
                self._fan_out_until = finished + self.fan_out_seconds
                results += pool.map(call, runs[i + 1 :])
                break
        return results

    def _upload_current(self, run: _Run) -> str:
        upload = run.message.upload
        assert upload is not None
        return self._upload(run.job, upload)

    def _post_current(self, run: _Run) -> str | None:
        return self._post_message(run.job, run.message.body(run.media_id))

    def _failed(self, run: _Run, exc: BaseException, writes: _Writes) -> None:
        """End a run with ``exc``; what the ledger and the lock must say is written with the
        next transaction."""
        job = run.job
        if isinstance(exc, _PartFailed):
            seq, message = run.pending[run.index]
            writes.call(job.lock_key, self._fail(job, message, seq, exc, keep_lock=run.started_any))
            exc.error.__cause__ = exc.__cause__
            run.result = exc.error
        elif isinstance(exc, ChannelError):
            writes.call(job.lock_key, self._releaser(job, keep=run.started_any))
            run.result = exc
        else:
            writes.call(job.lock_key, self._releaser(job, keep=False))
            run.result = exc

    def _transact(
        self,
        store: Store,
        writes: _Writes,
        keys: set[str],
        action: Callable[[Session, datetime], _T],
    ) -> _T:
        """One write transaction: the writes left from the last round, then ``action``.

        Every kv row the transaction touches (locks, the limiter's guard rows) is locked
        first, in one statement in key order (content_queue.shared_limits), on PostgreSQL;
        SQLite writers run one at a time anyway."""
        with store.session() as s:
            now = _now()
            if writes.touches_locks and s.get_bind().dialect.name == "postgresql":
                lock_rows_in(s, writes.keys | keys, now=now)
            writes.flush(s, now)
            result = action(s, now)
        writes.clear()
        return result

    def _reserve(
        self,
        s: Session,
        now: datetime,
        *,
        ready: Sequence[_Run],
        limiter: RateLimiter,
        deadline: float,
    ) -> list[_Run]:
        """For each ready run: hold the robot's lock, take a rate slot and mark its next part
        ``sending``; returns the runs whose request may leave now. The others wait briefly
        (``not_before``) or end with TransientError (see "Pacing" above)."""
        settings = ready[0].job.ctx.settings
        rows = lock_rows_in(s, _round_keys(ready, limiter), now=now)
        held = acquire_locks_in(
            s,
            [LockRequest(r.job.lock_key, r.job.owner, settings.lease_seconds) for r in ready],
            now=now,
            rows=rows,
        )
        free = [r for r in ready if not held[r.job.lock_key]]
        # Room for everything that is left (up to the limit) before a delivery's first part.
        needs = {r.job.rate_key: len(r.pending) if r.index == 0 else 1 for r in free}
        rate = limiter.acquire_many_in(s, needs, now=now, locked=True)
        go = [r for r in free if not rate[r.job.rate_key]]
        for run in go:
            run.reserved_at = now
        mark_sending_many_in(
            s,
            [(r.job.ctx.delivery_id, r.message.key, r.pending[r.index][0]) for r in go],
            now=now,
        )
        clock = time.monotonic()
        for run in ready:
            wait = held[run.job.lock_key] or rate.get(run.job.rate_key, 0.0)
            if not wait:
                continue
            if clock + wait <= deadline:
                run.not_before = clock + wait
                continue
            self._releaser(run.job, keep=run.started_any)(s, now)
            if held[run.job.lock_key]:
                run.result = Deferred(
                    tr(
                        "这个群正在发送另一条通知，稍后接着发送",
                        "another notice is being sent to this group; this one follows",
                    ),
                    code="wecom_busy",
                    retry_after=wait,
                )
            else:
                run.result = Deferred(
                    tr(
                        "机器人本分钟的发送额度（{n} 条）已用完，{s} 秒后继续",
                        "the robot's {n} messages for this minute are used; continuing in {s} s",
                        n=limiter.limit,
                        s=round(wait, 1),
                    ),
                    code="rate_limited",
                    retry_after=wait,
                )
        return go

    def _releaser(self, job: _Job, *, keep: bool) -> Callable[[Session, datetime], object]:
        """Give the robot's lock up, or (parts of this delivery are already in the group)
        keep it until this delivery's retry must have come, so nothing interleaves."""
        settings = job.ctx.settings

        def act(s: Session, now: datetime) -> object:
            if not keep:
                return release_lock_in(s, job.lock_key, owner=job.owner, now=now)
            # The dispatcher's backoff for the next attempt is at most this (its jitter only
            # shortens it), plus a lease for the retry itself.
            backoff = settings.retry_base_seconds * 2.0 ** max(0, job.ctx.attempt - 1)
            hold = min(settings.retry_cap_seconds, max(backoff, settings.wecom_rate_window_seconds))
            return acquire_lock_in(
                s, job.lock_key, owner=job.owner, ttl=hold + settings.lease_seconds, now=now
            )

        return act

    def _fail(
        self,
        job: _Job,
        message: Message,
        seq: int,
        failed: _PartFailed,
        *,
        keep_lock: bool,
    ) -> Callable[[Session, datetime], None]:
        """The ledger and lock writes for a part that did not go through."""
        unknown = failed.status == "unknown"
        if unknown and not job.resend_unknown:
            failed.error = _unknown_outcome(str(seq), len(job.messages))
        final = isinstance(failed.error, PermanentError | ContentError)
        release = self._releaser(job, keep=keep_lock and not final)
        delivery_id, code = job.ctx.delivery_id, (failed.error.code or "error")[:64]

        def act(s: Session, now: datetime) -> None:
            mark_finished_in(
                s,
                delivery_id=delivery_id,
                part_key=message.key,
                status=failed.status,
                now=now,
                seq=seq,
                error_code=code,
            )
            release(s, now)

        return act

    # -- HTTP ------------------------------------------------------------------------------

    def _http(self, settings: Settings) -> httpx.Client:
        return self._client if self._client is not None else _shared_client()

    def _url(self, settings: Settings, path: str) -> str:
        return settings.wecom_base_url.rstrip("/") + path

    def _post_message(self, job: _Job, body: dict[str, Any]) -> str | None:
        content = json.dumps(body, ensure_ascii=False).encode("utf-8")
        answer = self._call(
            job,
            SEND_PATH,
            params={"key": job.key},
            content=content,
            headers={"Content-Type": "application/json; charset=utf-8"},
            sends_message=True,
        )
        return str(answer["msgid"]) if answer.get("msgid") else None

    def _upload(self, job: _Job, upload: Upload) -> str:
        answer = self._call(
            job,
            UPLOAD_PATH,
            params={"key": job.key, "type": upload.media_type},
            files={"media": (upload.filename, upload.data, "application/octet-stream")},
            sends_message=False,
        )
        media_id = answer.get("media_id")
        if not isinstance(media_id, str) or not media_id:
            raise _PartFailed(
                TransientError(
                    tr("企业微信上传附件后没有返回 media_id", "WeCom returned no media_id"),
                    code="protocol",
                ),
                "failed",
            )
        return media_id

    def _call(
        self,
        job: _Job,
        path: str,
        *,
        params: dict[str, str],
        sends_message: bool,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        files: dict[str, tuple[str, bytes, str]] | None = None,
    ) -> dict[str, Any]:
        """One request; every failure becomes a _PartFailed saying whether it may have
        been posted. Messages never contain the URL: the key is in its query."""
        settings = job.ctx.settings
        # An upload that may have happened posts nothing: it is never an unknown outcome.
        maybe: PartStatus = "unknown" if sends_message else "failed"
        try:
            resp = self._http(settings).post(
                self._url(settings, path),
                params=params,
                content=content,
                headers=headers,
                files=files,
                timeout=settings.http_timeout_seconds,
            )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise _PartFailed(
                TransientError(
                    tr(
                        "无法连接企业微信（{e}），请检查网络或 VILLAGECAST_WECOM_BASE_URL",
                        "cannot reach WeCom ({e}); check the network or VILLAGECAST_WECOM_BASE_URL",
                        e=type(exc).__name__,
                    ),
                    code="connect",
                ),
                "failed",
            ) from exc
        except httpx.TimeoutException as exc:
            raise _PartFailed(
                TransientError(
                    tr(
                        "企业微信在 {s} 秒内没有答复",
                        "WeCom did not answer within {s} s",
                        s=settings.http_timeout_seconds,
                    ),
                    code="timeout",
                ),
                maybe,
            ) from exc
        except httpx.TransportError as exc:
            raise _PartFailed(
                TransientError(
                    tr(
                        "与企业微信的连接中断（{e}）",
                        "the connection to WeCom broke ({e})",
                        e=type(exc).__name__,
                    ),
                    code="network",
                ),
                maybe,
            ) from exc
        if resp.status_code >= 500 or resp.status_code == 429:
            retry_after = None
            with contextlib.suppress(ValueError):
                retry_after = float(resp.headers.get("Retry-After", ""))
            raise _PartFailed(
                TransientError(
                    tr(
                        "企业微信暂时不可用（HTTP {s}）",
                        "WeCom is unavailable (HTTP {s})",
                        s=resp.status_code,
                    ),
                    code=f"http_{resp.status_code}",
                    retry_after=retry_after,
                ),
                "failed",
            )
        if resp.status_code != 200:
            raise _PartFailed(
                PermanentError(
                    tr(
                        "企业微信地址答复 HTTP {s}：请检查 VILLAGECAST_WECOM_BASE_URL（或代理）",
                        "the WeCom address answered HTTP {s}: check VILLAGECAST_WECOM_BASE_URL "
                        "(or the proxy)",
                        s=resp.status_code,
                    ),
                    code=f"http_{resp.status_code}",
                ),
                "failed",
            )
        try:
            answer = resp.json()
            code = int(answer["errcode"])
        except (ValueError, KeyError, TypeError) as exc:
            raise _PartFailed(
                TransientError(
                    tr(
                        "企业微信的答复无法识别（不是 JSON 或缺少 errcode）",
                        "WeCom's answer is not JSON with an errcode",
                    ),
                    code="protocol",
                ),
                maybe,
            ) from exc
        if code != 0:
            error = explain_errcode(code, str(answer.get("errmsg", "")), env=job.env)
            if code == 45009 and isinstance(error, TransientError):
                error.retry_after = settings.wecom_rate_window_seconds
            raise _PartFailed(error, "failed")
        return dict(answer)
