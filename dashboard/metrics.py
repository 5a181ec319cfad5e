"""``/metrics`` in the Prometheus text format, computed from the store at each scrape.

The database is the truth, so the figures are read from it (a handful of aggregate queries)
rather than counted in one process: any number of workers and dashboards agree.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from content_queue.db import Delivery, Device
from content_queue.store import Store, utcnow

__all__ = ["CONTENT_TYPE", "render_metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _StoreCollector(Collector):
    def __init__(self, store: Store, now: datetime | None) -> None:
        self.store = store
        self.now = now

    def collect(self) -> Iterator[Metric]:
        now = self.now or utcnow()
        deliveries = GaugeMetricFamily(
            "villagecast_deliveries",
            "Deliveries by state, channel and action (publish or recall).",
            labels=["state", "channel", "action"],
        )
        queue = GaugeMetricFamily(
            "villagecast_queue_depth",
            "Deliveries due now and waiting for a worker (pending, due_at <= now).",
            labels=["channel"],
        )
        lag = GaugeMetricFamily(
            "villagecast_broker_lag_seconds",
            "Age of the oldest delivery that is due and still pending (0 when none).",
        )
        presence = GaugeMetricFamily(
            "villagecast_devices", "LED boards and loudspeakers by presence.", labels=["state"]
        )
        cache = GaugeMetricFamily(
            "villagecast_synthesis_deliveries",
            "Loudspeaker deliveries by whether their clip came from the synthesis cache.",
            labels=["cache"],
        )
        with self.store.session(readonly=True) as s:
            for state, kind, action, count in s.execute(
                select(Delivery.status, Delivery.kind, Delivery.action, func.count()).group_by(
                    Delivery.status, Delivery.kind, Delivery.action
                )
            ):
                deliveries.add_metric([state, kind, action or "publish"], count)
            due = (Delivery.status == "pending", Delivery.due_at <= now)
            for kind, count in s.execute(
                select(Delivery.kind, func.count()).where(*due).group_by(Delivery.kind)
            ):
                queue.add_metric([kind], count)
            oldest = s.scalar(select(func.min(Delivery.due_at)).where(*due))
            for state, count in s.execute(
                select(Device.state, func.count()).group_by(Device.state)
            ):
                presence.add_metric([state], count)
            hit = Delivery.details["cache_hit"].as_boolean()
            for value, count in s.execute(
                select(hit, func.count())
                .where(Delivery.kind == "speaker", Delivery.details.is_not(None))
                .group_by(hit)
            ):
                if value is not None:
                    cache.add_metric(["hit" if value else "miss"], count)
        if oldest is not None:
            from content_queue.db import UTCDateTime

            # A bare aggregate skips the column's type on some backends: restore the zone.
            restored = UTCDateTime().process_result_value(oldest, self.store.engine.dialect)
            lag.add_metric([], max(0.0, (now - restored).total_seconds()) if restored else 0.0)
        else:
            lag.add_metric([], 0.0)
        yield from (deliveries, queue, lag, presence, cache)


def render_metrics(store: Store, *, now: datetime | None = None) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StoreCollector(store, now))
    return generate_latest(registry)
