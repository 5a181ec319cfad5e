"""The planner: targets and channels resolved, or the reason a notice cannot go out."""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import pytest
import yaml

from channels import base
from channels.base import PLANNED_CHANNELS, Channel, ChannelLimits, DeliveryContext, SendResult
from content_queue.errors import NoticeError
from content_queue.models import build_notice
from content_queue.registry import Registry, RegistryFile
from dispatcher.planner import plan_notice
from tests.conftest import SMALL_DEVICES


@pytest.fixture
def registry() -> Registry:
    return Registry(RegistryFile.model_validate(yaml.safe_load(SMALL_DEVICES)))


class TinyLed(Channel):
    kind: ClassVar = "led"  # type: ignore[misc]
    limits: ClassVar[ChannelLimits] = ChannelLimits(max_body_chars=10)

    def send(self, ctx: DeliveryContext) -> SendResult:
        return SendResult("sent")


class TinyTv(TinyLed):
    kind: ClassVar = "tv_feed"  # type: ignore[misc]


@pytest.fixture
def tiny_channels() -> Iterator[None]:
    saved = dict(base._registered), dict(base._instances)
    base.register_channel("led", TinyLed)
    base.register_channel("tv_feed", TinyTv)
    yield
    base._registered.clear()
    base._registered.update(saved[0])
    base._instances.clear()
    base._instances.update(saved[1])


def _draft(**over: object):  # type: ignore[no-untyped-def]
    data: dict[str, object] = {
        "title": "通知",
        "body": "内容",
        "category": "meeting",
        "targets": {"villages": ["east-liu"]},
    }
    data.update(over)
    return build_notice(data)


def test_village_targets_its_endpoints_and_the_covering_official_account(
    registry: Registry,
) -> None:
    plan = plan_notice(_draft(), registry)
    assert plan.villages == ["east-liu"]
    assert {d.endpoint_id for d in plan.deliveries} == {
        "east-liu-tv",
        "east-liu-led",
        "east-liu-wecom",
        "east-oa",
    }


def test_township_and_county_targets(registry: Registry) -> None:
    assert plan_notice(_draft(targets={"townships": ["east"]}), registry).villages == [
        "east-liu",
        "east-wang",
    ]
    county = plan_notice(_draft(targets={"county": True}), registry)
    assert len(county.villages) == 3
    assert [d.endpoint_id for d in county.deliveries].count("east-oa") == 1


def test_channel_narrowing(registry: Registry) -> None:
    plan = plan_notice(_draft(channels=["tv_feed"], targets={"county": True}), registry)
    assert {d.kind for d in plan.deliveries} == {"tv_feed"}


def test_unknown_village_and_township(registry: Registry) -> None:
    with pytest.raises(NoticeError) as err:
        plan_notice(_draft(targets={"villages": ["nowhere"], "townships": ["gone"]}), registry)
    text = err.value.render("zh")
    assert "未知的村：nowhere" in text and "未知的乡镇：gone" in text


def test_channel_no_targeted_village_has(registry: Registry) -> None:
    with pytest.raises(NoticeError) as err:
        plan_notice(_draft(targets={"villages": ["west-zhao"]}, channels=["speaker"]), registry)
    assert "没有这些渠道的端点：speaker" in err.value.render("zh")
    assert "tv_feed" in err.value.render("zh")


def test_unbuilt_channels_are_skipped_with_the_issue_named(registry: Registry) -> None:
    plan = plan_notice(_draft(), registry)
    skipped = {d.kind: d.skip_reason for d in plan.deliveries if d.skip_reason}
    assert set(skipped) == {d.kind for d in plan.deliveries} & set(PLANNED_CHANNELS)
    for kind, reason in skipped.items():
        assert reason is not None and "#" in reason.render("zh"), kind
    # Built channels are planned for real.
    assert "wechat_official_account" not in skipped
    assert "east-oa" in {d.endpoint_id for d in plan.deliveries}


def test_body_too_long_for_every_selected_channel(registry: Registry, tiny_channels: None) -> None:
    with pytest.raises(NoticeError) as err:
        plan_notice(_draft(body="很" * 11, channels=["led", "tv_feed"]), registry)
    assert "放不进所选的任何一个渠道" in err.value.render("zh")
    assert len(err.value.details) == 2


def test_body_too_long_for_some_channels_warns(registry: Registry, tiny_channels: None) -> None:
    base.register_channel("tv_feed", type("BigTv", (TinyTv,), {"limits": ChannelLimits()}))
    plan = plan_notice(_draft(body="很" * 11), registry)
    assert len(plan.warnings) == 1
    assert "LED 屏放不下这条通知" in plan.warnings[0].render("zh")
