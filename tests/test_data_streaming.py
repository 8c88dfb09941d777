"""Training data streamed from webdataset shards: shard lists, sharding over processes and workers, seeded shuffling,
exact resume, skipped samples and shards, http(s) shards, the shard writer and the CLI errors."""

from __future__ import annotations

import functools
import importlib.util
import http.server
import io
import json
import os
import socket
import tarfile
import threading
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from vlmo_cli.data.loader import build_dataloader
from vlmo_cli.data.shards import expand_shards, is_shard_entry, names_shards, shard_sizes
from vlmo_cli.data.streaming import StreamOptions, stream_tracker
from vlmo_cli.errors import DataError

from helpers import run

N_SHARDS, PER_SHARD = 8, 40  # 320 samples


def jpeg(color, size=(16, 12)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


def write_test_shards(root: Path, n_shards: int = N_SHARDS, per_shard: int = PER_SHARD, *, sizes: bool = True,
                      damage: dict | None = None) -> Path:
    """``root/00000.tar`` ...: samples ``SSSSSIIII`` with jpg + txt + json; ``damage`` = {(shard, item): how} with
    how in ``bad_jpeg``, ``no_caption``, ``no_image``."""
    root.mkdir(parents=True, exist_ok=True)
    damage = damage or {}
    counts = {}
    for s in range(n_shards):
        with tarfile.open(root / f"{s:05d}.tar", "w") as tar:
            for i in range(per_shard):
                key = f"{s:05d}{i:04d}"
                members = {"jpg": jpeg(((s * 31 + i * 7) % 256, i % 256, 90)), "txt": f"shape {s} number {i}".encode(),
                           "json": json.dumps({"key": key, "alt": f"alt caption {key}"}).encode()}
                how = damage.get((s, i))
                if how == "bad_jpeg":
                    members["jpg"] = members["jpg"][:40]
                elif how == "no_caption":
                    members.pop("txt")
                    members["json"] = b"{}"
                elif how == "no_image":
                    members.pop("jpg")
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        counts[f"{s:05d}.tar"] = per_shard
    if sizes:
        (root / "sizes.json").write_text(json.dumps(counts))
    return root


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_test_shards(tmp_path_factory.mktemp("wds") / "cc")


@pytest.fixture(scope="module")
def tok(demo_root) -> Path:
    return demo_root / "demo_data" / "tokenizer"


def pattern(root: Path, n: int = N_SHARDS) -> str:
    return f"{root}/{{00000..{n - 1:05d}}}.tar"


def loader(spec, tok, *, task="pairs", workers=0, batch=5, rank=0, world=1, epoch=0, skip=0, resume=None,
           **options):
    opts = {"shuffle_buffer": 16, **options}
    return build_dataloader(spec, "train", task, tokenizer=tok, image_size=16, batch_size=batch, seed=7,
                            workers=workers, rank=rank, world_size=world, epoch=epoch, skip_batches=skip,
                            stream=StreamOptions(**opts), stream_resume=resume, randaug=False)


def read_keys(dl, stop: int | None = None) -> tuple[list[list[str]], dict]:
    """Sample keys per batch (until ``stop`` batches), and the positions the training loop would save."""
    tracker = stream_tracker(dl)
    out = []
    for batch in dl:
        keys = batch["sample_keys"]
        assert batch["pixel_values"].shape[0] == len(keys) and batch["input_ids"].shape[0] == len(keys)
        tracker.note(batch)
        assert "stream_position" not in batch and "sample_keys" not in batch
        out.append(keys)
        if stop is not None and len(out) == stop:
            break
    return out, json.loads(json.dumps(tracker.state()))  # as stored in trainer_state.json


def counted(state: dict) -> dict[str, int]:
    """Run-wide counters from a saved stream state (as :meth:`StreamTracker.counters` sums them)."""
    return {k: state["carried"][k] + sum(p[k] for p in state["positions"].values()) for k in state["carried"]}


# ------------------------------------------------------------------------------------------------ shard lists
def test_shard_entries_expand_and_count(shards, tmp_path):
    assert is_shard_entry(pattern(shards)) and is_shard_entry("https://host/a.tar") and is_shard_entry("s3://b/x")
    assert not is_shard_entry("demo_data/pairs")
    assert names_shards([pattern(shards), f"file://{shards}/00000.tar"])
    with pytest.raises(DataError, match="mixes webdataset shards with prepared directories"):
        names_shards([pattern(shards), "demo_data/pairs"])
    listed = expand_shards([pattern(shards, 4), f"file://{shards}/0000[67].tar"])
    assert [Path(p).name for p in listed] == ["00000.tar", "00001.tar", "00002.tar", "00003.tar", "00006.tar",
                                              "00007.tar"]
    assert set(shard_sizes(listed).values()) == {PER_SHARD}
    with pytest.raises(DataError, match="matches no webdataset shard"):
        expand_shards(str(tmp_path / "none" / "{000..003}.tar"))
    with pytest.raises(DataError, match="1 listed shard"):
        expand_shards(f"{shards}/{{00006..00008}}.tar")
    # img2dataset's per-shard stats and wids' _info.json are counts too
    other = write_test_shards(tmp_path / "i2d", 2, 3, sizes=False)
    (other / "00000_stats.json").write_text(json.dumps({"successes": 3, "count": 4}))
    (other / "_info.json").write_text(json.dumps({"shardlist": [{"url": "00001.tar", "nsamples": 3}]}))
    assert shard_sizes(expand_shards(f"{other}/*.tar")) == {f"{other}/00000.tar": 3, f"{other}/00001.tar": 3}
    (other / "00000_stats.json").unlink()
    with pytest.raises(DataError, match="1 of 2 shard.* have no sample count"):
        build_dataloader(f"{other}/*.tar", "train", "images", batch_size=2)


# ------------------------------------------------------------------------------------------------ one epoch
@pytest.mark.parametrize("workers", [0, 2])
def test_epoch_reads_each_sample_once_in_a_seeded_order(shards, tok, workers):
    dl = loader(pattern(shards), tok, workers=workers, batch=5)
    assert len(dl) == 320 // 5
    batches, _ = read_keys(dl)
    keys = [k for b in batches for k in b]
    assert len(keys) == 320 and len(set(keys)) == 320  # every sample exactly once
    assert keys != sorted(keys)  # shuffled
    again, _ = read_keys(loader(pattern(shards), tok, workers=workers, batch=5))
    assert again == batches  # same seed, same order
    next_epoch, _ = read_keys(loader(pattern(shards), tok, workers=workers, batch=5, epoch=1))
    assert next_epoch != batches and sorted(k for b in next_epoch for k in b) == sorted(keys)


def test_processes_and_workers_read_disjoint_shards(shards, tok):
    seen = {}
    for rank in range(2):
        batches, _ = read_keys(loader(pattern(shards), tok, rank=rank, world=2, workers=2, batch=4))
        assert len(batches) == 320 // (2 * 4)  # equal step counts on every process
        seen[rank] = [k for b in batches for k in b]
    assert not set(seen[0]) & set(seen[1])
    shards_of = {rank: {k.split("#")[0] for k in keys} for rank, keys in seen.items()}
    assert not shards_of[0] & shards_of[1] and len(shards_of[0]) == len(shards_of[1]) == 4


def test_uneven_shards_cut_streams_to_equal_length(tmp_path, tok, caplog):
    root = write_test_shards(tmp_path / "five", 5, 20)
    batches, _ = read_keys(loader(pattern(root, 5), tok, workers=2, batch=4))
    keys = [k for b in batches for k in b]
    # streams hold 3 and 2 shards: each yields the 40 samples the smaller one holds; no sample twice
    assert len(keys) == 80 and len(set(keys)) == 80
    assert "stay unused" in caplog.text


@pytest.mark.parametrize("task", ["text", "images"])
def test_text_and_image_stages(shards, tok, task):
    dl = loader(pattern(shards, 2), tok, task=task, batch=8, caption_key="alt" if task == "text" else "")
    batch = next(iter(dl))
    if task == "text":
        assert "pixel_values" not in batch and batch["input_ids"].shape == (8, 40)
        assert all(k for k in batch["sample_keys"])
    else:
        assert batch["pixel_values"].shape == (8, 3, 16, 16) and "input_ids" not in batch
    with pytest.raises(DataError, match="cannot read webdataset shards"):
        loader(pattern(shards, 2), tok, task="classify")


def test_resampled_stream_draws_shards_with_replacement(shards, tok):
    with pytest.raises(DataError, match="needs data.stream_samples_per_epoch"):
        loader(pattern(shards), tok, resampled=True)
    dl = loader(pattern(shards, 2), tok, resampled=True, samples_per_epoch=200, batch=10)
    batches, _ = read_keys(dl)
    keys = [k for b in batches for k in b]
    assert len(batches) == 20 and len(keys) == 200 and len(set(keys)) < 200  # 80 distinct samples drawn 200 times


# ------------------------------------------------------------------------------------------------ resume
@pytest.mark.parametrize("workers", [0, 2])
def test_resumed_stream_sees_exactly_the_uninterrupted_samples(tmp_path, tok, workers):
    root = write_test_shards(tmp_path / "wds", damage={(1, 3): "bad_jpeg", (2, 5): "no_caption"})
    spec = pattern(root)
    full, end = read_keys(loader(spec, tok, workers=workers, batch=6))
    assert counted(end)["bad_samples"] == 2
    for stop in (1, 7, 11):
        head, saved = read_keys(loader(spec, tok, workers=workers, batch=6), stop=stop)
        tail, resumed_end = read_keys(loader(spec, tok, workers=workers, batch=6, skip=stop, resume=saved))
        assert head + tail == full, stop
        assert counted(resumed_end) == counted(end)  # the skip counters continue too
    # a resumed epoch without saved positions for its layout is refused rather than guessed
    with pytest.raises(DataError, match="no stream position"):
        loader(spec, tok, workers=0, batch=6, skip=3, resume={"epoch": 0, "positions": {}})


# ------------------------------------------------------------------------------------------------ damage
def test_corrupt_samples_and_unreadable_shards_are_skipped_and_counted(tmp_path, tok):
    root = write_test_shards(tmp_path / "bad", 4, 20,
                             damage={(0, 1): "bad_jpeg", (0, 2): "no_caption", (1, 0): "no_image"})
    data = (root / "00003.tar").read_bytes()
    (root / "00003.tar").write_bytes(data[: len(data) // 2])  # truncated: its first half is still read
    dl = loader(pattern(root, 4), tok, batch=4, samples_per_epoch=60)
    batches, _ = read_keys(dl)
    counts = stream_tracker(dl).counters()
    keys = [k for b in batches for k in b]
    assert len(keys) == 60
    assert counts["bad_samples"] >= 3 and counts["bad_shards"] == 1
    assert not any(k.endswith(("#000000001", "#000000002", "#000010000")) for k in keys)


# ------------------------------------------------------------------------------------------------ http
class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_http_shards_from_a_local_server(shards, tok):
    handler = functools.partial(_QuietHandler, directory=str(shards))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{{00000..00003}}.tar"
        dl = loader(url, tok, batch=8)
        assert len(dl) == 160 // 8  # the counts came from sizes.json over http
        batches, _ = read_keys(dl)
        assert len({k for b in batches for k in b}) == 160
        missing = f"http://127.0.0.1:{server.server_address[1]}/{{00007..00008}}.tar"
        dl = loader(missing, tok, batch=8, samples_per_epoch=80)  # 00008.tar answers 404: counted, not fatal
        batches, _ = read_keys(dl)
        counts = stream_tracker(dl).counters()
        assert counts["bad_shards"] >= 1 and counts["refills"] >= 1 and len(batches) == 10
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert not thread.is_alive()


# ------------------------------------------------------------------------------------------------ s3
@pytest.mark.skipif(importlib.util.find_spec("moto") is None or importlib.util.find_spec("s3fs") is None,
                    reason="needs moto[server] and s3fs (the test extra)")
def test_s3_shards_from_a_local_object_store(shards, tok, monkeypatch):
    """``s3://`` shards through fsspec/s3fs from a moto S3 server on 127.0.0.1: a brace pattern and a glob, counts
    from the bucket's sizes.json, a missing object counted, not fatal."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        for name, value in {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "test",
                            "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(name, value)
        client = boto3.client("s3")
        client.create_bucket(Bucket="corpus")
        for path in [*(shards / f"{i:05d}.tar" for i in range(4)), shards / "sizes.json"]:
            client.put_object(Bucket="corpus", Key=f"cc/{path.name}", Body=path.read_bytes())
        assert expand_shards("s3://corpus/cc/*.tar") == [f"s3://corpus/cc/{i:05d}.tar" for i in range(4)]
        for workers in (0, 2):  # s3fs in forked DataLoader workers too
            dl = loader("s3://corpus/cc/{00000..00003}.tar", tok, batch=8, workers=workers)
            assert len(dl) == 160 // 8  # the counts came from the bucket's sizes.json
            batches, _ = read_keys(dl)
            assert len({k for b in batches for k in b}) == 160
        dl = loader("s3://corpus/cc/{00003..00004}.tar", tok, batch=8, samples_per_epoch=80)  # 00004 is missing
        batches, _ = read_keys(dl)
        assert stream_tracker(dl).counters()["bad_shards"] >= 1 and len(batches) == 10
        with pytest.raises(DataError, match="matches no webdataset shard"):
            expand_shards("s3://corpus/other/*.tar")
    finally:
        server.stop()


def test_object_store_shards_without_their_fsspec_package_are_one_clear_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def without_fsspec(name, *args, **kwargs):
        if name == "fsspec" or name.startswith("fsspec."):
            raise ImportError("no fsspec")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_fsspec)
    with pytest.raises(DataError, match=r"gs:// shards are read through fsspec, which needs gcsfs.*pip install"):
        expand_shards("gs://bucket/cc/*.tar")


# ------------------------------------------------------------------------------------------------ 2 processes
def _rank_keys(rank: int, port: int, spec: str, tok: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        dl = loader(spec, tok, rank=dist.get_rank(), world=dist.get_world_size(), workers=0, batch=4)
        batches, _ = read_keys(dl)
        gathered = [None, None]
        dist.all_gather_object(gathered, [k for b in batches for k in b])
        if rank == 0:
            Path(out).write_text(json.dumps(gathered))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two spawned interpreters importing torch: ~15 s on an idle 2-core machine
def test_two_gloo_processes_read_disjoint_samples(shards, tok, tmp_path):
    out = tmp_path / "keys.json"
    mp.spawn(_rank_keys, args=(_free_port(), pattern(shards), str(tok), str(out)), nprocs=2, join=True)
    first, second = json.loads(out.read_text())
    assert len(first) == len(second) == 160
    assert not set(first) & set(second) and len(set(first) | set(second)) == 320


# ------------------------------------------------------------------------------------------------ CLI
def test_pattern_matching_nothing_is_a_one_line_error(capsys, demo_root, tmp_path, monkeypatch):
    monkeypatch.chdir(demo_root)
    code, out, err = run(capsys, "pretrain-vl", "tiny", f"pretrain.vl.dataset={tmp_path}/none/{{000..009}}.tar",
                         "pretrain.vl.init=", f"train.output_dir={tmp_path / 'runs'}", "train.trackers=[]")
    assert code == 2, out + err
    assert "matches no webdataset shard" in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.strip()]) == 1
    assert not (tmp_path / "runs" / "tiny-pretrain-vl").exists()
    shards = write_test_shards(tmp_path / "wds", 1, 2)
    code, out, err = run(capsys, "finetune", "vqa", "tiny", f"finetune.vqa.dataset={shards}/00000.tar",
                         "finetune.vqa.init=", f"train.output_dir={tmp_path / 'runs'}", "train.trackers=[]")
    assert code == 2 and "task 'vqa' cannot read webdataset shards" in err and "Traceback" not in err


def test_prepare_writes_shards_that_stream(capsys, tmp_path, tok):
    images = tmp_path / "src"
    images.mkdir()
    lines = []
    for i in range(24):
        Image.new("RGB", (20, 20), (i * 9, 40, 0)).save(images / f"{i}.jpg")
        lines.append(f"{i}.jpg\tred thing {i}\n")
        if i % 4 == 0:
            lines.append(f"{i}.jpg\tanother caption of {i}\n")
    lines.append("gone.jpg\tnothing\n")
    (images / "p.tsv").write_text("".join(lines))
    out = tmp_path / "shards"
    args = ["prepare", "pairs", str(images / "p.tsv"), "--format", "tsv", "--out", str(out), "--out-format",
            "webdataset", "--samples-per-shard", "10", "--no-progress"]
    code, stdout, err = run(capsys, *args)
    assert code == 0, stdout + err
    summary = json.loads((out / "shards.json").read_text())
    assert summary["counts"] == {"rows": 24, "samples": 30, "skipped": 1}
    assert json.loads((out / "train" / "sizes.json").read_text()) == {"00000.tar": 10, "00001.tar": 10,
                                                                      "00002.tar": 10}
    dl = loader(f"{out}/train/*.tar", tok, batch=5, shuffle_buffer=0)
    batches = list(dl)
    ids = torch.cat([b["image_ids"] for b in batches])
    assert len(ids) == 30 and len(set(ids.tolist())) == 24  # the second caption of an image shares its id
    # the output rule: a previous result needs --overwrite, a folder of the user's is never replaced
    assert run(capsys, *args)[0] == 2
    assert run(capsys, *args, "--overwrite")[0] == 0
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    code, _, err = run(capsys, *args[:5], "--out", str(mine), *args[7:], "--overwrite")
    assert code == 2 and "refusing" in err and (mine / "notes.txt").read_text() == "keep"


def test_a_stream_whose_shards_all_fail_stops_with_a_message(tmp_path, tok):
    root = write_test_shards(tmp_path / "bad", 2, 4)
    for shard in root.glob("*.tar"):
        shard.write_bytes(b"not a tar file at all" * 10)
    dl = loader(pattern(root, 2), tok, batch=2)
    with pytest.raises(DataError, match="none of the 2 shard"):
        next(iter(dl))
