"""Loading ``torch.save`` files without ever running pickled code, with one readable error per kind of failure.

:func:`load_torch_file` is the one place the package calls ``torch.load``. It always passes ``weights_only=True``:
tensors, plain containers, the few types torch allow-lists and ``argparse.Namespace`` load (training scripts such as
unilm's store their ``args`` beside the weights; a Namespace is an attribute bag that runs no code when rebuilt);
anything whose unpickling would call other code is refused (:class:`UnsafeFileError`), and a damaged file is reported
as corrupt (:class:`CorruptFileError`). Both are :class:`~vlmo_cli.errors.CheckpointError`, so the CLI prints them
as one line and exits with code 2.
"""

from __future__ import annotations

import argparse
import io
import pickle
import pickletools
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

from .errors import CheckpointError

#: modules whose globals the weights-only unpickler itself rebuilds (tensors, storages, ordered dicts)
_TORCH_MODULES = ("torch", "collections")
#: opcodes that push a string (the operands a following STACK_GLOBAL pops)
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}


class UnsafeFileError(CheckpointError):
    """The file needs code execution to unpickle; it was not loaded."""


class CorruptFileError(CheckpointError):
    """The file is truncated, damaged or not a ``torch.save`` file."""


#: bytes of a legacy (non-zip) file scanned for globals: its pickles come before the tensor data
_SCAN_BYTES = 64 << 20


def _pickle_streams(path: Path) -> list[bytes]:
    """The pickle bytes of a file: the ``.pkl`` members of a zip-format ``torch.save`` file, else its first bytes."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return [archive.read(n) for n in archive.namelist() if n.endswith(".pkl")]
    with path.open("rb") as handle:
        return [handle.read(_SCAN_BYTES)]


def _globals_of(stream: bytes) -> list[str]:
    """``module.name`` of every global a pickle stream imports, read with :mod:`pickletools` (nothing is executed).

    Legacy ``torch.save`` files hold several pickles back to back; they are scanned in turn until the bytes end
    or stop parsing as pickle.
    """
    found: list[str] = []
    buffer = io.BytesIO(stream)
    while buffer.tell() < len(stream):
        strings: list[str] = []
        try:
            for opcode, arg, _ in pickletools.genops(buffer):
                if opcode.name in _STRING_OPS:
                    strings.append(str(arg))
                elif opcode.name in ("GLOBAL", "INST"):
                    found.append(str(arg).replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL":
                    found.append(".".join(strings[-2:]) if len(strings) >= 2 else "?")
        except Exception:  # noqa: BLE001 - the rest is not pickle (tensor bytes of the legacy format)
            break
    return found


def code_globals(path: str | Path) -> list[str]:
    """The globals a pickled file would import that are not torch's own (what running it would call)."""
    try:
        streams = _pickle_streams(Path(path))
    except (OSError, zipfile.BadZipFile, KeyError):
        return []
    names = [name for stream in streams for name in _globals_of(stream)]
    return sorted({n for n in names if n.split(".")[0] not in _TORCH_MODULES})


def _damage(path: Path) -> str:
    """What is visibly wrong with a file ``torch.load`` could not read."""
    with path.open("rb") as handle:
        head = handle.read(4)
    if not head:
        return "the file is empty"
    if head.startswith(b"PK"):
        return "damaged or incomplete zip archive"
    return "not a torch.save file"


def _corrupt(path: Path, what: str) -> CorruptFileError:
    return CorruptFileError(f"{path}: corrupt or truncated {what} ({_damage(path)}); not loaded")


def load_torch_file(path: str | Path, what: str) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with user-facing errors.

    Args:
        path: a file written by ``torch.save``.
        what: what the file is meant to be, for the messages (e.g. ``"checkpoint"``, ``"training state"``).

    Raises:
        CheckpointError: the file is missing or unreadable.
        UnsafeFileError: unpickling needs code execution (``refused: ...; not loaded``); nothing of it ran.
        CorruptFileError: truncated, damaged or not a ``torch.save`` file.
    """
    import torch

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such {what} file")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file (expected a {what} file)")
    try:
        with warnings.catch_warnings():  # the protocol notice is noise: a refusal below says what matters
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            with torch.serialization.safe_globals([argparse.Namespace]):
                return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        calls = re.findall(r"GLOBAL ([\w.]+)", str(exc)) or code_globals(path)  # torch names the one it refused
        if calls:
            raise UnsafeFileError(
                f"{path}: refused: this file needs code execution to load (pickle); not loaded "
                f"(it would call {', '.join(calls[:3])}{', ...' if len(calls) > 3 else ''})"
            ) from None
        raise _corrupt(path, what) from exc
    except PermissionError as exc:
        raise CheckpointError(f"{path}: cannot read the {what} file ({exc.strerror})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, IndexError, TypeError,
            AttributeError, UnicodeDecodeError) as exc:
        raise _corrupt(path, what) from exc
