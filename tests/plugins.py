"""Channels for tests and benchmarks, plugged in with VILLAGECAST_CHANNEL_TV_FEED=module:Class.

They record every side effect in a file (one line per send) so a test can count what a
device or platform would have seen, across worker processes that get killed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import ClassVar

from channels.base import (
    Channel,
    ChannelLimits,
    DeliveryContext,
    PermanentError,
    SendResult,
    TransientError,
)
from content_queue.i18n import tr
from content_queue.registry import EndpointKind


def side_effects_path() -> Path:
    return Path(os.environ["VILLAGECAST_HOME"]) / "side_effects.log"


def read_side_effects(home: Path) -> list[int]:
    path = home / "side_effects.log"
    if not path.exists():
        return []
    return [int(line) for line in path.read_text().split()]


class RecordingChannel(Channel):
    """Sleeps VC_TEST_SLEEP seconds, appends the delivery id, confirms delivery.

    A title containing POISON kills the worker process every time; FLAKY fails
    transiently on the first attempt.
    """

    kind: ClassVar[EndpointKind] = "tv_feed"
    limits: ClassVar[ChannelLimits] = ChannelLimits(max_body_chars=5000, confirms="ack")

    def send(self, ctx: DeliveryContext) -> SendResult:
        if "POISON" in ctx.notice.title:
            os._exit(17)
        if "FLAKY" in ctx.notice.title and ctx.attempt == 1:
            raise TransientError(tr("系统繁忙", "system busy"), code="-1")
        time.sleep(float(os.environ.get("VC_TEST_SLEEP", "0")))
        fd = os.open(side_effects_path(), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{ctx.delivery_id}\n".encode())
        finally:
            os.close(fd)
        return SendResult("delivered", external_ref=f"rec-{ctx.delivery_id}")


class NoopChannel(Channel):
    """Does nothing and confirms at once: measures the dispatcher's own overhead."""

    kind: ClassVar[EndpointKind] = "tv_feed"
    claim_chunk: ClassVar[int] = 25

    def send(self, ctx: DeliveryContext) -> SendResult:
        return SendResult("delivered")


class FailsOnceChannel(Channel):
    """Fails permanently the first time it sees a delivery, delivers the second time: a
    failure a person fixes and retries (the dashboard's browser test)."""

    kind: ClassVar[EndpointKind] = "tv_feed"

    def send(self, ctx: DeliveryContext) -> SendResult:
        marker = side_effects_path().with_name(f"failed-once-{ctx.delivery_id}")
        if not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text("1")
            raise PermanentError(
                tr(
                    "电视平台拒绝了推送（签名密钥不对）",
                    "the TV platform refused the push (wrong signing secret)",
                ),
                code="config",
            )
        return SendResult("delivered", external_ref=f"ok-{ctx.delivery_id}")
