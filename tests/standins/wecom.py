"""The WeCom group-robot stand-in for tests (refdevice.wecom_standin) and checks over its record."""

from __future__ import annotations

from collections.abc import Sequence

from refdevice.wecom_standin import Fault, Media, Record, WecomStandin, amr_duration

__all__ = ["Fault", "Media", "Record", "WecomStandin", "amr_duration", "max_in_window"]


def max_in_window(times: Sequence[float], window: float) -> int:
    """The most events that fall in any half-open interval [t, t + window)."""
    ordered = sorted(times)
    best = start = 0
    for end, t in enumerate(ordered):
        while t - ordered[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best
