"""A bare Celery app for the memory baseline: one no-op task and the broker settings of the
villagecast worker (JSON, late acks, prefetch 1), nothing else imported.

    BENCH_BARE_BROKER=redis://... BENCH_BARE_MARKER=/tmp/x \
        python -m celery -A bench.bare_worker worker --pool prefork --concurrency 2 -Q bare
"""

from __future__ import annotations

import os

from celery import Celery

__all__ = ["QUEUE", "app", "noop"]

QUEUE = "bare"

app = Celery("bare")
app.conf.update(
    broker_url=os.environ.get("BENCH_BARE_BROKER", "redis://127.0.0.1:6379/0"),
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    result_backend=None,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_default_queue=QUEUE,
    worker_hijack_root_logger=False,
    worker_send_task_events=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name="bare.noop", ignore_result=True)  # type: ignore[untyped-decorator]
def noop(mark: bool = False) -> None:
    """Nothing; with ``mark``, one line appended to $BENCH_BARE_MARKER (to count them)."""
    path = os.environ.get("BENCH_BARE_MARKER")
    if mark and path:
        with open(path, "a") as fh:
            fh.write(".\n")
