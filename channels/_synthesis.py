"""At most K speech syntheses at once on this machine, whichever process runs them.

Synthesis (espeak-ng or edge-tts, then the ffmpeg loudness pass) is the only CPU-heavy
step of a broadcast. The synthesis Celery worker runs with K threads, but `villagecast
worker` may be started more than once, and `villagecast speak` and the device listener's
re-sync may synthesize too, so the bound is enforced where the work happens: K lock files
next to the clip cache, each held with ``flock`` while one synthesis runs.

Why files and not a row in ``kv_entries``: the kernel releases a ``flock`` when its holder
dies, so a worker killed mid-synthesis never keeps a slot (a table row would need a lease,
a lease length longer than the slowest synthesis, and renewal). The clips themselves live
in one directory that the feed server serves, so every process that synthesizes already
shares that directory; the slots live beside it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from channels.base import TransientError
from content_queue.i18n import tr

__all__ = ["SynthesisSlots"]


class SynthesisSlots:
    """``limit`` slots as lock files in ``directory``; ``hold()`` waits for a free one."""

    def __init__(self, directory: Path, limit: int, *, poll: float = 0.05) -> None:
        if limit < 1:
            raise ValueError("at least one synthesis slot is needed")
        self.directory = directory
        self.limit = limit
        self.poll = poll

    def _try(self, index: int) -> int | None:
        fd = os.open(self.directory / f"slot-{index}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    @contextlib.contextmanager
    def hold(self, *, timeout: float = 600.0) -> Iterator[int]:
        """Hold one slot (its index) for the duration of the block."""
        self.directory.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout
        start = os.getpid() % self.limit  # spread first tries over the slots
        while True:
            for step in range(self.limit):
                index = (start + step) % self.limit
                fd = self._try(index)
                if fd is None:
                    continue
                try:
                    yield index
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    os.close(fd)
                return
            if time.monotonic() >= deadline:
                raise TransientError(
                    tr(
                        "语音合成繁忙（{k} 个同时进行的合成都在使用中），稍后重试",
                        "speech synthesis is busy (all {k} slots in use); will retry",
                        k=self.limit,
                    ),
                    code="synthesis_busy",
                    retry_after=30,
                )
            time.sleep(self.poll)

    def busy(self) -> int:
        """How many slots are held right now (for tests and `devices status`)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        held = 0
        for index in range(self.limit):
            fd = self._try(index)
            if fd is None:
                held += 1
            else:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
        return held
