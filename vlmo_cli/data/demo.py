"""The embedded demo data: a deterministic synthetic world of coloured shapes, for every stage and task.

Each scene holds ``count`` (1-3) copies of one ``shape`` (circle, square, triangle) in one ``color`` (red, green, blue,
yellow), placed in one half of the picture (left, right, top, bottom), on a dark background with small jitter. The
grammar is tiny and the signal strong, so a 4-layer width-128 model at 32 px learns every task visibly on a CPU in
minutes.

``vlmo prepare demo --out DIR`` writes::

    DIR/demo.json            what is where (subsets, sizes, the world's vocabulary)
    DIR/tokenizer/           WordPiece vocabulary built deterministically from all demo texts (one token per word)
    DIR/pairs/               kind pairs: train (1500 images x 2 captions), val (100), test (144: one image per
                             distinct scene, so retrieval ground truth is unambiguous); ``group`` = the scene
    DIR/vqa/                 kind vqa: train (1000 images x 4 questions), val (200 x 4); answers.json
    DIR/nlvr2/               kind nlvr2: train 1000, dev 200 statements about image pairs, labels balanced
    DIR/images/              kind images: train 600, val 100 (vision-only pre-training)
    DIR/text/                kind text: train 3000, val 200 sentences (language-only pre-training)

Every subset is an ordinary prepared directory (manifest with ``flip_ok: false``: the texts speak of left and right,
so loaders do not flip images) carrying a copy of the tokenizer. Everything is a function of ``seed``.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from ..outputs import DirectoryOutput, DirKind
from .prepare import PrepareOptions, prepare
from .sources.base import Record, SkipLog, Source
from .sources.vqa_answers import build_vocab, soft_targets

COLORS = {"red": (220, 50, 50), "green": (50, 190, 70), "blue": (60, 100, 235), "yellow": (235, 215, 50)}
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("left", "right", "top", "bottom")
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
IMAGE_SIZE = 64
SIZES = {"pairs": {"train": 1500, "val": 100}, "vqa": {"train": 1000, "val": 200},
         "nlvr2": {"train": 1000, "dev": 200}, "images": {"train": 600, "val": 100}, "text": {"train": 3000, "val": 200}}


@dataclass(frozen=True)
class Scene:
    color: str
    shape: str
    count: int
    position: str


def all_scenes() -> list[Scene]:
    return [Scene(c, s, n, p) for c in COLORS for s in SHAPES for n in (1, 2, 3) for p in POSITIONS]


def scene_key(scene: Scene) -> str:
    """The duplicate group of a pair: images of one scene differ only by jitter and their captions are rewordings,
    so each is a false negative for the others (the pairs' ``group`` column)."""
    return f"{scene.count} {scene.color} {scene.shape} {scene.position}"


def random_scene(rng: random.Random) -> Scene:
    return Scene(rng.choice(list(COLORS)), rng.choice(SHAPES), rng.randint(1, 3), rng.choice(POSITIONS))


def render(scene: Scene, rng: random.Random, size: int = IMAGE_SIZE) -> bytes:
    """PNG bytes of ``scene`` (jittered by ``rng``)."""
    from PIL import Image, ImageDraw

    shade = rng.randint(20, 60)
    img = Image.new("RGB", (size, size), (shade, shade, shade + rng.randint(0, 10)))
    draw = ImageDraw.Draw(img)
    half = size // 2
    horizontal = scene.position in ("top", "bottom")  # shapes line up along the long side of the half
    x0 = half if scene.position == "right" else 0
    y0 = half if scene.position == "bottom" else 0
    width, height = (size, half) if horizontal else (half, size)
    slots = scene.count
    radius = int(size * (0.19 if slots == 1 else 0.12 if slots == 2 else 0.09)) + rng.randint(-1, 1)
    color = tuple(max(0, min(255, v + rng.randint(-20, 20))) for v in COLORS[scene.color])
    for k in range(slots):
        along = (k + 0.5) / slots
        cx = x0 + (along * width if horizontal else width / 2) + rng.uniform(-2, 2)
        cy = y0 + (height / 2 if horizontal else along * height) + rng.uniform(-2, 2)
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        if scene.shape == "circle":
            draw.ellipse(box, fill=color)
        elif scene.shape == "square":
            draw.rectangle(box, fill=color)
        else:
            draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=color)
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def _where(position: str) -> str:
    return f"on the {position}" if position in ("left", "right") else f"at the {position}"


def _noun(scene: Scene) -> str:
    return scene.shape + ("s" if scene.count > 1 else "")


def captions(scene: Scene, rng: random.Random, n: int = 2) -> list[str]:
    """``n`` different descriptions of ``scene``."""
    count = "a" if scene.count == 1 else COUNT_WORDS[scene.count]
    verb = "is" if scene.count == 1 else "are"
    templates = [
        f"{count} {scene.color} {_noun(scene)} {_where(scene.position)}",
        f"there {verb} {COUNT_WORDS[scene.count]} {scene.color} {_noun(scene)} {_where(scene.position)}",
        f"{_where(scene.position)} {verb} {count} {scene.color} {_noun(scene)}",
        f"{COUNT_WORDS[scene.count]} {_noun(scene)} , all {scene.color} , {_where(scene.position)}",
    ]
    return rng.sample(templates, n)


def questions(scene: Scene, rng: random.Random) -> list[dict[str, Any]]:
    """Four VQA questions (colour, shape, count, place; sometimes a yes/no) with 10 noisy annotator answers each."""
    out = [
        ("what color are the shapes ?", scene.color, list(COLORS), "other", "what color"),
        ("what shape is shown ?", scene.shape, list(SHAPES), "other", "what shape"),
        ("how many shapes are there ?", str(scene.count), ["1", "2", "3"], "number", "how many"),
        ("where are the shapes ?", scene.position, list(POSITIONS), "other", "where are"),
    ]
    if rng.random() < 0.5:  # swap one question for a yes/no one
        asked = Scene(rng.choice(list(COLORS)), rng.choice(SHAPES), 1, "left") if rng.random() < 0.5 else scene
        truth = "yes" if (asked.color, asked.shape) == (scene.color, scene.shape) else "no"
        out[rng.randrange(4)] = (f"is there a {asked.color} {asked.shape} ?", truth, ["yes", "no"], "yes/no", "is there")
    items = []
    for question, answer, choices, answer_type, question_type in out:
        right = rng.randint(7, 10)
        wrong = [rng.choice([c for c in choices if c != answer]) for _ in range(10 - right)]
        items.append({"question": question, "answer": answer, "answers": [answer] * right + wrong,
                      "answer_type": answer_type, "question_type": question_type})
    return items


STATEMENTS: list[tuple[str, Callable[[Scene, Scene], bool]]] = [
    ("both images show {color} shapes", lambda a, b, color=None: a.color == b.color == color),
    ("the left image has more shapes than the right image", lambda a, b, **_: a.count > b.count),
    ("the two images show the same shape", lambda a, b, **_: a.shape == b.shape),
    ("the right image contains {shape}s", lambda a, b, shape=None: b.shape == shape),
    ("the left image has {count} shapes", lambda a, b, count=None: a.count == count),
]


def statement(rng: random.Random, label: int) -> tuple[str, Scene, Scene]:
    """A statement about a pair of scenes that is true iff ``label`` (rejection sampling with ``rng``)."""
    template, rule = STATEMENTS[rng.randrange(len(STATEMENTS))]
    slots = {"color": rng.choice(list(COLORS)), "shape": rng.choice(SHAPES), "count": rng.randint(1, 3)}
    used = {k: v for k, v in slots.items() if "{" + k + "}" in template}
    text = template.format(**{**slots, "count": COUNT_WORDS[slots["count"]]})
    for _ in range(1000):
        a, b = random_scene(rng), random_scene(rng)
        if "color" in used and label and rng.random() < 0.7:
            a, b = Scene(used["color"], a.shape, a.count, a.position), Scene(used["color"], b.shape, b.count, b.position)
        if rule(a, b, **used) == bool(label):
            return text, a, b
    raise RuntimeError(f"no scene pair makes {text!r} {bool(label)}")  # unreachable for the rules above


def corpus_sentence(rng: random.Random) -> str:
    scene = random_scene(rng)
    kind = rng.randrange(3)
    if kind == 0:
        return captions(scene, rng, 1)[0]
    if kind == 1:
        return statement(rng, rng.randint(0, 1))[0]
    return f"the {scene.shape} is {scene.color} and it is {_where(scene.position)}"


class _DemoSource(Source):
    """Records of one demo subset, images already rendered."""

    format = "demo"

    def __init__(self, kind: str, make: Callable[[], Iterator[Record]], extra: dict[str, Any] | None = None,
                 estimate: int | None = None) -> None:
        self.kind = kind
        self.with_group = kind == "pairs"  # the scene of each pair (see scene_key)
        self.image_table = kind == "vqa"
        self._make, self._extra, self._estimate = make, extra or {}, estimate

    def records(self, log: SkipLog) -> Iterator[Record]:
        return self._make()

    def describe(self) -> dict[str, Any]:
        return {"format": "demo", "subset": self.kind}

    def extra_files(self) -> dict[str, Any]:
        return self._extra

    def manifest_extra(self) -> dict[str, Any]:
        return {"flip_ok": False}

    def estimate(self) -> int | None:
        return self._estimate


def _rng(seed: int, *parts: Any) -> random.Random:
    return random.Random("-".join(str(p) for p in (seed, *parts)))


def _pairs(seed: int) -> Iterator[Record]:
    for split, n in SIZES["pairs"].items():
        for i in range(n):
            rng = _rng(seed, "pairs", split, i)
            scene = random_scene(rng)
            yield Record(split, {"image_id": f"{split}-{i}", "captions": captions(scene, rng), "split": split,
                                 "group": scene_key(scene)}, {"image": render(scene, rng)}, f"pairs/{split}/{i}")
    for i, scene in enumerate(all_scenes()):  # one image per distinct scene: unambiguous retrieval ground truth
        rng = _rng(seed, "pairs", "test", i)
        yield Record("test", {"image_id": f"test-{i}", "captions": captions(scene, rng), "split": "test",
                              "group": scene_key(scene)}, {"image": render(scene, rng)}, f"pairs/test/{i}")


def _vqa_items(seed: int) -> list[tuple[str, int, Scene, list[dict[str, Any]]]]:
    items = []
    for split, n in SIZES["vqa"].items():
        for i in range(n):
            rng = _rng(seed, "vqa", split, i)
            scene = random_scene(rng)
            items.append((split, i, scene, questions(scene, rng)))
    return items


def _vqa(seed: int, items, vocab: list[str]) -> Iterator[Record]:
    answer_to_id = {a: k for k, a in enumerate(vocab)}
    qid = 0
    for split, i, scene, qs in items:
        image = render(scene, _rng(seed, "vqa-image", split, i))
        for q in qs:
            labels, scores = soft_targets(q["answers"], answer_to_id)
            fields = {"image_id": f"{split}-{i}", "question": q["question"], "question_id": qid,
                      "answers": q["answers"], "labels": labels, "scores": scores,
                      "answer_type": q["answer_type"], "question_type": q["question_type"]}
            yield Record(split, fields, {"image": image}, f"vqa/{split}/{qid}", image_key=f"{split}-{i}")
            qid += 1


def _nlvr2(seed: int) -> Iterator[Record]:
    for split, n in SIZES["nlvr2"].items():
        for i in range(n):
            rng = _rng(seed, "nlvr2", split, i)
            label = i % 2
            text, a, b = statement(rng, label)
            yield Record(split, {"sentence": text, "label": label, "identifier": f"{split}-{i}-0-0"},
                         {"image_0": render(a, rng), "image_1": render(b, rng)}, f"nlvr2/{split}/{i}")


def _images(seed: int) -> Iterator[Record]:
    for split, n in SIZES["images"].items():
        for i in range(n):
            rng = _rng(seed, "images", split, i)
            yield Record(split, {"image_id": f"{split}-{i}"}, {"image": render(random_scene(rng), rng)}, f"images/{i}")


def _texts(seed: int) -> Iterator[Record]:
    for split, n in SIZES["text"].items():
        for i in range(n):
            yield Record(split, {"text": corpus_sentence(_rng(seed, "text", split, i))}, {}, f"text/{split}/{i}")


def demo_texts(seed: int = 0) -> list[str]:
    """Every text of the demo world the tokenizer is trained on (deterministic)."""
    texts = [t for r in _texts(seed) for t in [r.fields["text"]]]
    texts += [c for scene in all_scenes() for c in captions(scene, _rng(seed, "tok", scene), 4)]
    texts += [q["question"] for _, _, _, qs in _vqa_items(seed) for q in qs]
    texts += [template.format(color=c, shape=s, count=COUNT_WORDS[n]) for template, _ in STATEMENTS
              for c in COLORS for s in SHAPES for n in (1, 2, 3)]
    return texts


DEMO = DirKind("vlmo prepare demo", frozenset({"demo.json", "tokenizer", "pairs", "vqa", "nlvr2", "images", "text"}),
               "demo.json")


def make_demo(out: str | Path, *, seed: int = 0, overwrite: bool = False, progress: bool = False,
              vocab_size: int = 160) -> dict[str, Any]:
    """Write the demo data set to ``out`` (see the module docstring); returns the ``demo.json`` index."""
    from .tokenizer import train_tokenizer

    with DirectoryOutput(out, DEMO, overwrite=overwrite) as staging:
        tokenizer = train_tokenizer(demo_texts(seed), vocab_size=vocab_size, method="words")
        tok_dir = tokenizer.save(staging / "tokenizer")
        options = PrepareOptions(seed=seed, progress=progress, tokenizer=tok_dir,
                                 tokenizer_name=f"demo WordPiece (seed {seed})", max_bad_fraction=0.0)
        vqa_items = _vqa_items(seed)
        vocab = build_vocab([q["answer"] for split, *_, qs in vqa_items if split == "train" for q in qs], min_count=5)
        subsets = {
            "pairs": _DemoSource("pairs", lambda: _pairs(seed), estimate=sum(SIZES["pairs"].values()) + 144),
            "vqa": _DemoSource("vqa", lambda: _vqa(seed, vqa_items, vocab), {"answers.json": vocab}),
            "nlvr2": _DemoSource("nlvr2", lambda: _nlvr2(seed)),
            "images": _DemoSource("images", lambda: _images(seed)),
            "text": _DemoSource("text", lambda: _texts(seed)),
        }
        index: dict[str, Any] = {"seed": seed, "image_size": IMAGE_SIZE, "tokenizer": "tokenizer",
                                 "vocab_size": tokenizer.vocab_size, "subsets": {},
                                 "world": {"colors": list(COLORS), "shapes": list(SHAPES), "counts": [1, 2, 3],
                                           "positions": list(POSITIONS)}}
        for name, source in subsets.items():
            manifest = prepare(source, staging / name, options)
            index["subsets"][name] = {"kind": manifest["kind"], "splits": manifest["splits"]}
        (staging / "demo.json").write_text(json.dumps(index, indent=1) + "\n")
    return index
