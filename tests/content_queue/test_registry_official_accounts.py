"""devices.yaml: official accounts that mass-send per village tag."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from content_queue.errors import RegistryError
from content_queue.registry import OfficialAccountEndpoint, load_registry

HEAD = textwrap.dedent(
    """\
    version: 1
    county: {code: "371521", name: 阳谷县}
    townships:
      - id: dongcheng
        name: 东城镇
        villages:
          - {id: liuzhuang, name: 刘庄村}
          - {id: wangzhuang, name: 王庄村}
      - id: xihu
        name: 西湖镇
        villages:
          - {id: zhaojia, name: 赵家村}
    official_accounts:
      - id: dongcheng-oa
        app_id: wx3f9a1c27d84e605b
        app_secret_env: VC_WECHAT_DONGCHENG_SECRET
        covers_townships: [dongcheng]
    """
)


def load(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "devices.yaml"
    path.write_text(HEAD + textwrap.indent(textwrap.dedent(extra), " " * 4), encoding="utf-8")
    return path


def problems(path: Path) -> list[tuple[int, int, str, str]]:
    with pytest.raises(RegistryError) as info:
        load_registry(path)
    return [
        (p.line, p.column, p.text.render("zh"), p.text.render("en")) for p in info.value.problems
    ]


def test_a_mass_send_account_with_tags_loads_with_safe_defaults(tmp_path: Path) -> None:
    path = load(
        tmp_path,
        """\
        mode: mass_send
        village_tags: {liuzhuang: 101, wangzhuang: 102}
        """,
    )
    oa = load_registry(path).endpoint("dongcheng-oa")
    assert isinstance(oa, OfficialAccountEndpoint)
    assert oa.village_tags == {"liuzhuang": 101, "wangzhuang": 102}
    assert oa.account_type == "subscription"  # the stricter quota unless told otherwise
    assert oa.digest_time == "18:00"


def test_village_tags_need_mass_send(tmp_path: Path) -> None:
    path = load(tmp_path, "village_tags: {liuzhuang: 101, wangzhuang: 102}\n")
    ((line, _, zh, en),) = problems(path)
    assert line == 14  # the account (a rule across two of its fields)
    assert "village_tags 只用于 mode: mass_send" in zh
    assert "only apply to mode: mass_send" in en


def test_every_covered_village_needs_a_tag(tmp_path: Path) -> None:
    path = load(
        tmp_path,
        """\
        mode: mass_send
        village_tags: {liuzhuang: 101}
        """,
    )
    ((line, column, zh, en),) = problems(path)
    assert (line, column) == (19, 5)
    assert "village_tags 缺少这些村的标签：wangzhuang" in zh
    assert "no tag for: wangzhuang" in en


def test_a_tag_for_a_village_the_account_does_not_cover(tmp_path: Path) -> None:
    path = load(
        tmp_path,
        """\
        mode: mass_send
        village_tags: {liuzhuang: 101, wangzhuang: 102, zhaojia: 103}
        """,
    )
    ((line, column, zh, en),) = problems(path)
    assert (line, column) == (19, 53)
    assert "'zhaojia' 不在这个公众号覆盖的村中" in zh
    assert "does not cover" in en


def test_digest_time_and_account_type_are_checked(tmp_path: Path) -> None:
    path = load(
        tmp_path,
        """\
        mode: mass_send
        account_type: enterprise
        digest_time: "25:00"
        """,
    )
    found = problems(path)
    assert [p[0] for p in found] == [19, 20]
    assert "subscription" in found[0][3] and "service" in found[0][3]
