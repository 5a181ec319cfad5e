"""Synthesis slots: at most K syntheses at once across processes, freed when a holder dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from contextlib import ExitStack
from pathlib import Path

import pytest

from channels._synthesis import SynthesisSlots
from channels.base import TransientError
from tests.conftest import REPO

HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from channels._synthesis import SynthesisSlots
    from channels.base import TransientError

    slots = SynthesisSlots(Path(sys.argv[1]), int(sys.argv[2]))
    try:
        with slots.hold(timeout=float(sys.argv[3])) as index:
            print(f"HOLD {index}", flush=True)
            sys.stdin.readline()  # hold until told (or killed)
    except TransientError as exc:
        print(f"BUSY {exc.code}", flush=True)
    """
)


def holder(directory: Path, limit: int, timeout: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(directory), str(limit), str(timeout)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_another_process_waits_while_all_slots_are_held(tmp_path: Path) -> None:
    slots = SynthesisSlots(tmp_path, 2)
    with ExitStack() as held:
        assert sorted(held.enter_context(slots.hold()) for _ in range(2)) == [0, 1]
        assert slots.busy() == 2
        late = holder(tmp_path, 2, timeout=0.3)
        out, _ = late.communicate(timeout=30)
        assert out.strip() == "BUSY synthesis_busy"
        with pytest.raises(TransientError), slots.hold(timeout=0.1):  # nor in this process
            pass
    assert slots.busy() == 0
    free = holder(tmp_path, 2, timeout=5)
    assert free.stdout is not None and free.stdout.readline().startswith("HOLD ")
    assert slots.busy() == 1
    free.communicate("\n", timeout=30)
    assert slots.busy() == 0


def test_a_killed_holder_frees_its_slot(tmp_path: Path) -> None:
    slots = SynthesisSlots(tmp_path, 1)
    proc = holder(tmp_path, 1, timeout=5)
    assert proc.stdout is not None and proc.stdout.readline() == "HOLD 0\n"
    assert slots.busy() == 1
    os.kill(proc.pid, signal.SIGKILL)  # a worker killed mid-synthesis
    proc.communicate(timeout=30)
    assert slots.busy() == 0
    with slots.hold(timeout=1) as index:
        assert index == 0


def test_at_least_one_slot() -> None:
    with pytest.raises(ValueError, match="at least one"):
        SynthesisSlots(Path("/nonexistent"), 0)
