"""The benchmark suite (bench/suite.py): its statistics, its report, and a --quick run of
every case. No assertion on how fast anything is: only that every case ran, produced
finite samples beside finite baseline samples, a ratio, and a verdict on its goal."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.suite import Case, goal_met, markdown, percentile
from tests.conftest import MOSQUITTO, REPO

VERSION_KEYS = {
    "python", "celery", "kombu", "paho-mqtt", "mosquitto", "redis-server", "sqlite",
    "edge-tts", "ffmpeg",
}  # fmt: skip

# Every case of #2-#6 and the county cases, as the quick run names them (the WeCom cases
# are bench/wecom.py's rows, numbered in its order: checked apart).
EXPECTED = {
    "core.help",
    "core.fanout.embedded",
    "core.fanout_single.embedded",
    "core.add.embedded",
    "core.latency.embedded",
    "core.fanout.redis",
    "core.fanout_single.redis",
    "core.add.redis",
    "core.latency.redis",
    "led.redis.50",
    "speaker.raw",
    "speaker.full",
    "speaker.mp3",
    "speaker.cache_hit",
    "speaker.fanout.embedded-mosquitto.first",
    "speaker.fanout.embedded-mosquitto.last",
    "speaker.fanout.embedded-mosquitto.cached_last",
    "dashboard.county",
    "dashboard.county_7d",
    "dashboard.township",
    "county.burst",
    "county.writes.redis",
    "county.memory.busy",
    "county.memory.idle",
    "county.soak.latency",
    "county.soak.memory",
    "county.writes.embedded",
}


def _case(**kw: Any) -> Case:
    base: dict[str, Any] = dict(
        id="x", group="core", what="x", unit="ms", samples=[1.0], baseline_what="b",
        baseline=[1.0],
    )  # fmt: skip
    return Case(**(base | kw))


def test_percentile_is_nearest_rank_and_ignores_nan() -> None:
    xs = [float(i) for i in range(1, 101)]
    assert percentile(xs, 99) == 99.0
    assert percentile(xs, 50) == 50.0
    assert percentile([3.0, 1.0, 2.0], 99) == 3.0  # fewer than 100 samples: the largest
    assert percentile([math.nan, 2.0], 99) == 2.0
    assert math.isnan(percentile([], 99))


def test_goals_on_the_ratio_and_on_the_median() -> None:
    assert goal_met("<= 1.5x", ratio=1.5, median=999) is True
    assert goal_met("<= 1.5x", ratio=1.51, median=0) is False
    assert goal_met(">= 0.7x", ratio=0.69, median=0) is False
    assert goal_met("< 300 ms", ratio=99, median=299.9) is True
    assert goal_met("<= 3", ratio=0, median=3.2) is False
    assert goal_met("(reported)", ratio=1, median=1) is None
    assert goal_met("<= 1.1x", ratio=math.nan, median=1) is False


def test_case_ratio_median_or_p99_and_checks() -> None:
    c = _case(samples=[1.0, 2.0, 10.0], baseline=[1.0, 1.0, 2.0], goal="<= 1.2x")
    assert c.ratio == 2.0  # median over median
    assert c.met is False
    p = _case(samples=[1.0, 2.0, 10.0], baseline=[1.0, 1.0, 2.0], ratio_of="p99")
    assert p.ratio == 5.0
    ok = _case(samples=[1.0], baseline=[1.0], goal="<= 1.1x", checks={"dropped unchanged": False})
    assert ok.ratio == 1.0 and ok.met is False  # a failed check fails the goal
    assert _case(baseline=[0.0]).to_json()["ratio"] is None  # no ratio against zero


def test_markdown_names_every_case_and_failures() -> None:
    report = {
        "started": "2026-11-26T00:00:00+00:00",
        "command": "python -m bench --quick",
        "config": {"repeat": 2, "rounds": 1},
        "seconds": 3.0,
        "machine": {"cpus": 2, "cpu_model": "cpu", "ram_gib": 4.0,
                    "load_average_at_start": [1.0, 1.0, 1.0]},
        "load_average_at_end": [2.0, 1.0, 1.0],
        "versions": {"python": "3.11"},
    }  # fmt: skip
    ok = _case(what="fan-out", samples=[2.0], baseline=[1.0], goal=">= 0.7x")
    bad = _case(what="burst", samples=[], baseline=[], error="BenchError: boom")
    text = markdown(report, [ok, bad])
    assert "| fan-out | 2.00 ms | 2.00 ms | 1.00 ms (b) | 2.00x | >= 0.7x | yes |" in text
    assert "| burst | FAILED: BenchError: boom |" in text
    assert "load average at start 1.0 / 1.0 / 1.0" in text


def _finite(xs: list[float]) -> bool:
    return bool(xs) and all(isinstance(x, int | float) and math.isfinite(x) for x in xs)


@pytest.mark.slow
@pytest.mark.service
@pytest.mark.timeout(1200)
def test_quick_suite_runs_every_case(tmp_path: Path) -> None:
    missing = [b for b in ("redis-server", "espeak-ng", "ffmpeg") if not shutil.which(b)]
    missing += [MOSQUITTO] if not os.path.exists(MOSQUITTO) else []
    if missing:
        if os.environ.get("VILLAGECAST_REQUIRE_SERVICES"):
            pytest.fail(f"not installed: {missing} (scripts/dev setup installs them)")
        pytest.skip(f"not installed: {missing}; `scripts/dev setup` installs them")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VILLAGECAST_")}
    env["PYTHONPATH"] = str(REPO)
    out = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--soak-minutes", "0.2", "--out", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1100,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((out / "bench-results.json").read_text(encoding="utf-8"))
    m = report["machine"]
    assert m["cpus"] >= 1 and m["ram_gib"] > 0 and len(m["load_average_at_start"]) == 3
    assert set(report["versions"]) == VERSION_KEYS
    missing_versions = [k for k, v in report["versions"].items() if not v]
    assert missing_versions == [], report["versions"]
    assert report["config"]["quick"] is True

    cases = {c["id"]: c for c in report["cases"]}
    wecom = {cid for cid in cases if cid.startswith("wecom.")}
    assert set(cases) - wecom == EXPECTED, sorted((set(cases) - wecom) ^ EXPECTED)
    assert sum(cases[cid]["goal"] == "<= 1.3x" for cid in wecom) == 2  # 1 part, 3 parts
    for cid, c in cases.items():
        assert c["error"] is None, (cid, c["error"])
        assert _finite(c["samples"]), cid
        assert _finite(c["baseline"]), cid
        for key in ("median", "p99", "baseline_median", "ratio"):
            assert isinstance(c[key], float) and math.isfinite(c[key]), (cid, key)
        assert c["ratio"] > 0 and c["p99"] >= c["median"], cid
        if c["goal"] == "(reported)":
            assert c["met"] is None, cid
        else:
            assert isinstance(c["met"], bool), cid

    burst = cases["county.burst"]
    assert list(burst["checks"]) == ["mosquitto dropped counter unchanged"]
    pairs = burst["details"]["dropped_before_after"]
    assert pairs and all(isinstance(a, int) and isinstance(b, int) for a, b in pairs)
    # Every delivered device message took at least its own MQTT publish.
    for cid in ("county.writes.redis", "county.writes.embedded"):
        assert min(cases[cid]["samples"]) >= 1.0, cases[cid]["samples"]
        for w in cases[cid]["details"]["windows"]:
            assert w["mqtt_publishes"] >= w["delivered"] > 0, w
            assert sum(w["celery_writes"].values()) > 0, w
    soak = cases["county.soak.latency"]
    assert soak["ratio_of"] == "p99" and soak["details"]["notices"] >= 3

    table = (out / "bench-results.md").read_text(encoding="utf-8")
    assert "| case | median | p99 | baseline (median) | ratio | goal | met |" in table
    assert all(c["what"] in table for c in report["cases"])


def test_villagecast_bench_runs_the_suite_from_the_checkout(tmp_path: Path) -> None:
    exe = shutil.which("villagecast") or str(Path(sys.executable).parent / "villagecast")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VILLAGECAST_")}
    proc = subprocess.run(
        [exe, "bench", "--only", "nope"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    # Reached bench/suite.py's own argument check (from another directory).
    assert proc.returncode != 0
    assert "unknown group 'nope'" in proc.stderr
    help_ = subprocess.run([exe, "bench", "--help"], cwd=tmp_path, env=env, capture_output=True,
                           text=True)  # fmt: skip
    assert help_.returncode == 0 and "python -m bench" in help_.stdout
