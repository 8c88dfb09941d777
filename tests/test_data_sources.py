"""Every source format: a small fixture in the real layout with broken samples; counts, fields and the skip report."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from vlmo_cli.data.prepare import PrepareOptions, prepare
from vlmo_cli.data.sources import (
    FilePairsSource, HfPairsSource, ImageFolderSource, KarpathySource, Nlvr2Source, TextCorpusSource,
    VisualGenomeSource, Vqav2Source, WebDatasetSource,
)
from vlmo_cli.data.sources.vqa_answers import build_vocab, normalize_answer, soft_targets
from vlmo_cli.data.store import open_prepared
from vlmo_cli.errors import DataError, OutputError


def png(color=(200, 30, 30), size=(24, 16), fmt="PNG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format=fmt)
    return out.getvalue()


def write_image(path: Path, color=(200, 30, 30), size=(24, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png(color, size, "JPEG" if path.suffix == ".jpg" else "PNG"))
    return path


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:60])


def reasons(manifest) -> list[str]:
    return sorted(item["reason"].split(":")[0] for item in manifest["skipped"])


# ---------------------------------------------------------------------------------------------- Karpathy
def test_coco_karpathy_all_captions_splits_and_skips(tmp_path):
    images = []
    for i, split in enumerate(["train", "restval", "val", "test", "test"]):
        write_image(tmp_path / "coco" / "val2014" / f"COCO_val2014_{i:012d}.jpg", (i * 40, 0, 0))
        n = 7 if i == 0 else 5  # some COCO images have more than five captions: keep all
        images.append({"filepath": "val2014", "filename": f"COCO_val2014_{i:012d}.jpg", "imgid": i, "cocoid": i,
                       "split": split, "sentences": [{"raw": f"caption {i}.{j}", "tokens": []} for j in range(n)]})
    images.append({"filepath": "val2014", "filename": "COCO_val2014_missing.jpg", "split": "train",
                   "sentences": [{"raw": "gone"}]})
    truncate(tmp_path / "coco" / "val2014" / "COCO_val2014_000000000004.jpg")
    (tmp_path / "dataset_coco.json").write_text(json.dumps({"images": images, "dataset": "coco"}))
    manifest = prepare(KarpathySource(tmp_path / "dataset_coco.json", tmp_path / "coco"), tmp_path / "out")
    assert manifest["kind"] == "pairs"
    assert manifest["splits"] == {"train": 1, "restval": 1, "val": 1, "test": 1}
    assert manifest["counts"]["captions"] == 7 + 5 + 5 + 5
    assert reasons(manifest) == ["missing image", "unreadable image"]
    assert {s["where"] for s in manifest["skipped"]} == {"dataset_coco.json:COCO_val2014_missing.jpg",
                                                        "dataset_coco.json:COCO_val2014_000000000004.jpg"}
    data = open_prepared(tmp_path / "out")
    train = data.split("train+restval")
    assert len(train) == 2 and len(train[0]["captions"]) == 7 and train[0]["captions"][6] == "caption 0.6"
    assert train[1]["split"] == "restval" and train[0]["image_id"] == "COCO_val2014_000000000000.jpg"
    assert Image.open(io.BytesIO(train[0]["image"]["bytes"])).size == (24, 16)


def test_flickr_karpathy_flat_folder_and_max_size(tmp_path):
    entries = []
    for i in range(3):
        write_image(tmp_path / "flickr30k-images" / f"{1000 + i}.jpg", size=(80, 40))
        entries.append({"filename": f"{1000 + i}.jpg", "imgid": i, "split": ["train", "val", "test"][i],
                        "sentences": [{"raw": f"a dog {j}"} for j in range(5)]})
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps({"images": entries, "dataset": "flickr30k"}))
    source = KarpathySource(tmp_path / "dataset_flickr30k.json", tmp_path / "flickr30k-images", dataset="flickr30k")
    manifest = prepare(source, tmp_path / "out", PrepareOptions(max_size=20, workers=2))
    assert manifest["source"]["format"] == "flickr30k-karpathy" and manifest["counts"]["rows"] == 3
    row = open_prepared(tmp_path / "out").split("test")[0]
    assert Image.open(io.BytesIO(row["image"]["bytes"])).size == (40, 20)  # shorter side limited, aspect kept


# ---------------------------------------------------------------------------------------------- VQAv2
def _vqa_fixture(root: Path) -> None:
    def answers(*pairs):
        out = []
        for answer, n in pairs:
            out += [answer] * n
        return [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(out)]

    questions = {"train": [], "val": []}
    annotations = {"train": [], "val": []}
    qid = 0
    for split, folder in (("train", "train2014"), ("val", "val2014")):
        for image_id in range(1, 4):
            write_image(root / folder / f"COCO_{folder}_{image_id:012d}.jpg", (image_id * 60, 0, 0))
            for k in range(3):
                qid += 1
                questions[split].append({"image_id": image_id, "question": f"what is {k}?", "question_id": qid})
                annotations[split].append({
                    "question_id": qid, "image_id": image_id, "question_type": "what is", "answer_type": "other",
                    "multiple_choice_answer": ["Two", "yes", "red"][k],
                    "answers": answers(("2", 1), ("yes", 2), ("red", 3), ("blue", 4)),
                })
    # broken: a question without annotation, an answer-less annotation, a question with only unknown answers,
    # a question whose image is missing
    questions["train"].append({"image_id": 1, "question": "orphan?", "question_id": 900})
    questions["train"].append({"image_id": 1, "question": "empty?", "question_id": 901})
    annotations["train"].append({"question_id": 901, "image_id": 1, "answers": [], "multiple_choice_answer": "x"})
    questions["train"].append({"image_id": 2, "question": "unknown?", "question_id": 902})
    annotations["train"].append({"question_id": 902, "image_id": 2, "answers": answers(("zebra", 10)),
                                 "multiple_choice_answer": "zebra", "answer_type": "other", "question_type": "what"})
    questions["train"].append({"image_id": 77, "question": "no image?", "question_id": 903})
    annotations["train"].append({"question_id": 903, "image_id": 77, "answers": answers(("red", 10)),
                                 "multiple_choice_answer": "red", "answer_type": "other", "question_type": "what"})
    for split, sub in (("train", "train2014"), ("val", "val2014")):
        (root / f"v2_OpenEnded_mscoco_{sub}_questions.json").write_text(json.dumps({"questions": questions[split]}))
        (root / f"v2_mscoco_{sub}_annotations.json").write_text(json.dumps({"annotations": annotations[split]}))
    write_image(root / "test2015" / "COCO_test2015_000000000005.jpg")
    test_q = [{"image_id": 5, "question": "test?", "question_id": 1000 + i} for i in range(2)]
    (root / "v2_OpenEnded_mscoco_test2015_questions.json").write_text(json.dumps({"questions": test_q}))
    (root / "v2_OpenEnded_mscoco_test-dev2015_questions.json").write_text(json.dumps({"questions": test_q[:1]}))


def test_vqa_normalisation_vocab_and_scores():
    assert normalize_answer("Two") == "2" and normalize_answer("the dog.") == "dog"
    assert normalize_answer("dont know") == "don't know" and normalize_answer("1,000") == "1000"
    assert normalize_answer("red-ish") == "red ish" and normalize_answer("yes!") == "yes"
    vocab = build_vocab(["yes"] * 3 + ["Yes"] * 2 + ["no"] * 4 + ["two"] * 9 + ["cat"], min_count=5)
    assert vocab == ["2", "yes"]
    labels, scores = soft_targets(["a"] + ["b"] * 2 + ["c"] * 3 + ["d"] * 4, {"a": 0, "b": 1, "c": 2, "d": 3})
    assert dict(zip(labels, scores)) == {0: 0.3, 1: 0.6, 2: 0.9, 3: 1.0}
    # parity quirk: raw strings are not normalised before the vocabulary lookup
    assert soft_targets(["Two"] * 10, {"2": 0}) == ([], [])
    assert soft_targets(["Two"] * 10, {"2": 0}, normalize_raw=True) == ([0], [1.0])


def test_vqav2_source(tmp_path):
    _vqa_fixture(tmp_path)
    source = Vqav2Source.from_root(tmp_path, min_count=2, rest_val_images=1, seed=3)
    manifest = prepare(source, tmp_path / "out")
    data = open_prepared(tmp_path / "out")
    assert data.answers == ["red", "2", "yes"]  # Two -> 2; by count, ties by name; blue never a MC answer
    assert manifest["splits"]["train"] == 9 and manifest["splits"]["trainable_val"] + manifest["splits"]["rest_val"] == 9
    assert manifest["splits"]["rest_val"] == 3  # one held-out image with its 3 questions
    assert manifest["splits"]["test"] == 2 and manifest["splits"]["test-dev"] == 1
    assert manifest["image_table"]["train"] == 3  # each image stored once
    assert sorted(reasons(manifest)) == ["answer-less question", "answer-less question", "missing image",
                                         "no answer in vocabulary"]
    row = data.split("train")[0]
    assert row["answers"] == ["2"] + ["yes"] * 2 + ["red"] * 3 + ["blue"] * 4
    assert dict(zip(row["labels"], [round(s, 3) for s in row["scores"]])) == {1: 0.3, 2: 0.6, 0: 0.9}
    assert row["answer_type"] == "other" and row["question_type"] == "what is" and row["question_id"] == 1
    image = data.image_table("train")[row["image_row"]]
    assert image["image_id"] == row["image_id"] == "1"
    test = data.split("test")[0]
    assert test["answers"] == [] and test["labels"] == []
    # the hold-out is a function of the seed
    again = Vqav2Source.from_root(tmp_path, min_count=2, rest_val_images=1, seed=3)
    assert again._rest_val_ids() == source._rest_val_ids()


# ---------------------------------------------------------------------------------------------- NLVR2
def test_nlvr2_source(tmp_path):
    lines = []
    for i in range(4):
        prefix = f"train-{i}-0"
        folder = tmp_path / "images" / "train" / str(i % 2)
        write_image(folder / f"{prefix}-img0.png")
        if i != 3:  # the last pair misses its second image
            write_image(folder / f"{prefix}-img1.png", (0, 0, 200))
        lines.append(json.dumps({"identifier": f"{prefix}-{i}", "sentence": f"statement {i}", "directory": i % 2,
                                 "label": "True" if i % 2 else "False", "left_url": "x", "right_url": "y"}))
    lines.insert(2, "{not json")
    lines.append(json.dumps({"identifier": "train-9-0-0", "sentence": "s", "label": "maybe"}))
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "train.json").write_text("\n".join(lines) + "\n")
    dev = tmp_path / "dev"
    write_image(dev / "dev-0-1-img0.png")
    write_image(dev / "dev-0-1-img1.png")
    (data_dir / "dev.json").write_text(json.dumps({"identifier": "dev-0-1-2", "sentence": "d", "label": "True"}) + "\n")
    manifest = prepare(Nlvr2Source.from_root(data_dir, tmp_path), tmp_path / "out")
    assert manifest["splits"] == {"train": 3, "dev": 1}
    assert reasons(manifest) == ["malformed JSON line", "malformed NLVR2 line", "missing image"]
    missing = next(s for s in manifest["skipped"] if s["reason"].startswith("missing image"))
    assert "image_1" in missing["reason"] and "train-3-0-3" in missing["where"]
    assert "train.json:3" in {s["where"] for s in manifest["skipped"]}  # the malformed line, by line number
    rows = open_prepared(tmp_path / "out").split("train")
    assert rows["label"] == [0, 1, 0] and rows[1]["identifier"] == "train-1-0-1"
    assert Image.open(io.BytesIO(rows[0]["image_1"]["bytes"])).getpixel((0, 0)) == (0, 0, 200)


# ---------------------------------------------------------------------------------------------- pairs
def _pair_images(root: Path, n: int = 4) -> list[str]:
    names = []
    for i in range(n):
        write_image(root / "imgs" / f"{i}.jpg", (i * 50, 100, 0))
        names.append(f"imgs/{i}.jpg")
    return names


def test_pairs_tsv_headerless_groups_captions(tmp_path):
    names = _pair_images(tmp_path)
    rows = [f"{names[0]}\ta cat", f"{names[1]}\ta dog", f"{names[0]}\tanother cat", "imgs/none.jpg\tlost",
            f"{names[2]}\t   "]
    (tmp_path / "annot.tsv").write_text("\n".join(rows) + "\n")
    manifest = prepare(FilePairsSource(tmp_path / "annot.tsv", "tsv"), tmp_path / "out")
    assert manifest["splits"] == {"train": 2} and manifest["counts"]["captions"] == 3
    assert reasons(manifest) == ["empty caption", "missing image"]
    first = open_prepared(tmp_path / "out").split("train")[0]
    assert first["captions"] == ["a cat", "another cat"] and first["image_id"].endswith("imgs/0.jpg")


def test_pairs_csv_named_columns_labels_and_val_split(tmp_path):
    names = _pair_images(tmp_path)
    text = "file,text,cls\n" + "".join(f"{n},photo {i},{'cat' if i % 2 else 'dog'}\n" for i, n in enumerate(names))
    (tmp_path / "pairs.csv").write_text(text)
    source = FilePairsSource(tmp_path / "pairs.csv", "csv", image_col="file", caption_col="text", label_col="cls",
                             val_fraction=0.25, seed=1)
    manifest = prepare(source, tmp_path / "out")
    data = open_prepared(tmp_path / "out")
    assert manifest["splits"] == {"train": 3, "val": 1}
    assert data.label_names == ["cat", "dog"]
    rows = data.split("train+val")
    assert sorted(zip(rows["captions"], rows["label"])) == [(["photo 0"], 1), (["photo 1"], 0), (["photo 2"], 1),
                                                              (["photo 3"], 0)]
    with pytest.raises(DataError, match="no image column 'nope'"):
        prepare(FilePairsSource(tmp_path / "pairs.csv", "csv", image_col="nope"), tmp_path / "out2")


def test_pairs_json_and_jsonl(tmp_path):
    names = _pair_images(tmp_path)
    (tmp_path / "annot.json").write_text(json.dumps([[names[0], "one"], [names[1], "two"], [names[2]]]))
    manifest = prepare(FilePairsSource(tmp_path / "annot.json", "json"), tmp_path / "a")
    assert manifest["splits"] == {"train": 2} and reasons(manifest) == ["malformed row"]
    albef = [{"image": names[0], "caption": ["x", "y"], "image_id": "a"}, {"image": names[1], "caption": "z",
                                                                           "image_id": "a"}]
    (tmp_path / "albef.json").write_text(json.dumps(albef))
    manifest = prepare(FilePairsSource(tmp_path / "albef.json", "json", id_col="image_id"), tmp_path / "b")
    assert manifest["splits"] == {"train": 1} and manifest["counts"]["captions"] == 3
    lines = [json.dumps({"url": names[i], "txt": f"cap {i}"}) for i in range(3)] + ["{oops"]
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines))
    manifest = prepare(FilePairsSource(tmp_path / "pairs.jsonl", "jsonl"), tmp_path / "c")
    assert manifest["splits"] == {"train": 3} and manifest["skipped"][0]["where"] == "pairs.jsonl:4"


def test_visual_genome_regions(tmp_path):
    write_image(tmp_path / "VG_100K" / "1.jpg")
    write_image(tmp_path / "VG_100K_2" / "2.jpg")
    regions = [{"id": 1, "regions": [{"phrase": "a red ball", "image_id": 1}, {"phrase": "grass"}]},
               {"id": 2, "regions": [{"phrase": "sky", "image_id": 2}]},
               {"id": 3, "regions": []}]
    (tmp_path / "region_descriptions.json").write_text(json.dumps(regions))
    manifest = prepare(VisualGenomeSource(tmp_path / "region_descriptions.json", tmp_path), tmp_path / "out")
    assert manifest["splits"] == {"train": 2} and reasons(manifest) == ["empty caption"]
    assert open_prepared(tmp_path / "out").split("train")[0]["captions"] == ["a red ball", "grass"]


def test_hf_dataset_on_disk(tmp_path):
    from datasets import Dataset, DatasetDict, Image as HfImage

    good = str(write_image(tmp_path / "a.png"))
    ds = Dataset.from_dict({"image": [good, good], "text": ["one", "two"]}).cast_column("image", HfImage())
    DatasetDict({"train": ds, "validation": ds.select([0])}).save_to_disk(str(tmp_path / "hf"))
    manifest = prepare(HfPairsSource(tmp_path / "hf"), tmp_path / "out")
    assert manifest["splits"] == {"train": 2, "validation": 1}
    assert open_prepared(tmp_path / "out").split("train")[1]["captions"] == ["two"]


def make_shards(root: Path, n_shards: int = 2, per_shard: int = 3, broken: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for s in range(n_shards):
        with tarfile.open(root / f"{s:05d}.tar", "w") as tar:
            for i in range(per_shard):
                key = f"{s:05d}{i:04d}"
                members = {"jpg": png((40 * i, 0, 0), fmt="JPEG"), "txt": f"shard {s} item {i}".encode(),
                           "json": json.dumps({"key": key, "status": "success"}).encode()}
                if broken and s == 0 and i == 1:
                    members.pop("jpg")  # image missing
                if broken and s == 0 and i == 2:
                    members["jpg"] = members["jpg"][:50]  # truncated
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return root


def test_webdataset_shards(tmp_path):
    shards = make_shards(tmp_path / "wds")
    manifest = prepare(WebDatasetSource(shards), tmp_path / "out", PrepareOptions(workers=2))
    assert manifest["splits"] == {"train": 4}
    assert reasons(manifest) == ["missing image", "unreadable image"]
    rows = open_prepared(tmp_path / "out").split("train")
    assert rows[0]["image_id"] == "000000000" and rows[0]["captions"] == ["shard 0 item 0"]
    # a truncated shard keeps what was readable and reports the damage
    data = (shards / "00001.tar").read_bytes()
    (shards / "00001.tar").write_bytes(data[: len(data) // 2])
    manifest = prepare(WebDatasetSource(shards), tmp_path / "out2")
    assert "unreadable shard" in reasons(manifest) and manifest["splits"]["train"] >= 1


# ---------------------------------------------------------------------------------------------- images, text
def test_image_folder_splits(tmp_path):
    for split in ("train", "val"):
        for i in range(2):
            write_image(tmp_path / "imgs" / split / "sub" / f"{i}.png")
    truncate(tmp_path / "imgs" / "val" / "sub" / "1.png")
    manifest = prepare(ImageFolderSource(tmp_path / "imgs"), tmp_path / "out")
    assert manifest["kind"] == "images" and manifest["splits"] == {"train": 2, "val": 1}
    assert manifest["skipped"][0]["where"] == "val/sub/1.png"
    assert open_prepared(tmp_path / "out").split("train")["image_id"] == ["train/sub/0.png", "train/sub/1.png"]


def test_text_corpus_lines_and_paragraphs(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"first line\n\nsecond line\nthird\n\xff\xfe bad\n")
    manifest = prepare(TextCorpusSource(tmp_path / "a.txt"), tmp_path / "lines")
    assert manifest["splits"] == {"train": 3} and reasons(manifest) == ["undecodable line"]
    manifest = prepare(TextCorpusSource(tmp_path / "a.txt", mode="paragraphs"), tmp_path / "paras")
    assert open_prepared(tmp_path / "paras").split("train")["text"] == ["first line", "second line third"]
    (tmp_path / "b.txt").write_text("".join(f"line {i}\n" for i in range(50)))
    manifest = prepare(TextCorpusSource(tmp_path / "b.txt", val_fraction=0.2, seed=0), tmp_path / "split")
    assert 0 < manifest["splits"]["val"] < 25 and sum(manifest["splits"].values()) == 50


# ---------------------------------------------------------------------------------------------- engine rules
def test_mostly_bad_source_fails_and_leaves_nothing(tmp_path):
    names = _pair_images(tmp_path, 1)
    rows = [f"{names[0]}\tok"] + [f"imgs/missing{i}.jpg\tx" for i in range(5)]
    (tmp_path / "bad.tsv").write_text("\n".join(rows))
    with pytest.raises(DataError, match=r"5 of 6 samples are bad .*missing image"):
        prepare(FilePairsSource(tmp_path / "bad.tsv", "tsv"), tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".tmp-*"))
    manifest = prepare(FilePairsSource(tmp_path / "bad.tsv", "tsv"), tmp_path / "out",
                       PrepareOptions(max_bad_fraction=0.9))
    assert manifest["counts"]["skipped"] == 5


def test_refuses_to_overwrite_and_is_deterministic(tmp_path):
    names = _pair_images(tmp_path)
    (tmp_path / "p.tsv").write_text("".join(f"{n}\tcap {i}\n" for i, n in enumerate(names)))
    source = lambda: FilePairsSource(tmp_path / "p.tsv", "tsv", val_fraction=0.5, seed=7)  # noqa: E731
    prepare(source(), tmp_path / "a")
    with pytest.raises(OutputError, match="--overwrite"):
        prepare(source(), tmp_path / "a")
    prepare(source(), tmp_path / "a", PrepareOptions(overwrite=True, workers=2))
    prepare(source(), tmp_path / "b")
    a, b = open_prepared(tmp_path / "a"), open_prepared(tmp_path / "b")
    for split in ("train", "val"):
        assert a.split(split).to_dict() == b.split(split).to_dict()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("user file")
    with pytest.raises(OutputError, match="not empty"):
        prepare(source(), tmp_path / "other", PrepareOptions(overwrite=True))
    with pytest.raises(DataError, match="manifest.json missing"):
        open_prepared(tmp_path / "other")
