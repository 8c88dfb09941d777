"""Duplicate groups: pairs that show the same thing (one demo scene, one near-duplicate web image) carry a ``group``
key from ``prepare``; with ``itm_exclude_same_group`` no pair of the positive's group is drawn as its ITM hard
negative, in either direction. Default off: the official sampler."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from vlmo_cli.data.demo import _DemoSource, _pairs, scene_key
from vlmo_cli.data.loader import build_dataloader
from vlmo_cli.data.prepare import prepare
from vlmo_cli.data.sources import FilePairsSource, KarpathySource
from vlmo_cli.data.store import open_prepared
from vlmo_cli.errors import DataError, RecipeError
from vlmo_cli.objectives.matching import sample_hard_negatives
from vlmo_cli.config.recipe import load_recipe
from vlmo_cli.config.schema import FinetuneRetrievalTask, PretrainVLTask
from vlmo_cli.train import stages
from vlmo_cli.train.build import StageModule

from helpers import run


def write_image(path, color):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 16), color).save(path)


# scene groups of 7 pairs, all with different captions and images: rows 0, 2, 5 show one scene, rows 1 and 4 another
GROUPS = torch.tensor([0, 1, 0, 2, 1, 0, 3])


def draws(group_ids, repeats=50):
    """Hard negatives under similarities that make the same-scene pairs by far the most likely draw."""
    logits = 30.0 * (GROUPS[:, None] == GROUPS[None, :]).float()
    g = torch.Generator().manual_seed(0)
    picked = [sample_hard_negatives(logits, logits.t(), len(GROUPS), generator=g, group_ids=group_ids)
              for _ in range(repeats)]
    return torch.stack([p.text_index for p in picked]), torch.stack([p.image_index for p in picked])


def test_same_group_never_drawn_when_excluded():
    texts, images = draws(GROUPS)
    for index in (texts, images):
        assert (GROUPS[index] != GROUPS).all()  # neither a text of the image's scene nor an image of the text's


def test_same_image_exclusion_is_the_same_rule_on_image_ids():
    """``itm_exclude_same_image`` passes the images' ids the same way: equal ids are never drawn."""
    logits = 30.0 * (GROUPS[:, None] == GROUPS[None, :]).float()
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        neg = sample_hard_negatives(logits, logits.t(), len(GROUPS), generator=g, image_ids=GROUPS)
        assert (GROUPS[neg.text_index] != GROUPS).all() and (GROUPS[neg.image_index] != GROUPS).all()


def test_without_groups_the_same_scene_dominates():
    texts, images = draws(None)
    repeated = torch.tensor([0, 1, 2, 4, 5])
    assert (GROUPS[texts] == GROUPS)[:, repeated].float().mean() > 0.9
    assert (GROUPS[images] == GROUPS)[:, repeated].float().mean() > 0.9


def _batch():
    torch.manual_seed(0)
    b = len(GROUPS)
    ids = torch.randint(5, 60, (b, 6))
    ids[:, 0], ids[:, -1] = 2, 3
    mask = torch.ones_like(ids)
    return {"pixel_values": torch.randn(b, 3, 32, 32), "input_ids": ids, "attention_mask": mask,
            "mlm_input_ids": ids.clone(), "mlm_labels": torch.where(torch.rand(b, 6) < 0.3, ids, -100),
            "image_ids": torch.arange(b), "group_ids": GROUPS.clone()}


def _spy(monkeypatch):
    seen = []
    real = stages.sample_hard_negatives

    def spy(*args, **kwargs):
        seen.append(kwargs.get("group_ids"))
        return real(*args, **kwargs)

    monkeypatch.setattr(stages, "sample_hard_negatives", spy)
    return seen


def _model(heads):
    from vlmo_cli.model.config import get_config
    from vlmo_cli.model.vlmo import VLMo

    torch.manual_seed(0)
    return VLMo(get_config("tiny", vocab_size=64, heads=heads))


def test_stage3_objective_passes_groups_only_when_on(monkeypatch):
    seen = _spy(monkeypatch)
    model = _model(["pooler", "itc", "itc_vl", "itm", "mlm"])
    for on in (False, True):
        StageModule(model, stages.STAGE_DEFS["pretrain.vl"], PretrainVLTask(dataset=("unused",),
                                                                        itm_exclude_same_group=on))(_batch())
    assert seen[0] is None and torch.equal(seen[1], GROUPS)


def test_retrieval_with_itm_passes_groups_when_on(monkeypatch):
    seen = _spy(monkeypatch)
    model = _model(["pooler", "itc", "itm"])
    task = FinetuneRetrievalTask(dataset=("unused",), with_itm=True, itm_exclude_same_group=True)
    StageModule(model, stages.STAGE_DEFS["finetune.retrieval_coco"], task)(_batch())
    assert torch.equal(seen[0], GROUPS)


def test_option_on_without_groups_in_the_data_is_one_clear_error():
    batch = _batch()
    del batch["group_ids"]
    task = PretrainVLTask(dataset=("unused",), itm_exclude_same_group=True)
    with pytest.raises(DataError, match="--group-field"):
        StageModule(_model(["pooler", "itc", "itc_vl", "itm", "mlm"]), stages.STAGE_DEFS["pretrain.vl"], task)(batch)


# ------------------------------------------------------------------------------------------ prepare + loader
def test_demo_pairs_carry_their_scene():
    assert _DemoSource("pairs", lambda: iter(())).with_group and not _DemoSource("vqa", lambda: iter(())).with_group
    for record in itertools.islice(_pairs(0), 3):
        assert record.fields["group"] == scene_key(_scene_of(record.fields["captions"][0]))


def _scene_of(caption: str):
    from vlmo_cli.data.demo import COLORS, COUNT_WORDS, POSITIONS, SHAPES, Scene

    words = caption.replace(",", " ").split()
    count = next((n for n, w in COUNT_WORDS.items() if w in words), 1)
    return Scene(next(c for c in COLORS if c in words), next(s for s in SHAPES if s in caption),
                 count, next(p for p in POSITIONS if p in words))


def _karpathy(tmp_path, groups):
    entries = []
    for i, group in enumerate(groups):
        write_image(tmp_path / "imgs" / f"{i}.jpg", (i * 40, 0, 0))
        entry = {"filename": f"{i}.jpg", "split": "train", "sentences": [{"raw": f"caption {i}"}, {"raw": f"c {i}"}]}
        if group is not None:
            entry["dup"] = group
        entries.append(entry)
    (tmp_path / "dataset_coco.json").write_text(json.dumps({"images": entries}))
    return tmp_path / "dataset_coco.json"


def test_karpathy_group_field_is_stored_and_batched(tmp_path):
    annotations = _karpathy(tmp_path, ["a", "b", "a", None, 7])
    prepare(KarpathySource(annotations, tmp_path / "imgs", group_field="dup"), tmp_path / "out")
    rows = open_prepared(tmp_path / "out").split("train")
    assert rows["group"] == ["a", "b", "a", None, "7"]
    loader = build_dataloader(tmp_path / "out", "train", "pairs", tokenizer=_tokenizer(tmp_path), image_size=16,
                              patch_size=8, batch_size=10, train=False, max_text_len=8)
    batch = next(iter(loader))
    image, group = batch["image_ids"], batch["group_ids"]
    same_group = group[:, None] == group[None, :]
    expected = torch.tensor([0, 1, 0, 3, 4])[image]  # images 0 and 2 share "a"; the entry without a field is alone
    assert torch.equal(same_group, expected[:, None] == expected[None, :])
    # two corpora concatenated: the same group name in different corpora is a different group
    both = build_dataloader([tmp_path / "out", tmp_path / "out"], "train", "pairs", tokenizer=_tokenizer(tmp_path),
                            image_size=16, patch_size=8, batch_size=20, train=False, max_text_len=8)
    batch = next(iter(both))
    first, second = batch["group_ids"][batch["image_ids"] < 5], batch["group_ids"][batch["image_ids"] >= 5]
    assert not set(first.tolist()) & set(second.tolist())


def _tokenizer(tmp_path):
    from vlmo_cli.data.tokenizer import train_tokenizer

    path = tmp_path / "tok"
    if not path.exists():
        train_tokenizer(["caption c 0 1 2 3 4"] * 5, vocab_size=40, method="words").save(path)
    return path


def test_karpathy_unknown_group_field_is_one_line_error(tmp_path):
    annotations = _karpathy(tmp_path, ["a", "b"])
    with pytest.raises(DataError, match=r"no image entry has the field 'dupe' \(--group-field\)") as info:
        KarpathySource(annotations, tmp_path / "imgs", group_field="dupe")
    assert "\n" not in str(info.value)


def test_pairs_group_col_is_stored_and_a_bad_name_is_one_line_error(tmp_path):
    for i in range(3):
        write_image(tmp_path / f"{i}.jpg", (i * 60, 0, 0))
    lines = [{"image": "0.jpg", "caption": "a", "scene": "x"}, {"image": "1.jpg", "caption": "b", "scene": "x"},
             {"image": "2.jpg", "caption": "c", "scene": ""}]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    prepare(FilePairsSource(tmp_path / "pairs.jsonl", "jsonl", group_col="scene"), tmp_path / "out")
    assert open_prepared(tmp_path / "out").split("train")["group"] == ["x", "x", None]
    with pytest.raises(DataError, match=r"no group column 'scen'") as info:
        prepare(FilePairsSource(tmp_path / "pairs.jsonl", "jsonl", group_col="scen"), tmp_path / "out2")
    assert "\n" not in str(info.value)


def test_cli_group_options(tmp_path, capsys):
    code, _, err = run(capsys, "prepare", "pairs", str(tmp_path), "--format", "vg", "--group-col", "g",
                       "--out", str(tmp_path / "o"))
    assert code == 2 and "--group-col works with --format tsv, csv, json or jsonl" in err
    annotations = _karpathy(tmp_path, ["a", "b"])
    code, _, err = run(capsys, "prepare", "coco-karpathy", "--annotations", str(annotations), "--images",
                       str(tmp_path / "imgs"), "--group-field", "dupe", "--out", str(tmp_path / "o"))
    assert code == 2 and "no image entry has the field 'dupe'" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------ recipe
def test_recipe_key_is_typed_and_validated():
    recipe = load_recipe("tiny", ["pretrain.vl.itm_exclude_same_group=false",
                                  "finetune.retrieval_coco.itm_exclude_same_group=true"])
    assert recipe.resolve("pretrain.vl").task.itm_exclude_same_group is False
    assert recipe.resolve("finetune.retrieval_coco").task.itm_exclude_same_group is True
    with pytest.raises(RecipeError, match="itm_exclude_same_group"):
        load_recipe("tiny", ["pretrain.vl.itm_exclude_same_group=sometimes"])


def test_demo_stage3_with_the_option_draws_no_same_scene_negative(demo_root, monkeypatch, tmp_path):
    """From ``vlmo prepare demo`` through the loader to the stage-3 objective: the scene groups arrive in every batch
    and no drawn negative shows the positive's scene."""
    from vlmo_cli.train.loop import train

    drawn = []
    real = stages.sample_hard_negatives

    def spy(*args, **kwargs):
        neg = real(*args, **kwargs)
        groups = kwargs["group_ids"]
        drawn.append(((groups[neg.text_index] == groups) | (groups[neg.image_index] == groups)).any().item())
        return neg

    monkeypatch.setattr(stages, "sample_hard_negatives", spy)
    monkeypatch.chdir(demo_root)
    stage = load_recipe("tiny", ["model.vocab_size=160", f"train.output_dir={tmp_path / 'runs'}", "data.batch_size=32",
                                 "pretrain.vl.max_steps=3", "pretrain.vl.init=", "pretrain.vl.warmup=1",
                                 "pretrain.vl.itm_exclude_same_group=true"]).resolve("pretrain.vl")
    assert train(stage).state.step == 3
    assert len(drawn) >= 3 and not any(drawn)
