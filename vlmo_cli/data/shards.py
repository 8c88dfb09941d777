"""Webdataset shard lists: which dataset entries name shards, their expansion, their sample counts and reading them.

A dataset entry names shards (rather than a prepared directory) when it is a URL (``https://``, ``http://``,
``file://``, ``s3://``, ``gs://``, ``pipe:``) or ends in ``.tar`` (brace patterns ``{00000..00331}`` and globs
allowed). Brace patterns expand with the ``webdataset`` package; ``http(s)`` shards are read with the standard library
(bounded by a timeout), ``file://`` and local paths directly, object stores (``s3://``, ``gs://``, ``gcs://``) through
``fsspec`` and its file-system package (``s3fs``, ``gcsfs``; globs too), ``pipe:`` through ``webdataset.gopen``. Members are grouped into samples by ``webdataset``'s key rule;
a member shorter than its header says, or a shard without the end-of-archive marker (both: truncated), is an error,
which Python's streaming tar reader does not raise by itself.

Sample counts come, per shard, from the first of: ``sizes.json`` next to the shards (``{"00000.tar": 10000, ...}``),
``_info.json`` (a ``shardlist`` of ``{"url", "nsamples"}`` entries), or the shard's img2dataset ``<stem>_stats.json``
(``successes``). :mod:`vlmo_cli.data.shard_writer` writes ``sizes.json``.
"""

from __future__ import annotations

import glob
import json
import os
import tarfile
import urllib.request
from pathlib import Path
from typing import Any, Iterator

from ..errors import DataError

#: schemes a shard URL may have
URL_PREFIXES = ("http://", "https://", "file://", "s3://", "gs://", "gcs://", "pipe:")
#: schemes read through fsspec (globs expand there too)
OBJECT_STORE_PREFIXES = ("s3://", "gs://", "gcs://")
#: the fsspec file-system package of each object-store scheme
FSSPEC_PACKAGES = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs"}
#: image members a sample may carry, in the order they are looked for
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
#: seconds an http(s) shard or count file may take to answer
HTTP_TIMEOUT = 60


def is_shard_entry(entry: str | Path) -> bool:
    """Whether a dataset entry names webdataset shards rather than a prepared directory."""
    text = str(entry)
    return text.startswith(URL_PREFIXES) or text.rstrip("/").endswith((".tar", ".tar.gz", ".tgz"))


def names_shards(entries) -> bool:
    """Whether a dataset value (a path or a list) names shards; mixing shards with prepared directories is refused."""
    items = [entries] if isinstance(entries, (str, Path)) else list(entries)
    flags = {is_shard_entry(e) for e in items}
    if flags == {True, False}:
        raise DataError(f"dataset {[str(e) for e in items]} mixes webdataset shards with prepared directories; "
                        "give one kind (prepare the shards with `vlmo prepare pairs --format webdataset`, or write "
                        "the prepared data as shards with `--out-format webdataset`)")
    return flags == {True}


def _is_url(text: str) -> bool:
    return text.startswith(URL_PREFIXES) and not text.startswith("file://")


def expand_shards(entries) -> list[str]:
    """Every shard of a dataset value, in order: brace patterns expanded, local globs matched, ``file://`` stripped.

    A DataError (one line) when an entry matches nothing or names a local shard that does not exist.
    """
    from webdataset.shardlists import expand_urls

    items = [entries] if isinstance(entries, (str, Path)) else list(entries)
    shards: list[str] = []
    for entry in items:
        found: list[str] = []
        for url in expand_urls(str(entry)):
            if url.startswith("file://"):
                url = url[len("file://"):]
            if url.startswith(OBJECT_STORE_PREFIXES) and any(ch in url for ch in "*?["):
                found += _object_store_glob(url)
            elif _is_url(url):
                found.append(url)
            elif any(ch in url for ch in "*?["):
                found += sorted(glob.glob(url))
            elif Path(url).is_file():
                found.append(url)
            else:
                missing = [u for u in expand_urls(str(entry)) if not _is_url(u) and not Path(u.removeprefix("file://")).is_file()]
                if len(missing) == len(expand_urls(str(entry))):
                    raise DataError(f"dataset {entry}: matches no webdataset shard")
                raise DataError(f"dataset {entry}: {len(missing)} listed shard(s) do not exist, e.g. {missing[0]}")
        if not found:
            raise DataError(f"dataset {entry}: matches no webdataset shard")
        shards += found
    return shards


def _object_store(url: str):
    """``(fsspec file system, path)`` of an object-store URL; a DataError naming the package when it is missing."""
    scheme = url.split("://", 1)[0]
    try:
        import fsspec

        return fsspec.core.url_to_fs(url)
    except ImportError:
        package = FSSPEC_PACKAGES.get(scheme, "the fsspec package of " + scheme)
        raise DataError(f"{url}: {scheme}:// shards are read through fsspec, which needs {package} here: "
                        f"pip install fsspec {package}") from None


def _object_store_glob(url: str) -> list[str]:
    """The shards an object-store glob matches, sorted, as URLs."""
    fs, path = _object_store(url)
    scheme = url.split("://", 1)[0]
    return [f"{scheme}://{match}" for match in sorted(fs.glob(path))]


def _parent(url: str) -> str:
    return url.rsplit("/", 1)[0] if "/" in url else "."


def _basename(url: str) -> str:
    return url.rsplit("/", 1)[-1]


def _read_small(location: str) -> bytes | None:
    """A count file's bytes, or None when it is absent or unreadable (counts are then looked for elsewhere)."""
    try:
        if location.startswith(("http://", "https://")):
            with urllib.request.urlopen(location, timeout=HTTP_TIMEOUT) as response:
                return response.read()
        if location.startswith(OBJECT_STORE_PREFIXES):
            fs, path = _object_store(location)
            return fs.cat_file(path)
        if _is_url(location):
            return None  # pipe: count files are not looked for
        return Path(location).read_bytes() if os.path.isfile(location) else None
    except OSError:
        return None


def _json(location: str) -> Any:
    raw = _read_small(location)
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def shard_sizes(shards: list[str]) -> dict[str, int]:
    """Known sample counts of the shards (shards without one are left out)."""
    sizes: dict[str, int] = {}
    folders: dict[str, tuple[Any, Any]] = {}
    for shard in shards:
        folder = _parent(shard)
        if folder not in folders:
            folders[folder] = (_json(f"{folder}/sizes.json"), _json(f"{folder}/_info.json"))
        by_name, info = folders[folder]
        name = _basename(shard)
        if isinstance(by_name, dict) and isinstance(by_name.get(name), int):
            sizes[shard] = by_name[name]
            continue
        if isinstance(info, dict) and isinstance(info.get("shardlist"), list):
            hit = [e.get("nsamples") for e in info["shardlist"]
                   if isinstance(e, dict) and _basename(str(e.get("url", ""))) == name]
            if hit and isinstance(hit[0], int):
                sizes[shard] = hit[0]
                continue
        stats = _json(f"{folder}/{name.split('.')[0]}_stats.json")
        if isinstance(stats, dict) and isinstance(stats.get("successes"), int):
            sizes[shard] = stats["successes"]
    return sizes


def open_shard(url: str):
    """A readable binary stream of one shard."""
    if url.startswith(("http://", "https://")):
        return urllib.request.urlopen(url, timeout=HTTP_TIMEOUT)
    if not _is_url(url):
        return open(url, "rb")
    if url.startswith(OBJECT_STORE_PREFIXES):
        fs, path = _object_store(url)
        return fs.open(path, "rb")
    import webdataset

    return webdataset.gopen(url, "rb")


def read_shard(url: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, {extension: bytes})`` per sample of one shard, in stored order (members of a sample are adjacent;
    the key and extensions are split as ``webdataset`` splits them). Errors (unreachable, not a tar file, a member
    cut short) propagate after the samples read before them; the sample being read then is dropped."""
    from webdataset.tariterators import base_plus_ext

    with open_shard(url) as raw:
        stream = _Counting(raw)
        tar = tarfile.open(fileobj=stream, mode="r|*")
        key, members = None, {}
        for info in tar:
            if not info.isreg() or info.name.startswith("__"):
                continue
            handle = tar.extractfile(info)
            data = handle.read() if handle is not None else b""
            if len(data) != info.size:  # the stream ended inside this member: the shard is truncated
                raise EOFError(f"{info.name}: cut short ({len(data)} of {info.size} bytes)")
            prefix, suffix = base_plus_ext(info.name)
            if prefix is None:
                continue
            if key is not None and prefix != key:
                yield key, members
                members = {}
            key = prefix
            members[suffix.lower()] = data
        while stream.read(1 << 16):  # what follows the last member: the end-of-archive marker and padding
            pass
        if stream.count < tar.offset + 2 * tarfile.BLOCKSIZE:  # ended where a member header should have been
            raise EOFError(f"ends after {stream.count} bytes without the end-of-archive marker (truncated)")
        if key is not None and members:
            yield key, members


class _Counting:
    """A read-only stream that counts the bytes read through it."""

    def __init__(self, raw) -> None:
        self.raw, self.count = raw, 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.count += len(data)
        return data


def json_meta(members: dict[str, bytes]) -> dict | None:
    """A sample's ``json`` member as a dict; None when it has none, or it is malformed or not an object."""
    if "json" not in members:
        return None
    try:
        meta = json.loads(members["json"])
    except ValueError:
        return None
    return meta if isinstance(meta, dict) else None


def caption_of(members: dict[str, bytes], caption_key: str = "") -> str | None:
    """The caption of a sample: the named ``json`` field when ``caption_key`` is set, else ``txt``, else the ``json``
    ``caption``/``text`` field. None when there is none (or the JSON is malformed)."""
    if not caption_key and "txt" in members:
        text = members["txt"].decode("utf-8", errors="replace").strip()
        return text or None
    meta = json_meta(members)
    if meta is None:
        return None
    value = meta.get(caption_key) if caption_key else (meta.get("caption") or meta.get("text"))
    return str(value).strip() or None if value is not None else None


def image_of(members: dict[str, bytes]) -> bytes | None:
    return next((members[k] for k in IMAGE_EXTS if k in members), None)
