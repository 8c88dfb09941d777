"""Annotation values of the wrong type (a number where a caption belongs, a null file name, a list among objects) are
bad samples: skipped, counted and listed in the manifest with their reason, per source; never a traceback."""

from __future__ import annotations

import json

import pytest

from vlmo_cli.data.prepare import PrepareOptions, prepare
from vlmo_cli.data.sources import FilePairsSource, KarpathySource, Nlvr2Source, Vqav2Source

from test_data_sources import _vqa_fixture, write_image

LENIENT = PrepareOptions(max_bad_fraction=1.0)


def skipped(manifest) -> dict[str, str]:
    return {item["where"]: item["reason"] for item in manifest["skipped"]}


PAIR_ROWS = [
    {"image": "imgs/0.jpg", "caption": "a good one", "label": "cat"},
    {"image": "imgs/1.jpg", "caption": 5, "label": "dog"},  # a number as caption
    {"image": None, "caption": "no file", "label": "dog"},  # a null file name
    {"image": 7, "caption": "numbered file", "label": "dog"},
    {"image": "imgs/1.jpg", "caption": ["fine", {"x": 1}], "label": "dog"},  # an object among the captions
    ["imgs/2.jpg", "a list among objects"],
    {"image": "imgs/2.jpg", "caption": "odd label", "label": [1]},
    {"image": "imgs/2.jpg", "caption": "another good one", "label": "dog"},
]


def _images(root):
    for i in range(3):
        write_image(root / "imgs" / f"{i}.jpg", (i * 60, 0, 0))


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_pairs_json_and_jsonl_malformed_values(tmp_path, fmt):
    _images(tmp_path)
    path = tmp_path / f"pairs.{fmt}"
    path.write_text(json.dumps(PAIR_ROWS) if fmt == "json" else "\n".join(json.dumps(r) for r in PAIR_ROWS) + "\n")
    manifest = prepare(FilePairsSource(path, fmt, label_col="label"), tmp_path / "out", LENIENT)
    assert manifest["counts"]["rows"] == 2 and manifest["counts"]["skipped"] == 6
    where = (lambda i: f"pairs.json[{i}]") if fmt == "json" else (lambda i: f"pairs.jsonl:{i + 1}")
    reasons = skipped(manifest)
    assert reasons[where(1)] == "malformed caption: number, not text"
    assert reasons[where(2)] == "malformed row: no image"
    assert reasons[where(3)] == "malformed image: number, not a file path"
    assert reasons[where(4)] == "malformed caption: object, not text"
    assert reasons[where(5)].startswith("malformed")
    assert reasons[where(6)].startswith("malformed label: array [1]")


def test_pairs_csv_malformed_values(tmp_path):
    _images(tmp_path)
    (tmp_path / "pairs.csv").write_text("image,caption,label\nimgs/0.jpg,fine,cat\n,no image,dog\nimgs/1.jpg,,dog\n"
                                        "imgs/2.jpg,short row\nimgs/2.jpg,5,dog\n")
    manifest = prepare(FilePairsSource(tmp_path / "pairs.csv", "csv", label_col="label"), tmp_path / "out", LENIENT)
    assert manifest["counts"]["rows"] == 3  # an empty caption is allowed with labels; "5" is text in a CSV
    assert skipped(manifest) == {"pairs.csv:3": "malformed row: no image", "pairs.csv:5": "malformed row: missing column"}


def test_karpathy_malformed_values(tmp_path):
    _images(tmp_path)
    entries = [
        {"filename": "0.jpg", "split": "train", "sentences": [{"raw": "good"}]},
        {"filename": "1.jpg", "split": "train", "sentences": [{"raw": 5}, {"raw": "one good"}]},
        {"filename": None, "split": "train", "sentences": [{"raw": "null file"}]},
        {"filename": 2, "split": "train", "sentences": [{"raw": "numbered file"}]},
        {"filename": "2.jpg", "split": "val", "sentences": 5},
        {"filename": "2.jpg", "split": "test", "sentences": [{"raw": "fine"}], "filepath": 3},
    ]
    (tmp_path / "dataset_coco.json").write_text(json.dumps({"images": entries}))
    manifest = prepare(KarpathySource(tmp_path / "dataset_coco.json", tmp_path / "imgs"), tmp_path / "out", LENIENT)
    assert manifest["splits"] == {"train": 1, "test": 1}
    assert skipped(manifest) == {
        "dataset_coco.json:images[1]": "malformed caption: number, not text",
        "dataset_coco.json:images[2]": "malformed filename: null, not text",
        "dataset_coco.json:images[3]": "malformed filename: number, not text",
        "dataset_coco.json:images[4]": "malformed entry: sentences is number, not a list",
    }


def test_vqav2_malformed_values(tmp_path):
    _vqa_fixture(tmp_path)
    qfile = tmp_path / "v2_OpenEnded_mscoco_train2014_questions.json"
    afile = tmp_path / "v2_mscoco_train2014_annotations.json"
    questions, annotations = json.loads(qfile.read_text()), json.loads(afile.read_text())
    questions["questions"] += [{"image_id": 1, "question": 42, "question_id": 950},
                               {"image_id": "one", "question": "text id?", "question_id": 951},
                               {"image_id": 1, "question": "text qid?", "question_id": "x"},
                               {"image_id": 1, "question": "number answers?", "question_id": 952}]
    annotations["annotations"] += [{"question_id": 952, "image_id": 1, "answers": [{"answer": 2}] * 10,
                                    "multiple_choice_answer": 2},
                                   {"question_id": ["odd"], "image_id": 1, "answers": []}]
    qfile.write_text(json.dumps(questions))
    afile.write_text(json.dumps(annotations))
    manifest = prepare(Vqav2Source.from_root(tmp_path, min_count=2, rest_val_images=1), tmp_path / "out", LENIENT)
    assert manifest["splits"]["train"] == 9
    reasons = sorted(r for r in skipped(manifest).values() if r.startswith("malformed"))
    assert reasons == ["malformed annotation: 'answers' must be a list of {\"answer\": text}",
                       "malformed question: image_id is text 'one', not an integer",
                       "malformed question: question is number, not text",
                       "malformed question: question_id is text 'x', not an integer"]


def test_nlvr2_malformed_values(tmp_path):
    folder = tmp_path / "images" / "train"
    write_image(folder / "train-0-0-img0.png")
    write_image(folder / "train-0-0-img1.png")
    lines = [{"identifier": "train-0-0-0", "sentence": "fine", "label": "True"},
             {"identifier": "train-0-0-1", "sentence": 3, "label": "False"},
             {"identifier": 17, "sentence": "number id", "label": "True"}]
    (tmp_path / "train.json").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    manifest = prepare(Nlvr2Source.from_root(tmp_path / "train.json", tmp_path), tmp_path / "out", LENIENT)
    assert manifest["splits"] == {"train": 1}
    assert skipped(manifest) == {"train.json:2": "malformed sentence: number, not text",
                                 "train.json:3": "malformed identifier: number, not text"}
