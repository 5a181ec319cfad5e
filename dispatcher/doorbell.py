"""Doorbells: Celery messages that carry delivery ids and nothing else."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from content_queue.settings import Settings

__all__ = ["SYNTHESIS_FIRST", "batches", "ring"]

log = logging.getLogger(__name__)

SYNTHESIS_FIRST = frozenset({"speaker"})
"""Kinds whose doorbell goes to the synthesis task first (dispatcher/synthesis.py)."""
_SYNTHESIS_BATCH = 1000  # one task makes the clip of a whole fan-out, then rings it


def batches(ids: Sequence[int], size: int) -> list[list[int]]:
    return [list(ids[i : i + size]) for i in range(0, len(ids), size)]


def _batch_size(kind: str, settings: Settings, count: int = 0) -> int:
    """Ids per task for ``count`` deliveries of one kind."""
    from channels.base import get_channel

    channel = get_channel(kind)
    own = channel.task_batch if channel else None
    size = settings.batch_size_for(own)
    explicit = "batch_size" in settings.model_fields_set
    if own is not None and not explicit and settings.broker_is_embedded:
        # One machine, and each task boundary waits for the SQL transport's next poll
        # (docs/performance.md): a channel with large tasks gets its fan-out split evenly
        # over the worker processes instead.
        size = max(size, -(-count // settings.worker_concurrency))
    return size


def ring(
    ids_by_kind: Mapping[str, Sequence[int]],
    *,
    settings: Settings,
    countdown: float | None = None,
    synthesized: bool = False,
) -> int:
    """Send one task per batch of one channel kind as a group (no chord); returns tasks sent.

    Loudspeaker deliveries go to ``villagecast.synthesize`` first (queue vc.synthesis),
    which rings them again with ``synthesized=True`` once their clip exists.

    Raises whatever the broker raises: callers decide whether that matters (the store
    already holds the work and the sweeper will ring again).
    """
    from celery import group

    from dispatcher.celery_app import SYNTHESIS_QUEUE, app_for, queue_for

    app = app_for(settings)
    sigs = []
    for kind, ids in ids_by_kind.items():
        first = kind in SYNTHESIS_FIRST and not synthesized
        size = _SYNTHESIS_BATCH if first else _batch_size(kind, settings, len(ids))
        for batch in batches(ids, size):
            sigs.append(
                app.signature(
                    "villagecast.synthesize" if first else "villagecast.deliver",
                    args=(batch, kind),
                    queue=SYNTHESIS_QUEUE if first else queue_for(kind),
                    countdown=countdown,
                    immutable=True,
                )
            )
    if not sigs:
        return 0
    group(sigs, app=app).apply_async()
    log.debug("rang %d doorbell(s)", len(sigs))
    return len(sigs)
