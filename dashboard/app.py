"""The township dashboard: server-rendered pages, a JSON API and the public feed paths.

Public (no login): ``/feeds/<village>.atom|rss|json``, ``/audio/<sha256>.mp3|amr``,
``/healthz``, the login page and static files. ``/metrics``: loopback clients, or a bearer
token (``metrics_token_env``). Everything else needs a session; every form and every API
call that changes something needs the session's CSRF token.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from fastapi import Depends, FastAPI, Form, Query, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel
from starlette.background import BackgroundTask
from starlette.types import ASGIApp, Receive, Send
from starlette.types import Scope as AsgiScope

from content_queue.accounts import (
    ROLE_LABELS,
    Accounts,
    Action,
    LoginRefused,
    NotAllowed,
    Principal,
    SessionInfo,
)
from content_queue.errors import NotFoundError, StateError, VillagecastError
from content_queue.i18n import Lang, Text, tr
from content_queue.models import CATEGORY_LABELS, local_tz
from content_queue.registry import Registry
from content_queue.settings import Settings
from content_queue.store import NOTICE_STATE_LABELS, Store, utcnow
from dashboard import actions, queries
from dashboard._lang import (
    LANG_COOKIE,
    LANG_COOKIE_SECONDS,
    html_lang,
    parse_lang,
    request_lang,
    server_lang,
    template_globals,
)
from dashboard.export import csv_chunks, xlsx_bytes
from dashboard.metrics import CONTENT_TYPE as METRICS_TYPE
from dashboard.metrics import render_metrics
from dashboard.scope import Scope
from dispatcher.feed_server import RegistryLoader, is_public_path, not_found, public_reply
from dispatcher.service import Ringer

__all__ = ["DashboardContext", "create_app"]

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
SESSION_COOKIE = "vc_session"
LOGIN_CSRF_COOKIE = "vc_login_csrf"
CSRF_HEADER = "x-csrf-token"


@dataclass
class DashboardContext:
    settings: Settings
    store: Store
    registry_loader: RegistryLoader
    accounts: Accounts
    ring: Ringer | None

    @property
    def registry(self) -> Registry:
        return self.registry_loader()


class LoginRequired(Exception):
    pass


class CsrfRefused(NotAllowed):
    """A form or API call without this session's CSRF token."""


class BadRequest(VillagecastError):
    """A malformed parameter (a date that is not YYYY-MM-DD, a period that ends first)."""


@dataclass(frozen=True)
class Viewer:
    """The signed-in person for one request, with their scope."""

    session: SessionInfo
    scope: Scope
    token: str

    @property
    def principal(self) -> Principal:
        return self.session.principal


def _ctx(request: Request) -> DashboardContext:
    ctx: DashboardContext = request.app.state.ctx
    return ctx


def _client(request: Request) -> str:
    return request.client.host if request.client else ""


def viewer(request: Request) -> Viewer:
    ctx = _ctx(request)
    token = request.cookies.get(SESSION_COOKIE, "")
    info = (
        ctx.accounts.session(token, idle=timedelta(minutes=ctx.settings.web_session_idle_minutes))
        if token
        else None
    )
    if info is None:
        raise LoginRequired
    return Viewer(info, Scope.of(info.principal, ctx.registry), token)


ViewerDep = Annotated[Viewer, Depends(viewer)]


def lang_of(request: Request) -> Lang:
    """This request's language (``?lang=``, the ``vc_lang`` cookie, the server default;
    API calls also read ``Accept-Language``)."""
    default = server_lang(_ctx(request).settings.lang)
    return request_lang(request, default, api=request.url.path.startswith("/api/"))


def _lang_param(
    lang: Annotated[
        str | None,
        Query(
            description="zh or en: the language of the labels "
            "(default: the vc_lang cookie, then Accept-Language, then the server's)"
        ),
    ] = None,
) -> None:
    """Declares ``?lang=`` in the OpenAPI schema; :func:`lang_of` reads it."""


LangDoc = [Depends(_lang_param)]


def _check_csrf(v: Viewer, supplied: str | None) -> None:
    if not supplied or not hmac.compare_digest(supplied, v.session.csrf_token):
        raise CsrfRefused(
            tr(
                "CSRF 校验失败：请刷新页面后再提交（CSRF token missing or wrong）",
                "CSRF token missing or wrong: reload the page and submit again",
            )
        )


def csrf_header(request: Request, v: ViewerDep) -> Viewer:
    """For API calls that change something: the session's token in ``X-CSRF-Token``."""
    _check_csrf(v, request.headers.get(CSRF_HEADER))
    return v


# -- templates -----------------------------------------------------------------------------


def _ts(value: datetime | None, fmt: str = "%Y-%m-%d %H:%M") -> str:
    if value is None:
        return "-"
    return value.astimezone(local_tz()).strftime(fmt)


templates = Jinja2Templates(directory=str(HERE / "templates"))
_jinja_globals, _jinja_filters = template_globals(
    kinds=queries.KIND_LABELS,
    roles={r.value: t for r, t in ROLE_LABELS.items()},
    categories={c.value: t for c, t in CATEGORY_LABELS.items()},
    notice_states=NOTICE_STATE_LABELS,
    device_states=queries.DEVICE_STATE_LABELS,
)
templates.env.globals.update(_jinja_globals)
templates.env.filters.update(_jinja_filters)
templates.env.filters["ts"] = _ts


def _page(
    request: Request, name: str, v: Viewer | None, *, status_code: int = 200, **context: Any
) -> HTMLResponse:
    lang = lang_of(request)
    base = {
        "viewer": v,
        "csrf_token": v.session.csrf_token if v else "",
        "path": request.url.path,
        "lang": lang,
        "html_lang": html_lang(lang),
    }
    return templates.TemplateResponse(request, name, {**base, **context}, status_code=status_code)


def _say(request: Request, text: Text) -> str:
    return text.render(lang_of(request))


def _back(url: str, **params: str) -> RedirectResponse:
    """A 303 back to a page of ours (never to another site), with a message."""
    path = urlsplit(url).path if url.startswith("/") and not url.startswith("//") else "/"
    query = "&".join(f"{k}={quote(v)}" for k, v in params.items())
    return RedirectResponse(f"{path}?{query}" if query else path, status_code=303)


# -- the app -------------------------------------------------------------------------------


class _PublicListenerOnly:
    """On the listener meant for the TV platform and loudspeakers (``feed_host:feed_port``,
    often reachable from outside), answer only the public paths; the dashboard itself is
    served on ``web_host:web_port`` alone."""

    def __init__(self, app: ASGIApp, public_ports: frozenset[int]) -> None:
        self.app = app
        self.public_ports = public_ports

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.public_ports:
            server = scope.get("server")
            if server and server[1] in self.public_ports and not is_public_path(scope["path"]):
                reply = not_found()
                await Response(reply.body, reply.status, reply.headers)(scope, receive, send)
                return
        await self.app(scope, receive, send)


_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)


def create_app(
    *,
    settings: Settings,
    store: Store,
    registry_loader: RegistryLoader,
    ring: Ringer | None = None,
    accounts: Accounts | None = None,
    public_ports: frozenset[int] = frozenset(),
) -> FastAPI:
    """The dashboard app. ``ring`` rings workers after a retry or a withdrawal (default:
    Celery doorbells for ``settings``); ``public_ports`` are local ports that serve only
    the public paths."""
    if ring is None:
        from dispatcher.doorbell import ring as doorbell_ring

        def ring(ids: Any, countdown: float | None) -> object:
            return doorbell_ring(ids, settings=settings, countdown=countdown)

    app = FastAPI(
        title="villagecast 乡镇监控 API",
        version="1",
        description=(
            "Township dashboard API. Sign in with POST /api/v1/login (JSON) or the login "
            "page; send the session's CSRF token as X-CSRF-Token on every POST."
        ),
        openapi_url="/api/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    app.state.ctx = DashboardContext(
        settings=settings,
        store=store,
        registry_loader=registry_loader,
        accounts=accounts or Accounts(store),
        ring=ring,
    )
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    @app.middleware("http")
    async def _headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        chosen = parse_lang(request.query_params.get("lang"))
        response = await call_next(request)
        path = request.url.path
        if chosen is not None and not is_public_path(path) and not path.startswith("/api/"):
            # Remembered for the next pages and across redirects (a 303 to the login page);
            # an API call's ?lang= is for that call alone.
            response.set_cookie(
                LANG_COOKIE,
                chosen,
                max_age=LANG_COOKIE_SECONDS,
                httponly=True,
                samesite="lax",
                secure=settings.web_secure_cookies,
                path="/",
            )
        h = response.headers
        h.setdefault("X-Content-Type-Options", "nosniff")
        h.setdefault("Referrer-Policy", "same-origin")
        h.setdefault("X-Frame-Options", "DENY")
        if not is_public_path(request.url.path):
            h.setdefault("Content-Security-Policy", _CSP)
            if not request.url.path.startswith("/static/"):
                h.setdefault("Cache-Control", "no-store")
        return response

    @app.exception_handler(LoginRequired)
    async def _login_required(request: Request, exc: LoginRequired) -> Response:
        if request.url.path.startswith("/api/") or request.url.path.startswith("/export/"):
            return JSONResponse(
                {"detail": "请先登录（login required）", "detail_en": "login required"},
                status_code=401,
            )
        return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)

    @app.exception_handler(VillagecastError)
    async def _refused(request: Request, exc: VillagecastError) -> Response:
        status = (
            404
            if isinstance(exc, NotFoundError)
            else 403
            if isinstance(exc, NotAllowed)
            else 409
            if isinstance(exc, StateError)
            else 400
        )
        if request.url.path.startswith("/api/"):
            return JSONResponse(
                {"detail": exc.render("zh"), "detail_en": exc.render("en")}, status_code=status
            )
        return _page(
            request,
            "error.html",
            None,
            status_code=status,
            message=exc.render(lang_of(request)),
            status=status,
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        # The JSON API keeps FastAPI's documented 422 body; a page gets a page: a malformed
        # id in the path is a page that does not exist, anything else a bad request.
        if request.url.path.startswith("/api/"):
            return await request_validation_exception_handler(request, exc)
        in_path = any(e.get("loc", ("",))[0] == "path" for e in exc.errors())
        status = 404 if in_path else 400
        message = (
            tr("没有这个页面", "no such page")
            if in_path
            else tr(
                "请求参数无效：{f}",
                "invalid request parameters: {f}",
                f="、".join(str(e.get("loc", ("?",))[-1]) for e in exc.errors()),
            )
        )
        return _page(
            request,
            "error.html",
            None,
            status_code=status,
            message=message.render(lang_of(request)),
            status=status,
        )

    _public_routes(app)
    from dashboard.wechat_events import add_wechat_event_routes

    add_wechat_event_routes(app)
    _auth_routes(app)
    _page_routes(app)
    _api_routes(app)
    if public_ports:
        app.add_middleware(_PublicListenerOnly, public_ports=public_ports)
    return app


# -- public --------------------------------------------------------------------------------


def _public_routes(app: FastAPI) -> None:
    def public(request: Request, path: str) -> Response:
        ctx = _ctx(request)
        reply = (
            public_reply(
                path,
                {k.lower(): v for k, v in request.headers.items()},
                settings=ctx.settings,
                store=ctx.store,
                registry_loader=ctx.registry_loader,
                head=request.method == "HEAD",
            )
            or not_found()
        )
        body = b"" if request.method == "HEAD" else reply.body
        return Response(
            body,
            reply.status,
            headers=reply.headers,
            background=BackgroundTask(reply.after) if reply.after else None,
        )

    def public_path(request: Request) -> Response:
        # The raw path, decoded once by public_reply as the stdlib server does (ASGI's
        # "path" is already decoded; decoding it again would turn %252e into '.').
        raw = request.scope.get("raw_path") or request.url.path.encode()
        return public(request, raw.decode("latin-1").split("?", 1)[0])

    # GET is documented; HEAD answers the same without a body (the platform probes).
    for method, doc in (("GET", True), ("HEAD", False)):
        app.add_api_route("/healthz", public_path, methods=[method], include_in_schema=False)
        app.add_api_route(
            "/feeds/{name}",
            public_path,
            methods=[method],
            include_in_schema=doc,
            tags=["public"],
            summary="A village's TV feed (Atom, RSS 2.0 or JSON Feed); a GET confirms it",
        )
        app.add_api_route(
            "/audio/{name}",
            public_path,
            methods=[method],
            include_in_schema=doc,
            tags=["public"],
            summary="A synthesized clip, named by the SHA-256 of its content",
        )

    @app.get("/metrics", tags=["public"], response_class=PlainTextResponse)
    def metrics(request: Request) -> Response:
        """Prometheus metrics: loopback clients, or ``Authorization: Bearer <token>`` with
        the token in the environment variable named by ``metrics_token_env``."""
        ctx = _ctx(request)
        token = os.environ.get(ctx.settings.metrics_token_env, "")
        supplied = request.headers.get("authorization", "")
        if token:
            ok = hmac.compare_digest(supplied.encode(), f"Bearer {token}".encode())
        else:
            ok = _client(request) in ("127.0.0.1", "::1")
        if not ok:
            return PlainTextResponse("forbidden\n", status_code=403)
        return Response(render_metrics(ctx.store), media_type=METRICS_TYPE)


# -- login ---------------------------------------------------------------------------------


def _safe_next(value: str | None) -> str:
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/overview"


def _set_session_cookie(response: Response, ctx: DashboardContext, token: str) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(ctx.settings.web_session_hours * 3600),
        httponly=True,
        samesite="lax",
        secure=ctx.settings.web_secure_cookies,
        path="/",
    )


class LoginBody(BaseModel):
    username: str
    password: str


class SessionOut(BaseModel):
    username: str
    display_name: str
    role: str
    township_id: str | None
    villages: list[str]
    csrf_token: str
    expires_at: datetime


def _session_out(info: SessionInfo) -> SessionOut:
    p = info.principal
    return SessionOut(
        username=p.username,
        display_name=p.display_name,
        role=p.role.value,
        township_id=p.township_id,
        villages=list(p.villages),
        csrf_token=info.csrf_token,
        expires_at=info.expires_at,
    )


def _login(ctx: DashboardContext, request: Request, username: str, password: str) -> Any:
    """(token, info) for good credentials; raises LoginRefused; None for bad ones."""
    principal = ctx.accounts.authenticate(username, password, address=_client(request))
    if principal is None:
        return None
    return ctx.accounts.create_session(
        principal,
        lifetime=timedelta(hours=ctx.settings.web_session_hours),
        address=_client(request),
        user_agent=request.headers.get("user-agent", ""),
    )


def _auth_routes(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/overview", status_code=303)

    @app.get("/login", include_in_schema=False, response_class=HTMLResponse)
    def login_page(request: Request, next: str | None = None, msg: str | None = None) -> Response:
        token = secrets.token_urlsafe(24)
        response = _page(
            request, "login.html", None, login_csrf=token, next=_safe_next(next), msg=msg
        )
        response.set_cookie(
            LOGIN_CSRF_COOKIE,
            token,
            max_age=3600,
            httponly=True,
            samesite="strict",
            secure=_ctx(request).settings.web_secure_cookies,
            path="/login",
        )
        return response

    @app.post("/login", include_in_schema=False)
    def login_form(
        request: Request,
        username: Annotated[str, Form()] = "",
        password: Annotated[str, Form()] = "",
        csrf_token: Annotated[str, Form()] = "",
        next: Annotated[str, Form()] = "/overview",
    ) -> Response:
        ctx = _ctx(request)
        cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
        if not csrf_token or not cookie or not hmac.compare_digest(csrf_token, cookie):
            return _back(
                "/login",
                msg=_say(request, tr("页面已过期，请重新登录", "Page expired: sign in again")),
            )
        try:
            result = _login(ctx, request, username.strip(), password)
        except LoginRefused as exc:
            response = _back("/login", msg=exc.render(lang_of(request)))
            response.status_code = 303
            return response
        if result is None:
            return _back(
                "/login", msg=_say(request, tr("用户名或密码不对", "Wrong username or password"))
            )
        token, _info = result
        response = RedirectResponse(_safe_next(next), status_code=303)
        _set_session_cookie(response, ctx, token)
        response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
        return response

    @app.post("/logout", include_in_schema=False)
    def logout_form(
        request: Request, v: ViewerDep, csrf_token: Annotated[str, Form()] = ""
    ) -> Response:
        _check_csrf(v, csrf_token)
        _ctx(request).accounts.end_session(v.token)
        response = _back("/login", msg=_say(request, tr("已退出", "Signed out")))
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    @app.post("/api/v1/login", tags=["session"], response_model=SessionOut)
    def api_login(request: Request, body: LoginBody) -> Response:
        """Sign in; sets the session cookie and returns the CSRF token for later POSTs.

        Only JSON is accepted here, which a cross-site form cannot send."""
        ctx = _ctx(request)
        try:
            result = _login(ctx, request, body.username.strip(), body.password)
        except LoginRefused as exc:
            return JSONResponse(
                {"detail": exc.render("zh"), "detail_en": exc.render("en")},
                status_code=429,
                headers={"Retry-After": str(int(exc.retry_after))},
            )
        if result is None:
            return JSONResponse(
                {"detail": "用户名或密码不对", "detail_en": "wrong username or password"},
                status_code=401,
            )
        token, info = result
        response = JSONResponse(_session_out(info).model_dump(mode="json"))
        _set_session_cookie(response, ctx, token)
        return response

    @app.post("/api/v1/logout", tags=["session"])
    def api_logout(request: Request, v: Annotated[Viewer, Depends(csrf_header)]) -> Response:
        _ctx(request).accounts.end_session(v.token)
        response = JSONResponse({"ok": True})
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    @app.get("/api/v1/me", tags=["session"])
    def me(v: ViewerDep) -> SessionOut:
        return _session_out(v.session)


# -- pages ---------------------------------------------------------------------------------


def _parse_day(value: str | None, *, end: bool = False) -> datetime | None:
    """A YYYY-MM-DD date in the county's time zone (``end``: the start of the next day)."""
    if not value:
        return None
    try:
        day = datetime.strptime(value, "%Y-%m-%d").date()
    except ValueError:
        raise BadRequest(
            tr("日期格式应为 YYYY-MM-DD：{v}", "dates are written YYYY-MM-DD: {v}", v=value)
        ) from None
    start = datetime.combine(day, time(0, 0), tzinfo=local_tz())
    return start + timedelta(days=1) if end else start


def _filters(
    township: str | None,
    village: str | None,
    category: str | None,
    channel: str | None,
    days: int | None,
    since: str | None,
    until: str | None,
) -> queries.Filters:
    return queries.Filters.make(
        township=township,
        village=village,
        category=category,
        channel=channel,
        days=days,
        since=_parse_day(since),
        until=_parse_day(until, end=True),
    )


def filter_params(
    township: str | None = None,
    village: str | None = None,
    category: str | None = None,
    channel: str | None = None,
    days: Annotated[int | None, Query(ge=1, le=366)] = None,
    since: Annotated[str | None, Query(description="YYYY-MM-DD")] = None,
    until: Annotated[str | None, Query(description="YYYY-MM-DD (inclusive)")] = None,
) -> queries.Filters:
    return _filters(township, village, category, channel, days, since, until)


FiltersDep = Annotated[queries.Filters, Depends(filter_params)]


def _offline_alert(ctx: DashboardContext) -> timedelta:
    return timedelta(minutes=ctx.settings.offline_alert_minutes)


def _places(ctx: DashboardContext, scope: Scope) -> dict[str, Any]:
    """Townships and villages the filter menus offer (only those in scope)."""
    registry = ctx.registry
    townships = [
        (t.id, t.name)
        for t in registry.townships.values()
        if any(scope.allows_village(v.id) for v in t.villages)
    ]
    villages = [(vid, v.name) for vid, v in registry.villages.items() if scope.allows_village(vid)]
    return {"townships": townships, "villages": villages}


def _page_routes(app: FastAPI) -> None:
    @app.get("/overview", include_in_schema=False, response_class=HTMLResponse)
    def overview_page(
        request: Request, v: ViewerDep, f: FiltersDep, partial: bool = False
    ) -> Response:
        ctx = _ctx(request)
        data = queries.overview(ctx.store, ctx.registry, v.scope, f, lang=lang_of(request))
        name = "_overview_live.html" if partial else "overview.html"
        return _page(request, name, v, o=data, **_places(ctx, v.scope), q=request.query_params)

    @app.get("/notices/{notice_id}", include_in_schema=False, response_class=HTMLResponse)
    def notice_page(
        request: Request,
        v: ViewerDep,
        notice_id: int,
        partial: bool = False,
        msg: str | None = None,
        err: str | None = None,
    ) -> Response:
        ctx = _ctx(request)
        data = queries.notice_detail(
            ctx.store, ctx.registry, v.scope, notice_id, lang=lang_of(request)
        )
        if data is None:
            raise NotFoundError(tr("通知 {id} 不存在", "notice {id} does not exist", id=notice_id))
        name = "_notice_live.html" if partial else "notice.html"
        return _page(request, name, v, n=data, msg=msg, err=err)

    @app.post("/deliveries/{delivery_id}/retry", include_in_schema=False)
    def retry_form(
        request: Request,
        v: ViewerDep,
        delivery_id: int,
        csrf_token: Annotated[str, Form()] = "",
    ) -> Response:
        _check_csrf(v, csrf_token)
        ctx = _ctx(request)
        found = queries.delivery_in_scope(ctx.store, v.scope, delivery_id)
        if found is None:
            raise NotFoundError(
                tr("投递 {id} 不存在", "delivery {id} does not exist", id=delivery_id)
            )
        back = f"/notices/{found.notice_id}"
        try:
            actions.retry_delivery(delivery_id, store=ctx.store, scope=v.scope, ring=ctx.ring)
        except (StateError, NotAllowed) as exc:
            return _back(back, err=exc.render(lang_of(request)))
        return _back(
            back,
            msg=_say(
                request,
                tr("已重新发送投递 {id}", "Delivery {id} is being sent again", id=delivery_id),
            ),
        )

    @app.post("/notices/{notice_id}/withdraw", include_in_schema=False)
    def withdraw_form(
        request: Request,
        v: ViewerDep,
        notice_id: int,
        csrf_token: Annotated[str, Form()] = "",
        reason: Annotated[str, Form()] = "",
    ) -> Response:
        _check_csrf(v, csrf_token)
        ctx = _ctx(request)
        back = f"/notices/{notice_id}"
        try:
            done = actions.withdraw(
                notice_id, store=ctx.store, scope=v.scope, ring=ctx.ring, reason=reason.strip()
            )
        except (StateError, NotAllowed) as exc:
            return _back(back, err=exc.render(lang_of(request)))
        w = done.withdrawal
        said = tr(
            "已撤回：{c} 个未发出的投递已取消，{r} 个端点正在撤下",
            "Withdrawn: {c} deliveries not yet sent were cancelled, {r} endpoints are "
            "taking it down",
            c=w.cancelled,
            r=len(w.recalls),
        )
        return _back(back, msg=_say(request, said))

    @app.get("/review", include_in_schema=False, response_class=HTMLResponse)
    def review_page(
        request: Request, v: ViewerDep, msg: str | None = None, err: str | None = None
    ) -> Response:
        ctx = _ctx(request)
        rows = actions.awaiting_review(ctx.store, ctx.registry, v.scope.principal)
        return _page(
            request,
            "review.html",
            v,
            rows=rows,
            me=v.scope.principal.username,
            msg=msg,
            err=err,
        )

    @app.post("/notices/{notice_id}/approve", include_in_schema=False)
    def approve_form(
        request: Request, v: ViewerDep, notice_id: int, csrf_token: Annotated[str, Form()] = ""
    ) -> Response:
        _check_csrf(v, csrf_token)
        ctx = _ctx(request)
        try:
            actions.approve(
                notice_id,
                store=ctx.store,
                registry=ctx.registry,
                principal=v.scope.principal,
                ring=ctx.ring,
            )
        except (StateError, NotAllowed) as exc:
            return _back("/review", err=exc.render(lang_of(request)))
        said = tr(
            "通知 {id} 已审核通过，正在发出",
            "Notice {id} is approved and going out",
            id=notice_id,
        )
        return _back(f"/notices/{notice_id}", msg=_say(request, said))

    @app.post("/notices/{notice_id}/reject", include_in_schema=False)
    def reject_form(
        request: Request,
        v: ViewerDep,
        notice_id: int,
        csrf_token: Annotated[str, Form()] = "",
        reason: Annotated[str, Form()] = "",
    ) -> Response:
        _check_csrf(v, csrf_token)
        ctx = _ctx(request)
        try:
            actions.reject(
                notice_id,
                store=ctx.store,
                registry=ctx.registry,
                principal=v.scope.principal,
                reason=reason,
            )
        except (StateError, NotAllowed, VillagecastError) as exc:
            return _back("/review", err=exc.render(lang_of(request)))
        said = tr("通知 {id} 已驳回", "Notice {id} was rejected", id=notice_id)
        return _back("/review", msg=_say(request, said))

    @app.get("/devices", include_in_schema=False, response_class=HTMLResponse)
    def devices_page(
        request: Request,
        v: ViewerDep,
        township: str | None = None,
        village: str | None = None,
        state: str | None = None,
        partial: bool = False,
    ) -> Response:
        ctx = _ctx(request)
        rows = queries.devices(
            ctx.store,
            ctx.registry,
            v.scope,
            offline_alert=_offline_alert(ctx),
            township=township,
            village=village,
            state=state,
        )
        name = "_devices_live.html" if partial else "devices.html"
        return _page(
            request,
            name,
            v,
            rows=rows,
            alert_minutes=ctx.settings.offline_alert_minutes,
            q=request.query_params,
            **_places(ctx, v.scope),
        )

    @app.get("/devices/{device_id}", include_in_schema=False, response_class=HTMLResponse)
    def device_page(request: Request, v: ViewerDep, device_id: str) -> Response:
        ctx = _ctx(request)
        data = queries.device_detail(
            ctx.store, ctx.registry, v.scope, device_id, offline_alert=_offline_alert(ctx)
        )
        if data is None:
            raise NotFoundError(tr("设备 {id} 不存在", "no device {id}", id=device_id))
        return _page(request, "device.html", v, d=data)

    @app.get("/failures", include_in_schema=False, response_class=HTMLResponse)
    def failures_page(request: Request, v: ViewerDep, partial: bool = False) -> Response:
        ctx = _ctx(request)
        data = queries.failures(
            ctx.store,
            ctx.registry,
            v.scope,
            offline_alert=_offline_alert(ctx),
            lang=lang_of(request),
        )
        name = "_failures_live.html" if partial else "failures.html"
        return _page(request, name, v, f=data, can_retry=v.principal.can(Action.RETRY))

    @app.get("/export", include_in_schema=False, response_class=HTMLResponse)
    def export_page(request: Request, v: ViewerDep) -> Response:
        today = datetime.now(local_tz()).date()
        return _page(
            request,
            "export.html",
            v,
            since=(today.replace(day=1)).isoformat(),
            until=today.isoformat(),
        )

    def _period(since: str | None, until: str | None) -> tuple[datetime, datetime]:
        start = _parse_day(since) or (utcnow() - timedelta(days=30))
        end = _parse_day(until, end=True) or utcnow() + timedelta(days=1)
        if end <= start:
            raise BadRequest(tr("结束日期早于开始日期", "the period ends before it starts"))
        return start, end

    @app.get(
        "/export/deliveries.csv",
        tags=["export"],
        dependencies=LangDoc,
        response_class=StreamingResponse,
        responses={200: {"content": {"text/csv": {}}}},
    )
    def export_csv(
        request: Request,
        v: ViewerDep,
        since: Annotated[str | None, Query(description="YYYY-MM-DD")] = None,
        until: Annotated[str | None, Query(description="YYYY-MM-DD (inclusive)")] = None,
    ) -> Response:
        """Deliveries of the notices published in the period (your scope), as CSV."""
        ctx = _ctx(request)
        start, end = _period(since, until)
        lang = lang_of(request)
        rows = queries.export_rows(
            ctx.store, ctx.registry, v.scope, since=start, until=end, lang=lang
        )
        name = f"villagecast-deliveries-{since or 'recent'}-{until or 'now'}.csv"
        return StreamingResponse(
            csv_chunks(rows, lang=lang),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    @app.get(
        "/export/deliveries.xlsx",
        tags=["export"],
        dependencies=LangDoc,
        responses={200: {"content": {"application/vnd.ms-excel": {}}}},
    )
    def export_xlsx(
        request: Request,
        v: ViewerDep,
        since: Annotated[str | None, Query(description="YYYY-MM-DD")] = None,
        until: Annotated[str | None, Query(description="YYYY-MM-DD (inclusive)")] = None,
    ) -> Response:
        """The same deliveries as an Excel workbook."""
        ctx = _ctx(request)
        start, end = _period(since, until)
        lang = lang_of(request)
        rows = queries.export_rows(
            ctx.store, ctx.registry, v.scope, since=start, until=end, lang=lang
        )
        name = f"villagecast-deliveries-{since or 'recent'}-{until or 'now'}.xlsx"
        return Response(
            xlsx_bytes(rows, lang=lang),
            media_type="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )


# -- JSON API ------------------------------------------------------------------------------


class RetryOut(BaseModel):
    id: int
    notice_id: int
    status: str
    attempts: int


class WithdrawBody(BaseModel):
    reason: str = ""


class ReviewItem(BaseModel):
    id: int
    title: str
    category: str
    author: str
    created_at: datetime
    revision: int
    supersedes: int | None


class ReviewOut(BaseModel):
    notice_id: int
    state: str


class WithdrawOut(BaseModel):
    notice_id: int
    cancelled: int
    recalls: list[int]
    queued: bool


def _api_routes(app: FastAPI) -> None:
    @app.get("/api/v1/overview", tags=["read"], dependencies=LangDoc)
    def api_overview(request: Request, v: ViewerDep, f: FiltersDep) -> queries.Overview:
        ctx = _ctx(request)
        return queries.overview(ctx.store, ctx.registry, v.scope, f, lang=lang_of(request))

    @app.get("/api/v1/notices/{notice_id}", tags=["read"], dependencies=LangDoc)
    def api_notice(request: Request, v: ViewerDep, notice_id: int) -> queries.NoticeDetail:
        ctx = _ctx(request)
        data = queries.notice_detail(
            ctx.store, ctx.registry, v.scope, notice_id, lang=lang_of(request)
        )
        if data is None:
            raise NotFoundError(tr("通知 {id} 不存在", "notice {id} does not exist", id=notice_id))
        return data

    @app.get("/api/v1/devices", tags=["read"])
    def api_devices(
        request: Request,
        v: ViewerDep,
        township: str | None = None,
        village: str | None = None,
        state: str | None = None,
    ) -> list[queries.DeviceRow]:
        ctx = _ctx(request)
        return queries.devices(
            ctx.store,
            ctx.registry,
            v.scope,
            offline_alert=_offline_alert(ctx),
            township=township,
            village=village,
            state=state,
        )

    @app.get("/api/v1/devices/{device_id}", tags=["read"])
    def api_device(request: Request, v: ViewerDep, device_id: str) -> queries.DeviceDetail:
        ctx = _ctx(request)
        data = queries.device_detail(
            ctx.store, ctx.registry, v.scope, device_id, offline_alert=_offline_alert(ctx)
        )
        if data is None:
            raise NotFoundError(tr("设备 {id} 不存在", "no device {id}", id=device_id))
        return data

    @app.get("/api/v1/failures", tags=["read"], dependencies=LangDoc)
    def api_failures(request: Request, v: ViewerDep) -> queries.Failures:
        ctx = _ctx(request)
        return queries.failures(
            ctx.store,
            ctx.registry,
            v.scope,
            offline_alert=_offline_alert(ctx),
            lang=lang_of(request),
        )

    @app.post("/api/v1/deliveries/{delivery_id}/retry", tags=["act"])
    def api_retry(
        request: Request, v: Annotated[Viewer, Depends(csrf_header)], delivery_id: int
    ) -> RetryOut:
        """Move a failed delivery back to pending (attempts reset, audited) and ring."""
        ctx = _ctx(request)
        d = actions.retry_delivery(delivery_id, store=ctx.store, scope=v.scope, ring=ctx.ring)
        return RetryOut(id=d.id, notice_id=d.notice_id, status=d.status, attempts=d.attempts)

    @app.get("/api/v1/review", tags=["read"])
    def api_review(request: Request, v: ViewerDep) -> list[ReviewItem]:
        """Submitted notices this account may review, oldest first."""
        ctx = _ctx(request)
        return [
            ReviewItem(
                id=n.id,
                title=n.title,
                category=n.category,
                author=n.author,
                created_at=n.created_at,
                revision=n.revision,
                supersedes=n.supersedes_id,
            )
            for n in actions.awaiting_review(ctx.store, ctx.registry, v.scope.principal)
        ]

    @app.post("/api/v1/notices/{notice_id}/approve", tags=["act"])
    def api_approve(
        request: Request, v: Annotated[Viewer, Depends(csrf_header)], notice_id: int
    ) -> ReviewOut:
        """Approve a notice someone else drafted; it is dispatched at once."""
        ctx = _ctx(request)
        n = actions.approve(
            notice_id,
            store=ctx.store,
            registry=ctx.registry,
            principal=v.scope.principal,
            ring=ctx.ring,
        )
        return ReviewOut(notice_id=n.id, state=n.state)

    @app.post("/api/v1/notices/{notice_id}/reject", tags=["act"])
    def api_reject(
        request: Request,
        v: Annotated[Viewer, Depends(csrf_header)],
        notice_id: int,
        body: WithdrawBody,
    ) -> ReviewOut:
        """Reject a submitted notice with the reason (required)."""
        ctx = _ctx(request)
        n = actions.reject(
            notice_id,
            store=ctx.store,
            registry=ctx.registry,
            principal=v.scope.principal,
            reason=body.reason,
        )
        return ReviewOut(notice_id=n.id, state=n.state)

    @app.post("/api/v1/notices/{notice_id}/withdraw", tags=["act"])
    def api_withdraw(
        request: Request,
        v: Annotated[Viewer, Depends(csrf_header)],
        notice_id: int,
        body: WithdrawBody,
    ) -> WithdrawOut:
        """Withdraw a notice everywhere (recall deliveries for what went out)."""
        ctx = _ctx(request)
        done = actions.withdraw(
            notice_id, store=ctx.store, scope=v.scope, ring=ctx.ring, reason=body.reason
        )
        return WithdrawOut(
            notice_id=notice_id,
            cancelled=done.withdrawal.cancelled,
            recalls=[r.id for r in done.withdrawal.recalls],
            queued=done.rung,
        )
