"""The official accounts' server URL: WeChat's signed event pushes (channels/_oa_events.py).

Public (no session, no CSRF token: WeChat signs the request instead), also on the public
feed listener; ``/wechat/events/<endpoint id>`` of an official account whose devices.yaml
entry names ``event_token_env``. Anything else is a plain 404, and a bad signature a 403,
so the path tells a prober nothing about which accounts exist.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request, Response
from fastapi.responses import PlainTextResponse
from starlette.concurrency import run_in_threadpool

from channels._oa_events import MAX_BODY, handle_event, signature_ok
from content_queue.registry import OfficialAccountEndpoint

if TYPE_CHECKING:
    from dashboard.app import DashboardContext

__all__ = ["PREFIX", "add_wechat_event_routes"]

PREFIX = "/wechat/events/"

log = logging.getLogger(__name__)


def _token(ctx: DashboardContext, endpoint_id: str) -> tuple[OfficialAccountEndpoint, str] | None:
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
    return endpoint, token


def add_wechat_event_routes(app: FastAPI) -> None:
    def found(request: Request, endpoint_id: str) -> tuple[OfficialAccountEndpoint, str] | None:
        from dashboard.app import _ctx

        return _token(_ctx(request), endpoint_id)

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
        if not signed(request, account[1]):
            return PlainTextResponse("forbidden", status_code=403)
        return PlainTextResponse(request.query_params.get("echostr", ""))

    @app.post(PREFIX + "{endpoint_id}", include_in_schema=False)
    async def event(request: Request, endpoint_id: str) -> Response:
        account = await run_in_threadpool(found, request, endpoint_id)
        if account is None:
            return PlainTextResponse("not found", status_code=404)
        if not signed(request, account[1]):
            return PlainTextResponse("forbidden", status_code=403)
        body = await request.body()
        if len(body) > MAX_BODY:
            return PlainTextResponse("too large", status_code=413)
        from dashboard.app import _ctx

        store = _ctx(request).store
        try:
            result = await run_in_threadpool(handle_event, body, store=store, endpoint=account[0])
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
