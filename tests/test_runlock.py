"""The results_dir run lock: a live holder refuses a second run, a dead one's lock is taken over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.runlock import LOCK_NAME, RunLock, RunLockError
from tests.conftest import REPO

HOLD = """
import sys, time
from pipeline.runlock import RunLock
lock = RunLock(sys.argv[1])
lock.acquire()
print("held", flush=True)
time.sleep(600)
"""


def _hold_in_another_process(results: Path) -> subprocess.Popen[str]:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(results)], cwd=REPO, stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_live_holder_refuses_then_a_killed_one_is_taken_over(tmp_path: Path) -> None:
    results = tmp_path / "results"
    holder = _hold_in_another_process(results)
    try:
        with pytest.raises(RunLockError) as refused:
            RunLock(results).acquire()
        message = str(refused.value)
        assert message.startswith(f"{results}: another run is using this results directory: pid {holder.pid} on ")
        assert str(results / LOCK_NAME) in message
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert (results / LOCK_NAME).exists()  # a killed run cannot clean up

    lock = RunLock(results)
    previous = lock.acquire()
    assert previous is not None and previous.pid == holder.pid  # reported, then taken over
    assert f'"pid": {os.getpid()}' in (results / LOCK_NAME).read_text()
    lock.release()
    assert not (results / LOCK_NAME).exists()
    again = RunLock(results)
    assert again.acquire() is None  # released cleanly: nothing to report
    again.release()


def test_one_holder_at_a_time_in_one_process(tmp_path: Path) -> None:
    first, second = RunLock(tmp_path), RunLock(tmp_path)
    assert first.acquire() is None and first.held
    assert first.acquire() is None  # idempotent
    with pytest.raises(RunLockError, match=f"pid {os.getpid()} on "):
        second.acquire()
    first.release()
    first.release()  # idempotent
    assert second.acquire() is None
    second.release()
