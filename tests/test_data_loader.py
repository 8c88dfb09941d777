"""Loaders over prepared directories: every task, workers, resumable sharded order, corrupt images, streaming."""

from __future__ import annotations

import json

import pytest
import torch

from vlmo_cli.data.demo import make_demo
from vlmo_cli.data.loader import ResumableSampler, build_dataloader, build_retrieval_eval
from vlmo_cli.data.prepare import prepare
from vlmo_cli.data.sources import FilePairsSource
from vlmo_cli.data.store import open_prepared
from vlmo_cli.errors import DataError, OutputError

from test_data_sources import make_shards, write_image


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    make_demo(out)
    return out


def test_demo_layout_and_determinism(demo, tmp_path):
    index = json.loads((demo / "demo.json").read_text())
    assert set(index["subsets"]) == {"pairs", "vqa", "nlvr2", "images", "text"}
    assert index["subsets"]["pairs"]["splits"] == {"train": 1500, "val": 100, "test": 144}
    for name in index["subsets"]:
        manifest = open_prepared(demo / name).manifest
        assert manifest["flip_ok"] is False and manifest["counts"]["skipped"] == 0
        assert (demo / name / "tokenizer" / "tokenizer.json").exists()
    nlvr2 = open_prepared(demo / "nlvr2").split("train")
    assert sum(nlvr2["label"]) == len(nlvr2) // 2
    test_captions = open_prepared(demo / "pairs").split("test")["captions"]
    assert len({c[0] for c in test_captions}) > 100  # distinct scenes: unambiguous retrieval
    again = tmp_path / "again"
    make_demo(again)
    assert (again / "tokenizer" / "vocab.txt").read_text() == (demo / "tokenizer" / "vocab.txt").read_text()
    for name in ("pairs", "vqa"):
        a, b = open_prepared(demo / name), open_prepared(again / name)
        assert a.split("train")[:50] == b.split("train")[:50]
    with pytest.raises(OutputError, match="--overwrite"):
        make_demo(again)


def test_every_task_batches(demo):
    cases = [
        ("pairs", "pairs", dict(mlm=True, mim=True), {"pixel_values", "input_ids", "attention_mask", "mlm_input_ids",
                                                      "mlm_labels", "patch_mask", "image_ids"}),
        ("vqa", "vqa", {}, {"pixel_values", "input_ids", "vqa_targets", "question_ids", "image_ids"}),
        ("nlvr2", "nlvr2", {}, {"pixel_values", "pixel_values_1", "input_ids", "labels"}),
        ("images", "images", dict(mim=True), {"pixel_values", "patch_mask", "image_ids"}),
        ("text", "text", dict(mlm=True, mlm_budget="real"), {"input_ids", "mlm_input_ids", "mlm_labels"}),
        ("text", "pairs", {}, {"input_ids", "image_ids"}),
    ]
    for task, subset, kwargs, keys in cases:
        loader = build_dataloader(demo / subset, "train", task, image_size=32, patch_size=8, batch_size=4, **kwargs)
        batch = next(iter(loader))
        assert keys <= set(batch), (task, set(batch))
        if "pixel_values" in batch:
            assert batch["pixel_values"].shape == (4, 3, 32, 32)
        if "patch_mask" in batch:
            assert batch["patch_mask"].shape == (4, 16)
        if "input_ids" in batch:
            assert batch["input_ids"].shape == (4, 40) and (batch["input_ids"][:, 0] == 2).all()  # demo [CLS] id
    vqa = next(iter(build_dataloader(demo / "vqa", "val", "vqa", image_size=32, batch_size=8, train=False)))
    assert vqa["vqa_targets"].shape == (8, 16) and (vqa["vqa_targets"].max(1).values == 1.0).all()
    with pytest.raises(DataError, match="kind is 'nlvr2'"):
        build_dataloader(demo / "nlvr2", "train", "vqa")


def test_loader_with_workers_and_resume(demo):
    kwargs = dict(image_size=32, batch_size=16, seed=5, mlm=True)
    full = build_dataloader(demo / "pairs", "val", "pairs", **kwargs)
    assert len(full) == 200 // 16  # one item per caption, drop_last in training
    ids = [b["input_ids"] for b in full]
    workers = [b["input_ids"] for b in build_dataloader(demo / "pairs", "val", "pairs", workers=2, **kwargs)]
    assert all(torch.equal(a, b) for a, b in zip(ids, workers)) and len(workers) == len(ids)
    resumed = [b["input_ids"] for b in build_dataloader(demo / "pairs", "val", "pairs", skip_batches=3, **kwargs)]
    assert all(torch.equal(a, b) for a, b in zip(ids[3:], resumed)) and len(resumed) == len(ids) - 3
    other_epoch = next(iter(build_dataloader(demo / "pairs", "val", "pairs", epoch=1, **kwargs)))["input_ids"]
    assert not torch.equal(other_epoch, ids[0])


def test_sampler_sharding():
    ranks = [ResumableSampler(10, shuffle=True, seed=1, rank=r, world_size=3).indices() for r in range(3)]
    assert all(len(r) == 4 for r in ranks) and set(sum(ranks, [])) == set(range(10))
    s = ResumableSampler(10, shuffle=False, batch_size=3, drop_last=True)
    assert s.indices() == list(range(9))
    s.set_epoch(0, skip_batches=2)
    assert list(s) == [6, 7, 8]
    with pytest.raises(DataError, match="rank 2"):
        ResumableSampler(5, shuffle=False, rank=2, world_size=2)


def test_corrupt_image_at_read_time_is_skipped(tmp_path, demo):
    for i in range(4):
        write_image(tmp_path / "imgs" / f"{i}.jpg")
    (tmp_path / "p.tsv").write_text("".join(f"imgs/{i}.jpg\ta cat {i}\n" for i in range(4)))
    prepare(FilePairsSource(tmp_path / "p.tsv", "tsv"), tmp_path / "out")
    # damage one stored image after preparation (e.g. disk corruption): the loader skips it and counts it
    from datasets import Dataset, Image

    path = tmp_path / "out" / "data" / "train"
    ds = Dataset.load_from_disk(str(path)).cast_column("image", Image(decode=False))
    rows = ds.to_list()
    rows[2]["image"] = {"bytes": b"not an image", "path": None}
    Dataset.from_list(rows, features=ds.features).save_to_disk(str(tmp_path / "fixed"))
    for f in path.glob("*.arrow"):
        f.unlink()
    for f in (tmp_path / "fixed").iterdir():
        (path / f.name).write_bytes(f.read_bytes())
    loader = build_dataloader(tmp_path / "out", "train", "pairs", tokenizer=demo / "tokenizer", image_size=16,
                              batch_size=4, train=False)
    batch = next(iter(loader))
    assert batch["num_skipped"].item() == 1 and batch["pixel_values"].shape[0] == 3
    assert loader.dataset.skipped == 1


def test_streaming_webdataset_and_retrieval_eval(tmp_path, demo):
    shards = make_shards(tmp_path / "wds", n_shards=2, per_shard=3, broken=False)
    (shards / "sizes.json").write_text(json.dumps({"00000.tar": 3, "00001.tar": 3}))
    loader = build_dataloader(shards, "train", "pairs", tokenizer=demo / "tokenizer", image_size=16, batch_size=2,
                              streaming=True, train=False, workers=0)
    batches = list(loader)
    assert sum(b["pixel_values"].shape[0] for b in batches) == 6
    assert len({int(i) for b in batches for i in b["image_ids"]}) == 6
    ret = build_retrieval_eval(demo / "pairs", "test", image_size=32, batch_size=64)
    assert len(ret.image_names) == 144 and ret.text_to_image.shape == (288,)
    assert ret.text_to_image[:4].tolist() == [0, 0, 1, 1]
    texts = list(ret.texts)  # shortest captions first; text_order says which caption each row is
    assert sorted(ret.text_order.tolist()) == list(range(288))
    assert torch.equal(torch.cat([b["image_ids"] for b in texts]), ret.text_to_image[ret.text_order])
    lengths = torch.cat([b["attention_mask"].sum(1) for b in texts])
    assert torch.equal(lengths, lengths.sort().values) and lengths[0] < lengths[-1]
    assert sum(b["pixel_values"].shape[0] for b in ret.images) == 144


def test_retrieval_encoding_by_length_returns_caption_order(demo):
    """encode_split runs the captions shortest first with their padding trimmed; the embeddings come back in caption
    order and equal encoding each caption padded to the full length."""
    from vlmo_cli.evaluate.retrieval import encode_split
    from vlmo_cli.model.config import get_config
    from vlmo_cli.model.vlmo import VLMo

    torch.manual_seed(0)
    model = VLMo(get_config("tiny", vocab_size=200, heads=["pooler", "itc"], max_text_len=24))
    ret = build_retrieval_eval(demo / "pairs", "test", image_size=32, batch_size=16, max_text_len=24)
    encoded = encode_split(model, ret)
    collate = ret.texts.collate_fn
    with torch.no_grad():
        full = collate([ret.texts.dataset[i] for i in range(len(ret.texts.dataset))])
        expected = model.encode_text(full["input_ids"], full["attention_mask"])
    assert full["attention_mask"].sum(1).max() < 24  # trimming had something to cut
    torch.testing.assert_close(encoded.text_embeds, expected, atol=1e-5, rtol=1e-5)


def test_several_corpora_concatenate_with_distinct_image_ids(demo):
    pairs = demo / "pairs"
    loader = build_dataloader([pairs, pairs], "val", "pairs", image_size=32, batch_size=400, train=False,
                              max_text_len=16)
    batch = next(iter(loader))
    ids = batch["image_ids"]
    assert len(loader.dataset) == 2 * 200  # 100 val images x 2 captions, twice
    assert ids.min() == 0 and ids.max() == 199  # the second copy's images are 100..199, not 0..99 again
    assert ids[:200].max() < 100 <= ids[200:].min()
