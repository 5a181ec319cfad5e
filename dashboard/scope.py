"""Where a signed-in person may look: one predicate added to every query that reads deliveries.

A delivery is in scope when (county administrator) always; (township officer) its recorded
``township_id`` is theirs, or it is an official-account delivery of an account that covers
only their township; (secretary, reviewer) its ``village_id`` is one of theirs. A notice is
in scope when at least one of its deliveries is; anything else answers 404 exactly like an
id that does not exist, so guessing ids tells nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import ColumnElement, and_, exists, false, or_, select, true

from content_queue.accounts import Principal, Role
from content_queue.db import Delivery, Notice
from content_queue.registry import Registry

__all__ = ["Scope"]


@dataclass(frozen=True)
class Scope:
    principal: Principal
    villages: frozenset[str] | None
    """Villages covered; None for the whole county."""
    official_accounts: frozenset[str] | None
    """Official-account endpoints covered; None for all of them."""

    @classmethod
    def of(cls, principal: Principal, registry: Registry) -> Scope:
        return cls(
            principal=principal,
            villages=principal.village_ids(registry),
            official_accounts=principal.official_accounts(registry),
        )

    @property
    def county_wide(self) -> bool:
        return self.villages is None

    def deliveries(self) -> ColumnElement[bool]:
        """SQL: this delivery row may be seen."""
        p = self.principal
        if p.role == Role.COUNTY_ADMIN:
            return true()
        if p.role == Role.TOWNSHIP_OFFICER:
            mine = Delivery.township_id == (p.township_id or "")
            if self.official_accounts:
                return or_(
                    mine,
                    and_(
                        Delivery.village_id.is_(None),
                        Delivery.endpoint_id.in_(sorted(self.official_accounts)),
                    ),
                )
            return mine
        if not self.villages:
            return false()
        return Delivery.village_id.in_(sorted(self.villages))

    def notices(self) -> ColumnElement[bool]:
        """SQL: this notice may be seen (one of its deliveries may)."""
        if self.principal.role == Role.COUNTY_ADMIN:
            return true()
        return exists(select(Delivery.id).where(Delivery.notice_id == Notice.id, self.deliveries()))

    def allows(self, *, township_id: str | None, village_id: str | None, endpoint_id: str) -> bool:
        """The same rule as :meth:`deliveries`, for one row already loaded."""
        p = self.principal
        if p.role == Role.COUNTY_ADMIN:
            return True
        if p.role == Role.TOWNSHIP_OFFICER:
            if township_id is not None:
                return township_id == p.township_id
            return village_id is None and endpoint_id in (self.official_accounts or frozenset())
        return village_id is not None and village_id in (self.villages or frozenset())

    def allows_village(self, village_id: str) -> bool:
        return self.villages is None or village_id in self.villages
