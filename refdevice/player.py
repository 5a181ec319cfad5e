"""A loudspeaker's player: each play of a plan at its time, one at a time, emergencies first.

Rules (docs/device-protocol.md, "What a loudspeaker plays")
    order       due plays start one at a time: emergencies first, then important, then
                routine; the earliest planned first within a priority
    pre-emption an emergency that falls due while a routine or important play is on
                interrupts it; the interrupted play is played again FROM THE START once
                the emergency is over (half a notice is no notice), and only then acked
    window      a play may start at most ``window_s`` seconds (body) after its planned time,
                so a play delayed by an emergency or a reboot never drifts into the quiet
                hours the dispatcher planned around; without ``window_s``, until expiry
    late        plays already due when a command arrives (it waited in the broker) or when
                the device restarts: only the latest of them is played, once, and only
                inside its window; the older ones are dropped, never played in a burst
    stop        ``speaker.stop`` ends the play on air and drops the remaining ones
The clock is injectable: the player decides with ``clock()`` and wakes at least every
``tick`` seconds (or at once when told with ``wake()``), so a test clock can walk through a
day. How long a play lasts is the sink's business: the simulated sink waits a fraction of
the real duration; a real device would hand the clip to its amplifier.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Protocol

from channels.protocol import Command

__all__ = [
    "RANK",
    "Playback",
    "Player",
    "SimulatedSink",
    "Sink",
    "Slot",
    "play_seconds",
    "slots_for",
]

log = logging.getLogger(__name__)

RANK = {"emergency": 0, "important": 1, "routine": 2}


@dataclass
class Slot:
    """One play of a command's plan."""

    command: Command
    at: int
    """The planned time (unix seconds), as in ``body.plays``: what acks report."""
    number: int
    total: int
    deadline: int
    """The last second at which this play may (re)start."""
    restarts: int = 0
    """How many times an emergency interrupted it (it is then played from the start)."""

    @property
    def rank(self) -> int:
        return RANK[self.command.priority]


def play_seconds(command: Command) -> float:
    """How long one play lasts: the clip ``repeat`` times with ``gap_ms`` in between."""
    body = command.body
    clip = body.get("clip")
    duration_ms = clip.get("duration_ms", 0) if isinstance(clip, dict) else 0
    repeat = body.get("repeat", 1)
    gap_ms = body.get("gap_ms", 0)
    if not all(type(v) is int and v >= 0 for v in (duration_ms, repeat, gap_ms)):
        return 0.0
    times = max(1, int(repeat))
    return (int(duration_ms) * times + int(gap_ms) * (times - 1)) / 1000


def slots_for(
    command: Command, *, now: int, done: Collection[int] = ()
) -> tuple[list[Slot], list[int]]:
    """The plays still to come of a ``speaker.play`` (see "late" above), and those dropped.

    ``done`` holds the planned times already played (or dropped) by this device.
    """
    body = command.body
    plays = sorted(set(body.get("plays") or [command.issued_at]))
    window = body.get("window_s")
    last_second = command.expires_at - 1
    total = len(plays)
    open_past = [t for t in plays if t <= now and t not in done]
    latest_past = max(open_past) if open_past else None
    slots: list[Slot] = []
    dropped: list[int] = []
    for number, at in enumerate(plays, start=1):
        if at in done:
            continue
        deadline = last_second if type(window) is not int else min(last_second, at + window)
        if at <= now and (at != latest_past or now > deadline):
            dropped.append(at)
            continue
        slots.append(Slot(command, at, number, total, deadline))
    return slots, dropped


class Playback(Protocol):
    def stop(self) -> None:
        """End the play now; the sink then reports it as not completed."""


class Sink(Protocol):
    """Where plays go. ``on_end(completed)`` must be called exactly once per play, from
    any thread (False when ``stop()`` cut it short)."""

    def start(self, slot: Slot, *, seconds: float, on_end: Callable[[bool], None]) -> Playback: ...


class _TimedPlayback:
    def __init__(self, seconds: float, on_end: Callable[[bool], None]) -> None:
        self._on_end = on_end
        self._ended = False
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(0.0, seconds), self._end, (True,))
        self._timer.daemon = True
        self._timer.start()

    def _end(self, completed: bool) -> None:
        with self._lock:
            if self._ended:
                return
            self._ended = True
        self._on_end(completed)

    def stop(self) -> None:
        self._timer.cancel()
        self._end(False)


class SimulatedSink:
    """'Plays' by waiting ``speed`` x the play's real duration (0 = instantly)."""

    def __init__(self, speed: float = 0.01) -> None:
        self.speed = speed

    def start(self, slot: Slot, *, seconds: float, on_end: Callable[[bool], None]) -> Playback:
        return _TimedPlayback(seconds * self.speed, on_end)


OnPlayed = Callable[[Slot, int], None]
"""(the slot, the clock when it ended): called once a play was heard in full."""
OnDropped = Callable[[Slot, str], None]


class Player:
    """Runs plays on a thread. Decisions are taken under the device's lock; the device's
    callbacks run after it is released (they publish acks, and paho has locks of its own)."""

    def __init__(
        self,
        *,
        name: str,
        lock: threading.RLock,
        clock: Callable[[], float],
        sink: Sink,
        on_played: OnPlayed,
        on_dropped: OnDropped,
        tick: float = 1.0,
    ) -> None:
        self.name = name
        self._cond = threading.Condition(lock)
        self._clock = clock
        self._sink = sink
        self._on_played = on_played
        self._on_dropped = on_dropped
        self._tick = tick
        self._pending: list[Slot] = []
        self._current: Slot | None = None
        self._playback: Playback | None = None
        self._result: bool | None = None
        self._cancelled = False
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._dirty = False
        self._events: list[Callable[[], None]] = []
        self.last_step_at = 0
        """The clock at the last decision round (a test waits for it to pass a moment)."""

    # -- what the device tells it --------------------------------------------------------

    def add(self, slots: list[Slot]) -> None:
        with self._cond:
            self._pending.extend(slots)
            self._kick()

    def cancel(self, command_ids: Collection[str]) -> None:
        """Drop these commands' plays, stopping the one on air (``speaker.stop``)."""
        with self._cond:
            self._pending = [s for s in self._pending if s.command.id not in command_ids]
            if self._current is not None and self._current.command.id in command_ids:
                self._cancelled = True
                if self._playback is not None:
                    self._playback.stop()
            self._kick()

    def _kick(self) -> None:
        self._dirty = True
        self._cond.notify_all()

    def clear(self) -> None:
        with self._cond:
            self._pending = []

    def wake(self) -> None:
        """Look at the clock again now (a test clock moved)."""
        with self._cond:
            self._kick()

    @property
    def playing(self) -> Slot | None:
        with self._cond:
            return self._current

    @property
    def pending(self) -> list[Slot]:
        with self._cond:
            return sorted(self._pending, key=lambda s: (s.at, s.rank))

    # -- the thread -----------------------------------------------------------------------

    def start(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name=f"{self.name}-player")
            self._thread.daemon = True
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread; a play on air is cut and stays unplayed (it is not acked)."""
        with self._cond:
            thread, self._thread = self._thread, None
            self._stopping = True
            if self._playback is not None:
                self._cancelled = True
                self._playback.stop()
            self._kick()
        if thread is not None and thread is not threading.current_thread():
            thread.join(5)
        with self._cond:
            self._pending, self._current, self._playback = [], None, None
            self._result, self._cancelled = None, False

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
                self._dirty = False
                try:
                    wait = self.step()
                except Exception:  # a device must keep running
                    log.exception("%s: player step failed", self.name)
                    wait = self._tick
                events, self._events = self._events, []
            for event in events:
                try:
                    event()
                except Exception:
                    log.exception("%s: play callback failed", self.name)
            with self._cond:
                if self._stopping:
                    return
                if not self._dirty and not self._events:
                    self._cond.wait(min(wait, self._tick) if wait is not None else self._tick)

    def step(self) -> float | None:
        """Take every decision due now; returns seconds until the next planned play."""
        with self._cond:
            now = int(self._clock())
            self.last_step_at = now
            self._finish(now)
            self._drop_late(now)
            due = [s for s in self._pending if s.at <= now]
            current = self._current
            if current is not None and current.rank > 0:
                urgent = [s for s in due if s.rank == 0]
                if urgent and self._playback is not None:
                    log.warning(
                        "%s: emergency notice %d interrupts notice %d",
                        self.name,
                        urgent[0].command.notice,
                        current.command.notice,
                    )
                    self._playback.stop()  # reports not completed: _finish queues it again
                    self._finish(now)
                    self._drop_late(now)
                    due = [s for s in self._pending if s.at <= now]
            if self._current is None and due:
                slot = min(due, key=lambda s: (s.rank, s.at, s.number))
                self._pending.remove(slot)
                self._begin(slot)
            later = [s.at for s in self._pending if s.at > now]
            return float(min(later) - now) if later else None

    def _begin(self, slot: Slot) -> None:
        self._current, self._result, self._cancelled = slot, None, False
        again = " again, from the start" if slot.restarts else ""
        log.info(
            "%s plays notice %d%s (%d/%d) [%s]",
            self.name,
            slot.command.notice,
            again,
            slot.number,
            slot.total,
            slot.command.priority,
        )

        def on_end(completed: bool, slot: Slot = slot) -> None:
            with self._cond:
                if self._current is slot and self._result is None:
                    self._result = completed
                    self._kick()

        self._playback = self._sink.start(slot, seconds=play_seconds(slot.command), on_end=on_end)

    def _finish(self, now: int) -> None:
        slot, result = self._current, self._result
        if slot is None or result is None:
            return
        self._current, self._playback, self._result = None, None, None
        if result:
            self._events.append(functools.partial(self._on_played, slot, now))
        elif self._cancelled:
            log.info("%s: play of notice %d stopped", self.name, slot.command.notice)
        else:
            slot.restarts += 1
            self._pending.append(slot)
        self._cancelled = False

    def _drop_late(self, now: int) -> None:
        keep: list[Slot] = []
        for slot in self._pending:
            if now >= slot.command.expires_at:
                self._events.append(functools.partial(self._on_dropped, slot, "expired"))
            elif now > slot.deadline:
                self._events.append(functools.partial(self._on_dropped, slot, "missed its window"))
            else:
                keep.append(slot)
        self._pending = keep
