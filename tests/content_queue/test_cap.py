"""CAP 1.2: exports validate against the schema and round-trip; imports target by area code."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from content_queue.cap import CAP_NS, validate_alert
from content_queue.errors import NoticeError
from content_queue.settings import reset_settings
from tests.conftest import SMALL_DEVICES

runner = CliRunner()
NS = {"c": CAP_NS}

CODED = (
    SMALL_DEVICES.replace("name: 东城镇\n", "name: 东城镇\n    code: '371521100'\n")
    .replace("name: 刘庄村\n", "name: 刘庄村\n        code: '371521100201'\n")
    .replace("name: 王庄村\n", "name: 王庄村\n        code: '371521100202'\n")
    .replace("name: 西河乡\n", "name: 西河乡\n    code: '371521200'\n")
    .replace("name: 赵家村\n", "name: 赵家村\n        code: '371521200301'\n")
)


@pytest.fixture
def coded(home: Path) -> Path:
    Path(os.environ["VILLAGECAST_DEVICES"]).write_text(CODED, encoding="utf-8")
    reset_settings()
    return home


def _cli(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def _alert(
    *,
    identifier: str = "county-met-2026-001",
    msg_type: str = "Alert",
    status: str = "Actual",
    codes: tuple[str, ...] = ("371521100",),
    references: str | None = None,
    extra: str = "",
) -> bytes:
    geocodes = "".join(
        f"<geocode><valueName>GB2260</valueName><value>{c}</value></geocode>" for c in codes
    )
    refs = f"<references>{references}</references>" if references else ""
    info = (
        "<info><language>zh-CN</language><category>Met</category><event>寒潮预警</event>"
        "<urgency>Immediate</urgency><severity>Severe</severity><certainty>Likely</certainty>"
        "<expires>2099-12-01T08:00:00+08:00</expires>"
        "<headline>寒潮蓝色预警</headline><description>预计明天气温下降8到10度。</description>"
        "<instruction>请做好防寒保暖。</instruction>"
        f"<area><areaDesc>东城镇</areaDesc>{geocodes}</area></info>"
    )
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>{extra}<alert xmlns="{CAP_NS}">'
        f"<identifier>{identifier}</identifier><sender>met@371521.gov.cn</sender>"
        f"<sent>2026-11-26T08:00:00+08:00</sent><status>{status}</status>"
        f"<msgType>{msg_type}</msgType><scope>Public</scope>{refs}"
        f"{info if msg_type != 'Cancel' else ''}</alert>"
    ).encode()


def test_export_is_valid_cap_and_round_trips(
    coded: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    added = json.loads(
        _cli(
            "notice",
            "add",
            "--title",
            "停水通知",
            "--body",
            "明日8时至12时停水。",
            "--category",
            "village_affairs",
            "--township",
            "east",
            "--json",
        )
    )
    xml = _cli("notice", "export", str(added["id"]), "--format", "cap").encode()
    root = validate_alert(xml)
    assert root.findtext("c:msgType", namespaces=NS) == "Alert"
    assert root.findtext("c:info/c:headline", namespaces=NS) == "停水通知"
    assert root.findall("c:info/c:area/c:geocode/c:value", namespaces=NS)[0].text == "371521100"

    # The exported alert imported elsewhere becomes the same notice for the same villages.
    path = tmp_path / "alert.xml"
    path.write_bytes(xml)
    other = tmp_path / "other-home"
    monkeypatch.setenv("VILLAGECAST_HOME", str(other))
    reset_settings()
    imported = json.loads(_cli("notice", "import", str(path), "--json"))
    assert imported["action"] == "added" and imported["msg_type"] == "Alert"
    assert imported["notice"]["title"] == "停水通知"
    villages = {
        d["village"] for d in imported["deliveries"] if d["kind"] != "wechat_official_account"
    }
    assert villages == {"east-liu", "east-wang"}


def test_correction_exports_update_and_withdrawal_exports_cancel(coded: Path) -> None:
    nid = json.loads(
        _cli(
            "notice",
            "add",
            "--title",
            "开会",
            "--body",
            "周五开会。",
            "--category",
            "meeting",
            "--village",
            "east-liu",
            "--json",
        )
    )["id"]
    new = json.loads(_cli("notice", "correct", str(nid), "--body", "周六开会。", "--json"))["id"]
    update = validate_alert(_cli("notice", "export", str(new)).encode())
    assert update.findtext("c:msgType", namespaces=NS) == "Update"
    assert f"villagecast-371521-{nid}," in (update.findtext("c:references", namespaces=NS) or "")
    _cli("notice", "withdraw", str(new))
    cancel = validate_alert(_cli("notice", "export", str(new)).encode())
    assert cancel.findtext("c:msgType", namespaces=NS) == "Cancel"
    assert cancel.findtext("c:identifier", namespaces=NS) == f"villagecast-371521-{new}-cancel"


def test_import_alert_update_cancel(coded: Path, tmp_path: Path) -> None:
    first = tmp_path / "a.xml"
    first.write_bytes(_alert(codes=("371521100201",)))
    out = json.loads(_cli("notice", "import", str(first), "--json"))
    nid = out["notice"]["id"]
    assert out["notice"]["priority"] == "emergency" and out["notice"]["category"] == "emergency"
    assert {d["village"] for d in out["deliveries"] if d["village"]} == {"east-liu"}
    assert "请做好防寒保暖" in out["notice"]["body"]

    again = runner.invoke(app, ["notice", "import", str(first)])
    assert again.exit_code == 2 and "已经导入过" in again.output

    ref = "met@371521.gov.cn,county-met-2026-001,2026-11-26T08:00:00+08:00"
    upd = tmp_path / "u.xml"
    upd.write_bytes(_alert(identifier="county-met-2026-002", msg_type="Update", references=ref))
    out = json.loads(_cli("notice", "import", str(upd), "--json"))
    assert out["action"] == "corrected" and out["notice"]["supersedes"] == nid
    assert {
        d["village"] for d in out["deliveries"] if d["action"] == "publish" and d["village"]
    } == {
        "east-liu",
        "east-wang",
    }
    new = out["notice"]["id"]

    ref2 = "met@371521.gov.cn,county-met-2026-002,2026-11-26T08:00:00+08:00"
    cancel = tmp_path / "c.xml"
    cancel.write_bytes(_alert(identifier="county-met-2026-003", msg_type="Cancel", references=ref2))
    out = json.loads(_cli("notice", "import", str(cancel), "--json"))
    assert out["action"] == "withdrawn" and out["notice"]["id"] == new
    assert out["notice"]["state"] == "withdrawn"


@pytest.mark.parametrize(
    ("alert", "message"),
    [
        (_alert(status="Exercise"), "演练、测试或草稿"),
        (_alert(codes=("110101",)), "不在本县登记中（地区编码：110101）"),
        (_alert().replace(b"<scope>Public</scope>", b""), "不符合 CAP 1.2 格式"),
        (
            _alert()
            .replace(b"<urgency>Immediate", b"<urgency>Soon")
            .replace(b"Immediate</", b"Soon</"),
            "第 1 行",
        ),
        (b"<alert>not closed", "不是有效的 XML"),
        (
            _alert(msg_type="Cancel", references="x,unknown-id,2026-11-26T08:00:00+08:00"),
            "没有导入过",
        ),
    ],
)
def test_bad_alerts_are_clear_errors(
    coded: Path, tmp_path: Path, alert: bytes, message: str
) -> None:
    path = tmp_path / "bad.xml"
    path.write_bytes(alert)
    result = runner.invoke(app, ["notice", "import", str(path)])
    assert result.exit_code in (1, 2)
    assert message in result.output, result.output
    assert "Traceback" not in result.output


def test_entities_are_never_resolved(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET", encoding="utf-8")
    doctype = f'<!DOCTYPE alert [<!ENTITY x SYSTEM "file://{secret}">]>'
    xml = _alert(extra=doctype).replace(b"<headline>", b"<headline>&x;")
    with pytest.raises(NoticeError) as err:
        validate_alert(xml)
    assert "DOCTYPE" in err.value.render("zh") and "TOP-SECRET" not in err.value.render("zh")
