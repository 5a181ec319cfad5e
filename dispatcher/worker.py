"""Run a Celery worker for every channel queue, with a sweeper and a synthesis worker beside it.

Processes of one `villagecast worker` (and of the worker that `up` and `demo` start):

    worker          every channel queue (vc.tv_feed, vc.led, vc.speaker, ...), prefork pool
                    of VILLAGECAST_WORKER_CONCURRENCY processes: the fan-out
    synthesis       a child: vc.synthesis only, a pool of VILLAGECAST_SYNTHESIS_CONCURRENCY
                    threads (synthesis waits on espeak-ng, ffmpeg and edge-tts, not on the
                    GIL), so a synthesis never occupies a fan-out process
    sweeper         a child (dispatcher/sweeper.py)

The children exit when their parent dies, even by SIGKILL (they watch their parent pid).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import IO

from content_queue.registry import ENDPOINT_KINDS
from content_queue.settings import Settings, get_settings

__all__ = [
    "main",
    "parse_queues",
    "run_synthesis_worker",
    "run_worker",
    "spawn_worker",
    "worker_argv",
]

log = logging.getLogger(__name__)


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
    synthesis: bool = False,
) -> list[str]:
    """Arguments of the fan-out worker, or (``synthesis``) of the synthesis worker."""
    from dispatcher.celery_app import SYNTHESIS_QUEUE, queue_for

    if synthesis:
        queues, name = [SYNTHESIS_QUEUE], "villagecast-synthesis"
        pool = ["--pool", "threads"]
        concurrency = concurrency or settings.synthesis_concurrency
    else:
        queues, name, pool = [queue_for(k) for k in kinds], "villagecast", []
        concurrency = concurrency or settings.worker_concurrency
    return [
        "worker",
        "--queues",
        ",".join(queues),
        *pool,
        "--concurrency",
        str(concurrency),
        "--loglevel",
        loglevel,
        "--without-gossip",
        "--without-mingle",
        "--hostname",
        f"{name}-{os.getpid()}@%h",
    ]


def _watch_parent(parent_pid: int) -> None:
    """Warm shutdown (SIGTERM to ourselves) once the parent is gone."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            threading.Event().wait(1.0)
        log.info("parent %s is gone; stopping", parent_pid)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="villagecast-parent-watch", daemon=True).start()


def run_synthesis_worker(*, parent_pid: int | None = None, loglevel: str = "INFO") -> None:
    """Blocks: the vc.synthesis consumer with K threads."""
    settings = get_settings()
    settings.ensure_home()
    if parent_pid is not None:
        _watch_parent(parent_pid)
    from dispatcher.celery_app import app

    app.worker_main(argv=worker_argv(settings, loglevel=loglevel, synthesis=True))


def run_worker(
    *,
    kinds: Sequence[str] = ENDPOINT_KINDS,
    concurrency: int | None = None,
    sweeper: bool = True,
    synthesis: bool = True,
    loglevel: str = "INFO",
) -> None:
    """Blocks: the worker in this process; the sweeper and the synthesis worker in children
    that die with it."""
    settings = get_settings()
    settings.ensure_home()
    children: list[subprocess.Popen[bytes]] = []
    parent = ["--parent", str(os.getpid())]
    if sweeper:
        children.append(subprocess.Popen([sys.executable, "-m", "dispatcher.sweeper", *parent]))
    if synthesis and "speaker" in kinds:
        synth = [sys.executable, "-m", "dispatcher.worker", "--synthesis-only", *parent]
        children.append(subprocess.Popen([*synth, "--loglevel", loglevel]))
    try:
        from dispatcher.celery_app import app

        app.worker_main(
            argv=worker_argv(settings, kinds=kinds, concurrency=concurrency, loglevel=loglevel)
        )
    finally:
        for child in children:
            child.terminate()
        for child in children:
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def spawn_worker(
    *,
    env: dict[str, str] | None = None,
    concurrency: int | None = None,
    sweeper: bool = True,
    synthesis: bool = True,
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
    if not synthesis:
        cmd.append("--no-synthesis")
    return subprocess.Popen(cmd, env=env, start_new_session=True, stdout=stdout, stderr=stderr)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dispatcher.worker")
    parser.add_argument("--concurrency", type=int, default=None)
    parser.add_argument("--no-sweeper", action="store_true")
    parser.add_argument("--no-synthesis", action="store_true", help="no vc.synthesis child")
    parser.add_argument("--loglevel", default="INFO")
    parser.add_argument("--kinds", default=",".join(ENDPOINT_KINDS))
    parser.add_argument("--synthesis-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--parent", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.synthesis_only:
        run_synthesis_worker(parent_pid=args.parent, loglevel=args.loglevel)
        return
    run_worker(
        kinds=[k for k in args.kinds.split(",") if k],
        concurrency=args.concurrency,
        sweeper=not args.no_sweeper,
        synthesis=not args.no_synthesis,
        loglevel=args.loglevel,
    )


if __name__ == "__main__":
    main()
