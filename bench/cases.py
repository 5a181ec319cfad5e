"""The cases of #2-#6 as suite cases: samples beside baseline samples, from the bench modules.

Each function calls the public entry points of bench/run.py, bench/wecom.py, bench/led.py,
bench/speaker.py and bench/dashboard.py (which keep their own command lines) and turns what
they return into :class:`bench.suite.Case` rows.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from typing import Any

from bench.suite import Case, Config, failed, interleave, progress

__all__ = ["core_cases", "dashboard_cases", "led_cases", "speaker_cases", "wecom_cases"]


def _time_cmd(cmd: list[str]) -> float:
    from bench.run import REPO

    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=REPO)
    return (time.perf_counter() - t0) * 1000


# -- #2: the CLI and the dispatcher core -------------------------------------------------------


def help_case(cfg: Config) -> Case:
    from bench.run import compile_project

    exe = shutil.which("villagecast")
    cmd = [exe, "--help"] if exe else [sys.executable, "-m", "cli", "--help"]
    compile_project()  # from bytecode, as an installed package starts (and typer does)
    # Cheap: three times the repetitions, so the p99 means something.
    ours, base = interleave(
        lambda: _time_cmd(cmd),
        lambda: _time_cmd([sys.executable, "-c", "import typer"]),
        cfg.repeat * (1 if cfg.quick else 3),
    )
    return Case(
        id="core.help",
        group="core",
        what="`villagecast --help`",
        unit="ms",
        samples=ours,
        baseline_what="python -c 'import typer'",
        baseline=base,
        goal="<= 1.5x",
    )


def broker_cases(cfg: Config, name: str, url: str | None) -> list[Case]:
    from bench import run

    n = cfg.fanout_endpoints
    out: list[Case] = []
    with run.environment(url, n) as home, run.worker():
        run._warm(home)
        progress(f"core/{name}: fan-out to {n} no-op endpoints vs {n} bare pings")
        fan, pings = interleave(lambda: run.bench_fanout(n), lambda: run.bench_pings(home, n),
                                cfg.repeat)  # fmt: skip
        out.append(
            Case(
                id=f"core.fanout.{name}",
                group="core",
                what=f"deliveries/s, no-op channel, {n:,} endpoints, {name} broker",
                unit="/s",
                samples=fan,
                baseline_what="bare Celery no-op tasks/s, same broker and worker",
                baseline=pings,
                goal=">= 0.7x",
            )
        )
        progress(f"core/{name}: the same, one delivery per task")
        single, pings1 = interleave(
            lambda: run.bench_fanout(n, batch_size=1),
            lambda: run.bench_pings(home, n),
            cfg.rounds,
            warm=False,
        )
        out.append(
            Case(
                id=f"core.fanout_single.{name}",
                group="core",
                what=f"  same, one delivery per task ({name})",
                unit="/s",
                samples=single,
                baseline_what="bare Celery no-op tasks/s",
                baseline=pings1,
            )
        )
        progress(f"core/{name}: notice add and enqueue-to-delivered")
        with run.bare_add(home) as bare_once:
            k = cfg.repeat * (1 if cfg.quick else 4)  # cheap: more samples, a truer p99

            def ms(fn: Any) -> Any:
                return lambda: fn() * 1000

            add, bare = interleave(ms(run.time_add), ms(bare_once), k)
            out.append(
                Case(
                    id=f"core.add.{name}",
                    group="core",
                    what=f"`notice add` path, 1 endpoint ({name})",
                    unit="ms",
                    samples=add,
                    baseline_what="one SQLite commit + send_task",
                    baseline=bare,
                )
            )
            lat, bare2 = interleave(ms(run.time_latency), ms(bare_once), k)
            out.append(
                Case(
                    id=f"core.latency.{name}",
                    group="core",
                    what=f"enqueue-to-delivered, 1 endpoint ({name})",
                    unit="ms",
                    samples=lat,
                    baseline_what="one SQLite commit + send_task (send only)",
                    baseline=bare2,
                )
            )
    return out


def core_cases(cfg: Config) -> list[Case]:
    from bench import run

    out: list[Case] = []
    try:
        out.append(help_case(cfg))
    except Exception as exc:
        out.append(failed("core", "core.help", "`villagecast --help`", exc))
    redis_proc, redis_url = run._redis()
    try:
        for name, url in (("embedded", None), ("redis", redis_url)):
            if name == "redis" and url is None:
                progress("redis-server not installed: Redis cases skipped")
                continue
            try:
                out += broker_cases(cfg, name, url)
            except Exception as exc:
                out.append(failed("core", f"core.{name}", f"core cases ({name})", exc))
    finally:
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait()
    return out


# -- #5: WeCom ---------------------------------------------------------------------------------


def wecom_cases(cfg: Config) -> list[Case]:
    """bench/wecom.py's rows, one run per call (its stand-in, store and warm-up each time):
    a call is one interleaved (bare, adapter, adapter with limiter, bare) sample."""
    from bench.wecom import wecom_rows

    g = cfg.wecom_groups
    # Keyed by position: wecom_rows returns its rows in one order, and two of them share a
    # label ("  same, limiter on", under each notice's row).
    collected: dict[int, tuple[Any, list[float], list[float]]] = {}
    wecom_rows(quick=cfg.quick, groups=g, runs=1)  # warm-up, not counted
    for i in range(cfg.rounds):
        progress(f"wecom: run {i + 1}/{cfg.rounds}, {g} groups")
        for pos, row in enumerate(wecom_rows(quick=cfg.quick, groups=g, runs=1)):
            _, ours, base = collected.setdefault(pos, (row, [], []))
            ours.append(row.value)
            base.append(row.baseline)
    out = []
    for idx, (row, ours, base) in enumerate(collected.values()):
        out.append(
            Case(
                id=f"wecom.{idx}",
                group="wecom",
                what=row.what,
                unit=row.unit,
                samples=ours,
                baseline_what=row.baseline_what,
                baseline=base,
                goal=row.goal,
            )
        )
    return out


# -- #3: LED fan-out ---------------------------------------------------------------------------


def led_cases(cfg: Config) -> list[Case]:
    """bench/led.py's run_one per repetition: bare paho A, villagecast, bare paho B (the
    baseline is the faster bare run of the same round), rounds interleaving the setups."""
    from bench import led

    results: dict[tuple[str, int], list[Any]] = {}
    # No warm-up round: each run_one warms its own worker and listener with a small notice
    # (and starts its brokers and boards afresh), and its bare runs warm paho.
    for rnd in range(1, cfg.rounds + 1):
        for setup in cfg.led_setups:
            for n in cfg.led_sizes:
                progress(f"led: round {rnd}/{cfg.rounds} {setup} N={n}")
                r = led.run_one(setup, n, timeout=cfg.timeout, keep=False, presence=True)
                if not r.ok:
                    progress(f"led: {setup} N={n} FAILED: {r.error}")
                results.setdefault((setup, n), []).append(r)
    out = []
    for (setup, n), runs in results.items():
        celery, mqtt = led.SETUPS[setup]
        ok = [r for r in runs if r.ok and r.vc is not None]
        case = Case(
            id=f"led.{setup}.{n}",
            group="led",
            what=f"notice add -> last ack, {n:,} LED boards "
            f"({led.CELERY_LABEL[celery]}, {led.MQTT_LABEL[mqtt]})",
            unit="ms",
            samples=[r.vc.total * 1000 for r in ok],
            baseline_what=f"bare paho: {n:,} pre-signed QoS 1 + acks",
            baseline=[r.baseline * 1000 for r in ok],
            goal="<= 1.5x" if n >= 5000 else "(reported)",
            details={
                "runs": len(runs),
                "failed": [r.error for r in runs if not r.ok],
                "polling_s": [r.vc.polling for r in ok],
                "tasks": [r.vc.tasks for r in ok],
            },
        )
        if not ok:
            case.error = f"every run failed: {runs[-1].error}"
        out.append(case)
    return out


# -- #4: loudspeakers --------------------------------------------------------------------------


def speaker_cases(cfg: Config) -> list[Case]:
    from bench import speaker

    progress(f"speaker: synthesis, {cfg.repeat} scripts (each interleaved with espeak-ng)")
    f = speaker.bench_synthesis(cfg.repeat)  # warms up on a script of its own first
    ms = [x * 1000 for x in f.direct]
    what = f"espeak-ng -v cmn, same text, per 100 chars ({f.chars}-char scripts)"

    def synth(cid: str, label: str, xs: list[float], goal: str) -> Case:
        return Case(
            id=f"speaker.{cid}",
            group="speaker",
            what=label,
            unit="ms",
            samples=[x * 1000 for x in xs],
            baseline_what=what,
            baseline=ms,
            goal=goal,
        )

    out = [
        synth("raw", "offline synthesis per 100 chars: raw engine", f.raw, "<= 1.2x"),
        synth("full", "offline synthesis per 100 chars: full pipeline (make_clip)", f.full,
              "<= 1.2x"),
        synth("mp3", "  of which loudness + MP3", f.mp3, "(reported)"),
        Case(
            id="speaker.cache_hit",
            group="speaker",
            what=f"clip from the cache (hit), {f.chars}-char script",
            unit="ms",
            samples=[x * 1000 for x in f.hit],
            baseline_what="making it (miss, full pipeline)",
            baseline=[x * 1000 for x in f.miss],
        ),
    ]  # fmt: skip
    for setup in cfg.speaker_setups:
        runs = []
        for rnd in range(1, cfg.rounds + 1):  # each run sends a warm-up notice first
            progress(f"speaker: round {rnd}/{cfg.rounds} {setup}, {cfg.speaker_count} speakers")
            r = speaker.run_fanout(setup, cfg.speaker_count, timeout=cfg.timeout, keep=False)
            if not r.ok:
                progress(f"speaker: FAILED: {r.error}")
            runs.append(r)
        ok = [r for r in runs if r.ok]
        base = [r.clip_alone * 1000 for r in ok]
        label = f"{cfg.speaker_count} speakers, emergency ({setup})"
        for attr, text in (
            ("first", f"notice add -> first speaker ack, {label}"),
            ("last", "  -> last speaker ack"),
            ("cached_last", "  same notice again (clip cached) -> last ack"),
        ):
            case = Case(
                id=f"speaker.fanout.{setup}.{attr}",
                group="speaker",
                what=text,
                unit="ms",
                samples=[getattr(r, attr) * 1000 for r in ok],
                baseline_what="making its clip alone (full pipeline)",
                baseline=base,
                details={"failed": [r.error for r in runs if not r.ok]},
            )
            if not ok:
                case.error = f"every run failed: {runs[-1].error}"
            out.append(case)
    return out


# -- #6: the dashboard -------------------------------------------------------------------------


def dashboard_cases(cfg: Config) -> list[Case]:
    from bench.dashboard import measure

    v = cfg.dashboard_villages
    samples: dict[str, list[float]] = {}
    progress(f"dashboard: seeding {v} villages x 5 endpoints, 30 days")
    r = measure(villages=v, days=30, per_day=40, runs=cfg.repeat * 3, samples=samples)
    n = int(r["rows"])
    rows = (
        ("county", f"dashboard overview, {v:,} villages, 30 days ({n:,} deliveries), county",
         "page_county_ms", "bare_ms"),
        ("county_7d", "  same, default view (last 7 days), county", "page_county_7d_ms",
         "bare_7d_ms"),
        ("township", "  same (30 days), one township officer", "page_t05_ms", "bare_ms"),
    )  # fmt: skip
    return [
        Case(
            id=f"dashboard.{cid}",
            group="dashboard",
            what=what,
            unit="ms",
            samples=samples[key],
            baseline_what="bare SELECT count(*) GROUP BY over the same rows",
            baseline=samples[base],
            goal="< 300 ms",
            details={"seed_s": r["seed_s"]},
        )
        for cid, what, key, base in rows
    ]
