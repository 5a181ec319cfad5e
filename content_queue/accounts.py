"""Accounts: who may sign in, with which role, over which villages; sessions; login limits.

One set of accounts serves the dashboard (#6) and the review rules of #7. A role says what
a person may do, a scope says where:

=================  ========================  =============================================
role               scope                     may
=================  ========================  =============================================
secretary          their village(s)          read, draft and submit, send an emergency
                                             without review (with a stated reason)
reviewer           their village(s)          read, approve or reject others' notices
township_officer   one township              all of the above, retry a failed delivery,
                                             withdraw, correct
county_admin       the whole county          everything, county-wide
=================  ========================  =============================================

Nobody approves a notice they drafted (the two-person rule, enforced in the store).

Passwords are hashed with Argon2id (pwdlib). Sessions are rows in ``web_sessions`` keyed
by the SHA-256 of a random token, so the database never holds a usable cookie. Failed
logins are counted in ``rate_events`` (per account and per client address), so the limit
holds across every process that serves the dashboard.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher
from sqlalchemy import delete, func, select, update

from content_queue.db import RateEvent, User, WebSession
from content_queue.errors import NotFoundError, VillagecastError
from content_queue.i18n import Text, tr
from content_queue.registry import ID_PATTERN, Registry
from content_queue.store import Store, utcnow

__all__ = [
    "ROLE_LABELS",
    "AccountError",
    "Accounts",
    "Action",
    "LoginLimits",
    "LoginRefused",
    "NotAllowed",
    "Principal",
    "Role",
    "SessionInfo",
    "UserView",
    "check_password_strength",
]


class Role(StrEnum):
    SECRETARY = "secretary"
    REVIEWER = "reviewer"
    TOWNSHIP_OFFICER = "township_officer"
    COUNTY_ADMIN = "county_admin"


ROLE_LABELS: dict[Role, Text] = {
    Role.SECRETARY: tr("村支书/村会计", "village secretary"),
    Role.REVIEWER: tr("村务监督委员会成员", "reviewer"),
    Role.TOWNSHIP_OFFICER: tr("乡镇工作人员", "township officer"),
    Role.COUNTY_ADMIN: tr("县级管理员", "county administrator"),
}


class Action(StrEnum):
    """What a person may do."""

    VIEW = "view"
    RETRY = "retry"
    WITHDRAW = "withdraw"
    DRAFT = "draft"
    """Write a notice (it goes to review when its category needs review)."""
    APPROVE = "approve"
    """Approve or reject a notice someone else drafted."""
    CORRECT = "correct"
    BYPASS_REVIEW = "bypass_review"
    """Send an emergency without review, with a stated reason."""


_ALLOWED: dict[Role, frozenset[Action]] = {
    Role.SECRETARY: frozenset({Action.VIEW, Action.DRAFT, Action.BYPASS_REVIEW}),
    Role.REVIEWER: frozenset({Action.VIEW, Action.APPROVE}),
    Role.TOWNSHIP_OFFICER: frozenset(Action),
    Role.COUNTY_ADMIN: frozenset(Action),
}


class AccountError(VillagecastError):
    """An account cannot be created or changed as asked."""

    exit_code = 2


class NotAllowed(VillagecastError):
    """The signed-in person's role does not allow this action."""

    exit_code = 2


class LoginRefused(VillagecastError):
    """Too many failed logins for this account or address: try again later."""

    def __init__(self, text: Text, *, retry_after: float) -> None:
        super().__init__(text)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Principal:
    """A signed-in person: what every query and action is checked against."""

    user_id: int
    username: str
    display_name: str
    role: Role
    township_id: str | None = None
    villages: tuple[str, ...] = ()

    def can(self, action: Action) -> bool:
        return action in _ALLOWED[self.role]

    @property
    def county_wide(self) -> bool:
        return self.role == Role.COUNTY_ADMIN

    def village_ids(self, registry: Registry) -> frozenset[str] | None:
        """The villages this person covers; None means every village of the county."""
        if self.role == Role.COUNTY_ADMIN:
            return None
        if self.role == Role.TOWNSHIP_OFFICER:
            township = registry.townships.get(self.township_id or "")
            return frozenset(v.id for v in township.villages) if township else frozenset()
        return frozenset(self.villages)

    def official_accounts(self, registry: Registry) -> frozenset[str] | None:
        """Official-account endpoints this person answers for (None: all of them).

        An official account's deliveries carry no village (one article serves many), so
        they belong to a township only when everything the account covers lies in it; an
        account spanning townships is the county's. Village-scoped people see none.
        """
        if self.role == Role.COUNTY_ADMIN:
            return None
        if self.role != Role.TOWNSHIP_OFFICER or self.township_id is None:
            return frozenset()
        mine = self.village_ids(registry) or frozenset()
        return frozenset(
            oa.id
            for oa in registry.official_accounts.values()
            if (covered := registry.covered_villages(oa)) and covered <= mine
        )

    def label(self) -> str:
        return self.display_name or self.username


@dataclass(frozen=True)
class UserView:
    id: int
    username: str
    display_name: str
    role: Role
    township_id: str | None
    villages: list[str]
    active: bool
    created_at: datetime
    last_login_at: datetime | None

    def principal(self) -> Principal:
        return Principal(
            user_id=self.id,
            username=self.username,
            display_name=self.display_name,
            role=self.role,
            township_id=self.township_id,
            villages=tuple(self.villages),
        )


@dataclass(frozen=True)
class SessionInfo:
    principal: Principal
    csrf_token: str
    expires_at: datetime


@dataclass(frozen=True)
class LoginLimits:
    """Failed logins allowed within ``window`` before the account or address is held."""

    per_account: int = 5
    per_address: int = 20
    window: timedelta = field(default=timedelta(minutes=15))


_USERNAME = ID_PATTERN
MIN_PASSWORD_CHARS = 10


def check_password_strength(password: str, *, username: str) -> None:
    problems: list[Text] = []
    if len(password) < MIN_PASSWORD_CHARS:
        problems.append(
            tr(
                "密码至少 {n} 个字符",
                "a password needs at least {n} characters",
                n=MIN_PASSWORD_CHARS,
            )
        )
    if password.strip().lower() == username.lower():
        problems.append(tr("密码不能与用户名相同", "the password must not be the username"))
    if len(set(password)) < 4:
        problems.append(tr("密码太简单（字符种类太少）", "the password is too simple"))
    if problems:
        raise AccountError(tr("密码不符合要求", "the password is not acceptable"), details=problems)


def _token_id(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _view(u: User) -> UserView:
    return UserView(
        id=u.id,
        username=u.username,
        display_name=u.display_name,
        role=Role(u.role),
        township_id=u.township_id,
        villages=list(u.villages or []),
        active=u.active,
        created_at=u.created_at,
        last_login_at=u.last_login_at,
    )


class Accounts:
    """Users, sessions and login limits, on the store's database."""

    def __init__(
        self,
        store: Store,
        *,
        hasher: PasswordHash | None = None,
        limits: LoginLimits | None = None,
    ) -> None:
        self.store = store
        self.hasher = hasher or PasswordHash((Argon2Hasher(),))
        self.limits = limits or LoginLimits()
        # Verified when the user does not exist, so a wrong name costs as long as a wrong
        # password and the timing does not tell which accounts exist.
        self._dummy_hash = self.hasher.hash(secrets.token_hex(16))

    # -- users -----------------------------------------------------------------------------

    def add_user(
        self,
        *,
        username: str,
        password: str,
        role: Role,
        township_id: str | None = None,
        villages: Sequence[str] = (),
        display_name: str = "",
        registry: Registry | None = None,
        now: datetime | None = None,
    ) -> UserView:
        now = now or utcnow()
        if not _USERNAME.fullmatch(username):
            raise AccountError(
                tr(
                    "用户名只能用字母、数字、'-'、'_' 或 '.'，不超过 64 个字符：{u}",
                    "a username is letters, digits, '-', '_' or '.', at most 64: {u}",
                    u=username,
                )
            )
        township_id, villages = _check_scope(role, township_id, villages, registry)
        check_password_strength(password, username=username)
        with self.store.session() as s:
            if s.scalar(select(User.id).where(User.username == username)) is not None:
                raise AccountError(tr("用户 {u} 已存在", "user {u} already exists", u=username))
            user = User(
                username=username,
                display_name=display_name.strip()[:64],
                password_hash=self.hasher.hash(password),
                role=role.value,
                township_id=township_id,
                villages=list(villages),
                active=True,
                created_at=now,
                updated_at=now,
                password_changed_at=now,
            )
            s.add(user)
            s.flush()
            return _view(user)

    def users(self) -> list[UserView]:
        with self.store.session(readonly=True) as s:
            return [_view(u) for u in s.scalars(select(User).order_by(User.username))]

    def user(self, username: str) -> UserView:
        with self.store.session(readonly=True) as s:
            u = s.scalar(select(User).where(User.username == username))
            if u is None:
                raise NotFoundError(tr("用户 {u} 不存在", "no user {u}", u=username))
            return _view(u)

    def set_password(self, username: str, password: str, *, now: datetime | None = None) -> int:
        """Change a password and sign the user out everywhere; returns sessions ended."""
        now = now or utcnow()
        check_password_strength(password, username=username)
        digest = self.hasher.hash(password)
        with self.store.session() as s:
            u = s.scalar(select(User).where(User.username == username))
            if u is None:
                raise NotFoundError(tr("用户 {u} 不存在", "no user {u}", u=username))
            u.password_hash = digest
            u.password_changed_at = now
            u.updated_at = now
            res = s.execute(delete(WebSession).where(WebSession.user_id == u.id))
            s.execute(delete(RateEvent).where(RateEvent.key == _account_key(username)))
            return int(getattr(res, "rowcount", 0) or 0)

    def set_active(self, username: str, active: bool, *, now: datetime | None = None) -> None:
        now = now or utcnow()
        with self.store.session() as s:
            u = s.scalar(select(User).where(User.username == username))
            if u is None:
                raise NotFoundError(tr("用户 {u} 不存在", "no user {u}", u=username))
            u.active = active
            u.updated_at = now
            if not active:
                s.execute(delete(WebSession).where(WebSession.user_id == u.id))

    # -- logging in ------------------------------------------------------------------------

    def authenticate(
        self, username: str, password: str, *, address: str, now: datetime | None = None
    ) -> Principal | None:
        """The principal for a correct password, None for a wrong one.

        Raises :class:`LoginRefused` while the account or the address has had too many
        failures within the window, without checking the password at all.
        """
        now = now or utcnow()
        since = now - self.limits.window
        keys = (_account_key(username), _address_key(address))
        with self.store.session(readonly=True) as s:
            counts = dict(
                s.execute(
                    select(RateEvent.key, func.count())
                    .where(RateEvent.key.in_(keys), RateEvent.at > since)
                    .group_by(RateEvent.key)
                ).all()
            )
            oldest = dict(
                s.execute(
                    select(RateEvent.key, func.min(RateEvent.at))
                    .where(RateEvent.key.in_(keys), RateEvent.at > since)
                    .group_by(RateEvent.key)
                ).all()
            )
            row = s.execute(
                select(User.id, User.password_hash, User.active).where(User.username == username)
            ).first()
        for key, limit in zip(
            keys, (self.limits.per_account, self.limits.per_address), strict=True
        ):
            if counts.get(key, 0) >= limit:
                first: datetime = oldest[key]
                wait = max(1.0, (first + self.limits.window - now).total_seconds())
                raise LoginRefused(
                    tr(
                        "登录失败次数过多，请 {m} 分钟后再试",
                        "too many failed logins; try again in {m} minute(s)",
                        m=max(1, round(wait / 60)),
                    ),
                    retry_after=wait,
                )
        if row is None or not row.active:
            self.hasher.verify(password, self._dummy_hash)
            self._failed(keys, now)
            return None
        valid, new_hash = self.hasher.verify_and_update(password, row.password_hash)
        if not valid:
            self._failed(keys, now)
            return None
        with self.store.session() as s:
            u = s.get(User, row.id)
            assert u is not None
            u.last_login_at = now
            if new_hash is not None:  # stronger parameters since it was hashed
                u.password_hash = new_hash
            s.execute(delete(RateEvent).where(RateEvent.key == keys[0]))
            s.execute(delete(RateEvent).where(RateEvent.at < since))
            return _view(u).principal()

    def _failed(self, keys: Iterable[str], now: datetime) -> None:
        with self.store.session() as s:
            s.add_all(RateEvent(key=k, at=now) for k in keys)

    # -- sessions --------------------------------------------------------------------------

    def create_session(
        self,
        principal: Principal,
        *,
        lifetime: timedelta,
        address: str = "",
        user_agent: str = "",
        now: datetime | None = None,
    ) -> tuple[str, SessionInfo]:
        """A new session (always a new token: no fixation); returns (cookie token, info)."""
        now = now or utcnow()
        token = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        expires = now + lifetime
        with self.store.session() as s:
            s.add(
                WebSession(
                    id=_token_id(token),
                    user_id=principal.user_id,
                    csrf_token=csrf,
                    created_at=now,
                    last_seen_at=now,
                    expires_at=expires,
                    ip=address[:64],
                    user_agent=user_agent[:255],
                )
            )
            s.execute(delete(WebSession).where(WebSession.expires_at < now))
        return token, SessionInfo(principal, csrf, expires)

    def session(
        self, token: str, *, idle: timedelta | None = None, now: datetime | None = None
    ) -> SessionInfo | None:
        """The live session for a cookie token, or None (unknown, expired, idle, disabled)."""
        if not token or len(token) > 128:
            return None
        now = now or utcnow()
        sid = _token_id(token)
        with self.store.session(readonly=True) as s:
            row = s.execute(
                select(WebSession, User)
                .join(User, User.id == WebSession.user_id)
                .where(WebSession.id == sid)
            ).first()
        if row is None:
            return None
        sess, user = row
        if sess.expires_at <= now or not user.active:
            return None
        if idle is not None and sess.last_seen_at + idle <= now:
            return None
        if idle is not None and (now - sess.last_seen_at) > timedelta(seconds=60):
            # Touch at most once a minute: a page polling every few seconds must not turn
            # every read into a write.
            with self.store.session() as s:
                s.execute(
                    update(WebSession)
                    .where(WebSession.id == sid)
                    .values(last_seen_at=now)
                    .execution_options(synchronize_session=False)
                )
        return SessionInfo(_view(user).principal(), sess.csrf_token, sess.expires_at)

    def end_session(self, token: str) -> None:
        with self.store.session() as s:
            s.execute(delete(WebSession).where(WebSession.id == _token_id(token)))


def _account_key(username: str) -> str:
    return f"login:user:{username.lower()[:64]}"


def _address_key(address: str) -> str:
    return f"login:addr:{address[:64]}"


def _check_scope(
    role: Role,
    township_id: str | None,
    villages: Sequence[str],
    registry: Registry | None,
) -> tuple[str | None, list[str]]:
    """Each role gets exactly the scope it needs, checked against devices.yaml if given."""
    villages = list(dict.fromkeys(villages))
    if role == Role.COUNTY_ADMIN:
        if township_id or villages:
            raise AccountError(
                tr(
                    "县级管理员覆盖全县，不能再指定乡镇或村",
                    "a county administrator covers the county; give no township or village",
                )
            )
        return None, []
    if role == Role.TOWNSHIP_OFFICER:
        if not township_id or villages:
            raise AccountError(
                tr(
                    "乡镇工作人员需要且只需要一个乡镇（--township）",
                    "a township officer needs exactly one township (--township)",
                )
            )
        if registry is not None and township_id not in registry.townships:
            raise AccountError(tr("未知的乡镇：{t}", "unknown township: {t}", t=township_id))
        return township_id, []
    if township_id or not villages:
        raise AccountError(
            tr(
                "村支书和监督委员会成员需要指定所在的村（--village，可重复），不能指定乡镇",
                "a secretary or reviewer needs their village(s) (--village), not a township",
            )
        )
    if registry is not None:
        unknown = [v for v in villages if v not in registry.villages]
        if unknown:
            raise AccountError(tr("未知的村：{v}", "unknown village(s): {v}", v=", ".join(unknown)))
    return None, villages
