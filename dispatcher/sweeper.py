"""The sweeper: releases held notices, reclaims dead workers' leases, rings again, expires."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time

from content_queue.errors import VillagecastError
from content_queue.settings import Settings, get_settings
from content_queue.store import Store
from dispatcher import service

__all__ = ["main", "run_sweeper"]

log = logging.getLogger(__name__)


def run_sweeper(
    settings: Settings,
    *,
    stop: threading.Event,
    parent_pid: int | None = None,
) -> None:
    """Sweep every ``settings.sweep_interval`` seconds until ``stop`` is set or the parent dies.

    Several sweepers may run at once (one per worker machine): every step is a
    compare-and-set in the store, so they never hand the same delivery out twice.
    """
    from dispatcher.doorbell import queued, ring

    def _ring(ids_by_kind: dict[str, list[int]] | object, countdown: float | None) -> object:
        assert isinstance(ids_by_kind, dict)
        return ring(ids_by_kind, settings=settings, countdown=countdown)

    def _queued(queues: set[str]) -> dict[str, int]:
        return queued(queues, settings=settings)

    store = service.open_store(settings)
    while not stop.is_set():
        if parent_pid is not None and os.getppid() != parent_pid:
            log.info("parent %s is gone; sweeper exits", parent_pid)
            return
        try:
            report = service.sweep_once(store=store, settings=settings, ring=_ring, queued=_queued)
            _follow_official_accounts(store, settings)
            if report.rung or report.reclaimed or report.gave_up or report.expired:
                log.info(
                    "sweep: rang %d, released %d, reclaimed %d, gave up %d, expired %d, "
                    "re-sent unacked %d",
                    report.rung,
                    report.released,
                    report.reclaimed,
                    report.gave_up,
                    report.expired,
                    report.resent,
                )
        except VillagecastError as exc:
            log.warning("sweep failed: %s", exc.render("en"))
        except Exception:
            log.exception("sweep crashed; trying again")
        stop.wait(settings.sweep_interval)


def _follow_official_accounts(store: Store, settings: Settings) -> None:
    """Ask WeChat about submitted articles and mass sends (each with its own backoff)."""
    from channels.wechat_official_account import poll_official_account_publishes

    settled = poll_official_account_publishes(
        store, settings, registry=lambda: service.registry_cache.get(settings.devices)
    )
    if settled:
        log.info("official accounts: %d deliveries confirmed or failed", settled)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dispatcher.sweeper")
    parser.add_argument("--parent", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s sweeper %(levelname)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while True:
        try:
            run_sweeper(get_settings(), stop=stop, parent_pid=args.parent)
            return
        except VillagecastError as exc:  # e.g. database not reachable yet
            log.warning("%s", exc.render("en"))
            time.sleep(2)


if __name__ == "__main__":
    main()
