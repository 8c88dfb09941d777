"""Output folders and files: what a command may replace, and how it writes them atomically.

One rule for every command that writes a directory (``prepare``, ``prepare demo``, ``convert``, ``export``) or a
single file (``embed``'s ``.safetensors``, ``eval`` reports and their side files):

* a missing target (or an empty directory) is created, parent folders included;
* a target holding a previous result of the *same* command is replaced only with ``overwrite`` (``--overwrite``);
* a target holding anything else is refused, even with ``--overwrite``; the message names it and what is in it;
* the output may not be an input, contain an input, or be the current directory (or contain it);
* everything is written into a temporary sibling, flushed to disk (``fsync``) and renamed into place once complete,
  so the target holds either the previous result or the new one, never half of one.

How a previous result is recognised
    Every directory written here holds a marker file ``.vlmo-output.json``: ``{"command": ..., "files": [...]}``,
    the command that wrote it and the top-level entries it wrote. A directory is a previous result of command C when
    its marker names C and it holds no entry beyond the listed ones (a file added by hand makes it refused).
    Directories written before markers existed count as previous results when they hold the command's signature
    file (``manifest.json``, ``demo.json``, ``config.json`` ...) and only entries the command writes.
    A single file is a previous result when the writer's own test of its content accepts it (an embeddings file has
    the metadata ``embed`` writes, a report is a JSON object with a ``task``, ...).

Temporaries
    Their names record the writer: ``.NAME.tmp-PID@HOST.RANDOM`` (and ``.NAME.old-PID@HOST.RANDOM`` for a previous
    result moved aside during the final rename). When a command starts writing NAME, those of writers that are no
    longer running on this host are removed (one line on stderr says so); a moved-aside previous result is put back
    when NAME is missing. Temporaries of live writers, or of writers on other hosts, are left alone.

One writer per target
    While a command writes NAME it holds the lock of :mod:`vlmo_cli.run_lock` on the sibling folder
    ``.NAME.lock/`` (not inside NAME, which the final rename replaces), so a second command writing the same target
    is refused, naming the holder. A lock left by a dead process of this host is taken over (one line says so).

Permissions
    The umask decides (``0755`` / ``0644`` under umask 022), as for any file people create, unlike
    :func:`tempfile.mkdtemp` / :func:`tempfile.mkstemp` (``0700`` / ``0600``) and safetensors' writer (``0600``):
    temporaries are made with ``os.mkdir`` / ``os.open(..., 0o666)``, and before the final rename every entry of the
    output gets ``0o777 & ~umask`` (directories) or ``0o666 & ~umask`` (files). :func:`make_temp_dir`,
    :func:`make_temp_file` and :func:`apply_umask` are the helpers other writers can use for that.

Full disk
    ``ENOSPC`` / ``EDQUOT`` while writing (also when wrapped by safetensors, pyarrow or torch's writer) becomes
    :class:`~vlmo_cli.errors.OutputError` "no space left on device while writing PATH"; the temporary is removed
    and the previous output is left as it was.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import socket
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .errors import OutputError

MARKER = ".vlmo-output.json"
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXTS = ("No space left on device", "StorageFull", "Disk quota exceeded", "unexpected pos")


@dataclass(frozen=True)
class DirKind:
    """What one command writes as a directory: its name in messages/markers, its entries and its signature file."""

    command: str
    names: frozenset[str] = field(default_factory=frozenset)
    signature: str | None = None


@dataclass(frozen=True)
class FileKind:
    """What one command writes as a single file: its name in messages and a test that a file is one of its results."""

    command: str
    recognise: Callable[[Path], bool]


# ---------------------------------------------------------------------------------------------------- checks
def _resolved(target: str | Path) -> Path:
    return Path(os.path.abspath(Path(target).expanduser())).resolve()


def _check_placement(final: Path, inputs: Iterable[str | Path]) -> None:
    """Refuse an output that is (or contains) the current directory or one of the inputs."""
    cwd = Path.cwd().resolve()
    if final == cwd or final in cwd.parents:
        raise OutputError(f"{final}: the output would replace the current directory; "
                          f"give a new folder name instead, e.g. {final / 'output'}")
    for src in inputs:
        if src is None:
            continue
        source = _resolved(src)
        if source == final or final in source.parents:
            raise OutputError(f"{final}: the output would replace the input {src}; choose another output")


def _few(names: Iterable[str], n: int = 4) -> str:
    names = sorted(names)
    return ", ".join(names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "")


def _marker(directory: Path) -> dict | None:
    try:
        data = json.loads((directory / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _foreign_entries(directory: Path, kind: DirKind) -> tuple[set[str], str | None]:
    """Entries of ``directory`` the command did not write, and the command that wrote the rest (None: unknown)."""
    entries = {p.name for p in directory.iterdir()}
    marker = _marker(directory)
    if marker is not None:
        listed = set(marker.get("files") or []) | {MARKER}
        return entries - listed, str(marker.get("command"))
    if kind.signature is not None and kind.signature in entries:
        return entries - set(kind.names), kind.command
    return entries, None


def check_directory(target: str | Path, kind: DirKind, *, overwrite: bool = False,
                    inputs: Iterable[str | Path] = ()) -> Path:
    """The resolved target if ``kind.command`` may write it (see the module docstring), else :class:`OutputError`."""
    final = _resolved(target)
    _check_placement(final, inputs)
    if not final.exists():
        return final
    if not final.is_dir():
        raise OutputError(f"{final}: exists and is not a directory; choose another output folder")
    try:
        if not any(final.iterdir()):
            return final
        foreign, command = _foreign_entries(final, kind)
    except OSError as exc:
        raise OutputError(f"{final}: cannot look into the output folder ({exc.strerror or exc})") from exc
    if command != kind.command or foreign:
        what = (f"a result of {command}" if command and command != kind.command
                else f"files {kind.command} did not write ({_few(foreign)})")
        raise OutputError(f"{final}: not empty, it holds {what}; refusing to replace it (also with --overwrite); "
                          "choose another output folder")
    if not overwrite:
        raise OutputError(f"{final}: holds a previous result of {kind.command}; pass --overwrite to replace it")
    return final


def check_file(target: str | Path, kind: FileKind, *, overwrite: bool = False,
               inputs: Iterable[str | Path] = ()) -> Path:
    """The resolved target if ``kind.command`` may write this file (module docstring), else :class:`OutputError`."""
    final = _resolved(target)
    _check_placement(final, inputs)
    if not final.exists():
        return final
    if not final.is_file():
        raise OutputError(f"{final}: exists and is not a file; choose another output file")
    if not kind.recognise(final):
        raise OutputError(f"{final}: exists and was not written by {kind.command}; refusing to replace it "
                          "(also with --overwrite); choose another output file")
    if not overwrite:
        raise OutputError(f"{final}: holds a previous result of {kind.command}; pass --overwrite to replace it")
    return final


# ---------------------------------------------------------------------------------------------------- temporaries
def _writer_tag() -> str:
    return f"{os.getpid()}@{socket.gethostname()}"


def _temp_name(final: Path, role: str) -> Path:
    return final.with_name(f".{final.name}.{role}-{_writer_tag()}.{secrets.token_hex(4)}")


def make_temp_dir(final: str | Path) -> Path:
    """A new empty sibling directory of ``final`` named after this writer, with umask permissions."""
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        while True:
            tmp = _temp_name(final, "tmp")
            try:
                tmp.mkdir()
                return tmp
            except FileExistsError:
                continue
    except OSError as exc:
        raise _as_output_error(exc, final) from exc


def make_temp_file(final: str | Path) -> Path:
    """A new empty sibling file of ``final`` named after this writer, with umask permissions."""
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        while True:
            tmp = _temp_name(final, "tmp")
            try:
                os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
                return tmp
            except FileExistsError:
                continue
    except OSError as exc:
        raise _as_output_error(exc, final) from exc


def sync_to_disk(root: str | Path) -> None:
    """Flush ``root`` (a file, or every file below a directory) to disk: the durability rule of every atomic write
    here is that a temporary's content is on disk before the rename makes it visible."""
    root = Path(root)
    for path in root.rglob("*") if root.is_dir() else [root]:
        if path.is_file() and not path.is_symlink():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def current_umask() -> int:
    """This process's umask (read without changing it where /proc tells it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(root: str | Path) -> None:
    """Give ``root`` and everything below it the permissions the umask allows (dirs ``0o777``, files ``0o666``)."""
    mask = current_umask()
    root = Path(root)
    for path in [root, *root.rglob("*")] if root.is_dir() else [root]:
        if not path.is_symlink():
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def say(line: str) -> None:
    """One line for the person at the terminal (stderr, so stdout stays parseable)."""
    print(line, file=sys.stderr, flush=True)


def clean_stale(final: str | Path, notify: Callable[[str], None] = say) -> list[Path]:
    """Remove the temporaries of ``final`` left by dead writers on this host; returns what was removed or restored."""
    final = Path(final)
    if not final.parent.is_dir():
        return []
    pattern = re.compile(rf"^\.{re.escape(final.name)}\.(tmp|old)-(\d+)@(.+)\.[0-9a-f]{{8}}$")
    host, handled = socket.gethostname(), []
    for entry in sorted(final.parent.iterdir()):
        match = pattern.match(entry.name)
        if not match or match.group(3) != host or _pid_alive(int(match.group(2))):
            continue
        role, pid = match.group(1), match.group(2)
        if role == "old" and not final.exists():
            os.rename(entry, final)
            notify(f"note: restored {final} from {entry.name}, left by a writer that died (pid {pid})")
        else:
            _remove(entry)
            notify(f"note: removed {entry}, a temporary left by a writer that died (pid {pid})")
        handled.append(entry)
    return handled


# ---------------------------------------------------------------------------------------------------- full disk
def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) reports a full disk or an exceeded quota."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS:
            return True
        if isinstance(exc, Exception) and any(t in str(exc) for t in _DISK_FULL_TEXTS):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def disk_full_error(exc: BaseException, final: str | Path) -> OutputError | None:
    """The :class:`OutputError` to raise instead of ``exc`` when it reports a full disk, else None."""
    if not is_disk_full(exc):
        return None
    return OutputError(f"no space left on device while writing {final}; the partial output was removed "
                       "and any previous output is unchanged")


def raise_if_disk_full(exc: BaseException, final: str | Path) -> None:
    """Raise the :class:`OutputError` of :func:`disk_full_error` (from ``exc``) when ``exc`` reports a full disk."""
    full = disk_full_error(exc, final)
    if full is not None:
        raise full from exc


def _as_output_error(exc: OSError, final: Path) -> OutputError:
    full = disk_full_error(exc, final)
    return full or OutputError(f"cannot write {final}: {exc.strerror or exc}")


# ---------------------------------------------------------------------------------------------------- directories
def _write_marker(tmp: Path, command: str) -> None:
    files = sorted(p.name for p in tmp.iterdir() if p.name != MARKER)
    (tmp / MARKER).write_text(json.dumps({"command": command, "files": files}, indent=1) + "\n")


def replace_directory(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``; a previous ``final`` is moved aside first and deleted once the rename is done."""
    if not final.exists():
        os.rename(tmp, final)
        return
    old = _temp_name(final, "old")
    os.rename(final, old)
    try:
        os.rename(tmp, final)
    except BaseException:
        os.rename(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)


def writer_lock(final: Path, notify: Callable[[str], None] = say):
    """Take the lock on ``final``'s sibling folder ``.NAME.lock/`` (a :class:`~vlmo_cli.run_lock.FolderLock`)."""
    from .run_lock import FolderLock, pid_alive, read_holder

    folder = final.with_name(f".{final.name}.lock")
    holder = read_holder(folder)
    dead_here = holder is not None and holder.on_this_host() and not pid_alive(holder.pid)
    lock = FolderLock(folder, take_over=dead_here, what=f"{final} is being written: lock folder").acquire()
    if lock.took_over is not None:
        notify(f"note: took over the lock of {final} left by a writer that died (pid {lock.took_over.pid})")
    return lock


def release_writer_lock(lock) -> None:
    """Release a :func:`writer_lock` and remove its folder when no other writer has put a lock file there since."""
    lock.release()
    try:
        lock.folder.rmdir()
    except OSError:
        pass


class DirectoryOutput:
    """One directory being written: checked on creation, written in :attr:`tmp`, renamed into place by :meth:`commit`.

    Use as a context manager (``with DirectoryOutput(out, kind) as tmp: ...``) or call :meth:`open`, then
    :meth:`commit` or :meth:`abort`.
    """

    def __init__(self, target: str | Path, kind: DirKind, *, overwrite: bool = False,
                 inputs: Iterable[str | Path] = ()) -> None:
        self.kind, self.overwrite, self.inputs = kind, overwrite, [p for p in inputs if p is not None]
        self.final = check_directory(target, kind, overwrite=overwrite, inputs=self.inputs)
        self.tmp: Path | None = None
        self._lock = None

    def open(self) -> Path:
        self._lock = writer_lock(self.final)
        try:
            clean_stale(self.final)
            self.tmp = make_temp_dir(self.final)
        except BaseException:
            self._unlock()
            raise
        return self.tmp

    def _unlock(self) -> None:
        if self._lock is not None:
            release_writer_lock(self._lock)
            self._lock = None

    def commit(self) -> Path:
        try:
            _write_marker(self.tmp, self.kind.command)
            sync_to_disk(self.tmp)
            apply_umask(self.tmp)
            check_directory(self.final, self.kind, overwrite=self.overwrite, inputs=self.inputs)
            replace_directory(self.tmp, self.final)
        except BaseException as exc:
            self.abort()
            raise_if_disk_full(exc, self.final)
            raise
        self.tmp = None
        self._unlock()
        return self.final

    def abort(self) -> None:
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None
        self._unlock()

    def __enter__(self) -> Path:
        return self.open()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.commit()
            return
        self.abort()
        raise_if_disk_full(exc, self.final)


# ---------------------------------------------------------------------------------------------------- files
@contextmanager
def atomic_file(target: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path to write; on success it gets umask permissions and replaces ``target``.

    Only the mechanics (no check of what ``target`` holds: see :func:`writing_file`); a full disk becomes
    :class:`OutputError` and the temporary is removed.
    """
    final = Path(target)
    clean_stale(final)
    tmp = make_temp_file(final)
    try:
        yield tmp
        sync_to_disk(tmp)
        apply_umask(tmp)
        os.replace(tmp, final)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        raise_if_disk_full(exc, final)
        raise


@contextmanager
def writing_file(target: str | Path, kind: FileKind, *, overwrite: bool = False,
                 inputs: Iterable[str | Path] = ()) -> Iterator[Path]:
    """:func:`atomic_file` for a target :func:`check_file` lets ``kind.command`` write."""
    final = check_file(target, kind, overwrite=overwrite, inputs=inputs)
    with atomic_file(final) as tmp:
        yield tmp
