"""Run a Celery worker for every channel queue, with a sweeper process beside it."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import IO

from content_queue.registry import ENDPOINT_KINDS
from content_queue.settings import Settings, get_settings

__all__ = ["main", "parse_queues", "run_worker", "spawn_worker", "worker_argv"]


def parse_queues(text: str) -> list[str]:
    """Channel kinds from ``vc.led,vc.speaker`` (or ``led,speaker``); unknown names refused."""
    from content_queue.errors import ConfigError
    from content_queue.i18n import tr
    from dispatcher.celery_app import QUEUE_PREFIX

    kinds: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        kind = item.removeprefix(QUEUE_PREFIX)
        if kind not in ENDPOINT_KINDS:
            raise ConfigError(
                tr(
                    "没有队列 {q}；可用的队列：{all}",
                    "no queue {q}; the queues are: {all}",
                    q=item,
                    all=", ".join(QUEUE_PREFIX + k for k in ENDPOINT_KINDS),
                )
            )
        if kind not in kinds:
            kinds.append(kind)
    return kinds


def worker_argv(
    settings: Settings,
    *,
    kinds: Sequence[str] = ENDPOINT_KINDS,
    concurrency: int | None = None,
    loglevel: str = "INFO",
) -> list[str]:
    from dispatcher.celery_app import queue_for

    return [
        "worker",
        "--queues",
        ",".join(queue_for(k) for k in kinds),
        "--concurrency",
        str(concurrency or settings.worker_concurrency),
        "--loglevel",
        loglevel,
        "--without-gossip",
        "--without-mingle",
        "--hostname",
        f"villagecast-{os.getpid()}@%h",
    ]


def run_worker(
    *,
    kinds: Sequence[str] = ENDPOINT_KINDS,
    concurrency: int | None = None,
    sweeper: bool = True,
    loglevel: str = "INFO",
) -> None:
    """Blocks: the worker in this process, the sweeper in a child that dies with it."""
    settings = get_settings()
    settings.ensure_home()
    child = None
    if sweeper:
        child = subprocess.Popen(
            [sys.executable, "-m", "dispatcher.sweeper", "--parent", str(os.getpid())]
        )
    try:
        from dispatcher.celery_app import app

        app.worker_main(
            argv=worker_argv(settings, kinds=kinds, concurrency=concurrency, loglevel=loglevel)
        )
    finally:
        if child is not None:
            child.terminate()
            child.wait(timeout=10)


def spawn_worker(
    *,
    env: dict[str, str] | None = None,
    concurrency: int | None = None,
    sweeper: bool = True,
    loglevel: str = "WARNING",
    stdout: int | IO[bytes] | None = None,
    stderr: int | IO[bytes] | None = None,
    kinds: Sequence[str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start `python -m dispatcher.worker` in its own process group (so it can be killed whole)."""
    cmd = [sys.executable, "-m", "dispatcher.worker", "--loglevel", loglevel]
    if concurrency:
        cmd += ["--concurrency", str(concurrency)]
    if kinds:
        cmd += ["--kinds", ",".join(kinds)]
    if not sweeper:
        cmd.append("--no-sweeper")
    return subprocess.Popen(cmd, env=env, start_new_session=True, stdout=stdout, stderr=stderr)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dispatcher.worker")
    parser.add_argument("--concurrency", type=int, default=None)
    parser.add_argument("--no-sweeper", action="store_true")
    parser.add_argument("--loglevel", default="INFO")
    parser.add_argument("--kinds", default=",".join(ENDPOINT_KINDS))
    args = parser.parse_args(argv)
    run_worker(
        kinds=[k for k in args.kinds.split(",") if k],
        concurrency=args.concurrency,
        sweeper=not args.no_sweeper,
        loglevel=args.loglevel,
    )


if __name__ == "__main__":
    main()
