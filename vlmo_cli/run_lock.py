"""One writer per folder: an OS-level lock file that names its holder.

:class:`FolderLock` takes an exclusive ``flock`` on ``FOLDER/.vlmo.lock`` and writes the holder's pid, host and start
time into it. The kernel drops the ``flock`` when the holder exits, however it exits, so a second writer is refused
only while the holder lives. A holder killed with ``kill -9`` cannot remove its file: the next writer finds the file
unlocked but naming a process, reports it as stale and takes it over only when asked (``take_over=True``, the CLI's
``--take-over-lock``), since a lock written from another host cannot be checked from here.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import VlmoError

LOCK_NAME = ".vlmo.lock"
TAKE_OVER_FLAG = "--take-over-lock"


class LockHeld(VlmoError):
    """Another live process writes the folder."""


class StaleLock(VlmoError):
    """The folder's lock file names a process that no longer holds it."""


@dataclass(frozen=True)
class Holder:
    """Who wrote a lock file: process id, host name and start time (seconds since the epoch)."""

    pid: int
    host: str
    since: float

    @classmethod
    def me(cls) -> "Holder":
        return cls(pid=os.getpid(), host=socket.gethostname(), since=time.time())

    @classmethod
    def parse(cls, text: str) -> "Holder | None":
        try:
            raw = json.loads(text)
            return cls(pid=int(raw["pid"]), host=str(raw["host"]), since=float(raw["since"]))
        except (ValueError, KeyError, TypeError):
            return None

    def to_json(self) -> str:
        return json.dumps({"pid": self.pid, "host": self.host, "since": self.since}) + "\n"

    def describe(self) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.since))
        return f"pid {self.pid} on host {self.host} since {stamp}"

    def on_this_host(self) -> bool:
        return self.host == socket.gethostname()


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host (signal 0 checks without sending anything)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def read_holder(folder: str | Path) -> Holder | None:
    """The holder named in ``folder``'s lock file, or None when there is no readable one."""
    try:
        return Holder.parse((Path(folder) / LOCK_NAME).read_text())
    except OSError:
        return None


def _stale_reason(holder: Holder) -> str:
    if not holder.on_this_host():
        return "it was written on another host and cannot be checked from here"
    if pid_alive(holder.pid):
        return f"pid {holder.pid} is running but does not hold the lock (a reused process id)"
    return f"pid {holder.pid} is no longer running"


class FolderLock:
    """Exclusive writer lock on a folder, as a context manager (released on exit, also on errors).

    Args:
        folder: the folder to lock; created if missing.
        take_over: take a stale lock (one whose file names a process that does not hold it) instead of refusing.
        what: how messages name the folder (e.g. ``"run folder"``).

    Attributes:
        took_over: the stale holder replaced on entry, if any (for the caller to report).
    """

    def __init__(self, folder: str | Path, take_over: bool = False, what: str = "folder") -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.take_over = take_over
        self.what = what
        self.took_over: Holder | None = None
        self._fd: int | None = None

    # -------------------------------------------------------------- acquire / release
    def acquire(self) -> "FolderLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise LockHeld(self._held_message()) from None
            if self._same_file(fd):
                break
            os.close(fd)  # the holder removed the file between our open and flock: lock the new one
        try:
            self._check_previous(fd)
            os.ftruncate(fd, 0)
            os.pwrite(fd, Holder.me().to_json().encode(), 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still locked, so nobody locks a file about to vanish
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    @property
    def held(self) -> bool:
        return self._fd is not None

    # -------------------------------------------------------------- helpers
    def _same_file(self, fd: int) -> bool:
        try:
            return os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            return False

    def _check_previous(self, fd: int) -> None:
        """Refuse (or take over) a lock file left by a holder that did not release it."""
        previous = Holder.parse(os.pread(fd, 4096, 0).decode(errors="replace"))
        if previous is None or previous.pid == os.getpid() and previous.on_this_host():
            return
        if not self.take_over:
            raise StaleLock(
                f"{self.what} {self.folder} has a stale lock from {previous.describe()}: {_stale_reason(previous)}; "
                f"if no other process writes this folder, pass {TAKE_OVER_FLAG} to take it over "
                f"(or delete {self.path})"
            )
        self.took_over = previous

    def _held_message(self) -> str:
        holder = read_holder(self.folder)
        who = holder.describe() if holder else "another process"
        return f"{self.what} {self.folder} is in use by {who} (lock file {self.path}); wait for it to finish or stop it"
