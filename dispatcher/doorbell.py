"""Doorbells: Celery messages that carry delivery ids and nothing else."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import suppress

from content_queue.settings import Settings

__all__ = ["SYNTHESIS_FIRST", "batches", "queued", "queues_of", "ring"]

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
    rung_at: float | None = None,
) -> int:
    """Send one task per batch of one channel kind as a group (no chord); returns tasks sent.

    Loudspeaker deliveries go to ``villagecast.synthesize`` first (queue vc.synthesis),
    which rings them again with ``synthesized=True`` once their clip exists.

    Each doorbell carries ``rung_at`` (now, or the first ring's time when synthesis rings
    a loudspeaker batch on): the worker that takes it notes how far its queue has been
    drained (content_queue/doorbells.py).

    Raises whatever the broker raises: callers decide whether that matters (the store
    already holds the work and the sweeper will ring again).
    """
    from celery import group

    from dispatcher.celery_app import SYNTHESIS_QUEUE, app_for, queue_for

    app = app_for(settings)
    stamp = {"rung_at": time.time() if rung_at is None else rung_at}
    sigs = []
    for kind, ids in ids_by_kind.items():
        first = kind in SYNTHESIS_FIRST and not synthesized
        size = _SYNTHESIS_BATCH if first else _batch_size(kind, settings, len(ids))
        for batch in batches(ids, size):
            sigs.append(
                app.signature(
                    "villagecast.synthesize" if first else "villagecast.deliver",
                    args=(batch, kind),
                    kwargs=stamp,
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


def queues_of(kind: str) -> list[str]:
    """The broker queues a doorbell of this kind waits in, in order."""
    from dispatcher.celery_app import SYNTHESIS_QUEUE, queue_for

    # A loudspeaker doorbell waits in the synthesis queue first, then in its own.
    return [SYNTHESIS_QUEUE, queue_for(kind)] if kind in SYNTHESIS_FIRST else [queue_for(kind)]


def queued(queues: Iterable[str], *, settings: Settings) -> dict[str, int]:
    """Messages waiting in each of these broker queues (0 for one never declared).

    Raises what the broker raises.
    """
    from kombu.exceptions import ChannelError

    from dispatcher.celery_app import app_for

    counts: dict[str, int] = {}
    with app_for(settings).pool.acquire(block=True) as conn:
        channel = conn.default_channel
        for name in queues:
            counts[name] = 0
            # Never declared, or (Redis) empty: nothing waits.
            with suppress(ChannelError):
                counts[name] = int(channel.queue_declare(queue=name, passive=True).message_count)
    return counts
