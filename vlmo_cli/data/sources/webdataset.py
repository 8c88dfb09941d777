"""img2dataset-style webdataset tar shards (``<key>.jpg|png|webp`` + ``<key>.txt`` + ``<key>.json``).

:func:`iter_shard_samples` reads shards sequentially (members of one sample are adjacent, as webdataset requires) for
:class:`WebDatasetSource` (convert once, kind ``pairs``). Training can also read shards in place, without converting
them (:mod:`vlmo_cli.data.streaming`).
Captions come from ``.txt``, else from the ``caption``/``text`` field of ``.json``. A truncated shard is reported and
the samples read before the damage are kept.
"""

from __future__ import annotations

import glob
import json
import tarfile
from pathlib import Path
from typing import Any, Iterator

from ...errors import DataError
from .base import Record, SkipLog, Source

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


def list_shards(spec: str | Path | list) -> list[Path]:
    """A folder (all ``*.tar`` inside), a glob, a single shard, or a list of those -> sorted shard paths."""
    if isinstance(spec, (list, tuple)):
        return [p for s in spec for p in list_shards(s)]
    path = Path(spec)
    if path.is_dir():
        shards = sorted(path.glob("*.tar"))
    elif any(ch in str(spec) for ch in "*?["):
        shards = sorted(Path(p) for p in glob.glob(str(spec)))
    else:
        shards = [path] if path.exists() else []
    if not shards:
        raise DataError(f"{spec}: no webdataset .tar shards found")
    return shards


def _split_name(name: str) -> tuple[str, str]:
    """``dir/000010005.jpg`` -> (``dir/000010005``, ``jpg``); the key ends at the first dot of the base name."""
    head, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), ext.lower()


def iter_shard_samples(shard: Path, log: SkipLog | None = None, split: str = "train"
                       ) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per sample of one shard."""
    key, members = None, {}
    try:
        with tarfile.open(shard, "r|*") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                name_key, ext = _split_name(info.name)
                if key is not None and name_key != key:
                    yield key, members
                    members = {}
                key = name_key
                handle = tar.extractfile(info)
                members[ext] = handle.read() if handle is not None else b""
    except (tarfile.TarError, OSError, EOFError) as exc:
        if log is not None:
            log.add(split, str(shard), f"unreadable shard: {type(exc).__name__}: {exc} (samples after this point lost)")
        members = {}  # the sample being read when the damage hit is incomplete
    if key is not None and members:
        yield key, members


def sample_to_pair(members: dict[str, bytes]) -> tuple[bytes | None, list[str], str | None]:
    """(image bytes, captions, reason-if-unusable) of one webdataset sample."""
    image = next((members[k] for k in IMAGE_KEYS if k in members), None)
    captions: list[str] = []
    if "txt" in members:
        text = members["txt"].decode("utf-8", errors="replace").strip()
        captions = [text] if text else []
    elif "json" in members:
        try:
            meta = json.loads(members["json"])
            value = meta.get("caption") or meta.get("text")
            captions = [str(value).strip()] if value else []
        except (json.JSONDecodeError, AttributeError):
            return None, [], "malformed JSON member"
    if image is None:
        return None, [], "missing image: no jpg/png/webp member"
    if not captions:
        return None, [], "empty caption"
    return image, captions, None


class WebDatasetSource(Source):
    kind = "pairs"
    format = "pairs-webdataset"

    def __init__(self, shards: str | Path | list, *, split: str = "train") -> None:
        self.shards = list_shards(shards)
        self.split = split

    def describe(self) -> dict[str, Any]:
        return {"format": self.format, "shards": [str(s) for s in self.shards], "split": self.split}

    def records(self, log: SkipLog) -> Iterator[Record]:
        for shard in self.shards:
            for key, members in iter_shard_samples(shard, log, self.split):
                where = f"{shard.name}:{key}"
                image, captions, reason = sample_to_pair(members)
                if reason is not None:
                    log.add(self.split, where, reason)
                    continue
                yield Record(self.split, {"image_id": key, "captions": captions, "split": self.split},
                             {"image": image}, where)
