"""kombu's SQLAlchemy transport with a shorter poll, for the embedded SQLite broker.

kombu polls an empty SQL queue once a second and Celery 5.7 has no setting that reaches
it (a ``polling_interval`` transport option would be handed to ``create_engine``), so a
notice would wait up to a second before a worker saw it.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import sqlalchemy as _sqla

__all__ = ["POLL_SECONDS", "Transport"]

POLL_SECONDS = 0.25
"""Latency against idle load: 4 small SELECTs a second per queue per worker process."""


class Transport(_sqla.Transport):
    polling_interval = POLL_SECONDS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self.polling_interval = POLL_SECONDS
