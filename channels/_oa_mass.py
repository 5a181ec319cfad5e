"""Mass sends on an official account: audiences per village tag, the quota, the daily digest.

Quota (WeChat): a subscription account mass-sends once a day; each follower of a service
account receives at most four mass sends a month. The ledger counts our sends in the
store's ``rate_events`` (key ``wechat-mass:<endpoint>:<audience>``), per county-time day or
month; a service account's follower is in one village's tag, so a send to all counts
against every tag.

Policy: an emergency takes a send of its own at once (or fails ``quota_exhausted`` when
there is none left). A routine or important notice goes out on its own while more than
:data:`RESERVE` sends are left in the period; otherwise it is held (``scheduled``) until the
account's ``digest_time``, when the held notices of an audience go out together, up to
:data:`MAX_DIGEST_ARTICLES` articles in one message. A digest that finds no send left waits
for the next day's digest.

Idempotency: each audience's send is a part ``mass:<audience>`` of every delivery in it:
``sending`` (with the clientmsgid) before the request, ``accepted`` (``<msg_id>:<index>``)
after. A send with an unknown outcome is repeated with the same clientmsgid and articles,
and WeChat answers 45065 with the earlier msg_id instead of sending twice.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from channels._oa_article import local_text
from channels._oa_client import answer_of, errcode_of, maybe_sent
from channels._oa_state import (
    Check,
    Part,
    count_events,
    kv_get,
    kv_lock,
    kv_set,
    parts,
    parts_with_ref,
    release_event,
    reserve_event,
    set_part,
    waiting_deliveries,
)
from channels.base import ChannelError, DeliveryContext, PermanentError, SendResult
from content_queue.i18n import Text, tr
from content_queue.models import Priority, local_tz
from content_queue.registry import OfficialAccountEndpoint, Registry
from content_queue.store import NoticeView, Store

if TYPE_CHECKING:
    from channels._oa_client import OfficialAccountClient

__all__ = [
    "MAX_DIGEST_ARTICLES",
    "QUOTA",
    "RESERVE",
    "Api",
    "Audience",
    "MassSend",
    "audiences",
    "check_mass",
    "next_slot",
    "quota_left",
    "recall_mass",
]

MAX_DIGEST_ARTICLES = 8
"""Articles in one mass-sent message (WeChat takes 1 to 8)."""
QUOTA: dict[str, int] = {"subscription": 1, "service": 4}
"""Mass sends per period: a subscription account's per day, a service account's follower's
per month (calendar day and month in the county's time zone)."""
RESERVE = 1
"""Sends a routine notice leaves in the period for the digest and emergencies."""

_S_MASS = tr("群发", "mass sending")
_S_MASS_STATUS = tr("查询群发状态", "checking the mass send")
_S_MASS_DELETE = tr("删除群发", "deleting the mass send")


class Api(Protocol):
    """The channel's calls on one account, with its vendor error mapping."""

    ep: OfficialAccountEndpoint
    client: OfficialAccountClient
    store: Store

    def call(self, fn: Callable[[], Any], *, step: Text, need: str | None = None) -> Any: ...

    def add_draft(self, notices: Sequence[NoticeView]) -> str: ...

    def delete(self, fn: Callable[[], Any], *, step: Text, missing: int | None) -> bool: ...


# -- audiences, quota, digest times ---------------------------------------------------------


@dataclass(frozen=True)
class Audience:
    key: str
    """Part and ledger key: ``mass`` (a subscription account's one send), ``all``, ``tag:N``."""
    tag: int | None
    """The follower tag to send to; None sends to all followers."""

    @property
    def part(self) -> str:
        return f"mass:{self.key}"


def _targeted_villages(registry: Registry, notice: NoticeView) -> set[str]:
    t = notice.targets
    wanted = {v for v in t.get("villages") or [] if v in registry.villages}
    for tid in t.get("townships") or []:
        township = registry.townships.get(tid)
        if township is not None:
            wanted.update(v.id for v in township.villages)
    if t.get("county"):
        wanted.update(registry.villages)
    return wanted


def audiences(
    ep: OfficialAccountEndpoint, registry: Registry, notice: NoticeView
) -> list[Audience]:
    """Whom a notice goes to on this account: one send per village tag (service), one send
    to the village's tag or to all (subscription), all followers without tags."""
    covered = registry.covered_villages(ep)
    targeted = _targeted_villages(registry, notice) & covered
    tags = sorted({ep.village_tags[v] for v in targeted if v in ep.village_tags})
    everyone = not ep.village_tags or targeted >= covered
    if ep.account_type == "subscription":
        return [Audience("mass", tags[0] if len(tags) == 1 and not everyone else None)]
    if everyone or not tags:
        return [Audience("all", None)]
    return [Audience(f"tag:{t}", t) for t in tags]


def _ledger_key(ep: OfficialAccountEndpoint, key: str) -> str:
    return f"wechat-mass:{ep.id}:{key}"


def _period_start(ep: OfficialAccountEndpoint, now: datetime) -> datetime:
    local = now.astimezone(local_tz()).replace(hour=0, minute=0, second=0, microsecond=0)
    if ep.account_type == "service":
        local = local.replace(day=1)
    return local.astimezone(UTC)


def quota_left(store: Store, ep: OfficialAccountEndpoint, audience: Audience, now: datetime) -> int:
    """Sends left to this audience in the current day (subscription) or month (service)."""
    limit = QUOTA[ep.account_type]
    since = _period_start(ep, now)
    if ep.account_type == "subscription":
        key = _ledger_key(ep, "mass")
        return limit - count_events(store, [key], since=since)[key]
    tag_keys = [_ledger_key(ep, f"tag:{t}") for t in sorted(set(ep.village_tags.values()))]
    counts = count_events(store, [_ledger_key(ep, "all"), *tag_keys], since=since)
    used = counts[_ledger_key(ep, "all")]
    if audience.key == "all":
        used += max((counts[k] for k in tag_keys), default=0)
    else:
        used += counts[_ledger_key(ep, audience.key)]
    return limit - used


def next_slot(ep: OfficialAccountEndpoint, now: datetime) -> datetime:
    """The account's next digest time (county time) strictly after ``now``."""
    tz = local_tz()
    local = now.astimezone(tz)
    hour, minute = (int(x) for x in ep.digest_time.split(":"))
    slot = datetime.combine(local.date(), datetime.min.time(), tz).replace(hour=hour, minute=minute)
    if slot <= local:
        slot = datetime.combine(local.date() + timedelta(days=1), slot.timetz())
    return slot.astimezone(UTC)


def _clientmsgid(ep: OfficialAccountEndpoint, audience: Audience, ids: Sequence[int]) -> str:
    """Stable for the same account, audience and notices, so WeChat drops a repeat."""
    raw = f"{ep.app_id}:{audience.key}:{','.join(map(str, ids))}"
    return "vc-" + hashlib.sha256(raw.encode()).hexdigest()[:40]


class _NoQuota(Exception):
    """WeChat says the account has no mass send left (45028) though the ledger had one."""


# -- one attempt ------------------------------------------------------------------------------


class MassSend:
    """One attempt at a mass-send delivery, under the account's lock."""

    def __init__(self, ctx: DeliveryContext, api: Api, *, now: datetime) -> None:
        self.ctx, self.api, self.ep, self.store, self.now = ctx, api, api.ep, ctx.store, now
        self.did = ctx.delivery_id
        self.audiences = audiences(api.ep, ctx.registry, ctx.notice)

    def run(self) -> SendResult:
        settings = self.ctx.settings
        ttl = max(settings.lease_seconds, 8 * settings.http_timeout_seconds)
        what = tr("公众号 {ep} 的群发", "mass sending on account {ep}", ep=self.ep.id)
        # One account's sends go one at a time: the quota check, the send and the ledger
        # entry must not interleave with another worker's.
        with kv_lock(self.store, f"wechat-mass-lock:{self.ep.id}", ttl=ttl, wait=ttl, what=what):
            return self._run()

    def _run(self) -> SendResult:
        store, ep, now = self.store, self.ep, self.now
        done = parts(store, self.did)
        for a in self.audiences:
            p = done.get(a.part)
            if p is not None and p.status in ("sending", "unknown") and p.external_ref:
                self._resume(a, p.external_ref)
        remaining = self._remaining()
        if not remaining:
            return self._result()
        mine = [(self.did, self.ctx.notice)]
        emergency = self.ctx.notice.priority == Priority.EMERGENCY
        try:
            if emergency:
                for a in remaining:
                    if quota_left(store, ep, a, now) >= 1:
                        self._send(a, mine)
            elif self._digest_due():
                for a in remaining:
                    if quota_left(store, ep, a, now) >= 1:
                        members = self._digest_members(a)
                        self._send(self._group_audience(a, members), members)
            elif all(quota_left(store, ep, a, now) > RESERVE for a in remaining):
                for a in remaining:
                    self._send(a, mine)
        except _NoQuota:
            pass  # held (routine) or failed (emergency) below, as with an empty ledger
        remaining = self._remaining()
        if not remaining:
            return self._result()
        if emergency:
            raise PermanentError(
                tr(
                    "公众号 {ep} 本期群发次数已用完（订阅号每天 1 次，服务号每人每月 4 次），"
                    "紧急通知无法通过公众号群发，请用广播、微信群等其他渠道通知",
                    "official account {ep} has no mass send left in this period "
                    "(subscription: 1 a day; service: 4 a month per follower); use the "
                    "loudspeakers and WeChat groups for this emergency",
                    ep=ep.id,
                ),
                code="quota_exhausted",
            )
        slot = next_slot(ep, now)
        details = _details(parts(store, self.did), self.audiences)
        details["oa_hold"] = {"slot": slot.isoformat(), "audiences": [a.key for a in remaining]}
        return SendResult(
            "held",
            details=details,
            hold_until=slot,
            hold_reason=tr(
                "公众号群发次数有限，等待 {t} 的汇总群发",
                "the account's mass sends are limited; waiting for the digest at {t}",
                t=local_text(slot),
            ),
        )

    def _remaining(self) -> list[Audience]:
        done = parts(self.store, self.did)
        return [a for a in self.audiences if getattr(done.get(a.part), "status", "") != "accepted"]

    def _result(self) -> SendResult:
        details = _details(parts(self.store, self.did), self.audiences)
        details["oa_hold"] = None
        refs = [m["msg_id"] for m in details["mass"].values()]
        return SendResult("sent", external_ref=",".join(refs)[:255] or None, details=details)

    def _digest_due(self) -> bool:
        """Was this delivery held for a digest whose time has come?"""
        found = self.store.deliveries(ids=[self.did])
        hold = ((found[0].details if found else None) or {}).get("oa_hold")
        return hold is not None and datetime.fromisoformat(hold["slot"]) <= self.now

    def _digest_members(self, a: Audience) -> list[tuple[int, NoticeView]]:
        """This delivery and the others held for this audience whose digest time has come."""
        others: list[tuple[int, NoticeView]] = []
        for d, n in waiting_deliveries(self.store, self.ep.id, now=self.now):
            hold = (d.details or {}).get("oa_hold")
            if d.id == self.did or not hold or datetime.fromisoformat(hold["slot"]) > self.now:
                continue
            if a.key not in {x.key for x in audiences(self.ep, self.ctx.registry, n)}:
                continue
            p = parts(self.store, d.id).get(a.part)
            if p is None or p.status == "failed":
                others.append((d.id, n))
        rank = {Priority.IMPORTANT.value: 0, Priority.ROUTINE.value: 1}
        others.sort(key=lambda m: (rank.get(m[1].priority, 1), m[1].publish_at, m[0]))
        return [(self.did, self.ctx.notice), *others][:MAX_DIGEST_ARTICLES]

    def _group_audience(self, a: Audience, members: Sequence[tuple[int, NoticeView]]) -> Audience:
        """A subscription account's one send goes to a tag only if every article is for it."""
        if a.key != "mass":
            return a
        tags = {audiences(self.ep, self.ctx.registry, n)[0].tag for _, n in members}
        return Audience("mass", tags.pop() if len(tags) == 1 else None)

    def _resume(self, a: Audience, clientmsgid: str) -> None:
        """Finish a send whose outcome is unknown, with the same clientmsgid and articles."""
        pending = [
            p.delivery_id
            for p in parts_with_ref(self.store, a.part, clientmsgid)
            if p.status in ("sending", "unknown")
        ]
        views = {d.id: d for d in self.store.deliveries(ids=pending)}
        members = [(i, self.store.notice(views[i].notice_id)) for i in pending if i in views]
        if members:
            try:
                self._send(self._group_audience(a, members), members, clientmsgid=clientmsgid)
            except _NoQuota:
                return

    def _send(
        self,
        a: Audience,
        members: Sequence[tuple[int, NoticeView]],
        *,
        clientmsgid: str | None = None,
    ) -> None:
        """Mass-send these notices as one message to one audience; records every member."""
        store, ep, client = self.store, self.ep, self.api.client
        ids = [i for i, _ in members]
        msgid = clientmsgid or _clientmsgid(ep, a, ids)
        seqs = list(range(1, len(ids) + 1)) if len(ids) > 1 else [0]
        set_part(store, ids, a.part, status="sending", ref=msgid, seqs=seqs)
        # A resumed send was counted when it first went out.
        event = None if clientmsgid else reserve_event(store, _ledger_key(ep, a.key), now=self.now)
        draft_key = f"wechat:{ep.app_id}:mass-draft:{msgid}"
        try:
            media_id = kv_get(store, draft_key)
            if media_id is None:
                media_id = self.api.add_draft([n for _, n in members])
                kv_set(store, draft_key, media_id, ttl=7 * 86400)
            res = self.api.call(
                lambda: client.message.send_mass_article(
                    media_id,
                    tag_or_users=a.tag,
                    is_to_all=a.tag is None,
                    send_ignore_reprint=1,
                    client_msg_id=msgid,
                ),
                step=_S_MASS,
                need="msg_id",
            )
        except ChannelError as exc:
            cause = exc.__cause__
            if errcode_of(cause) == 45065:
                # It went out before (a crash or a timeout hid the answer): WeChat names it.
                res = answer_of(cause)
            else:
                status = "unknown" if maybe_sent(cause) else "failed"
                set_part(
                    store, ids, a.part, status=status, ref=msgid, seqs=seqs, error_code=exc.code
                )
                if status == "unknown":
                    raise  # retried with the same clientmsgid; the ledger entry stays
                if errcode_of(cause) == 45028:
                    raise _NoQuota from exc  # WeChat's count wins; the ledger entry stays
                if event is not None:
                    release_event(store, event)
                raise
        msg = str(res.get("msg_id") or "")
        for i, seq in zip(ids, seqs, strict=True):
            set_part(store, i, a.part, status="accepted", ref=f"{msg}:{seq}", seqs=[seq])


def _details(done: dict[str, Part], audiences: Sequence[Audience]) -> dict[str, Any]:
    mass: dict[str, Any] = {}
    for a in audiences:
        p = done.get(a.part)
        if p is not None and p.status == "accepted" and p.external_ref:
            msg, _, idx = p.external_ref.partition(":")
            mass[a.key] = {"msg_id": msg, "article_idx": int(idx or 0)}
    return {"mode": "mass_send", "mass": mass}


# -- after the send --------------------------------------------------------------------------


def check_mass(api: Api, details: dict[str, Any]) -> Check:
    """Where a delivery's mass sends stand (``message/mass/get``)."""
    states: dict[str, str] = {}
    for key, m in (details.get("mass") or {}).items():
        res = api.call(
            functools.partial(api.client.message.get_mass, int(m["msg_id"])),
            step=_S_MASS_STATUS,
            need="msg_status",
        )
        states[key] = str(res["msg_status"])
    out = {"mass_status": states}
    bad = [s for s in states.values() if s not in ("SEND_SUCCESS", "SENDING")]
    if bad:
        why = (
            tr("群发已被删除", "the mass send was deleted")
            if "DELETE" in bad
            else tr(
                "微信报告群发失败（{s}）", "WeChat reports the mass send failed ({s})", s=bad[0]
            )
        )
        text = tr("公众号 {ep}：{why}", "official account {ep}: {why}", ep=api.ep.id, why=why)
        return Check("failed", out, text, "mass_" + bad[0].lower())
    if states and all(s == "SEND_SUCCESS" for s in states.values()):
        return Check("delivered", out)
    return Check("sent", out)


def recall_mass(api: Api, done: dict[str, Part], *, unknown: Text) -> SendResult:
    """Delete this notice's article from each mass send (``message/mass/delete``)."""
    deleted: list[dict[str, Any]] = []
    for key, p in sorted(done.items()):
        if not key.startswith("mass:"):
            continue
        if p.status in ("sending", "unknown"):
            raise PermanentError(unknown, code="outcome_unknown")
        if p.status != "accepted" or not p.external_ref:
            continue
        msg, _, idx = p.external_ref.partition(":")
        # article_idx 0 deletes the whole message: only when it holds this notice alone.
        data = {"msg_id": int(msg), "article_idx": int(idx or 0)}
        gone = api.delete(
            functools.partial(api.client.post, "message/mass/delete", data=data),
            step=_S_MASS_DELETE,
            missing=None,
        )
        deleted.append({"audience": key.removeprefix("mass:"), **data, "already_gone": gone})
    action = "message/mass/delete" if deleted else "none"
    return SendResult(
        "delivered",
        external_ref=",".join(str(d["msg_id"]) for d in deleted)[:255] or None,
        details={"recall": {"action": action, "messages": deleted}},
    )
