"""What an OMS process sets up for itself before it serves: the event loop and the collector."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from worker import GC_YOUNG_THRESHOLD

ROOT = Path(__file__).resolve().parent.parent


def test_a_started_process_freezes_what_it_loaded_and_collects_young_objects_less_often() -> None:
    # In a process of its own: freezing is for the life of the process.
    probe = (
        "import gc, worker\n"
        "before = gc.get_threshold()\n"
        "worker.settle_garbage_collector()\n"
        "after = gc.get_threshold()\n"
        "print(gc.get_freeze_count() > 10_000, after[0], before[1:] == after[1:])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    frozen, young, rest_kept = result.stdout.split()
    assert frozen == "True"
    assert int(young) == GC_YOUNG_THRESHOLD
    assert rest_kept == "True"


@pytest.mark.skipif(sys.platform == "win32", reason="uvloop is not a dependency on Windows")
def test_the_event_loop_is_uvloop() -> None:
    probe = (
        "import asyncio, worker\n"
        "async def loop_name():\n"
        "    return type(asyncio.get_running_loop()).__module__\n"
        "print(worker.run_event_loop(loop_name()))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip().startswith("uvloop")
