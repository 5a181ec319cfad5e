"""Accounts: roles and scopes, Argon2id hashes, login limits held in the database."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from content_queue.accounts import (
    AccountError,
    Accounts,
    Action,
    LoginLimits,
    LoginRefused,
    Role,
)
from content_queue.registry import load_registry
from content_queue.store import Store, utcnow
from tests.conftest import SMALL_DEVICES
from tests.dashboard.conftest import fast_hasher

PW = "long-enough-pass-1"


@pytest.fixture
def accounts(tmp_path: Path) -> Accounts:
    return Accounts(
        Store(f"sqlite:///{tmp_path / 'vc.sqlite'}"),
        hasher=fast_hasher(),
        limits=LoginLimits(per_account=3, per_address=5, window=timedelta(minutes=10)),
    )


def test_password_is_stored_as_argon2id(accounts: Accounts) -> None:
    accounts.add_user(username="a", password=PW, role=Role.COUNTY_ADMIN)
    from sqlalchemy import select

    from content_queue.db import User

    with accounts.store.session() as s:
        stored = s.scalar(select(User.password_hash))
    assert stored is not None and stored.startswith("$argon2id$") and PW not in stored


def test_roles_need_their_scope(tmp_path: Path, accounts: Accounts) -> None:
    devices = tmp_path / "devices.yaml"
    devices.write_text(SMALL_DEVICES, encoding="utf-8")
    registry = load_registry(devices)
    with pytest.raises(AccountError):
        accounts.add_user(username="t", password=PW, role=Role.TOWNSHIP_OFFICER)
    with pytest.raises(AccountError):
        accounts.add_user(username="c", password=PW, role=Role.COUNTY_ADMIN, township_id="east")
    with pytest.raises(AccountError, match="unknown village"):
        accounts.add_user(
            username="s", password=PW, role=Role.SECRETARY, villages=["x"], registry=registry
        )
    u = accounts.add_user(
        username="s", password=PW, role=Role.SECRETARY, villages=["east-liu"], registry=registry
    )
    p = u.principal()
    assert p.village_ids(registry) == {"east-liu"}
    assert p.can(Action.VIEW) and not p.can(Action.RETRY)
    officer = accounts.add_user(
        username="o", password=PW, role=Role.TOWNSHIP_OFFICER, township_id="east"
    ).principal()
    assert officer.village_ids(registry) == {"east-liu", "east-wang"}
    assert officer.official_accounts(registry) == {"east-oa"}
    assert officer.can(Action.RETRY) and officer.can(Action.WITHDRAW)
    with pytest.raises(AccountError, match="already exists"):
        accounts.add_user(username="o", password=PW, role=Role.COUNTY_ADMIN)
    with pytest.raises(AccountError):
        accounts.add_user(username="bad name", password=PW, role=Role.COUNTY_ADMIN)


def test_weak_passwords_are_refused(accounts: Accounts) -> None:
    for bad in ("short", "aaaaaaaaaaaa", "zhangsan00"[:10]):
        with pytest.raises(AccountError):
            accounts.add_user(username="zhangsan00", password=bad, role=Role.COUNTY_ADMIN)


def test_login_limit_per_account_and_address(accounts: Accounts) -> None:
    accounts.add_user(username="a", password=PW, role=Role.COUNTY_ADMIN)
    accounts.add_user(username="b", password=PW, role=Role.COUNTY_ADMIN)
    now = utcnow()
    for _ in range(3):
        assert accounts.authenticate("a", "wrong-wrong-1", address="1.1.1.1", now=now) is None
    with pytest.raises(LoginRefused) as held:
        accounts.authenticate("a", PW, address="2.2.2.2", now=now)
    assert 0 < held.value.retry_after <= 600
    # The window passes: the right password works and clears the account's failures.
    later = now + timedelta(minutes=11)
    assert accounts.authenticate("a", PW, address="2.2.2.2", now=later) is not None
    # Per address: failures on several accounts from one place hold that place.
    for i in range(5):
        accounts.authenticate(f"nobody{i}", "wrong-wrong-1", address="3.3.3.3", now=later)
    with pytest.raises(LoginRefused):
        accounts.authenticate("b", PW, address="3.3.3.3", now=later)
    assert accounts.authenticate("b", PW, address="4.4.4.4", now=later) is not None


def test_a_second_accounts_object_sees_the_same_limits(accounts: Accounts) -> None:
    """Another process (another Accounts on the same database) is held too."""
    accounts.add_user(username="a", password=PW, role=Role.COUNTY_ADMIN)
    other = Accounts(Store(accounts.store.url), hasher=fast_hasher(), limits=accounts.limits)
    for _ in range(3):
        accounts.authenticate("a", "wrong-wrong-1", address="x")
    with pytest.raises(LoginRefused):
        other.authenticate("a", PW, address="y")


def test_sessions_expire_and_are_bound_to_active_users(accounts: Accounts) -> None:
    p = accounts.add_user(username="a", password=PW, role=Role.COUNTY_ADMIN).principal()
    now = utcnow()
    token, info = accounts.create_session(p, lifetime=timedelta(hours=1), now=now)
    assert accounts.session(token, now=now) is not None
    assert accounts.session(token, now=now + timedelta(hours=2)) is None
    assert (
        accounts.session(token, idle=timedelta(minutes=5), now=now + timedelta(minutes=6)) is None
    )
    assert accounts.session("not-a-token", now=now) is None
    accounts.set_active("a", False)
    assert accounts.session(token, now=now) is None
    assert len(info.csrf_token) >= 32
