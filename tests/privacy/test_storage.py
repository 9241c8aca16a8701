"""Private atomic writes, one-writer locks that die with their process, and stale temporaries."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from privet.privacy.storage import (
    FileLock,
    InUseError,
    atomic_write_bytes,
    lock_file_for,
    remove_stale_temporaries,
    remove_unlocked_temporaries,
)

REPO = Path(__file__).resolve().parents[2]

HOLDER = """
import sys, time
from privet.privacy.storage import FileLock
FileLock(sys.argv[1], "the test's file").acquire()
print("held", flush=True)
time.sleep(120)
"""


def start_holder(lock_path: Path) -> subprocess.Popen:
    """Another process that takes `lock_path` and keeps it until it is killed (bounded wait)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock_path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert holder.stdout is not None
    ready, _, _ = select.select([holder.stdout], [], [], 60)
    assert ready and holder.stdout.readline().strip() == "held", "the holder did not start"
    return holder


def stop(holder: subprocess.Popen) -> None:
    if holder.poll() is None:
        os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)


def test_a_second_process_is_refused_in_one_line_naming_the_holder(tmp_path):
    lock_path = tmp_path / ".run.lock"
    holder = start_holder(lock_path)
    try:
        started = time.monotonic()
        with pytest.raises(InUseError) as error:
            FileLock(lock_path, "run folder X").acquire(wait=0.3)
        assert 0.3 <= time.monotonic() - started < 5  # a bounded wait, then the refusal
        message = str(error.value)
        assert error.value.pid == holder.pid and "\n" not in message
        assert message.startswith(f"run folder X is in use by process {holder.pid}")
        assert f"kill {holder.pid}" in message
    finally:
        stop(holder)
    # Killed with SIGKILL: no stale lock is left behind, the next writer gets it at once.
    with FileLock(lock_path, "run folder X") as lock:
        assert lock.held and lock_path.read_text().strip() == str(os.getpid())
    assert lock_path.read_text() == ""  # released: no PID claims it any more


def test_a_lock_is_reentrant_within_a_process_until_its_last_release(tmp_path):
    lock_path = tmp_path / ".x.lock"
    outer = FileLock(lock_path, "x").acquire()
    inner = FileLock(lock_path, "x").acquire()
    inner.release()
    probe = subprocess.run(
        [sys.executable, "-c", HOLDER, str(lock_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
    )
    assert probe.returncode != 0 and f"in use by process {os.getpid()}" in probe.stderr
    outer.release()
    holder = start_holder(lock_path)  # now free for another process
    stop(holder)


def test_a_forked_child_neither_holds_nor_releases_its_parents_lock(tmp_path):
    lock_path = tmp_path / ".x.lock"
    lock = FileLock(lock_path, "x").acquire()
    try:
        pid = os.fork()
        if pid == 0:  # the child: only os-level work, then os._exit
            code = 3
            try:
                FileLock(lock_path, "x").acquire()
                code = 1  # it must not get the parent's lock
            except InUseError as error:
                code = 0 if error.pid == os.getppid() else 2
            finally:
                os._exit(code)
        deadline = time.monotonic() + 30
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            assert time.monotonic() < deadline, "the forked child did not finish"
            time.sleep(0.02)
        assert os.waitstatus_to_exitcode(status) == 0
        probe = subprocess.run(
            [sys.executable, "-c", HOLDER, str(lock_path)],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            timeout=60,
        )
        assert probe.returncode != 0 and "in use by process" in probe.stderr  # still ours
    finally:
        lock.release()


def test_files_are_private_and_new_folders_owner_only(tmp_path):
    old = os.umask(0o022)
    try:
        target = tmp_path / "run" / "ledgers" / "client-0.json"
        atomic_write_bytes(target, b"{}")
    finally:
        os.umask(old)
    assert target.stat().st_mode & 0o777 == 0o600
    assert target.parent.stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "run").stat().st_mode & 0o777 == 0o700


def test_only_privets_own_temporaries_of_the_named_targets_are_removed(tmp_path):
    ours = tmp_path / ".results.json.ab12_z9q.tmp"
    other_target = tmp_path / ".notes.txt.ab12cd34.tmp"
    not_ours = [
        tmp_path / ".results.json.tmp",  # no random part: not what atomic_write_bytes makes
        tmp_path / "results.json.ab12cd34.tmp",  # not hidden
        tmp_path / ".results.json.AB12CD34.tmp",  # upper case never comes from mkstemp
        tmp_path / ".results.json.ab12cd345.tmp",  # 9 characters
    ]
    for path in [ours, other_target, *not_ours]:
        path.write_text("partial")
    link = tmp_path / ".results.json.zz99zz99.tmp"
    link.symlink_to(tmp_path / "elsewhere")
    folder = tmp_path / ".results.json.qq11qq11.tmp"
    folder.mkdir()
    removed = remove_stale_temporaries(tmp_path, lambda name: name == "results.json")
    assert removed == [ours]
    for kept in [other_target, *not_ours, folder]:
        assert kept.exists()
    assert link.is_symlink()


def test_temporaries_of_a_target_whose_lock_another_process_holds_are_left_alone(tmp_path):
    busy = tmp_path / ".client-0.json.aaaaaaaa.tmp"
    idle = tmp_path / ".client-1.json.bbbbbbbb.tmp"
    busy.write_text("in flight")
    idle.write_text("left by a crash")
    holder = start_holder(lock_file_for(tmp_path / "client-0.json"))
    try:
        assert remove_unlocked_temporaries(tmp_path) == [idle]
        assert busy.exists() and not idle.exists()
    finally:
        stop(holder)
    assert remove_unlocked_temporaries(tmp_path) == [busy]
