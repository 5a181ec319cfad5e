"""kombu's SQLAlchemy transport for the embedded SQLite broker: a shorter poll, no leftovers.

kombu polls an empty SQL queue once a second and Celery 5.7 has no setting that reaches
it (a ``polling_interval`` transport option would be handed to ``create_engine``), so a
notice would wait up to a second before a worker saw it.

kombu also keeps every message it hands out, marked ``visible = False``, forever: the
table grows by one row per task and each poll's ``SELECT`` walks a longer index. Here a
message is deleted in the transaction that takes it. Nothing depends on the kept rows: a
message a killed worker had taken is gone either way (the sweeper rings its deliveries
again), and an unacknowledged message a worker gives back on shutdown is put again as a
new row.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import sqlalchemy as _sqla
from kombu.transport.virtual import Empty
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads
from sqlalchemy import text

__all__ = ["POLL_SECONDS", "Channel", "Transport"]

POLL_SECONDS = 0.25
"""Latency against idle load: 4 small SELECTs a second per queue per worker process."""


class Channel(_sqla.Channel):
    def _get(self, queue: Any, timeout: Any = None) -> Any:
        obj = self._get_or_create(queue)  # type: ignore[no-untyped-call]
        session = self.session
        if session.bind.name == "sqlite":
            session.execute(text("BEGIN IMMEDIATE TRANSACTION"))
        try:
            message_cls = self.message_cls
            msg = (
                session.query(message_cls)
                .filter(message_cls.queue_id == obj.id)
                .filter(message_cls.visible != False)  # noqa: E712 (SQL, not Python)
                .order_by(message_cls.sent_at)
                .order_by(message_cls.id)
                .limit(1)
                .first()
            )
            if msg is None:
                raise Empty()
            payload = msg.payload
            session.delete(msg)
            return loads(bytes_to_str(payload))  # type: ignore[no-untyped-call]
        finally:
            session.commit()

    def _open(self) -> Any:
        fresh = self.connection.client.hostname not in self._engines
        opened = super()._open()  # type: ignore[no-untyped-call]
        if fresh:
            # Rows an older version (kombu's own _get) left behind as taken.
            engine = opened[0]
            with engine.begin() as conn:
                conn.execute(
                    text(f"DELETE FROM {self.message_tablename} WHERE visible = :taken"),
                    {"taken": False},
                )
        return opened


class Transport(_sqla.Transport):
    Channel = Channel
    polling_interval = POLL_SECONDS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self.polling_interval = POLL_SECONDS
