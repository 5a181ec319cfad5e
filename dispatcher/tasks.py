"""Thin Celery tasks: load by id, call the dispatcher, record the outcome in the store."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from celery import shared_task
from celery.signals import worker_process_init

from content_queue.settings import get_settings
from dispatcher import service
from dispatcher.celery_app import SYNTHESIS_QUEUE, queue_for
from dispatcher.doorbell import ring as ring_doorbell

__all__ = ["deliver", "ping", "synthesize"]

log = logging.getLogger(__name__)


@worker_process_init.connect  # type: ignore[untyped-decorator]
def _preload(**_: object) -> None:
    """Each worker process reads devices.yaml when it starts, not at the first notice."""
    from content_queue.errors import VillagecastError

    try:
        service.registry_cache.get(get_settings().devices)
    except VillagecastError as exc:  # deliveries will report it; keep the worker up
        log.warning("devices.yaml cannot be loaded yet: %s", exc.render("en"))


def _ring(ids_by_kind: Mapping[str, Sequence[int]], countdown: float | None) -> object:
    return ring_doorbell(ids_by_kind, settings=get_settings(), countdown=countdown)


@shared_task(  # type: ignore[untyped-decorator]
    name="villagecast.deliver",
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
)
def deliver(
    delivery_ids: list[int], kind: str | None = None, rung_at: float | None = None
) -> dict[str, str]:
    """Deliver a batch of deliveries of one channel kind (ids only; the store is the truth).

    Retries are not Celery retries: a transient failure is written to the store with its
    next attempt time and rung again with a countdown; the sweeper backs that up.
    """
    settings = get_settings()
    store = service.open_store(settings)
    if kind is not None:
        service.note_doorbell_taken(store, queue_for(kind), rung_at)
    results = service.process_deliveries(
        delivery_ids, store=store, settings=settings, ring=_ring, kind=kind
    )
    return {str(k): v for k, v in results.items()}


@shared_task(  # type: ignore[untyped-decorator]
    name="villagecast.synthesize",
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
)
def synthesize(
    delivery_ids: list[int], kind: str = "speaker", rung_at: float | None = None
) -> dict[str, int]:
    """Make the clips these loudspeaker deliveries need, then ring their delivery.

    Runs on the vc.synthesis worker (K threads). A failure is noted for the deliveries to
    report; they are rung either way, so none waits for the sweeper.
    """
    from dispatcher.synthesis import prepare_clips

    settings = get_settings()
    store = service.open_store(settings)
    service.note_doorbell_taken(store, SYNTHESIS_QUEUE, rung_at)
    report = prepare_clips(delivery_ids, store=store, settings=settings)
    ring_doorbell({kind: delivery_ids}, settings=settings, synthesized=True, rung_at=rung_at)
    return {"made": report.made, "hits": report.hits, "failed": len(report.failed)}


@shared_task(name="villagecast.ping", ignore_result=True)  # type: ignore[untyped-decorator]
def ping(marker: str | None = None) -> None:
    """A no-op round trip (health checks; the benchmark's bare-Celery baseline).

    With ``marker`` (a file name, no path), appends one line to that file under the data
    directory so a caller can count completed pings without a result backend.
    """
    if marker:
        name = marker.replace("/", "_").replace("\\", "_")
        path = get_settings().home / name
        with path.open("a") as fh:
            fh.write(".\n")
