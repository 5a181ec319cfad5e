"""Doorbells: Celery messages that carry delivery ids and nothing else."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from content_queue.settings import Settings

__all__ = ["batches", "ring"]

log = logging.getLogger(__name__)


def batches(ids: Sequence[int], size: int) -> list[list[int]]:
    return [list(ids[i : i + size]) for i in range(0, len(ids), size)]


def ring(
    ids_by_kind: Mapping[str, Sequence[int]],
    *,
    settings: Settings,
    countdown: float | None = None,
) -> int:
    """Send one task per batch of one channel kind as a group (no chord); returns tasks sent.

    Raises whatever the broker raises: callers decide whether that matters (the store
    already holds the work and the sweeper will ring again).
    """
    from celery import group

    from dispatcher.celery_app import app_for, queue_for

    app = app_for(settings)
    sigs = [
        app.signature(
            "villagecast.deliver",
            args=(batch, kind),
            queue=queue_for(kind),
            countdown=countdown,
            immutable=True,
        )
        for kind, ids in ids_by_kind.items()
        for batch in batches(ids, settings.batch_size)
    ]
    if not sigs:
        return 0
    group(sigs, app=app).apply_async()
    log.debug("rang %d doorbell(s)", len(sigs))
    return len(sigs)
