"""WeChat official accounts (公众号) through wechatpy: articles, quota-aware mass sends, recall.

Features
    modes         ``publish`` (default): each notice becomes an article (a cover drawn for its
                  category and uploaded as permanent material, ``draft/add``,
                  ``freepublish/submit``), published on the account without a push and
                  without using the mass-send quota. ``mass_send``: the article is pushed to
                  followers (``message/mass/sendall``), per village tag, within the quota.
    formats       one HTML article: paragraphs, the notice's table as an HTML table, category,
                  priority, publish and expiry times; title at most 64 characters, content
                  under 20,000 characters and 1 MB (larger is a content error)
    acks          ``receipt``. publish: ``sent`` when submitted (external_ref = publish_id),
                  ``delivered`` when ``freepublish/get`` says published (article_id and url in
                  details), ``failed`` with the reason for publish_status 2-6. mass send:
                  ``sent`` when the send was taken (external_ref = msg_id), ``delivered`` when
                  ``message/mass/get`` says SEND_SUCCESS. :func:`poll_official_account_publishes`
                  follows both, with backoff; the sweeper calls it. Where the account pushes
                  events (``event_token_env``), PUBLISHJOBFINISH settles it at once.
    quota         mass_send only. subscription: one send a day; service: four a month per
                  follower (counted per village tag). A routine notice goes out on its own
                  while more than one send is left in the period, otherwise it is held
                  (``scheduled``) for the daily digest at ``digest_time``: up to 8 articles
                  in one send per audience. Emergencies take a send of their own at once.
                  ``clientmsgid`` makes a repeated send a no-op (45065).
    token         the access token lives in the store's kv_entries, shared by every worker,
                  sealed (AES-GCM, a key derived from the AppSecret), fetched under a lock
                  (once for all workers) from ``wechat_base_url``, refreshed once on
                  40001 / 40014 / 42001
    recall        publish: ``freepublish/delete`` of the article, or ``draft/delete`` of a
                  draft never published; mass send: ``message/mass/delete`` of this notice's
                  article (its index in a digest)
    recoverable   TransientError: -1, 45009, 45011, 45066, HTTP 5xx/408/429, timeouts, network
    idempotency   progress in send_parts: an accepted draft, submit or mass send is never
                  repeated. A mass send with an unknown outcome is repeated with the same
                  clientmsgid (WeChat drops the duplicate). A submit with an unknown outcome
                  (timeout after the request went out) is repeated only for emergencies;
                  other notices fail ``outcome_unknown`` so the township checks the account's
                  publish records rather than publish twice.
    config keys   devices.yaml ``official_accounts``: ``app_id``, ``app_secret_env``, ``mode``,
                  ``account_type``, ``village_tags``, ``digest_time``, ``author``,
                  ``covers_townships``, ``covers_villages``, ``event_token_env`` and
                  ``event_aes_key_env`` (publish results pushed by WeChat, plaintext or
                  safe mode: channels/_oa_events.py); settings ``wechat_base_url``,
                  ``http_timeout_seconds``, ``retry_base_seconds`` / ``retry_cap_seconds``
                  (poll backoff)

Mass sends (audiences, quota, digest) are in ``channels/_oa_mass.py``, the article and its
cover in ``channels/_oa_article.py``, the token and client in ``channels/_oa_client.py``.
Vendor codes are mapped in :data:`WECHAT_ERRORS`; the secret and the token never appear in
a message, a log line (``content_queue.redact``) or the database.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from channels._oa_state import (
    Check,
    Part,
    kv_delete,
    kv_get,
    kv_set,
    merge_details,
    parts,
    sent_deliveries,
    set_part,
    settle,
    try_lock,
)
from channels.base import (
    Channel,
    ChannelError,
    ChannelLimits,
    ContentError,
    DeliveryContext,
    PermanentError,
    SendResult,
    TransientError,
    get_channel,
    secret_from_env,
)
from content_queue.errors import ConfigError, VillagecastError
from content_queue.i18n import Text, tr
from content_queue.models import Priority
from content_queue.registry import EndpointKind, OfficialAccountEndpoint, Registry, load_registry
from content_queue.settings import Settings
from content_queue.store import DeliveryView, NoticeView, Store, utcnow

if TYPE_CHECKING:
    import requests

    from channels._oa_client import OfficialAccountClient

__all__ = [
    "PUBLISH_STATUS",
    "WECHAT_ERRORS",
    "OfficialAccountChannel",
    "VendorCode",
    "poll_official_account_publishes",
]

log = logging.getLogger(__name__)

KIND: EndpointKind = "wechat_official_account"
MAX_CONTENT_CHARS = 20000
MAX_CONTENT_BYTES = 1024 * 1024
POLL_GIVE_UP = timedelta(hours=24)


# -- the vendor's codes ---------------------------------------------------------------------

ErrorKind = Literal["transient", "permanent", "content"]


@dataclass(frozen=True)
class VendorCode:
    kind: ErrorKind
    zh: str
    en: str
    retry_after: float | None = None


WECHAT_ERRORS: dict[int, VendorCode] = {
    -1: VendorCode("transient", "微信系统繁忙，稍后重试", "WeChat is busy; will retry", 30),
    40001: VendorCode(
        "transient",
        "access_token 无效，已重新获取一次仍失败，稍后重试",
        "the access token is invalid even after one refresh; will retry",
    ),
    40014: VendorCode(
        "transient",
        "access_token 不合法，已重新获取一次仍失败，稍后重试",
        "the access token is not valid even after one refresh; will retry",
    ),
    42001: VendorCode(
        "transient",
        "access_token 已过期，已重新获取一次仍失败，稍后重试",
        "the access token expired and one refresh did not help; will retry",
    ),
    40013: VendorCode(
        "permanent",
        "AppID 无效：请核对 devices.yaml 中公众号 {ep} 的 app_id"
        "（公众号后台“设置与开发 > 基本配置”）",
        "invalid AppID: check app_id of account {ep} in devices.yaml (admin console, "
        "Settings and development > Basic configuration)",
    ),
    40125: VendorCode(
        "permanent",
        "AppSecret 无效：请在公众号后台重置 AppSecret，并更新环境变量 {var}",
        "invalid AppSecret: reset it in the account's admin console and update the "
        "environment variable {var}",
    ),
    40164: VendorCode(
        "permanent",
        "服务器 IP 不在公众号的 IP 白名单中：请在公众号后台把服务器 IP 加入白名单"
        "（设置与开发 > 基本配置 > IP 白名单）",
        "this server's IP address is not on the account's IP whitelist: add it in the admin "
        "console (Settings and development > Basic configuration > IP whitelist)",
    ),
    40007: VendorCode(
        "transient",
        "素材 media_id 无效（封面可能已在后台被删除），将重新上传",
        "invalid media_id (the cover may have been deleted in the console); uploading again",
    ),
    40009: VendorCode(
        "content", "封面图片超过微信的大小上限", "the cover image is larger than WeChat allows"
    ),
    40113: VendorCode(
        "permanent", "微信不接受这种文件格式", "WeChat does not accept this file type"
    ),
    41001: VendorCode(
        "transient", "请求缺少 access_token，稍后重试", "the request lacked an access token"
    ),
    45002: VendorCode(
        "content",
        "文章正文超过公众号上限（少于 2 万字符、1 MB）",
        "the article is longer than WeChat allows (under 20,000 characters and 1 MB)",
    ),
    45003: VendorCode(
        "content", "文章标题超过公众号上限", "the article title is longer than WeChat allows"
    ),
    45004: VendorCode(
        "content", "文章摘要超过公众号上限", "the article digest is longer than WeChat allows"
    ),
    45009: VendorCode(
        "transient",
        "接口调用次数已达今日上限（45009），稍后重试；如持续出现请在公众号后台查看接口调用次数",
        "the daily API call limit is reached (45009); will retry; if it persists, check the "
        "account's API quota in the console",
        300,
    ),
    45011: VendorCode(
        "transient", "接口调用太频繁（45011），稍后重试", "API calls too frequent (45011)", 60
    ),
    45028: VendorCode(
        "permanent",
        "公众号没有群发次数了（订阅号每天 1 次，服务号每人每月 4 次）",
        "the account has no mass sends left (subscription: 1 a day; service: 4 a month "
        "per follower)",
    ),
    45066: VendorCode(
        "transient",
        "相同 clientmsgid 重试太快，1 分钟后重试",
        "the same clientmsgid was retried too fast; will retry after a minute",
        60,
    ),
    45067: VendorCode(
        "permanent", "clientmsgid 超过 64 字节", "clientmsgid is longer than 64 bytes"
    ),
    48001: VendorCode(
        "permanent",
        "接口未授权：公众号没有这个接口的权限（草稿、发布和群发需要已认证的公众号），"
        "请在公众号后台“设置与开发 > 接口权限”中查看",
        "API unauthorized: the account lacks this permission (drafts, publishing and mass "
        "sends need a verified account); see Settings and development > API permissions",
    ),
    48004: VendorCode(
        "permanent",
        "接口已被封禁，请在公众号后台查看封禁原因",
        "the API is banned for this account; see the reason in the console",
    ),
    50002: VendorCode(
        "permanent",
        "公众号受限（可能因违规被封禁接口），请在公众号后台查看",
        "the account is restricted (perhaps banned for a violation); see the console",
    ),
    53503: VendorCode(
        "permanent",
        "草稿未通过发布检查，请到公众号后台打开这篇草稿查看原因",
        "the draft failed WeChat's publish check; open it in the console to see why",
    ),
    53504: VendorCode(
        "permanent",
        "这篇草稿需要到公众平台网页上发表",
        "this draft has to be published from the web console",
    ),
    53505: VendorCode(
        "permanent",
        "请先在公众号后台手动保存这篇草稿，再发表",
        "save the draft by hand in the console first, then publish",
    ),
    53600: VendorCode(
        "permanent",
        "article_id 无效（文章可能已被删除）",
        "invalid article_id (the article may already be deleted)",
    ),
}

PUBLISH_STATUS: dict[int, tuple[str, Text]] = {
    0: ("published", tr("已发表", "published")),
    1: ("publishing", tr("发表中", "publishing")),
    2: (
        "originality_failed",
        tr(
            "原创声明失败：文章被判定为非原创，可在公众号后台改为转载后重发",
            "originality check failed: WeChat judged the article not original",
        ),
    ),
    3: (
        "failed",
        tr(
            "发表失败（微信常规失败），请在公众号后台“发表记录”查看原因后重发",
            "publishing failed; see the account's publish records for the reason",
        ),
    ),
    4: (
        "audit_rejected",
        tr(
            "平台审核不通过：内容不符合公众平台运营规范，请修改后重发",
            "rejected by WeChat's review: the content breaks the platform rules",
        ),
    ),
    5: (
        "deleted",
        tr(
            "发表成功后文章已被删除（公众号管理员删除了全部文章）",
            "published, then all its articles were deleted by the account's admin",
        ),
    ),
    6: (
        "banned",
        tr("发表成功后文章被平台封禁", "published, then banned by the platform"),
    ),
}

_TIMEOUT_CODES = frozenset({"ReadTimeout", "Timeout", "ConnectTimeout"})


def _step(step: Text, ep: OfficialAccountEndpoint, reason: Text | str) -> Text:
    return tr(
        "公众号 {ep}：{step}失败：{why}",
        "official account {ep}: {step} failed: {why}",
        ep=ep.id,
        step=step,
        why=reason,
    )


def _vendor_error(exc: Exception, *, ep: OfficialAccountEndpoint, step: Text) -> ChannelError:
    """Map a wechatpy or network failure onto the channel error tree (raise it ``from exc``)."""
    from wechatpy.exceptions import WeChatClientException

    from channels._oa_client import WeChatTransportError, redact

    if isinstance(exc, WeChatTransportError):
        timeout = exc.kind in _TIMEOUT_CODES
        return TransientError(
            _step(
                step,
                ep,
                tr("微信接口超时", "the WeChat API timed out")
                if timeout
                else tr("无法连接微信接口（{e}）", "cannot reach the WeChat API ({e})", e=exc.kind),
            ),
            code="timeout" if timeout else "network",
        )
    if isinstance(exc, WeChatClientException) and exc.errcode is None:
        status = getattr(exc.response, "status_code", None) or 0
        why = tr("微信接口返回 HTTP {s}", "the WeChat API answered HTTP {s}", s=status)
        if status >= 500 or status in (408, 429):
            return TransientError(_step(step, ep, why), code=f"http_{status}")
        if status == 200:  # a body that is not JSON
            return TransientError(_step(step, ep, why), code="bad_response")
        return PermanentError(_step(step, ep, why), code=f"http_{status}")
    if isinstance(exc, WeChatClientException):
        code = int(exc.errcode)
        known = WECHAT_ERRORS.get(code)
        if known is None:
            msg = redact(str(exc.errmsg or ""))[:160]
            return PermanentError(
                _step(
                    step,
                    ep,
                    tr(
                        "微信返回错误码 {c}（{m}）",
                        "WeChat returned error {c} ({m})",
                        c=code,
                        m=msg,
                    ),
                ),
                code=str(code),
            )
        reason = tr(known.zh, known.en, ep=ep.id, var=ep.app_secret_env)
        text = _step(step, ep, tr("{r}（错误码 {c}）", "{r} (code {c})", r=reason, c=code))
        if known.kind == "transient":
            return TransientError(text, code=str(code), retry_after=known.retry_after)
        if known.kind == "content":
            return ContentError(text, code=str(code))
        return PermanentError(text, code=str(code))
    raise exc


def _dict(result: Any, *, ep: OfficialAccountEndpoint, step: Text, need: str) -> dict[str, Any]:
    if not isinstance(result, dict) or need not in result:
        raise TransientError(
            _step(step, ep, tr("微信接口的回应不完整", "the WeChat API answered incompletely")),
            code="bad_response",
        )
    return result


_S_TOKEN = tr("获取令牌", "fetching the token")
_S_COVER = tr("上传封面", "uploading the cover")
_S_DRAFT = tr("新建草稿", "adding the draft")
_S_SUBMIT = tr("提交发表", "submitting for publishing")
_S_STATUS = tr("查询发表状态", "checking the publish status")
_S_DELETE = tr("删除文章", "deleting the article")
_S_DRAFT_DELETE = tr("删除草稿", "deleting the draft")


def _outcome_unknown(ep: OfficialAccountEndpoint) -> Text:
    return tr(
        "公众号 {ep}：提交发表后没有收到微信的回应，不知道是否已发表；为免重复发表不再自动重试，"
        "请在公众号后台“发表记录”中核对，如未发表请重新提交通知",
        "official account {ep}: WeChat did not answer the publish request, so it is unknown "
        "whether the article went out; it is not retried (that could publish it twice): check "
        "the account's publish records and submit the notice again if it is not there",
        ep=ep.id,
    )


def _recall_unknown(ep: OfficialAccountEndpoint) -> Text:
    return tr(
        "公众号 {ep}：原发送结果未知，无法自动撤回，请在公众号后台“发表记录”或“群发记录”中手动删除",
        "official account {ep}: the original send has an unknown outcome, so it cannot be "
        "taken back automatically; delete it by hand in the account's publish or mass-send "
        "records",
        ep=ep.id,
    )


# -- one account's calls ------------------------------------------------------------------------


class _Api:
    """The calls the channel makes on one account, every failure mapped by the table above."""

    def __init__(
        self, ep: OfficialAccountEndpoint, client: OfficialAccountClient, store: Store
    ) -> None:
        self.ep, self.client, self.store = ep, client, store

    def call(self, fn: Callable[[], Any], *, step: Text, need: str | None = None) -> Any:
        from wechatpy.exceptions import WeChatClientException

        from channels._oa_client import WeChatTransportError

        try:
            self.client.access_token  # noqa: B018 - a failed token fetch is named as such
        except (WeChatClientException, WeChatTransportError) as exc:
            raise _vendor_error(exc, ep=self.ep, step=_S_TOKEN) from exc
        try:
            result = self.client.call(fn)
        except (WeChatClientException, WeChatTransportError) as exc:
            raise _vendor_error(exc, ep=self.ep, step=step) from exc
        return _dict(result, ep=self.ep, step=step, need=need) if need else result

    def delete(self, fn: Callable[[], Any], *, step: Text, missing: int | None) -> bool:
        """Run a delete; True if the thing was already gone (which is what a recall wants)."""
        try:
            self.call(fn, step=step)
        except ChannelError as exc:
            if missing is not None and exc.code == str(missing):
                return True
            raise
        return False

    def _cover_key(self, category: str) -> tuple[str, bytes]:
        from channels._oa_article import category_label, render_cover

        ep = self.ep
        cover = render_cover(
            category=category, label=category_label(category), account=ep.name or ep.id
        )
        return f"wechat:{ep.app_id}:cover:{category}:{cover.sha}", cover.data

    def thumb(self, category: str) -> str:
        """The permanent media id of the category's cover, uploaded once per account."""
        key, data = self._cover_key(category)
        cached = kv_get(self.store, key)
        if cached:
            return cached
        client = self.client
        res = self.call(
            lambda: client.material.add("image", ("cover.jpg", data, "image/jpeg")),
            step=_S_COVER,
            need="media_id",
        )
        media_id = str(res["media_id"])
        kv_set(self.store, key, media_id)
        return media_id

    def add_draft(self, notices: Sequence[NoticeView]) -> str:
        """One draft holding these notices as articles; returns its media id."""
        from channels._oa_article import article_html, digest_text

        articles = []
        for n in notices:
            content = article_html(n)
            if len(content) >= MAX_CONTENT_CHARS or len(content.encode()) >= MAX_CONTENT_BYTES:
                raise ContentError(
                    tr(
                        "通知排成文章后有 {n} 字符，超过公众号文章上限（少于 2 万字符、1 MB）；"
                        "请缩短正文或把表格拆成几条通知",
                        "the notice makes an article of {n} characters, over WeChat's limit "
                        "(under 20,000 characters and 1 MB); shorten it or split the table",
                        n=len(content),
                    ),
                    code="content_too_long",
                )
            articles.append(
                {
                    "title": n.title,
                    "author": self.ep.author or "",
                    "digest": digest_text(n.body),
                    "content": content,
                    "content_source_url": "",
                    "thumb_media_id": self.thumb(n.category),
                    "need_open_comment": 0,
                    "only_fans_can_comment": 0,
                }
            )
        client = self.client
        try:
            res = self.call(lambda: client.draft.add(articles), step=_S_DRAFT, need="media_id")
        except TransientError as exc:
            if exc.code == "40007":  # a cached cover was deleted in the console: upload again
                for n in notices:
                    kv_delete(self.store, self._cover_key(n.category)[0])
            raise
        return str(res["media_id"])


# -- the channel -------------------------------------------------------------------------------


class OfficialAccountChannel(Channel):
    """Publishes notices on official accounts as articles, or mass-sends them to followers."""

    kind: ClassVar[EndpointKind] = KIND
    limits: ClassVar[ChannelLimits] = ChannelLimits(
        max_title_chars=64,
        max_body_chars=18000,
        supports_table=True,
        confirms="receipt",
        formats=("article",),
    )

    def __init__(self, http: requests.Session | None = None) -> None:
        self._http = http
        self._clients: dict[tuple[object, ...], OfficialAccountClient] = {}
        self._lock = threading.Lock()

    def client(
        self, ep: OfficialAccountEndpoint, *, settings: Settings, store: Store
    ) -> OfficialAccountClient:
        """The wechatpy client of one account (one per process, account, base and secret)."""
        from channels._oa_client import KvSessionStorage, OfficialAccountClient

        secret = secret_from_env(ep.app_secret_env, endpoint_id=ep.id)
        key = (
            os.getpid(),
            ep.app_id,
            hashlib.sha256(secret.encode()).hexdigest(),
            settings.wechat_base_url,
            settings.http_timeout_seconds,
            store.url,
        )
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                client = OfficialAccountClient(
                    app_id=ep.app_id,
                    secret=secret,
                    base_url=settings.wechat_base_url,
                    storage=KvSessionStorage(store, app_id=ep.app_id, secret=secret),
                    timeout=settings.http_timeout_seconds,
                    http=self._http,
                )
                self._clients[key] = client
            return client

    def _api(self, ep: OfficialAccountEndpoint, *, settings: Settings, store: Store) -> _Api:
        return _Api(ep, self.client(ep, settings=settings, store=store), store)

    @staticmethod
    def _endpoint(ctx: DeliveryContext) -> OfficialAccountEndpoint:
        if not isinstance(ctx.endpoint, OfficialAccountEndpoint):
            raise ConfigError(
                tr(
                    "端点 {ep} 不是公众号",
                    "endpoint {ep} is not an official account",
                    ep=ctx.endpoint.id,
                )
            )
        return ctx.endpoint

    def send(self, ctx: DeliveryContext) -> SendResult:
        ep = self._endpoint(ctx)
        api = self._api(ep, settings=ctx.settings, store=ctx.store)
        if ep.mode == "publish":
            return self._publish(ctx, api)
        from channels._oa_mass import MassSend

        return MassSend(ctx, api, now=utcnow()).run()

    # -- publish -----------------------------------------------------------------------------

    def _publish(self, ctx: DeliveryContext, api: _Api) -> SendResult:
        store, did, ep = ctx.store, ctx.delivery_id, api.ep
        done = parts(store, did)
        submitted = done.get("publish")
        if submitted is not None and submitted.status == "accepted" and submitted.external_ref:
            # A retry after the submit went through: follow it, never submit again.
            check = self.check_publish(api, submitted.external_ref)
            if check.status == "failed":
                raise PermanentError(check.text or _outcome_unknown(ep), code=check.code)
            media = done.get("draft")
            details = {"mode": "publish", "media_id": media.external_ref if media else None}
            return SendResult(
                check.status, external_ref=submitted.external_ref, details=details | check.details
            )
        emergency = ctx.notice.priority == Priority.EMERGENCY
        if submitted is not None and submitted.status in ("sending", "unknown") and not emergency:
            set_part(store, did, "publish", status="unknown")
            raise PermanentError(_outcome_unknown(ep), code="outcome_unknown")
        draft = done.get("draft")
        if draft is not None and draft.status == "accepted" and draft.external_ref:
            media_id = draft.external_ref
        else:
            # An unfinished draft is invisible to followers: adding another is harmless.
            set_part(store, did, "draft", status="sending")
            media_id = api.add_draft([ctx.notice])
            set_part(store, did, "draft", status="accepted", ref=media_id)
        set_part(store, did, "publish", status="sending")
        client = api.client
        try:
            res = api.call(
                lambda: client.freepublish.submit(media_id), step=_S_SUBMIT, need="publish_id"
            )
        except ChannelError as exc:
            from channels._oa_client import maybe_sent

            if maybe_sent(exc.__cause__):
                set_part(store, did, "publish", status="unknown", error_code=exc.code)
                if not emergency:
                    raise PermanentError(_outcome_unknown(ep), code="outcome_unknown") from exc
            else:
                set_part(store, did, "publish", status="failed", error_code=exc.code)
            raise
        publish_id = str(res["publish_id"])
        set_part(store, did, "publish", status="accepted", ref=publish_id)
        return SendResult(
            "sent",
            external_ref=publish_id,
            details={
                "mode": "publish",
                "media_id": media_id,
                "publish_id": publish_id,
                "publish_status": "publishing",
            },
        )

    def check_publish(self, api: _Api, publish_id: str) -> Check:
        """Where a submitted article stands (``freepublish/get``)."""
        client = api.client
        res = api.call(
            lambda: client.freepublish.get(publish_id), step=_S_STATUS, need="publish_status"
        )
        return publish_check(res, endpoint_id=api.ep.id)

    # -- recall ------------------------------------------------------------------------------

    def recall(self, ctx: DeliveryContext) -> SendResult:
        """Take a withdrawn notice back from the account (see the module's Features)."""
        ep = self._endpoint(ctx)
        api = self._api(ep, settings=ctx.settings, store=ctx.store)
        found = ctx.store.deliveries(ids=[ctx.recall_of]) if ctx.recall_of is not None else []
        if not found:
            raise PermanentError(
                tr(
                    "要撤回的投递 {d} 不存在",
                    "the delivery to take back ({d}) does not exist",
                    d=ctx.recall_of,
                ),
                code="recall_missing",
            )
        original = found[0]
        done = parts(ctx.store, original.id)
        if any(k.startswith("mass:") for k in done):
            from channels._oa_mass import recall_mass

            return recall_mass(api, done, unknown=_recall_unknown(ep))
        return self._recall_article(api, original, done)

    def _recall_article(
        self, api: _Api, original: DeliveryView, done: dict[str, Part]
    ) -> SendResult:
        ep, client = api.ep, api.client
        article_id = (original.details or {}).get("article_id")
        submitted, draft = done.get("publish"), done.get("draft")
        if not article_id and submitted is not None and submitted.status == "accepted":
            check = self.check_publish(api, submitted.external_ref or "")
            if check.status == "sent":
                raise TransientError(
                    tr(
                        "公众号 {ep} 的文章还在发表中，发表完成后再删除",
                        "the article on account {ep} is still being published; deleting it "
                        "once it is out",
                        ep=ep.id,
                    ),
                    code="publishing",
                    retry_after=30,
                )
            article_id = check.details.get("article_id")
        if article_id:
            gone = api.delete(
                lambda: client.freepublish.delete(article_id, 0), step=_S_DELETE, missing=53600
            )
            recall = {"action": "freepublish/delete", "article_id": article_id}
            return SendResult(
                "delivered",
                external_ref=str(article_id),
                details={"recall": {**recall, "already_gone": gone}},
            )
        if submitted is not None and submitted.status in ("sending", "unknown"):
            raise PermanentError(_recall_unknown(ep), code="outcome_unknown")
        if draft is not None and draft.status == "accepted" and draft.external_ref:
            media_id = draft.external_ref
            gone = api.delete(
                lambda: client.draft.delete(media_id), step=_S_DRAFT_DELETE, missing=40007
            )
            recall = {"action": "draft/delete", "media_id": media_id}
            return SendResult(
                "delivered",
                external_ref=media_id,
                details={"recall": {**recall, "already_gone": gone}},
            )
        return SendResult("delivered", details={"recall": {"action": "none"}})

    # -- following sent deliveries -------------------------------------------------------------

    def check(
        self,
        ep: OfficialAccountEndpoint,
        *,
        store: Store,
        settings: Settings,
        delivery: DeliveryView,
    ) -> Check:
        """Ask WeChat where a ``sent`` delivery stands."""
        api = self._api(ep, settings=settings, store=store)
        details = delivery.details or {}
        if details.get("mode") == "mass_send":
            from channels._oa_mass import check_mass

            return check_mass(api, details)
        publish_id = details.get("publish_id") or delivery.external_ref
        if not publish_id:
            return Check("sent", {})
        return self.check_publish(api, str(publish_id))


def publish_check(res: dict[str, Any], *, endpoint_id: str) -> Check:
    """Where a submitted article stands, from ``freepublish/get``'s answer or the fields of a
    ``PUBLISHJOBFINISH`` event (channels/_oa_events.py): the same mapping for both."""
    status = int(res["publish_status"])
    name, text = PUBLISH_STATUS.get(
        status, ("unknown", tr("未知的发表状态 {s}", "unknown publish status {s}", s=status))
    )
    details: dict[str, Any] = {"publish_status": name}
    if status == 0:
        details["article_id"] = res.get("article_id")
        items = (res.get("article_detail") or {}).get("item") or []
        details["article_url"] = items[0].get("article_url") if items else None
        return Check("delivered", details)
    if status == 1:
        return Check("sent", details)
    if res.get("fail_idx"):
        details["fail_idx"] = res["fail_idx"]
    why = tr("公众号 {ep}：{why}", "official account {ep}: {why}", ep=endpoint_id, why=text)
    return Check("failed", details, why, f"publish_status_{status}")


# -- the poller --------------------------------------------------------------------------------


def _poll_due(d: DeliveryView, now: datetime) -> bool:
    poll = (d.details or {}).get("poll") or {}
    next_at = poll.get("next_at")
    return next_at is None or datetime.fromisoformat(next_at) <= now


def poll_official_account_publishes(
    store: Store,
    settings: Settings,
    *,
    registry: Registry | Callable[[], Registry] | None = None,
    now: datetime | None = None,
) -> int:
    """Follow ``sent`` official-account deliveries to ``delivered`` or ``failed``.

    Called by the sweeper on every pass; each delivery is asked about with exponential
    backoff (``retry_base_seconds`` doubling up to ``retry_cap_seconds``) and given up on
    after 24 hours. Returns how many deliveries it settled.
    """
    sent = sent_deliveries(store, KIND)
    now = now or utcnow()
    due = [d for d in sent if _poll_due(d, now)]
    if not due:
        return 0
    if registry is None:
        registry = load_registry(settings.devices)
    elif callable(registry):
        registry = registry()
    channel = get_channel(KIND)
    if not isinstance(channel, OfficialAccountChannel):
        channel = OfficialAccountChannel()
    settled = 0
    for d in due:
        ep = registry.endpoint(d.endpoint_id)
        if not isinstance(ep, OfficialAccountEndpoint):
            continue
        lock = f"wechat-poll:{d.id}"
        owner = try_lock(store, lock, ttl=4 * settings.http_timeout_seconds)
        if owner is None:
            continue  # another sweeper is asking right now
        try:
            check = channel.check(ep, store=store, settings=settings, delivery=d)
        except (ChannelError, VillagecastError) as exc:
            log.warning("official account %s, delivery %s: %s", ep.id, d.id, exc.render("en"))
            check = Check("sent", {})
        except Exception:  # one odd answer must not stop the others being followed
            log.exception("official account %s, delivery %s: poll crashed", ep.id, d.id)
            check = Check("sent", {})
        finally:
            kv_delete(store, lock, value=owner)
        if check.status == "sent" and d.sent_at is not None and now - d.sent_at > POLL_GIVE_UP:
            check = Check(
                "failed",
                check.details,
                tr(
                    "公众号 {ep}：24 小时后仍未确认发出，请在公众号后台查看",
                    "official account {ep}: still not confirmed after 24 hours; see the console",
                    ep=ep.id,
                ),
                "confirm_timeout",
            )
        if check.status == "sent":
            n = int(((d.details or {}).get("poll") or {}).get("n", 0)) + 1
            delay = min(settings.retry_cap_seconds, settings.retry_base_seconds * 2.0 ** (n - 1))
            poll = {"n": n, "next_at": (now + timedelta(seconds=delay)).isoformat()}
            merge_details(store, d.id, {**check.details, "poll": poll})
            continue
        if settle(
            store,
            d.id,
            status=check.status,
            details=check.details,
            text=check.text,
            code=check.code,
            now=now,
        ):
            settled += 1
    return settled
