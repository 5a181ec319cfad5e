"""devices.yaml: the example loads, and every trap is reported at file:line:column with the fix."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from content_queue.errors import NoticeError, RegistryError, RegistryProblem
from content_queue.registry import ENDPOINT_KINDS, Registry, load_registry
from content_queue.registry_schema import registry_json_schema

EXAMPLE = Path(__file__).resolve().parents[2] / "devices.yaml"

# A county with one village; endpoints passed to village() start on line 10, column 11.
HEAD = textwrap.dedent(
    """\
    version: 1
    county: {code: "371521", name: 阳谷县}
    townships:
      - id: dongcheng
        name: 东城镇
        villages:
          - id: dongcheng-liuzhuang
            name: 刘庄村
            endpoints:
    """
)
SECRET = "693a91f6-7a1b-4bc4-97a0-0ec2cdd5b3e1"


def village(endpoints: str, tail: str = "") -> str:
    return HEAD + textwrap.indent(textwrap.dedent(endpoints), " " * 10) + textwrap.dedent(tail)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "devices.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def failure(path: Path) -> RegistryError:
    with pytest.raises(RegistryError) as info:
        load_registry(path)
    err = info.value
    for lang in ("zh", "en"):
        rendered = err.render(lang)
        for p in err.problems:
            assert f"{path}:{p.line}:{p.column}: " in rendered
    assert "问题" in err.render("zh") or "错误" in err.render("zh")
    assert "problem" in err.render("en")
    return err


def only(path: Path) -> tuple[RegistryProblem, str, str]:
    """The single problem found, and its message in Chinese and English."""
    err = failure(path)
    assert len(err.problems) == 1, err.render("en")
    problem = err.problems[0]
    return problem, problem.text.render("zh"), problem.text.render("en")


@pytest.fixture(scope="module")
def example() -> Registry:
    return load_registry(EXAMPLE)


# -- the example ------------------------------------------------------------------------------


def test_example_loads_with_every_endpoint_kind(example: Registry) -> None:
    assert {ep.kind for ep in example.endpoints.values()} == set(ENDPOINT_KINDS)
    assert example.source == EXAMPLE
    assert len(example.townships) == 2
    assert all(2 <= len(t.villages) <= 3 for t in example.townships.values())
    default = example.quiet_hours("dongcheng-liuzhuang")
    assert default is not None and (default.start, default.end) == ("21:30", "06:30")
    own = example.quiet_hours("dongcheng-houtun")
    assert own is not None and own != default
    assert example.villages["dongcheng-houtun"].voice == "zh-CN-shaanxi-XiaoniNeural"
    assert example.doc.defaults.voice == "zh-CN-XiaoxiaoNeural"
    tv = example.endpoints["dongcheng-liuzhuang-tv"]
    assert getattr(tv, "ingest_url", None) == "http://127.0.0.1:8799/ingest"
    assert {oa.app_secret_env for oa in example.official_accounts.values()} == {
        "VC_WECHAT_DONGCHENG_SECRET",
        "VC_WECHAT_QIJI_SECRET",
    }


def test_json_schema_has_dialect_and_title() -> None:
    schema = registry_json_schema()
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert schema["title"] == "villagecast devices.yaml"
    assert schema["additionalProperties"] is False
    assert {"version", "county", "townships"} <= set(schema["required"])
    json.dumps(schema)


# -- one test per trap ------------------------------------------------------------------------


def test_duplicate_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        version: 1
        county:
          code: "371521"
          name: 阳谷县
          name: 莘县
        townships:
          - {id: dongcheng, name: 东城镇}
        """,
    )
    problem, zh, en = only(path)
    assert (problem.line, problem.column) == (5, 3)
    assert "duplicate key 'name' (first on line 4)" in en and "delete or merge" in en
    assert "重复的键 'name'" in zh and "第 4 行" in zh


def test_unquoted_NO_is_an_error(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        village(
            """\
            - id: liuzhuang-led
              kind: led
              device_id: led-liuzhuang-01
              enabled: NO
            """
        ),
    )
    problem, zh, en = only(path)
    assert (problem.line, problem.column) == (13, 22)
    assert 'write it in quotes: "NO"' in en and "write false" in en
    assert '请加引号："NO"' in zh and "请写 false" in zh


def test_unquoted_on_is_an_error(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        village(
            """\
            - id: liuzhuang-led
              kind: led
              device_id: led-liuzhuang-01
              enabled: on
            """
        ),
    )
    problem, zh, en = only(path)
    assert (problem.line, problem.column) == (13, 22)
    assert "boolean true in YAML 1.1" in en and "write true" in en
    assert '"on"' in zh and "请写 true" in zh


def test_unquoted_time_is_an_error(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        version: 1
        county: {code: "371521", name: 阳谷县}
        defaults:
          quiet_hours:
            start: 21:30
            end: "06:30"
        townships:
          - {id: dongcheng, name: 东城镇}
        """,
    )
    problem, zh, en = only(path)
    assert (problem.line, problem.column) == (5, 12)
    assert 'write it in quotes: "21:30"' in en and "1290" in en
    assert '时间请加引号："21:30"' in zh


def test_octal_looking_number_is_an_error(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        village(
            """\
            - id: liuzhuang-led
              kind: led
              device_id: led-liuzhuang-01
              max_chars: 0755
            """
        ),
    )
    problem, zh, en = only(path)
    assert (problem.line, problem.column) == (13, 24)
    assert "octal 493" in en and 'write it in quotes: "0755"' in en
    assert "八进制" in zh


def test_unknown_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        version: 1
        county: {code: "371521", name: 阳谷县}
        townships:
          - id: dongcheng
            name: 东城镇
            villages:
              - id: dongcheng-liuzhuang
                name: 刘庄村
                endpionts: []
        """,
    )
    problem, zh, en = only(path)
    assert (problem.line, problem.column) == (9, 9)
    assert (
        "unknown key 'endpionts'; allowed keys: id, name, code, quiet_hours, voice, calendar, "
        "endpoints" in en
    )
    assert "did you mean 'endpoints'?" in en
    assert "未知的键 'endpionts'，允许的键：id, name" in zh


def test_duplicate_village_id(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        version: 1
        county: {code: "371521", name: 阳谷县}
        townships:
          - id: dongcheng
            name: 东城镇
            villages:
              - id: liuzhuang
                name: 刘庄村
          - id: qiji
            name: 七级镇
            villages:
              - id: liuzhuang
                name: 刘庄村
        """,
    )
    problem, zh, en = only(path)
    assert (problem.line, problem.column) == (12, 13)
    assert "duplicate village id 'liuzhuang' (first used on line 7)" in en and "rename" in en
    assert "重复的村 id 'liuzhuang'" in zh and "第 7 行" in zh


def test_duplicate_endpoint_id_across_official_accounts(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        village(
            """\
            - id: liuzhuang-wecom
              kind: wecom_group
              webhook_key_env: VC_WECOM_LIUZHUANG
            """,
            """\
            official_accounts:
              - id: liuzhuang-wecom
                app_id: wx3f9a1c27d84e605b
                app_secret_env: VC_WECHAT_DONGCHENG_SECRET
                covers_townships: [dongcheng]
            """,
        ),
    )
    problem, zh, en = only(path)
    assert (problem.line, problem.column) == (14, 9)
    assert "duplicate endpoint id 'liuzhuang-wecom' (first used on line 10)" in en
    assert "重复的端点 id 'liuzhuang-wecom'" in zh


def test_duplicate_device_id(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        village(
            """\
            - id: liuzhuang-led
              kind: led
              device_id: liuzhuang-01
            - id: liuzhuang-speaker
              kind: speaker
              device_id: liuzhuang-01
            """
        ),
    )
    problem, zh, en = only(path)
    assert (problem.line, problem.column) == (15, 24)
    assert "duplicate device_id 'liuzhuang-01' (first used on line 12)" in en
    assert "重复的设备 device_id 'liuzhuang-01'" in zh and "请改名" in zh


def test_dangling_covers_townships(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        version: 1
        county: {code: "371521", name: 阳谷县}
        townships:
          - {id: dongcheng, name: 东城镇}
        official_accounts:
          - id: dongcheng-oa
            app_id: wx3f9a1c27d84e605b
            app_secret_env: VC_WECHAT_DONGCHENG_SECRET
            covers_townships: [dongcheng, xihu]
        """,
    )
    problem, zh, en = only(path)
    assert (problem.line, problem.column) == (9, 35)
    assert "covers_townships names 'xihu', which is not defined" in en
    assert "known ids: dongcheng" in en
    assert "'xihu' 在本文件中不存在" in zh


def test_unquoted_numeric_id(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        version: 1
        county: {code: "371521", name: 阳谷县}
        townships:
          - id: dongcheng
            name: 东城镇
            villages:
              - id: 1024
                name: 刘庄村
        """,
    )
    problem, zh, en = only(path)
    assert (problem.line, problem.column) == (7, 13)
    assert 'write it in quotes, e.g. id: "1024"' in en
    assert '请加引号，例如 id: "1024"' in zh


def test_bad_endpoint_kind(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        village(
            """\
            - id: liuzhuang-sms
              kind: sms
            """
        ),
    )
    problem, zh, en = only(path)
    assert (problem.line, problem.column) == (11, 19)
    assert "wrong endpoint kind: sms" in en and "端点类型 kind 不对：sms" in zh
    for kind in ENDPOINT_KINDS:
        if kind != "wechat_official_account":
            assert kind in en and kind in zh


def test_missing_required_field(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        village(
            """\
            - id: liuzhuang-wecom
              kind: wecom_group
            """
        ),
    )
    problem, zh, en = only(path)
    assert (problem.line, problem.column) == (10, 13)
    assert "missing required key 'webhook_key_env'; add it" in en
    assert "缺少必填的键 'webhook_key_env'" in zh


@pytest.mark.parametrize(
    ("line", "where"),
    [
        (f"webhook_key: {SECRET}", (13, 13)),
        (f"name: https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key={SECRET}", (13, 19)),
    ],
    ids=["secret-key", "webhook-url"],
)
def test_secret_written_inline(tmp_path: Path, line: str, where: tuple[int, int]) -> None:
    path = write(
        tmp_path,
        village(
            f"""\
            - id: liuzhuang-wecom
              kind: wecom_group
              webhook_key_env: VC_WECOM_LIUZHUANG
              {line}
            """
        ),
    )
    problem, zh, en = only(path)
    assert (problem.line, problem.column) == where
    assert "secrets must not be written in devices.yaml" in en and "*_env" in en
    assert "密钥不能写在 devices.yaml 里" in zh
    with pytest.raises(RegistryError) as info:
        load_registry(path)
    shown = [info.value.render("zh"), info.value.render("en"), str(info.value)]
    shown += [repr(info.value.problems), repr(info.value.args)]
    assert not any(SECRET in s for s in shown)


def test_secret_in_an_env_field_explains_the_name(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        village(
            f"""\
            - id: liuzhuang-wecom
              kind: wecom_group
              webhook_key_env: {SECRET}
            """
        ),
    )
    problem, zh, en = only(path)
    assert (problem.line, problem.column) == (12, 30)
    assert "the NAME of the environment variable" in en and "never the secret" in en
    assert "环境变量的名字，不是密钥本身" in zh
    assert SECRET not in en + zh


def test_second_tv_feed_in_a_village(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        village(
            """\
            - {id: liuzhuang-tv, kind: tv_feed}
            - {id: liuzhuang-tv2, kind: tv_feed}
            """
        ),
    )
    problem, zh, en = only(path)
    assert (problem.line, problem.column) == (11, 39)
    assert "at most one tv_feed endpoint (one is already on line 10)" in en
    assert "每个村只能有一个 tv_feed 端点" in zh


def test_ingest_url_without_its_secret_name(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        village(
            """\
            - {id: liuzhuang-tv, kind: tv_feed, ingest_url: "http://127.0.0.1:9/in"}
            """
        ),
    )
    problem, zh, en = only(path)
    assert problem.line == 10
    assert "必须设置 ingest_secret_env" in zh
    assert "ingest_url needs ingest_secret_env" in en


def test_invalid_utf8(tmp_path: Path) -> None:
    path = tmp_path / "devices.yaml"
    path.write_bytes(
        b'version: 1\ncounty: {code: "371521", name: ' + "阳谷县".encode("gbk") + b"}\n"
    )
    problem, zh, en = only(path)
    assert (problem.line, problem.column) == (2, 32)
    assert "not valid UTF-8" in en and "save it as UTF-8" in en
    assert "UTF-8 编码另存" in zh


def test_yaml_syntax_error(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        version: 1
        county:
          code: "371521"
         name: 阳谷县
        """,
    )
    problem, zh, en = only(path)
    assert (problem.line, problem.column) == (4, 2)
    assert en.startswith("YAML syntax error: ") and "check the indentation" in en
    assert zh.startswith("YAML 语法错误") and "缩进" in zh


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.yaml"
    problem, zh, en = only(path)
    assert (problem.line, problem.column) == (1, 1)
    assert "does not exist" in en and f"villagecast devices check {path}" in en
    assert "不存在" in zh and "示例 devices.yaml" in zh


@pytest.mark.parametrize(
    ("make", "en_part", "zh_part"),
    [
        (lambda p: p.mkdir(), "cannot read", "无法读取"),
        (lambda p: p.write_text("# nothing yet\n", encoding="utf-8"), "the file is empty", "空的"),
    ],
    ids=["directory", "empty"],
)
def test_unreadable_or_empty_file(
    tmp_path: Path, make: Callable[[Path], object], en_part: str, zh_part: str
) -> None:
    path = tmp_path / "devices.yaml"
    make(path)
    problem, zh, en = only(path)
    assert (problem.line, problem.column) == (1, 1)
    assert en_part in en and zh_part in zh


def test_anchors_and_aliases(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        version: 1
        county: {code: "371521", name: 阳谷县}
        townships:
          - &east
            id: dongcheng
            name: 东城镇
          - *east
        """,
    )
    err = failure(path)
    assert [(p.line, p.column) for p in err.problems] == [(4, 5), (7, 5)]
    for p in err.problems:
        assert "anchors and aliases (&name, *name) are not supported" in p.text.render("en")
        assert "不支持锚点和别名" in p.text.render("zh")


def test_merge_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        version: 1
        county: {code: "371521", name: 阳谷县}
        townships:
          - id: dongcheng
            name: 东城镇
            <<: {villages: []}
        """,
    )
    problem, zh, en = only(path)
    assert (problem.line, problem.column) == (6, 5)
    assert "merge keys (<<) are not supported" in en and "合并键" in zh


def test_all_problems_are_reported_in_file_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        version: 1
        county: {code: 371521, name: 阳谷县}
        townships:
          - id: dongcheng
            name: 东城镇
            name: 西城镇
            villages:
              - {id: liuzhuang, name: 刘庄村, endpoints: [{id: x, kind: led, enabled: NO}]}
        official_accounts:
          - {id: oa, app_id: wx3f9a1c27d84e605b, app_secret_env: VC_S, covers_villages: [wang]}
        """,
    )
    err = failure(path)
    lines = [p.line for p in err.problems]
    assert lines == sorted(lines) and set(lines) == {2, 6, 8, 10}
    assert len(err.problems) == 5  # code, duplicate name, NO, missing device_id, 'wang'


# -- lookups ----------------------------------------------------------------------------------


def test_resolve_villages(example: Registry) -> None:
    assert example.resolve_villages(villages=["qiji-qianjie"]) == ["qiji-qianjie"]
    assert example.resolve_villages(townships=["dongcheng"]) == [
        "dongcheng-liuzhuang",
        "dongcheng-wanglou",
        "dongcheng-houtun",
    ]
    assert example.resolve_villages(county=True) == list(example.villages)
    with pytest.raises(NoticeError) as info:
        example.resolve_villages(villages=["nowhere"], townships=["xihu"])
    en, zh = info.value.render("en"), info.value.render("zh")
    assert "unknown village: nowhere" in en and "unknown township: xihu" in en
    assert "未知的村：nowhere" in zh and "未知的乡镇：xihu" in zh


def test_targets_for_includes_each_official_account_once(example: Registry) -> None:
    targets = example.targets_for(["dongcheng-liuzhuang", "dongcheng-wanglou", "dongcheng-houtun"])
    accounts = [t.endpoint_id for t in targets if t.kind == "wechat_official_account"]
    assert accounts == ["dongcheng-oa"]
    ids = {t.endpoint_id for t in targets}
    assert "dongcheng-houtun-led" not in ids  # disabled in the example
    assert not any(i.startswith("qiji-") for i in ids)
    liu = [t for t in targets if t.village_id == "dongcheng-liuzhuang"]
    assert {t.kind for t in liu} == {"wecom_group", "led", "speaker", "tv_feed", "bulletin"}
    assert all(t.township_id == "dongcheng" for t in liu)


# -- robustness -------------------------------------------------------------------------------

_EXAMPLE_LINES = EXAMPLE.read_text(encoding="utf-8").splitlines(keepends=True)
_YAMLISH = st.text(alphabet=st.sampled_from(list("ab1:-_ []{}&*!|>'\"#,?~\n\tNOon0")), max_size=120)


@st.composite
def _mangled_example(draw: st.DrawFn) -> str:
    lines = list(_EXAMPLE_LINES)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        lines[i] = draw(st.sampled_from(["", lines[i].lstrip(), lines[i][1:], draw(_YAMLISH)]))
    return "".join(lines)


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.one_of(_YAMLISH, _mangled_example()).map(str.encode) | st.binary(max_size=80))
def test_bad_input_only_ever_raises_registry_error(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "devices.yaml"
    path.write_bytes(data)
    problems: list[RegistryProblem] = []
    try:
        load_registry(path)
    except RegistryError as err:
        problems = err.problems or [RegistryProblem("-", 0, 0, err.text)]
        err.render("zh")
        err.render("en")
    assert all(p.line >= 1 and p.column >= 1 for p in problems)
