"""The planner: a notice plus the registry become one planned delivery per endpoint."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from channels.base import PLANNED_CHANNELS, get_channel
from content_queue.errors import NoticeError
from content_queue.i18n import Text, tr
from content_queue.models import NoticeDraft
from content_queue.registry import Registry
from content_queue.store import PlannedDelivery

__all__ = ["KIND_LABELS", "Plan", "plan_notice"]

KIND_LABELS: dict[str, Text] = {
    "wecom_group": tr("村微信群", "WeChat group"),
    "wechat_official_account": tr("公众号", "official account"),
    "led": tr("LED 屏", "LED board"),
    "speaker": tr("广播音箱", "loudspeaker"),
    "tv_feed": tr("电视公开平台", "TV platform"),
    "bulletin": tr("公开栏海报", "disclosure board poster"),
}


@dataclass
class Plan:
    villages: list[str]
    deliveries: list[PlannedDelivery]
    warnings: list[Text] = field(default_factory=list)

    def by_kind(self) -> Counter[str]:
        return Counter(d.kind for d in self.deliveries)


def plan_notice(draft: NoticeDraft, registry: Registry) -> Plan:
    """Resolve targets and channels, or explain in plain words why the notice cannot go out."""
    villages = registry.resolve_villages(
        villages=draft.targets.villages,
        townships=draft.targets.townships,
        county=draft.targets.county,
    )
    targets = registry.targets_for(villages)
    if draft.channels is not None:
        present = {t.kind for t in targets}
        missing = [k for k in draft.channels if k not in present]
        if missing:
            raise NoticeError(
                tr(
                    "所选的村没有这些渠道的端点：{kinds}",
                    "none of the targeted villages has an endpoint of kind: {kinds}",
                    kinds=", ".join(missing),
                ),
                details=[
                    tr(
                        "可用的渠道：{kinds}",
                        "available channels: {kinds}",
                        kinds=", ".join(sorted(present)) or "-",
                    )
                ],
            )
        targets = [t for t in targets if t.kind in draft.channels]
    if not targets:
        raise NoticeError(
            tr(
                "所选的村在 devices.yaml 中没有任何启用的端点",
                "the targeted villages have no enabled endpoint in devices.yaml",
            )
        )

    # Which built channels can carry this content at all?
    problems: dict[str, list[Text]] = {}
    for kind in sorted({t.kind for t in targets}):
        channel = get_channel(kind)
        if channel is not None:
            problems[kind] = channel.content_problems(title=draft.title, body=draft.body)
    if problems and all(problems.values()):
        raise NoticeError(
            tr(
                "通知放不进所选的任何一个渠道，未保存",
                "the notice fits none of the selected channels and was not saved",
            ),
            details=[
                tr("{label}：{why}", "{label}: {why}", label=KIND_LABELS[k], why=p[0])
                for k, p in problems.items()
            ],
        )
    warnings = [
        tr(
            "{label}放不下这条通知（{why}），这些投递将标记为失败",
            "the notice does not fit the {label} ({why}); those deliveries will fail",
            label=KIND_LABELS[k],
            why=p[0],
        )
        for k, p in problems.items()
        if p
    ]
    deliveries = [
        PlannedDelivery(
            endpoint_id=t.endpoint_id,
            kind=t.kind,
            village_id=t.village_id,
            township_id=t.township_id,
            skip_reason=None
            if get_channel(t.kind) is not None
            else PLANNED_CHANNELS.get(t.kind, tr("该渠道没有实现", "no channel for this kind")),
        )
        for t in targets
    ]
    return Plan(villages=villages, deliveries=deliveries, warnings=warnings)
