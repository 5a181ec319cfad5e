"""devices.yaml: the disclosure calendar and bulletin endpoints, errors at file:line:column."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from content_queue.errors import RegistryError
from content_queue.registry import BulletinEndpoint, Cadence, load_registry
from content_queue.registry_schema import registry_json_schema

EXAMPLE = Path(__file__).resolve().parents[2] / "devices.yaml"


def problems(tmp_path: Path, text: str) -> list[tuple[int, int, str, str]]:
    path = tmp_path / "devices.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    with pytest.raises(RegistryError) as info:
        load_registry(path)
    rendered = info.value.render("zh")
    out = []
    for p in info.value.problems:
        assert f"{path}:{p.line}:{p.column}: " in rendered
        out.append((p.line, p.column, p.text.render("zh"), p.text.render("en")))
    return out


def test_the_example_has_a_calendar_and_a_board() -> None:
    registry = load_registry(EXAMPLE)
    board = registry.endpoints["dongcheng-liuzhuang-board"]
    assert isinstance(board, BulletinEndpoint) and board.paper == "A4" and board.folder is None
    assert registry.calendar_for("dongcheng-liuzhuang")["farm_subsidy"] == Cadence(
        months=[3, 9], due_day=20
    )
    assert registry.calendar_for("dongcheng-houtun")["village_finance"].every == "quarter"
    schema = registry_json_schema()
    assert "bulletin" in str(schema) and "due_day" in str(schema)


def test_calendar_mistakes_are_located(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """\
        version: 1
        county: {code: "371521", name: 阳谷县}
        calendar:
          village_finance: {every: month, months: [1]}
          party_afairs: {every: quarter}
          farm_subsidy: {months: [3, 13], due_day: 0}
        townships:
          - id: east
            name: 东城镇
            villages:
              - id: east-liu
                name: 刘庄村
                calendar:
                  village_affairs: {every: weekly}
                  poverty_monitoring: {enabled: no}
                endpoints:
                  - {id: east-liu-board, kind: bulletin, paper: A5}
        """,
    )
    lines = {(line, col): zh for line, col, zh, _ in found}
    assert "二者选一" in lines[(4, 20)] and "enabled: false" in lines[(4, 20)]
    assert "未知的键 'party_afairs'" in lines[(5, 3)] and "party_affairs" in lines[(5, 3)]
    assert lines[(6, 30)] == "months 必须不大于 12"  # the 13
    assert lines[(6, 44)] == "due_day 必须不小于 1"
    assert lines[(14, 36)].startswith("every 只能是 'month', 'quarter'")
    assert "YAML 1.1 把它读成布尔值 false" in lines[(15, 41)]
    assert lines[(17, 57)] == "paper 只能是 'A4' or 'A3'"
    assert len(found) == 7


def test_bulletin_needs_no_secret_and_takes_a_folder(tmp_path: Path) -> None:
    path = tmp_path / "devices.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            version: 1
            county: {code: "371521", name: 阳谷县}
            townships:
              - id: east
                name: 东城镇
                villages:
                  - id: east-liu
                    name: 刘庄村
                    endpoints:
                      - {id: east-liu-board, kind: bulletin, folder: /srv/print/liu, paper: A3}
            """
        ),
        encoding="utf-8",
    )
    registry = load_registry(path)
    board = registry.endpoints["east-liu-board"]
    assert isinstance(board, BulletinEndpoint)
    assert (board.folder, board.paper) == ("/srv/print/liu", "A3")
    assert [t.kind for t in registry.targets_for(["east-liu"])] == ["bulletin"]
