"""VQAv2 official JSON (questions + annotations per split) -> kind ``vqa``.

Files (``--root``): ``v2_OpenEnded_mscoco_<subtype>_questions.json`` and, for train/val,
``v2_mscoco_<subtype>_annotations.json``, for subtypes ``train2014``, ``val2014``, ``test2015``, ``test-dev2015``
(any file name ending the same way is accepted, searched recursively). Images: ``<images>/<folder>/COCO_<folder>_%012d.jpg``
with folder ``train2014`` / ``val2014`` / ``test2015`` (test-dev uses test2015 images); a flat folder works too.

Output splits: ``train``, ``trainable_val`` + ``rest_val`` (a seeded hold-out of ``rest_val_images`` val *images*; with
0 the split is plain ``val``), ``test``, ``test-dev`` (no answers). The answer vocabulary goes to ``answers.json``.
Questions without any in-vocabulary answer are skipped from training splits (official behaviour) and kept in
``rest_val`` (with empty labels) so that its accuracy is the honest one; both are configurable.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Iterator

from ...errors import DataError
from .base import Record, SkipLog, Source, load_json
from .common import json_type
from .vqa_answers import build_vocab, soft_targets

SUBTYPES = {"train": "train2014", "val": "val2014", "test": "test2015", "test-dev": "test-dev2015"}
IMAGE_FOLDER = {"train": "train2014", "val": "val2014", "test": "test2015", "test-dev": "test2015"}


class Vqav2Source(Source):
    kind = "vqa"
    format = "vqav2"
    image_table = True

    def __init__(self, questions: dict[str, Path], annotations: dict[str, Path], images: str | Path, *,
                 min_count: int = 9, rest_val_images: int = 1000, seed: int = 0,
                 keep_unanswerable_in: tuple[str, ...] = ("rest_val",), normalize_raw: bool = False) -> None:
        unknown = sorted(set(questions) - set(SUBTYPES))
        if unknown:
            raise DataError(f"vqav2: unknown splits {unknown}; allowed: {list(SUBTYPES)}")
        if not questions:
            raise DataError("vqav2: no question files given")
        self.questions = {k: Path(v) for k, v in questions.items()}
        self.annotations = {k: Path(v) for k, v in annotations.items()}
        self.images = Path(images)
        if not self.images.is_dir():
            raise DataError(f"{self.images}: image folder not found")
        self.min_count = min_count
        self.rest_val_images = rest_val_images
        self.seed = seed
        self.keep_unanswerable_in = tuple(keep_unanswerable_in)
        self.normalize_raw = normalize_raw
        self._questions = {split: self._load_questions(split, path) for split, path in self.questions.items()}
        self._annotations = {split: self._load_annotations(split, path) for split, path in self.annotations.items()}
        mc = [a.get("multiple_choice_answer", "") for split in ("train", "val")
              for a in self._annotations.get(split, {}).values()]
        mc = [answer for answer in mc if isinstance(answer, str)]  # a malformed one is reported with its question
        self.vocab = build_vocab(mc, min_count)
        if self._annotations and not self.vocab:
            raise DataError(f"vqav2: no answer is seen {min_count} times in train+val; lower --min-answer-count")

    @classmethod
    def from_root(cls, root: str | Path, images: str | Path | None = None, **kwargs: Any) -> "Vqav2Source":
        """Find the official files under ``root`` (recursively)."""
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: folder not found")
        files = sorted(p for p in root.rglob("*.json"))
        questions, annotations = {}, {}
        for split, subtype in SUBTYPES.items():
            for p in files:
                if p.name.endswith(f"{subtype}_questions.json"):
                    questions[split] = p
                elif p.name.endswith(f"{subtype}_annotations.json"):
                    annotations[split] = p
        if not questions:
            raise DataError(f"{root}: no '*_<subtype>_questions.json' found (subtypes {list(SUBTYPES.values())})")
        return cls(questions, annotations, images if images is not None else root, **kwargs)

    def _load_questions(self, split: str, path: Path) -> list[Any]:
        data = load_json(path, "a VQAv2 questions file")
        if not isinstance(data, dict) or not isinstance(data.get("questions"), list):
            raise DataError(f"{path}: expected an object with a 'questions' list")
        return data["questions"]

    def _load_annotations(self, split: str, path: Path) -> dict[int, Any]:
        data = load_json(path, "a VQAv2 annotations file")
        if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
            raise DataError(f"{path}: expected an object with an 'annotations' list")
        return {a["question_id"]: a for a in data["annotations"] if isinstance(a, dict) and _whole(a.get("question_id"))}

    def describe(self) -> dict[str, Any]:
        return {"format": self.format, "questions": {k: str(v) for k, v in self.questions.items()},
                "annotations": {k: str(v) for k, v in self.annotations.items()}, "images": str(self.images),
                "min_answer_count": self.min_count, "rest_val_images": self.rest_val_images,
                "keep_unanswerable_in": list(self.keep_unanswerable_in), "normalize_raw_answers": self.normalize_raw,
                "num_answers": len(self.vocab)}

    def estimate(self) -> int:
        return sum(len(q) for q in self._questions.values())

    def extra_files(self) -> dict[str, Any]:
        return {"answers.json": self.vocab}

    def _image_path(self, split: str, image_id: int) -> Path:
        folder = IMAGE_FOLDER[split]
        name = f"COCO_{folder}_{int(image_id):012d}.jpg"
        nested = self.images / folder / name
        return nested if nested.exists() or not (self.images / name).exists() else self.images / name

    def _rest_val_ids(self) -> set[int]:
        if "val" not in self._questions or self.rest_val_images <= 0:
            return set()
        ids = sorted({q["image_id"] for q in self._questions["val"] if isinstance(q, dict) and _whole(q.get("image_id"))})
        return set(random.Random(self.seed).sample(ids, min(self.rest_val_images, len(ids))))

    def records(self, log: SkipLog) -> Iterator[Record]:
        answer_to_id = {a: i for i, a in enumerate(self.vocab)}
        rest_val = self._rest_val_ids()
        for split in SUBTYPES:
            if split not in self._questions:
                continue
            annotated = split in self._annotations
            name = self.questions[split].name
            for index, q in enumerate(self._questions[split]):
                if not isinstance(q, dict) or not {"question", "question_id", "image_id"} <= set(q):
                    log.add(split, f"{name}:questions[{index}]", "malformed question: needs question, question_id, image_id")
                    continue
                problem = _question_problem(q)
                if problem:
                    log.add(split, f"{name}:questions[{index}]", problem)
                    continue
                out_split = split
                if split == "val" and self.rest_val_images > 0:
                    out_split = "rest_val" if q["image_id"] in rest_val else "trainable_val"
                where = f"{name}:question_id={q['question_id']}"
                fields = {"image_id": str(q["image_id"]), "question": str(q["question"]),
                          "question_id": int(q["question_id"]), "answers": [], "labels": [], "scores": [],
                          "answer_type": "", "question_type": ""}
                if annotated:
                    ann = self._annotations[split].get(q["question_id"])
                    if ann is None:
                        log.add(out_split, where, "answer-less question: no annotation")
                        continue
                    answers = ann.get("answers", [])
                    raw = [a.get("answer", "") for a in answers if isinstance(a, dict)] if isinstance(answers, list) else None
                    if raw is None or not all(isinstance(a, str) for a in raw):
                        log.add(out_split, where, "malformed annotation: 'answers' must be a list of {\"answer\": text}")
                        continue
                    if not raw:
                        log.add(out_split, where, "answer-less question: empty 'answers'")
                        continue
                    labels, scores = soft_targets(raw, answer_to_id, normalize_raw=self.normalize_raw)
                    if not labels and out_split not in self.keep_unanswerable_in:
                        log.add(out_split, where, "no answer in vocabulary")
                        continue
                    fields.update(answers=raw, labels=labels, scores=scores,
                                  answer_type=str(ann.get("answer_type", "")),
                                  question_type=str(ann.get("question_type", "")))
                yield Record(out_split, fields, {"image": self._image_path(split, q["image_id"])}, where,
                             image_key=str(q["image_id"]))


def _whole(value: Any) -> bool:
    """An integer id (JSON booleans are not ids)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _question_problem(q: dict[str, Any]) -> str | None:
    """Why a question entry is malformed (question text, integer question and image ids), or ``None``."""
    if not isinstance(q["question"], str):
        return f"malformed question: question is {json_type(q['question'])}, not text"
    for key in ("question_id", "image_id"):
        if not _whole(q[key]):
            return f"malformed question: {key} is {json_type(q[key])} {q[key]!r}, not an integer"
    return None
