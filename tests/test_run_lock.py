"""The folder lock: one writer at a time, the holder named, stale locks of killed processes reported and taken over
only on request."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from vlmo_cli.errors import VlmoError
from vlmo_cli.run_lock import LOCK_NAME, FolderLock, Holder, LockHeld, StaleLock, read_holder

_HOLD = textwrap.dedent("""
    import sys, time
    from vlmo_cli.run_lock import FolderLock
    lock = FolderLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(60)
""")


def _holder_process(folder):
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_writer_is_refused_naming_the_live_holder(tmp_path):
    proc = _holder_process(tmp_path)
    try:
        with pytest.raises(LockHeld) as err:
            FolderLock(tmp_path, take_over=True, what="run folder").acquire()  # a live holder is never taken over
        msg = str(err.value)
        assert isinstance(err.value, VlmoError)
        assert f"pid {proc.pid} on host " in msg and "since 20" in msg and "run folder" in msg, msg
    finally:
        proc.kill()
        proc.wait()


def test_a_killed_holder_leaves_a_stale_lock_taken_over_only_on_request(tmp_path):
    proc = _holder_process(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert read_holder(tmp_path).pid == proc.pid  # kill -9 could not remove the file
    with pytest.raises(StaleLock) as err:
        FolderLock(tmp_path).acquire()
    msg = str(err.value)
    assert f"pid {proc.pid} is no longer running" in msg and "--take-over-lock" in msg, msg
    with FolderLock(tmp_path, take_over=True) as lock:
        assert lock.took_over.pid == proc.pid
        assert read_holder(tmp_path).pid == os.getpid()
    assert not (tmp_path / LOCK_NAME).exists()


def test_the_lock_is_released_on_exit_also_after_an_error(tmp_path):
    with pytest.raises(RuntimeError):
        with FolderLock(tmp_path / "new") as lock:
            assert lock.held and read_holder(tmp_path / "new").pid == os.getpid()
            with pytest.raises(LockHeld):  # a second lock in the same process is refused too
                FolderLock(tmp_path / "new").acquire()
            raise RuntimeError("boom")
    assert not lock.held and not (tmp_path / "new" / LOCK_NAME).exists()
    with FolderLock(tmp_path / "new"):  # free again
        pass


def test_a_lock_from_another_host_is_stale_but_not_judged(tmp_path):
    (tmp_path / LOCK_NAME).write_text(Holder(pid=1, host="elsewhere.invalid", since=0.0).to_json())
    with pytest.raises(StaleLock, match="another host"):
        FolderLock(tmp_path).acquire()
