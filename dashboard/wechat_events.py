"""The official accounts' server URL: WeChat's signed event pushes (channels/_oa_events.py).

Public (no session, no CSRF token: WeChat signs the request instead), also on the public
feed listener; ``/wechat/events/<endpoint id>`` of an official account whose devices.yaml
entry names ``event_token_env`` (and, in safe mode, ``event_aes_key_env``: then only
encrypted events are taken). Anything else is a plain 404, and a bad signature a 403,
so the path tells a prober nothing about which accounts exist.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request, Response
from fastapi.responses import PlainTextResponse
from starlette.concurrency import run_in_threadpool

from channels._oa_events import (
    MAX_BODY,
    EventSignatureError,
    aes_key_ok,
    handle_event,
    open_encrypted,
    signature_ok,
)
from content_queue.registry import OfficialAccountEndpoint

if TYPE_CHECKING:
    from dashboard.app import DashboardContext

__all__ = ["PREFIX", "add_wechat_event_routes"]

PREFIX = "/wechat/events/"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Account:
    endpoint: OfficialAccountEndpoint
    token: str
    aes_key: str | None
    """Safe mode's EncodingAESKey; None in plaintext mode."""


def _account(ctx: DashboardContext, endpoint_id: str) -> _Account | None:
    endpoint = ctx.registry.endpoint(endpoint_id)
    if not isinstance(endpoint, OfficialAccountEndpoint) or not endpoint.event_token_env:
        return None
    token = os.environ.get(endpoint.event_token_env, "")
    if not token:
        log.warning(
            "official account %s: %s is not set; its events are refused",
            endpoint_id,
            endpoint.event_token_env,
        )
        return None
    aes_key = None
    if endpoint.event_aes_key_env:
        aes_key = os.environ.get(endpoint.event_aes_key_env, "")
        if not aes_key_ok(aes_key):
            # Never the value itself in the log: it is the account's encryption key.
            log.warning(
                "official account %s: %s is %s (WeChat's EncodingAESKey is 43 characters); "
                "its events are refused",
                endpoint_id,
                endpoint.event_aes_key_env,
                "not set" if not aes_key else "not a valid EncodingAESKey",
            )
            return None
    return _Account(endpoint, token, aes_key)


def add_wechat_event_routes(app: FastAPI) -> None:
    def found(request: Request, endpoint_id: str) -> _Account | None:
        from dashboard.app import _ctx

        return _account(_ctx(request), endpoint_id)

    def signed(request: Request, token: str) -> bool:
        q = request.query_params
        return signature_ok(
            token,
            signature=q.get("signature", ""),
            timestamp=q.get("timestamp", ""),
            nonce=q.get("nonce", ""),
        )

    @app.get(PREFIX + "{endpoint_id}", include_in_schema=False)
    def verify(request: Request, endpoint_id: str) -> Response:
        """WeChat checks the URL when the account's server configuration is saved."""
        account = found(request, endpoint_id)
        if account is None:
            return PlainTextResponse("not found", status_code=404)
        if not signed(request, account.token):
            return PlainTextResponse("forbidden", status_code=403)
        return PlainTextResponse(request.query_params.get("echostr", ""))

    @app.post(PREFIX + "{endpoint_id}", include_in_schema=False)
    async def event(request: Request, endpoint_id: str) -> Response:
        account = await run_in_threadpool(found, request, endpoint_id)
        if account is None:
            return PlainTextResponse("not found", status_code=404)
        if not signed(request, account.token):
            return PlainTextResponse("forbidden", status_code=403)
        body = await request.body()
        if len(body) > MAX_BODY:
            return PlainTextResponse("too large", status_code=413)
        q = request.query_params
        encrypted = q.get("encrypt_type", "").lower() == "aes"
        if account.aes_key is not None:
            if not encrypted or not q.get("msg_signature"):
                # Safe mode was chosen so events cannot be read or forged on the way.
                return PlainTextResponse("forbidden", status_code=403)
            try:
                body = open_encrypted(
                    body,
                    token=account.token,
                    aes_key=account.aes_key,
                    app_id=account.endpoint.app_id,
                    msg_signature=q.get("msg_signature", ""),
                    timestamp=q.get("timestamp", ""),
                    nonce=q.get("nonce", ""),
                )
            except EventSignatureError:
                return PlainTextResponse("forbidden", status_code=403)
            except ValueError:
                return PlainTextResponse("bad request", status_code=400)
        elif encrypted and b"<MsgType>" not in body:
            log.warning(
                "official account %s: WeChat sends its events encrypted (safe mode) but "
                "devices.yaml names no event_aes_key_env; they are not read (the poller "
                "still follows each publish)",
                endpoint_id,
            )
        from dashboard.app import _ctx

        store = _ctx(request).store
        try:
            result = await run_in_threadpool(
                handle_event, body, store=store, endpoint=account.endpoint
            )
        except ValueError:
            return PlainTextResponse("bad request", status_code=400)
        if result.status:
            log.info(
                "official account %s: publish %s -> delivery %s %s (event)",
                endpoint_id,
                result.publish_id,
                result.delivery_id,
                result.status,
            )
        # WeChat retries three times unless it gets "success" (or an empty reply) quickly.
        return PlainTextResponse("success")
