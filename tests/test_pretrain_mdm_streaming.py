"""``vlmo pretrain-mdm`` reading webdataset shards for any of its parts: the mix of streamed parts resumes exactly at
any micro-batch (across passes of each part and mixed epochs, skip counters included), ``stream_samples_per_epoch``
sizes a mixed epoch, each process streams its own shards; from shards ``vlmo prepare`` wrote of the demo data every
loss falls, a run cut and resumed ends bit-identical to the uninterrupted one (0 and 2 workers), a streamed part
trains beside prepared ones (which alone are validated), two torchrun processes train; mistakes are one message."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from helpers import run, train_values
from safetensors.torch import load_file

from vlmo_cli.cli.app import main
from vlmo_cli.config.recipe import load_recipe
from vlmo_cli.data.store import open_prepared
from vlmo_cli.errors import DataError
from vlmo_cli.train.loop import train
from vlmo_cli.train.mdm import mdm_loader
from vlmo_cli.train.monitor import read_metrics

from test_data_streaming import write_test_shards


# ---------------------------------------------------------------------- data
def _prepare(*args: str) -> None:
    try:
        main(["prepare", *args, "--out-format", "webdataset", "--no-progress"])
    except SystemExit as exc:
        assert not exc.code, exc


@pytest.fixture(scope="module")
def demo_shards(demo_root, tmp_path_factory) -> dict[str, str]:
    """Shards of the demo data, written by `vlmo prepare ... --out-format webdataset` from files a user would have:
    400 pairs (800 captions) as images + JSONL, 200 images in a folder, 400 texts in a text file; 4 shards each."""
    root = tmp_path_factory.mktemp("mdm_wds")
    demo = demo_root / "demo_data"
    (root / "img").mkdir()
    lines = []
    for i, row in enumerate(open_prepared(demo / "pairs").split("train").select(range(400))):
        (root / "img" / f"{i}.png").write_bytes(row["image"]["bytes"])
        lines.append(json.dumps({"image": f"img/{i}.png", "caption": row["captions"]}))
    (root / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    (root / "images" / "train").mkdir(parents=True)
    for i, row in enumerate(open_prepared(demo / "images").split("train").select(range(200))):
        (root / "images" / "train" / f"{i}.png").write_bytes(row["image"]["bytes"])
    (root / "text.txt").write_text("\n".join(open_prepared(demo / "text").split("train").select(range(400))["text"]))
    _prepare("pairs", str(root / "pairs.jsonl"), "--format", "jsonl", "--out", str(root / "wds_pairs"),
             "--samples-per-shard", "200")
    _prepare("images", str(root / "images"), "--out", str(root / "wds_images"), "--samples-per-shard", "50")
    _prepare("text", str(root / "text.txt"), "--out", str(root / "wds_text"), "--samples-per-shard", "100")
    return {kind: f"{root}/wds_{kind}/train/{{00000..00003}}.tar" for kind in ("pairs", "images", "text")}


@pytest.fixture(scope="module")
def small_shards(tmp_path_factory) -> dict[str, str]:
    """Hand-made shards (jpg + txt + json): 4 x 8 images, 4 x 5 texts, 4 x 6 pairs with one corrupt image, so that
    micro-batches of 2 images, 2 texts and 4 pairs make passes of 16, 10 and 6 micro-batches."""
    root = tmp_path_factory.mktemp("mdm_small")
    images = write_test_shards(root / "images", 4, 8)
    texts = write_test_shards(root / "text", 4, 5)
    pairs = write_test_shards(root / "pairs", 4, 6, damage={(1, 2): "bad_jpeg"})
    return {kind: f"{folder}/{{00000..00003}}.tar" for kind, folder in
            (("images", images), ("text", texts), ("pairs", pairs))}


def _overrides(parts: dict[str, str], demo_root: Path, extra=()) -> list[str]:
    return ["data.batch_size=8", f"data.tokenizer={demo_root / 'demo_data' / 'tokenizer'}",
            "data.stream_shuffle_buffer=5", f"pretrain.mdm.image_dataset={parts['images']}",
            f"pretrain.mdm.text_dataset={parts['text']}", f"pretrain.mdm.pair_dataset={parts['pairs']}", *extra]


def _stage(parts, demo_root, extra=()):
    return load_recipe("tiny", _overrides(parts, demo_root, extra)).resolve("pretrain.mdm")


def _keys(batch: dict) -> dict[str, list]:
    """The samples of each part of a mixed batch (shard URL # key), taking the stream keys out as the loop does."""
    return {k.partition(".")[0]: list(v) for k, v in batch.items() if k.endswith(".sample_keys")}


def _read(loader, n: int) -> tuple[list[dict], dict]:
    """``n`` micro-batches from ``loader`` onwards (next mixed epochs as the loop starts them), noted as the loop
    notes them; and the stream state a checkpoint would then hold (as JSON stores it)."""
    out = []
    while len(out) < n:
        for batch in loader:
            out.append(_keys(batch))
            loader.tracker.note(batch)
            assert not any(k.endswith(".sample_keys") for k in batch)
            if len(out) == n:
                break
        else:
            loader.sampler.set_epoch(loader.sampler.epoch + 1, 0)
    state = {"world_size": 1, "ranks": [loader.tracker.state()]}
    return out, json.loads(json.dumps(state))


def test_streamed_parts_resume_at_any_micro_batch(small_shards, demo_root):
    """Passes of 16, 10 and 6 micro-batches: 26 micro-batches cross the first mixed epoch (16) while the texts and
    pairs are inside a pass; a loader rebuilt at any saved point continues the sequence and the skip counters."""
    stage = _stage(small_shards, demo_root)
    loader = mdm_loader(stage, None)
    assert loader.lengths == {"image": 16, "text": 10, "pair": 6} and loader.length == 16
    full, _ = _read(loader, 26)
    assert [len(b["image"]) for b in full] == [2] * 26 and [len(b["pair"]) for b in full] == [4] * 26
    pairs = [k for b in full[:6] for k in b["pair"]]
    assert len(set(pairs)) == 23  # one pass: the 24 pairs but the corrupt one
    assert full == _read(mdm_loader(stage, None), 26)[0]  # seeded
    counts = loader.tracker.counters()
    assert counts["pair_bad_samples"] >= 4 and counts["pair_refills"] >= 4  # one per pass: 23 usable of 24
    assert counts["bad_samples"] == counts["pair_bad_samples"] and counts["image_bad_samples"] == 0
    for cut in (3, 6, 16, 21):
        head, saved = _read(mdm_loader(stage, None), cut)
        epoch, skip = divmod(cut - 1, 16)  # as the loop saves it: the end of a mixed epoch is (epoch, 16)
        resumed = mdm_loader(stage, None, epoch=epoch, skip_batches=skip + 1, stream_state=saved)
        tail, _ = _read(resumed, 26 - cut)
        assert head + tail == full, cut
        assert resumed.tracker.counters() == counts, cut
    with pytest.raises(DataError, match="no stream position"):  # another layout: refused, not guessed
        next(iter(mdm_loader(stage, None, skip_batches=3, workers=2, stream_state=saved)))


def test_stream_samples_per_epoch_counts_a_mixed_epoch(small_shards, demo_root, monkeypatch):
    """N samples over all parts: each streamed part reads its fraction of them per pass, N / 8 micro-batches; a
    prepared part keeps its own pass, and the longest part's pass is the mixed epoch."""
    stage = _stage(small_shards, demo_root, ["data.stream_samples_per_epoch=64"])
    assert mdm_loader(stage, None).lengths == {"image": 8, "text": 8, "pair": 8}
    monkeypatch.chdir(demo_root)
    mixed = _stage({**small_shards, "text": "demo_data/text"}, demo_root, ["data.stream_samples_per_epoch=64"])
    loader = mdm_loader(mixed, None)
    assert loader.lengths == {"image": 8, "text": 1500, "pair": 8} and loader.length == 1500


def test_each_process_streams_its_own_shards(small_shards, demo_root):
    stage = _stage(small_shards, demo_root)
    seen = {}
    for rank in range(2):
        loader = mdm_loader(stage, None, rank=rank, world_size=2)
        assert loader.lengths == {"image": 16, "text": 10, "pair": 6}  # half the rows and half the shards each
        seen[rank] = _read(loader, 16)[0]
        assert [len(b["image"]) for b in seen[rank]] == [1] * 16 and len(seen[rank][0]["pair"]) == 2
    for part, per_pass in (("image", 16), ("text", 10), ("pair", 6)):
        first = [k for b in seen[0][:per_pass] for k in b[part]]
        second = [k for b in seen[1][:per_pass] for k in b[part]]
        shards = [{k.split("#")[0] for k in keys} for keys in (first, second)]
        assert not shards[0] & shards[1] and len(shards[0]) == len(shards[1]) == 2, part


# ---------------------------------------------------------------------- mistakes
def test_a_text_part_over_image_shards_stops_with_a_message(tmp_path, demo_root):
    shards = write_test_shards(tmp_path / "img", 2, 4)
    for shard in shards.glob("*.tar"):  # image-only shards: the jpg members alone
        with tarfile.open(shard) as tar:
            images = [(info, tar.extractfile(info).read()) for info in tar.getmembers() if info.name.endswith(".jpg")]
        with tarfile.open(shard, "w") as tar:
            for info, data in images:
                tar.addfile(info, io.BytesIO(data))
    parts = {"images": f"{shards}/*.tar", "text": f"{shards}/*.tar", "pairs": f"{shards}/*.tar"}
    stage = _stage(parts, demo_root, ["pretrain.mdm.image_fraction=0.5", "pretrain.mdm.text_fraction=0.5",
                                      "pretrain.mdm.pair_fraction=0", "pretrain.mdm.pair_dataset=[]"])
    with pytest.raises(DataError, match="gave no sample with a caption"):
        next(iter(mdm_loader(stage, None)))


@pytest.mark.parametrize("change, message", [
    (lambda p, root: {**p, "pairs": [p["pairs"], "demo_data/pairs"]},
     "pretrain.mdm.pair_dataset ['{pairs}', 'demo_data/pairs'] mixes webdataset shards with prepared directories"),
    (lambda p, root: {**p, "text": f"{root}/nowhere/{{000..003}}.tar"},
     "pretrain.mdm.text_dataset: dataset {root}/nowhere/{{000..003}}.tar: matches no webdataset shard"),
    (lambda p, root: p, "pretrain.mdm.pair_dataset streams webdataset shards, which carry no tokenizer"),
])
def test_data_mistakes_are_one_message_exit_2(small_shards, demo_root, tmp_path, monkeypatch, capsys, change,
                                             message):
    monkeypatch.chdir(demo_root)
    parts = change(small_shards, tmp_path)
    overrides = _overrides({k: json.dumps(v) if isinstance(v, list) else v for k, v in parts.items()}, demo_root,
                           [f"train.output_dir={tmp_path / 'runs'}", "pretrain.mdm.max_steps=1"])
    if "tokenizer" in message:
        overrides = [o for o in overrides if not o.startswith("data.tokenizer=")]
    code, out, err = run(capsys, "pretrain-mdm", "tiny", *overrides)
    assert code == 2, out + err
    assert message.format(pairs=small_shards["pairs"], root=tmp_path) in " ".join(err.split()), err
    assert "Traceback" not in err


# ---------------------------------------------------------------------- training runs
@pytest.mark.slow  # ~4 s on an idle 2-core machine, after ~3 s writing the shards
def test_streamed_pretrain_mdm_from_prepared_shards_learns(demo_shards, demo_root, tmp_path, monkeypatch):
    """Every part streamed from `vlmo prepare` shards of the demo data: 40 steps of 16 lower every loss."""
    monkeypatch.chdir(demo_root)
    stage = _stage(demo_shards, demo_root, ["data.batch_size=16", "data.stream_shuffle_buffer=100",
                                            f"train.output_dir={tmp_path / 'runs'}", "train.report=false",
                                            "pretrain.mdm.max_steps=40",
                                            "pretrain.mdm.log_every=10", "pretrain.mdm.warmup=5"])
    result = train(stage)
    curves = {k: train_values(result.run_dir, k) for k in ("loss", "mdm_image_loss", "mdm_text_loss", "mdm_pair_loss")}
    print(f"streamed mdm, 40 steps of 16, per 10 steps: {curves}")
    for key, values in curves.items():
        assert len(values) == 4 and all(torch.isfinite(torch.tensor(values))), (key, values)
        assert values[-1] < 0.9 * values[0], (key, values)
    rows = read_metrics(result.run_dir)
    assert all(r["stream_bad_samples"] == 0 and r["stream_pair_refills"] == 0 for r in rows if "loss" in r)
    assert not any(k.startswith("val_") for r in rows for k in r)  # shards only: nothing to validate on
    parts = result.state.stream["ranks"][0]["parts"]
    assert set(parts) == {"image", "text", "pair"} and all(p["positions"] for p in parts.values())


@pytest.mark.slow  # three short runs: ~3 s (0 workers), ~6 s (2 workers) on an idle 2-core machine
@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_resume_auto_equals_the_uninterrupted_run(small_shards, demo_root, tmp_path, workers):
    """Passes of 16, 10 and 6 micro-batches (one corrupt pair): 20 steps cross the first mixed epoch; a run cut at
    step 17 (in the second mixed epoch, the texts and pairs inside a pass) resumes bit-identically, counters too (the
    data-level test above cuts at other places)."""
    common = [f"train.output_dir={tmp_path / 'runs'}", "train.report=false", "pretrain.mdm.max_steps=20",
              "pretrain.mdm.warmup=2", "train.log_every=1", f"data.num_workers={workers}",
              "pretrain.mdm.pair_image_mask_ratio=0.4"]
    full = train(_stage(small_shards, demo_root, [*common, "pretrain.mdm.run_name=full"]))
    rows = [m for m in read_metrics(full.run_dir) if "loss" in m]
    assert full.state.epoch == 1 and rows[-1]["stream_pair_bad_samples"] >= 1
    assert rows[-1]["stream_bad_samples"] == rows[-1]["stream_pair_bad_samples"] and rows[-1]["stream_refills"] >= 1
    cut = train(_stage(small_shards, demo_root, [*common, "pretrain.mdm.run_name=cut"]), stop_after=17)
    assert cut.state.step == 17 and cut.state.epoch == 1
    assert set(cut.state.stream["ranks"][0]["parts"]) == {"image", "text", "pair"}
    resumed = train(_stage(small_shards, demo_root, [*common, "pretrain.mdm.run_name=cut"]), resume="auto")
    assert resumed.state.step == 20
    a, b = load_file(full.checkpoint / "model.safetensors"), load_file(resumed.checkpoint / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    again = [m for m in read_metrics(resumed.run_dir) if "loss" in m]
    strip = lambda r: {k: v for k, v in r.items() if k not in ("time", "samples_per_s")}  # noqa: E731
    assert [strip(r) for r in again] == [strip(r) for r in rows]


@pytest.mark.slow  # ~1 s, after ~3 s writing the shards
def test_a_streamed_part_beside_prepared_ones(demo_shards, demo_root, tmp_path, monkeypatch):
    """Pairs from shards, images and texts from the prepared demo directories (their tokenizer: no data.tokenizer):
    trains, logs the pairs' stream counters, validates on the prepared parts' val split only."""
    monkeypatch.chdir(demo_root)
    overrides = ["data.batch_size=8", f"pretrain.mdm.pair_dataset={demo_shards['pairs']}",
                 f"train.output_dir={tmp_path / 'runs'}", "train.report=false", "pretrain.mdm.max_steps=4",
                 "pretrain.mdm.log_every=2"]
    result = train(load_recipe("tiny", overrides).resolve("pretrain.mdm"))
    rows = read_metrics(result.run_dir)
    assert [r["step"] for r in rows if "loss" in r] == [2, 4]
    assert all(r["stream_pair_bad_samples"] == 0 and "stream_image_bad_samples" not in r for r in rows if "loss" in r)
    final = rows[-1]
    assert {"val_mdm_image_loss", "val_mdm_text_loss"} <= set(final) and "val_mdm_pair_loss" not in final
    assert set(result.state.stream["ranks"][0]["parts"]) == {"pair"}


@pytest.mark.slow  # two torchrun processes: ~10 s
def test_two_torchrun_processes_stream_every_part(small_shards, demo_root, tmp_path):
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "vlmo_cli", "pretrain-mdm", "tiny", *_overrides(small_shards, demo_root),
           "data.batch_size=16", "pretrain.mdm.max_steps=4", "train.log_every=1", "train.save_every=3",
           "train.keep_last_n=0", f"train.output_dir={runs}", "train.trackers=[]", "--run-name", "ddp"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=demo_root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 process(es) × 8" in " ".join(proc.stdout.split())
    state = json.loads((runs / "ddp" / "checkpoints" / "step_3" / "trainer_state.json").read_text())
    ranks = state["stream"]["ranks"]
    assert state["stream"]["world_size"] == 2 and len(ranks) == 2
    # both processes took 3 micro-batches of each part, from shards of their own
    assert all(r["parts"][part]["positions"]["0"]["batches"] == 3 for r in ranks for part in ("image", "text", "pair"))
    records = [json.loads(line) for line in (runs / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "mdm_pair_loss" in r] == [1, 2, 3, 4]
    assert all("stream_pair_bad_samples" in r for r in records if "mdm_pair_loss" in r)
