"""Training straight from webdataset shards: sharded over processes and workers, shuffled with a seed, resumable.

Layout of one epoch. With ``R`` processes and ``W`` DataLoader workers (``W = 1`` for ``num_workers = 0``) there are
``R * W`` streams. The shard list is permuted with ``(seed, epoch)``; process ``r`` takes ``order[r::R]`` and its
worker stream ``w`` takes ``that[w::W]``, so in an epoch every shard belongs to one stream (no two processes read one
shard, every sample is read at most once). With ``resampled`` each stream instead draws shards with replacement
(seeded), forever, as open_clip's resampled mode does.

Every stream yields exactly ``quota`` batches per epoch, so all processes take equally many steps (DDP stays in step)
and the DataLoader's round robin over workers stays regular. ``quota`` is ``samples_per_epoch / (R * W * batch)``
when the recipe gives a count, else the samples of the ``floor(shards / streams)`` smallest shards over the batch
(the least any stream can hold). A stream that runs dry early (skipped samples, a short shard, a count set too high)
reads its shards again in a new seeded order and counts the refill; these are reported, never silent.

Shuffling: a stream reads ``shuffle_buffer`` consecutive samples at a time and yields them in a seeded random order
(a block shuffle). Each batch's augmentation and masking draw from a torch generator seeded by
``(seed, epoch, rank, stream, batch)``, so a batch is the same whichever worker makes it and whenever.

Resume: every batch carries the stream position after it (``stream_position``: pass, shard index and raw sample
offset of the current block's start, the place inside the block, counters). :class:`StreamTracker` keeps the newest
per stream in the training process; the checkpoint stores them, and a resumed loader seeks each stream to its
position (reading at most one shard prefix and one block again), and rotates the worker ids so that the next batch
comes from the stream that would have made it. The resumed run sees exactly the samples of the uninterrupted one.

Corrupt samples (no image, an image that does not decode, no caption) are skipped and counted; an unreadable or
truncated shard is counted and left after the samples read before the damage. A stream that reads a whole pass over
its shards without one usable sample (shards of the wrong kind: images only for a text stream) stops with a message.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..errors import DataError
from .images import decode_rgb
from .shards import caption_of, expand_shards, image_of, json_meta, read_shard, shard_sizes

log = logging.getLogger(__name__)

#: collate tasks a shard stream can feed
STREAM_TASKS = ("pairs", "text", "images")
#: counters every stream keeps (cumulative over the run)
COUNTERS = ("bad_samples", "bad_shards", "refills")
#: counters the shard reader (rather than the batch maker) keeps
RAW_COUNTERS = ("bad_shards",)
#: what each task needs of a sample
_NEEDS = {"pairs": "a decodable image and a caption", "text": "a caption", "images": "a decodable image"}
_WARNED: set[str] = set()


@dataclass(frozen=True)
class StreamOptions:
    """Args:
    samples_per_epoch: samples in one epoch over all processes; 0 = from the shards' counts.
    shuffle_buffer: samples per shuffled block (0 = keep the stored order inside shards).
    resampled: draw shards with replacement, forever (``samples_per_epoch`` then defines an epoch).
    caption_key: JSON field holding the caption; "" = the ``txt`` member, else JSON ``caption``/``text``.
    """

    samples_per_epoch: int = 0
    shuffle_buffer: int = 1000
    resampled: bool = False
    caption_key: str = ""


def _seed(*parts: Any) -> int:
    """A 63-bit seed from parts (stable across processes and Python runs, unlike ``hash``)."""
    return random.Random("/".join(map(str, parts))).getrandbits(63)


class _Cursor:
    """The raw samples of one stream, block-shuffled, from a position; tracks where it stands."""

    def __init__(self, stream: "ShardStream", logical: int, epoch: int, position: dict | None) -> None:
        self.s, self.logical, self.epoch = stream, logical, epoch
        pos = position or {}
        self.pass_no, self.shard, self.offset = pos.get("pass", 0), pos.get("shard", 0), pos.get("offset", 0)
        self.block_no, self.within = pos.get("block", 0), pos.get("within", 0)
        # raw-level counters restart from their value before the block is read again, so nothing counts twice
        self.counts = {k: int(pos.get(f"base_{k}", pos.get(k, 0))) if k in RAW_COUNTERS else int(pos.get(k, 0))
                       for k in COUNTERS}
        self.base = {k: self.counts[k] for k in RAW_COUNTERS}
        self.block: list[tuple[str, str, dict]] = []
        self.block_start = (self.pass_no, self.shard, self.offset)
        self._raw = self._raw_samples(self.pass_no, self.shard, self.offset)
        self._pending: tuple | None = None
        self.consumed_pass = self.block_start[0]
        self._fill(first=True)

    # -------------------------------------------------------------- shards of this stream
    def shard_at(self, pass_no: int, index: int) -> str | None:
        s = self.s
        if s.options.resampled:
            return random.Random(_seed(s.seed, self.epoch, s.rank, self.logical, pass_no, index)).choice(s.shards)
        mine = s.stream_shards(self.epoch, self.logical)
        if index >= len(mine):
            return None
        if pass_no > 0:  # a refill: the same shards again, in another seeded order
            mine = list(mine)
            random.Random(_seed(s.seed, self.epoch, s.rank, self.logical, "refill", pass_no)).shuffle(mine)
        return mine[index]

    def _raw_samples(self, pass_no: int, shard: int, offset: int) -> Iterator[tuple[tuple[int, int, int], str, str, dict]]:
        """((pass, shard, offset), shard url, key, members) from a position on, refilling passes as needed."""
        pass_read = offset > 0  # whether this pass has read a sample (a resumed one did)
        while True:
            url = self.shard_at(pass_no, shard)
            if url is None:
                if not pass_read:  # every shard of the pass failed: refilling would loop forever
                    raise DataError(f"none of the {shard} shard(s) of a data stream could be read (process "
                                    f"{self.s.rank}, stream {self.logical}); check the shard list and its access")
                pass_no, shard, offset, pass_read = pass_no + 1, 0, 0, False
                continue
            got_any = False
            try:
                for position, (key, members) in enumerate(read_shard(url)):
                    got_any = pass_read = True
                    if position < offset:
                        continue
                    yield (pass_no, shard, position), url, key, members
            except Exception as exc:  # unreachable, truncated or not a tar file: count, say so, go on
                self.counts["bad_shards"] += 1
                if self.counts["bad_shards"] <= 5:
                    log.warning("skipping the rest of unreadable shard %s: %s: %s", url, type(exc).__name__, exc)
            if not got_any and self.s.options.resampled and self.counts["bad_shards"] > 1000:
                raise DataError("over 1000 unreadable shards drawn: check the shard list and its access")
            shard, offset = shard + 1, 0

    def _fill(self, first: bool = False) -> None:
        size = max(1, self.s.options.shuffle_buffer)
        self.base = {k: self.counts[k] for k in RAW_COUNTERS}
        self.block = []
        while len(self.block) < size:
            item = self._pending if self._pending is not None else next(self._raw)
            self._pending = None
            if self.block and item[0][0] != self.block[0][0][0]:
                self._pending = item  # a block never spans a refill: the pass ends with its own samples
                break
            if not self.block:
                self.block_start = item[0]
            self.block.append(item)
        if self.s.options.shuffle_buffer and self.s.shuffle:
            random.Random(_seed(self.s.seed, self.epoch, self.s.rank, self.logical, "block", self.block_no)
                          ).shuffle(self.block)
        if not first:
            self.within = 0

    def next_raw(self) -> tuple[str, str, dict]:
        while self.within >= len(self.block):
            self.block_no += 1
            self._fill()
        item = self.block[self.within]
        self.within += 1
        if item[0][0] > self.consumed_pass:  # the first sample of a refill pass
            self.counts["refills"] += item[0][0] - self.consumed_pass
            self.consumed_pass = item[0][0]
        return item[1], item[2], item[3]

    def position(self) -> dict[str, Any]:
        pass_no, shard, offset = self.block_start
        return {"worker": self.logical, "epoch": self.epoch, "pass": pass_no, "shard": shard, "offset": offset,
                "block": self.block_no, "within": self.within, **self.counts,
                **{f"base_{k}": v for k, v in self.base.items()}}


class ShardStream(IterableDataset):
    """Collated training batches from webdataset shards (see the module docstring). ``len()`` = batches per
    process per epoch; pass ``batch_size=None`` to the DataLoader."""

    def __init__(self, shards: list[str], task: str, transform: Callable | None, collate: Callable, *,
                 batch_size: int, options: StreamOptions, sizes: dict[str, int] | None = None, seed: int = 0,
                 rank: int = 0, world_size: int = 1, workers: int = 0, shuffle: bool = True) -> None:
        if task not in STREAM_TASKS:
            raise DataError(f"task {task!r} cannot read webdataset shards; allowed: {list(STREAM_TASKS)} "
                            "(images, text, image-text pairs); prepare this dataset as a directory")
        self.shards, self.task, self.transform, self.collate = shards, task, transform, collate
        self.batch_size, self.options, self.seed, self.shuffle = batch_size, options, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.workers = max(1, workers)
        self.streams = world_size * self.workers
        self.quota = self._quota(sizes or {})
        self.epoch, self.skip_batches, self.resume = 0, 0, {}
        self.tracker = StreamTracker()

    def _quota(self, sizes: dict[str, int]) -> int:
        n, opts = len(self.shards), self.options
        where = f"{n} shard(s) over {self.world_size} process(es) x {self.workers} worker stream(s)"
        if not opts.resampled and n < self.streams:
            raise DataError(f"{where}: every stream needs a shard; use fewer data.num_workers or more shards")
        if opts.samples_per_epoch:
            samples = opts.samples_per_epoch // self.streams
        elif opts.resampled:
            raise DataError("data.stream_resampled needs data.stream_samples_per_epoch (the samples of one epoch)")
        else:
            missing = [s for s in self.shards if s not in sizes]
            if missing:
                raise DataError(f"{len(missing)} of {n} shard(s) have no sample count (e.g. {missing[0]}): put "
                                "sizes.json next to them (`vlmo prepare ... --out-format webdataset` writes one) "
                                "or set data.stream_samples_per_epoch")
            smallest = sorted(sizes[s] for s in self.shards)[: n // self.streams]
            samples = sum(smallest)
            unused = sum(sizes.values()) - samples * self.streams
            if unused > 0.1 * sum(sizes.values()) and where not in _WARNED:
                _WARNED.add(where)
                log.warning("%s: each stream reads %d samples per epoch, %d of %d samples stay unused; a shard "
                            "count divisible by %d uses them all", where, samples, unused, sum(sizes.values()),
                            self.streams)
        quota = samples // self.batch_size
        if quota < 1:
            raise DataError(f"{where}: {samples} sample(s) per stream per epoch, fewer than one batch of "
                            f"{self.batch_size}; lower the batch size or data.num_workers")
        return quota

    def __len__(self) -> int:
        return self.quota * self.workers

    def set_epoch(self, epoch: int, skip_batches: int = 0, resume: dict | None = None) -> None:
        """Start ``epoch`` after its first ``skip_batches`` batches of this process; ``resume`` is what
        :meth:`StreamTracker.state` saved (its positions, if of this epoch, and the counters of earlier epochs)."""
        resume = resume or {}
        positions = resume.get("positions", {}) if resume.get("epoch") == epoch else {}
        self.epoch, self.skip_batches, self.resume = epoch, skip_batches, positions
        for logical in range(min(skip_batches, self.workers)):  # the streams that already made a batch
            saved = self.resume.get(str(logical)) or self.resume.get(logical)
            if saved is None or saved.get("epoch") != epoch:
                raise DataError("the checkpoint holds no stream position for this epoch; resume with the same "
                                "number of processes and data.num_workers as the interrupted run")
        self.tracker.start_epoch(epoch, positions, resume.get("carried"))

    def stream_shards(self, epoch: int, logical: int) -> list[str]:
        order = list(self.shards)
        if self.shuffle:
            random.Random(_seed(self.seed, epoch, "shards")).shuffle(order)
        return order[self.rank::self.world_size][logical::self.workers]

    def _item(self, url: str, key: str, members: dict[str, bytes]) -> dict[str, Any] | None:
        caption = None
        if self.task in ("pairs", "text"):
            caption = caption_of(members, self.options.caption_key)
            if caption is None:
                return None
        if self.task == "text":
            return {"text": caption}
        data = image_of(members)
        if data is None:
            return None
        try:
            pixels = decode_rgb(data)
        except Exception:
            return None
        if self.transform is not None:
            pixels = self.transform(pixels)
        item = {"pixel_values": pixels, "image_index": self._image_index(url, key, members)}
        if caption is not None:
            item["text"] = caption
        return item

    def _image_index(self, url: str, key: str, members: dict[str, bytes]) -> int:
        """Equal for samples of one image (same JSON ``image_id`` within a shard folder), distinct otherwise, so that
        contrastive losses treat another caption of the same image as a positive."""
        image_id = _json_image_id(members)
        name = f"{url.rsplit('/', 1)[0]}/{image_id}" if image_id is not None else f"{url}#{key}"
        return _seed(name) & (2**62 - 1)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        physical = info.id if info is not None else 0
        k = self.skip_batches
        logical = (physical + k) % self.workers  # the stream whose batch comes next, first
        done = k // self.workers + (1 if logical < k % self.workers else 0)
        saved = self.resume.get(str(logical)) or self.resume.get(logical)  # checked by set_epoch
        cursor = _Cursor(self, logical, self.epoch, saved if done else None)
        usable_pass = cursor.consumed_pass  # the pass of the last usable sample
        for number in range(done, self.quota):
            keys, items, bad = [], [], 0
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(_seed(self.seed, self.epoch, self.rank, logical, "batch", number))
                while len(items) < self.batch_size:
                    url, key, members = cursor.next_raw()
                    item = self._item(url, key, members)
                    if item is None:
                        bad += 1
                        cursor.counts["bad_samples"] += 1
                        if cursor.counts["bad_samples"] <= 5:
                            log.warning("skipping unusable sample %s in %s", key, url)
                        if cursor.consumed_pass > usable_pass + 1:  # a whole pass read without one usable sample
                            raise DataError(f"a whole pass over the shards of a data stream (process {self.rank}, "
                                            f"stream {logical}) gave no sample with {_NEEDS[self.task]}; check "
                                            f"that the shards hold them and data.stream_caption_key")
                        continue
                    usable_pass = cursor.consumed_pass
                    items.append(item)
                    keys.append(f"{url}#{key}")
                batch = self.collate(items)
            batch["num_skipped"] = torch.tensor(bad, dtype=torch.int64)
            batch["stream_position"] = {**cursor.position(), "batches": number + 1}
            batch["sample_keys"] = keys
            yield batch


def _json_image_id(members: dict[str, bytes]) -> str | None:
    meta = json_meta(members)
    value = meta.get("image_id") if meta is not None else None
    return None if value is None else str(value)


class StreamTracker:
    """The newest stream position per worker stream of this process, as the training loop consumes batches."""

    def __init__(self) -> None:
        self.epoch = 0
        self.positions: dict[str, dict] = {}
        self.carried = dict.fromkeys(COUNTERS, 0)

    def start_epoch(self, epoch: int, positions: dict | None = None, carried: dict | None = None) -> None:
        """A new epoch (the counters so far are carried over), or a resumed one (positions and carried counters
        from the checkpoint)."""
        if carried is not None:
            self.carried = {k: int(carried.get(k, 0)) for k in COUNTERS}
        elif epoch != self.epoch:
            self.carried = self.counters()
        self.epoch = epoch
        self.positions = {str(k): dict(v) for k, v in (positions or {}).items()}

    def note(self, batch: dict) -> None:
        """Take (pop) the stream keys of a batch before it reaches the model."""
        position = batch.pop("stream_position", None)
        batch.pop("sample_keys", None)
        if position is not None:
            self.positions[str(position["worker"])] = position

    def counters(self) -> dict[str, int]:
        return {k: self.carried[k] + sum(int(p.get(k, 0)) for p in self.positions.values()) for k in COUNTERS}

    def state(self) -> dict:
        """What a checkpoint stores for this process (JSON-ready)."""
        return {"epoch": self.epoch, "positions": self.positions, "carried": dict(self.carried)}


def build_stream_loader(entries, task: str, collate: Callable, transform: Callable | None, *, batch_size: int,
                        options: StreamOptions, seed: int, rank: int, world_size: int, workers: int, epoch: int,
                        skip_batches: int, resume: dict | None, shuffle: bool, pin_memory: bool,
                        worker_init_fn: Callable | None = None) -> DataLoader:
    """A DataLoader over shard streams (see :class:`ShardStream`); ``resume`` = this process's saved positions."""
    shards = expand_shards(entries)
    sizes = {} if options.samples_per_epoch else shard_sizes(shards)
    dataset = ShardStream(shards, task, transform, collate, batch_size=batch_size, options=options, sizes=sizes,
                          seed=seed, rank=rank, world_size=world_size, workers=workers, shuffle=shuffle)
    dataset.set_epoch(epoch, skip_batches, resume)
    # a generator of its own: starting an iteration must not draw from the global torch RNG (training's stream)
    return DataLoader(dataset, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                      worker_init_fn=worker_init_fn, persistent_workers=False,
                      generator=torch.Generator().manual_seed(seed))


def check_stream_source(entries, task: str) -> list[str]:
    """The shards of a dataset value, refusing (one line each) a task shards cannot feed and a pattern matching
    nothing; called before a run builds anything."""
    if task not in STREAM_TASKS:
        raise DataError(f"task {task!r} cannot read webdataset shards; allowed: {list(STREAM_TASKS)} "
                        "(images, text, image-text pairs); prepare this dataset as a directory")
    return expand_shards(entries)


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """Move a training loader (prepared or streamed) to the start of ``epoch``."""
    if isinstance(loader.dataset, ShardStream):
        loader.dataset.set_epoch(epoch)
    else:
        loader.sampler.set_epoch(epoch, 0)


def stream_tracker(loader: DataLoader) -> StreamTracker | None:
    """The tracker of a training loader's streams: a shard stream's, a loader's own ``tracker`` (mixed batches with
    streamed parts: :class:`~vlmo_cli.data.mixed.MixedTracker`), else ``None`` (prepared data)."""
    if isinstance(loader.dataset, ShardStream):
        return loader.dataset.tracker
    return getattr(loader, "tracker", None)


def gather_stream_state(loader: DataLoader, accelerator) -> dict:
    """Every process's stream positions (a collective: call it on all processes); {} for prepared data."""
    tracker = stream_tracker(loader)
    if tracker is None:
        return {}
    mine = tracker.state()
    if isinstance(loader.dataset, ShardStream):
        mine["workers"] = loader.dataset.workers
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        ranks = gather_object([mine])
    else:
        ranks = [mine]
    return {"world_size": accelerator.num_processes, "ranks": ranks}


def resume_positions(stream_state: dict | None, rank: int, world_size: int, workers: int) -> dict:
    """This process's saved stream state (empty when the checkpoint holds none for this layout)."""
    if not stream_state or stream_state.get("world_size") != world_size:
        return {}
    mine = stream_state["ranks"][rank]
    return mine if mine.get("workers") == max(1, workers) else {}
