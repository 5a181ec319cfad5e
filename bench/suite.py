"""The benchmark suite: every case of #2-#6 and the county load cases, one command, one report.

    python -m bench [--quick] [--repeat N] [--soak-minutes M] [--out DIR] [--only GROUPS]
                    [--skip GROUPS]
    villagecast bench ...        (the same, through the CLI)

Each case is measured beside its baseline in the same process tree, the two interleaved
(case, baseline, case, baseline, ...), ``--repeat`` times (default 5) after a warm-up that
is not counted (--quick: twice, and once for the cases that start their own brokers,
workers and boards, unless --repeat says otherwise). The report (``bench-results.json`` and
``bench-results.md`` in ``--out``) gives per case: the median and p99 of the samples, the
baseline's median, the ratio (median over median unless the case says otherwise), the goal
and whether it was met, plus the machine (CPUs, model, RAM, load average at the start) and
the versions of what was measured (python, celery, kombu, paho-mqtt, mosquitto,
redis-server, sqlite, edge-tts, ffmpeg).

Groups (``--only`` / ``--skip``, comma-separated): core (the #2 cases: --help, fan-out
deliveries/s, notice add, enqueue-to-delivered), wecom (#5), led (#3), speaker (#4),
dashboard (#6), county (burst, broker writes, memory, soak: bench/county.py).

--quick shrinks every size so a CI test runs the whole suite in about a minute; its
figures only show that every case runs, they are not the performance.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import math
import os
import platform
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

GROUPS = ("core", "wecom", "led", "speaker", "dashboard", "county")


@dataclass
class Config:
    """What one run of the suite measures and how big."""

    quick: bool = False
    repeat: int = 5
    """Repetitions of the cases measured in this process (a few seconds each at most)."""
    rounds: int = 5
    """Repetitions of the cases that start their own brokers, workers and boards."""
    soak_minutes: float = 10.0
    soak_devices: int = 2000
    burst_devices: int = 5000
    burst_notices: int = 20
    led_sizes: tuple[int, ...] = (5000,)
    led_setups: tuple[str, ...] = ("redis", "embedded-mosquitto")
    speaker_count: int = 500
    speaker_setups: tuple[str, ...] = ("embedded-mosquitto",)
    fanout_endpoints: int = 1000
    wecom_groups: int = 200
    dashboard_villages: int = 1000
    timeout: float = 600.0

    @classmethod
    def make(
        cls, *, quick: bool, repeat: int | None = None, soak_minutes: float | None = None
    ) -> Config:
        if not quick:
            cfg = cls()
        else:
            cfg = cls(
                quick=True,
                repeat=2,
                rounds=1,
                soak_minutes=1.0,
                soak_devices=50,
                burst_devices=100,
                burst_notices=5,
                led_sizes=(50,),
                led_setups=("redis",),
                speaker_count=10,
                fanout_endpoints=50,
                wecom_groups=10,
                dashboard_villages=20,
                timeout=120.0,
            )
        if repeat is not None:
            cfg.repeat = cfg.rounds = max(1, repeat)
        if soak_minutes is not None:
            cfg.soak_minutes = soak_minutes
        return cfg


Stat = Literal["median", "p99"]


@dataclass
class Case:
    """One figure: its samples beside its baseline's, and what is wanted of them."""

    id: str
    group: str
    what: str
    unit: str
    samples: list[float]
    baseline_what: str
    baseline: list[float]
    goal: str = "(reported)"
    """``<= 1.5x`` / ``>= 0.7x`` (on the ratio), ``< 300 ms`` / ``<= 3`` (on the median),
    ``(reported)`` (no goal)."""
    ratio_of: Stat = "median"
    """Which statistic of samples and baseline the ratio compares."""
    checks: dict[str, bool] = field(default_factory=dict)
    """Further conditions of the goal (e.g. mosquitto's dropped counter unchanged)."""
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def median(self) -> float:
        return _median(self.samples)

    @property
    def p99(self) -> float:
        return percentile(self.samples, 99)

    @property
    def baseline_median(self) -> float:
        return _median(self.baseline)

    @property
    def baseline_p99(self) -> float:
        return percentile(self.baseline, 99)

    @property
    def ratio(self) -> float:
        if self.ratio_of == "p99":
            ours, base = self.p99, self.baseline_p99
        else:
            ours, base = self.median, self.baseline_median
        if not (math.isfinite(ours) and math.isfinite(base)) or base == 0:
            return math.nan
        return ours / base

    @property
    def met(self) -> bool | None:
        """None when the case has no goal; False when it failed to run."""
        if self.error is not None:
            return False
        ok = goal_met(self.goal, ratio=self.ratio, median=self.median)
        if ok is None:
            return None
        return ok and all(self.checks.values())

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            median=_finite(self.median),
            p99=_finite(self.p99),
            baseline_median=_finite(self.baseline_median),
            baseline_p99=_finite(self.baseline_p99),
            ratio=_finite(self.ratio),
            met=self.met,
        )
        return data


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _median(xs: Sequence[float]) -> float:
    xs = [x for x in xs if math.isfinite(x)]
    return statistics.median(xs) if xs else math.nan


def percentile(xs: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (with fewer than 100 samples, p99 is the largest)."""
    xs = sorted(x for x in xs if math.isfinite(x))
    if not xs:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(xs)))
    return xs[rank - 1]


_GOAL = re.compile(r"^(<=|>=|<|>)\s*([0-9.]+)\s*(x|.*)$")


def goal_met(goal: str, *, ratio: float, median: float) -> bool | None:
    m = _GOAL.match(goal.strip())
    if m is None:
        return None
    op, num, unit = m.group(1), float(m.group(2)), m.group(3).strip()
    value = ratio if unit == "x" else median
    if not math.isfinite(value):
        return False
    return {
        "<=": value <= num,
        ">=": value >= num,
        "<": value < num,
        ">": value > num,
    }[op]


def failed(group: str, case_id: str, what: str, exc: BaseException) -> Case:
    return Case(
        id=case_id,
        group=group,
        what=what,
        unit="",
        samples=[],
        baseline_what="",
        baseline=[],
        error=f"{type(exc).__name__}: {exc}",
        details={"traceback": traceback.format_exc(limit=8)},
    )


def interleave(
    case: Callable[[], float], baseline: Callable[[], float], repeat: int, *, warm: bool = True
) -> tuple[list[float], list[float]]:
    """case, baseline, case, baseline, ... ``repeat`` times after one uncounted pair."""
    if warm:
        case()
        baseline()
    ours: list[float] = []
    base: list[float] = []
    for i in range(repeat):
        # Alternate which goes first, so a drift in the machine's load favours neither.
        if i % 2 == 0:
            ours.append(case())
            base.append(baseline())
        else:
            base.append(baseline())
            ours.append(case())
    return ours, base


def progress(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- machine and versions ---------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model or platform.processor(),
        "ram_gib": round(mem_kb / 1024 / 1024, 1),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "os": platform.platform(),
        "hostname": platform.node(),
    }


def _first_line(cmd: list[str], pattern: str) -> str | None:
    if shutil.which(cmd[0]) is None and not Path(cmd[0]).exists():
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(pattern, out.stdout + out.stderr)
    return m.group(1) if m else None


def versions() -> dict[str, str | None]:
    def dist(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    from bench.led import MOSQUITTO

    return {
        "python": platform.python_version(),
        "celery": dist("celery"),
        "kombu": dist("kombu"),
        "paho-mqtt": dist("paho-mqtt"),
        "mosquitto": _first_line([MOSQUITTO, "-h"], r"mosquitto version (\S+)"),
        "redis-server": _first_line(["redis-server", "--version"], r"v=(\S+)"),
        "sqlite": sqlite3.sqlite_version,
        "edge-tts": dist("edge-tts"),
        "ffmpeg": _first_line(["ffmpeg", "-version"], r"ffmpeg version (\S+)"),
    }


# -- report -----------------------------------------------------------------------------------


def _fmt(x: float) -> str:
    if not math.isfinite(x):
        return "–"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}" if abs(x) >= 0.1 else f"{x:.3g}"


def markdown(report: dict[str, Any], cases: Sequence[Case]) -> str:
    m = report["machine"]
    v = report["versions"]
    lines = [
        f"# villagecast benchmark suite ({report['started']})",
        "",
        f"`{report['command']}`: {report['config']['repeat']} repetitions after a warm-up "
        f"({report['config']['rounds']} for the cases with their own brokers, workers and "
        f"boards), each case interleaved with its baseline; took {report['seconds']:.0f} s.",
        "",
        f"Machine: {m['cpus']} CPUs ({m['cpu_model']}), {m['ram_gib']} GiB RAM, load average "
        f"at start {' / '.join(str(x) for x in m['load_average_at_start'])}, at end "
        f"{' / '.join(str(x) for x in report['load_average_at_end'])}.",
        "",
        "Versions: " + ", ".join(f"{k} {val or 'n/a'}" for k, val in v.items()) + ".",
        "",
        "| case | median | p99 | baseline (median) | ratio | goal | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in cases:
        if c.error is not None:
            lines.append(f"| {c.what} | FAILED: {c.error} | | | | {c.goal} | no |")
            continue
        met = {True: "yes", False: "**no**", None: "–"}[c.met]
        ratio = f"{_fmt(c.ratio)}x" + (" (p99)" if c.ratio_of == "p99" else "")
        checks = "".join(f"; {k}: {'yes' if ok else 'NO'}" for k, ok in c.checks.items())
        lines.append(
            f"| {c.what} | {_fmt(c.median)} {c.unit} | {_fmt(c.p99)} {c.unit} | "
            f"{_fmt(c.baseline_median)} {c.unit} ({c.baseline_what}) | {ratio} | "
            f"{c.goal}{checks} | {met} |"
        )
    lines.append("")
    return "\n".join(lines)


# -- running ----------------------------------------------------------------------------------


def run_groups(
    cfg: Config, groups: Sequence[str], *, after: Callable[[list[Case]], object] | None = None
) -> list[Case]:
    """Every group in order; ``after`` gets the cases so far once each group is done."""
    from bench import cases as existing
    from bench import county

    runners: dict[str, Callable[[Config], list[Case]]] = {
        "core": existing.core_cases,
        "wecom": existing.wecom_cases,
        "led": existing.led_cases,
        "speaker": existing.speaker_cases,
        "dashboard": existing.dashboard_cases,
        "county": county.county_cases,
    }
    out: list[Case] = []
    for group in groups:
        progress(f"group {group}")
        t0 = time.monotonic()
        try:
            found = runners[group](cfg)
        except Exception as exc:  # reported as a failed case; the other groups go on
            found = [failed(group, f"{group}.error", f"{group}: did not run", exc)]
        progress(f"group {group} done in {time.monotonic() - t0:.0f} s")
        out += found
        if after is not None:
            after(out)
    return out


def _groups(text: str | None) -> list[str]:
    if not text:
        return []
    names = [g.strip() for g in text.split(",") if g.strip()]
    for g in names:
        if g not in GROUPS:
            raise SystemExit(f"unknown group {g!r}; the groups are {', '.join(GROUPS)}")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (CI smoke run)")
    parser.add_argument(
        "--repeat",
        type=int,
        help="repetitions after the warm-up (5; quick: 2, or 1 for cases with their own services)",
    )
    parser.add_argument(
        "--soak-minutes", type=float, help="soak duration (10; quick 1); fractions allowed"
    )
    parser.add_argument("--soak-devices", type=int, help="boards in the soak (2,000; quick 50)")
    parser.add_argument("--burst-devices", type=int, help="boards in the burst (5,000)")
    parser.add_argument("--out", type=Path, default=Path("."), help="where the report goes")
    parser.add_argument("--only", help=f"comma-separated groups of {', '.join(GROUPS)}")
    parser.add_argument("--skip", help="comma-separated groups to leave out")
    args = parser.parse_args(argv)
    cfg = Config.make(quick=args.quick, repeat=args.repeat, soak_minutes=args.soak_minutes)
    if args.soak_devices:
        cfg.soak_devices = args.soak_devices
    if args.burst_devices:
        cfg.burst_devices = args.burst_devices
    groups = _groups(args.only) or list(GROUPS)
    groups = [g for g in groups if g not in _groups(args.skip)]
    started = datetime.now(UTC)
    t0 = time.monotonic()
    report: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "command": "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "config": asdict(cfg),
        "groups": groups,
        "machine": machine(),
        "versions": versions(),
        "complete": False,
    }
    args.out.mkdir(parents=True, exist_ok=True)

    def write(cases: list[Case], *, final: bool) -> str:
        # Written after every group too, so a long run stopped midway keeps what it measured.
        report["complete"] = final
        report["seconds"] = round(time.monotonic() - t0, 1)
        report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        report["cases"] = [c.to_json() for c in cases]
        (args.out / "bench-results.json").write_text(
            json.dumps(report, indent=2, ensure_ascii=False, default=str), encoding="utf-8"
        )
        table = markdown(report, cases)
        (args.out / "bench-results.md").write_text(table, encoding="utf-8")
        return table

    cases = run_groups(cfg, groups, after=lambda so_far: write(so_far, final=False))
    table = write(cases, final=True)
    print(table)
    progress(f"report: {args.out / 'bench-results.json'} and {args.out / 'bench-results.md'}")
    return 0 if all(c.error is None for c in cases) else 1
