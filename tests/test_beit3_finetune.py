"""BEiT-3 fine-tuning through the one stage builder: ``[model] family = "beit3"`` in a recipe, BEiT-3's task heads
and objectives (unilm ``beit3/modeling_finetune.py``, ``engine_for_finetuning.py``), and initialising from a BEiT-3
model directory converted from the torchscale fixture."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import run

from vlmo_cli.config.recipe import load_recipe
from vlmo_cli.errors import CheckpointError, RecipeError
from vlmo_cli.factory import convert_beit3, load_model
from vlmo_cli.model.beit3 import Beit3
from vlmo_cli.model.family import image_embeddings, nlvr2_logits, pair_logits, task_head, text_embeddings
from vlmo_cli.train.beit3_stages import BEIT3_STAGE_DEFS
from vlmo_cli.train.build import build_stage
from vlmo_cli.train.init import initialise

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "beit3-tiny"
#: the fixture's architecture (tests/fixtures/beit3-tiny/config.json) as recipe overrides
FIXTURE_MODEL = ["model.embed_dim=64", "model.depth=2", "model.num_heads=4", "model.ffn_dim=128",
                 "model.vocab_size=500"]
TASKS = {"vqa": "finetune.vqa", "nlvr2": "finetune.nlvr2", "retrieval": "finetune.retrieval_coco",
         "classify": "finetune.classify"}


def stage(section: str, *overrides: str):
    answers = [f"{section}.num_answers=7"] if section == "finetune.vqa" else []
    return load_recipe("beit3_tiny", answers + list(overrides)).resolve(section)


def batch_for(data_task: str, vocab: int, b: int = 4, n_answers: int = 7, n_classes: int = 3) -> dict:
    """A fixed batch with the collator's keys: text ids with an attention mask (1 = token; the last two padded)."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (b, 6), generator=gen)
    mask = torch.ones(b, 6, dtype=torch.long)
    mask[:, -2:] = 0
    ids[mask == 0] = 0
    out = {"input_ids": ids, "attention_mask": mask, "pixel_values": torch.randn(b, 3, 32, 32, generator=gen)}
    if data_task == "vqa":
        targets = torch.zeros(b, n_answers)
        targets[torch.arange(b), torch.arange(b) % n_answers] = 1.0
        out["vqa_targets"] = targets
    if data_task == "nlvr2":
        out["pixel_values_1"] = torch.randn(b, 3, 32, 32, generator=gen)
        out["labels"] = torch.tensor([0, 1, 1, 0])
    if data_task == "classify":
        out["labels"] = torch.arange(b) % n_classes
    return out


# ---------------------------------------------------------------------------------------------------- the recipe key
def test_family_key_is_validated_in_one_line(capsys):
    with pytest.raises(RecipeError, match='model.family: got "beit4".*allowed: "vlmo", "beit3"'):
        load_recipe("beit3_tiny", ["model.family=beit4"])
    code, _, err = run(capsys, "finetune", "vqa", "beit3_tiny", "model.family=beit4")
    assert code == 2 and 'allowed: "vlmo", "beit3"' in err and "Traceback" not in err


def test_family_decides_sizes_and_keys():
    assert load_recipe("tiny").resolve("finetune.vqa").model.family == "vlmo"  # the default
    with pytest.raises(RecipeError, match="not a BEiT-3 size; allowed .*tiny, base, large"):
        load_recipe("beit3_tiny", ["model.size=base_plus"]).resolve("finetune.vqa")
    with pytest.raises(RecipeError, match="vlffn_start do\\(es\\) not apply to family"):
        load_recipe("beit3_tiny", ["model.vlffn_start=2"]).resolve("finetune.vqa")
    with pytest.raises(RecipeError, match="ffn_dim apply only to family"):
        load_recipe("tiny", ["model.ffn_dim=64"]).resolve("finetune.vqa")
    with pytest.raises(RecipeError, match="exceeds the 62 text tokens"):
        load_recipe("beit3_tiny", ["data.max_text_len=80"]).resolve("finetune.vqa")
    with pytest.raises(RecipeError, match="does not train a BEiT-3 model"):
        build_stage(load_recipe("beit3_tiny", ["pretrain.vl.dataset=x"]).resolve("pretrain.vl"),
                    torch.device("cpu"), lambda: None)
    resolved = stage("finetune.vqa")
    assert 'family = "beit3"' in resolved.to_toml()  # the run folder's recipe.toml keeps the family


# ---------------------------------------------------------------------------------------------------- heads, objectives
@pytest.mark.parametrize("task", list(TASKS))
def test_task_heads_shapes_and_falling_loss(task):
    torch.manual_seed(0)
    parts = build_stage(stage(TASKS[task], f"{TASKS[task]}.lr=1e-4"), torch.device("cpu"), lambda: None)
    model, cfg = parts.model, parts.cfg
    assert isinstance(model, Beit3) and cfg.heads == [task_head(model, task)]
    assert cfg.normalize_output == (task != "vqa")  # unilm's VQA models have no final LayerNorm
    assert all(p.requires_grad for p in model.parameters())  # unilm freezes nothing
    batch = batch_for(parts.stage_def.data_task, cfg.vocab_size)
    ids, mask, pixels = batch["input_ids"], batch["attention_mask"], batch["pixel_values"]
    with torch.no_grad():
        if task == "retrieval":
            img, txt = image_embeddings(model, pixels), text_embeddings(model, ids, mask)
            assert img.shape == txt.shape == (4, cfg.embed_dim)
            assert torch.allclose(img.norm(dim=1), torch.ones(4)) and torch.allclose(txt.norm(dim=1), torch.ones(4))
        elif task == "nlvr2":
            assert nlvr2_logits(model, ids, mask, pixels, batch["pixel_values_1"]).shape == (4, 2)
        else:
            width = cfg.vqa_num_answers if task == "vqa" else cfg.num_classes
            assert pair_logits(model, task, ids, mask, pixels).shape == (4, width)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    losses = []
    for _ in range(8):
        loss, metrics = parts.module(batch)
        assert torch.isfinite(loss) and all(torch.isfinite(v) for v in metrics.values())
        parts.optimizer.zero_grad()
        loss.backward()
        parts.optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.95 * losses[0]  # 4 random samples: fitted within a few steps at lr 1e-4
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith(f"{cfg.heads[0]}_head.") for k in changed)
    assert any(k.startswith("encoder.") for k in changed)


def test_padding_mask_is_the_complement_of_the_attention_mask():
    """Padded text positions change nothing: the family call passes BEiT-3 a padding mask (True = padding)."""
    parts = build_stage(stage("finetune.vqa"), torch.device("cpu"), lambda: None)
    model = parts.model.eval()
    batch = batch_for("vqa", 160)
    ids, mask, pixels = batch["input_ids"], batch["attention_mask"], batch["pixel_values"]
    with torch.no_grad():
        full = pair_logits(model, "vqa", ids, mask, pixels)
        trimmed = pair_logits(model, "vqa", ids[:, :4], mask[:, :4], pixels)
        changed = pair_logits(model, "vqa", ids.masked_fill(mask == 0, 5), mask, pixels)
    assert torch.allclose(full, trimmed, atol=1e-5) and torch.allclose(full, changed, atol=1e-5)


def test_vqa_loss_is_unilm_bce_times_answers_and_retrieval_is_clip():
    st = stage("finetune.vqa")
    parts = build_stage(st, torch.device("cpu"), lambda: None)
    batch = batch_for("vqa", 160)
    out = BEIT3_STAGE_DEFS["finetune.vqa"].objective(parts.model, batch, st.task)
    logits = pair_logits(parts.model, "vqa", batch["input_ids"], batch["attention_mask"], batch["pixel_values"])
    expected = F.binary_cross_entropy_with_logits(logits, batch["vqa_targets"]) * batch["vqa_targets"].shape[1]
    assert torch.allclose(out.loss, expected, atol=1e-5)

    st = stage("finetune.retrieval_coco")
    parts = build_stage(st, torch.device("cpu"), lambda: None)
    batch = batch_for("pairs", 160)
    out = BEIT3_STAGE_DEFS["finetune.retrieval_coco"].objective(parts.model, batch, st.task)
    img = image_embeddings(parts.model, batch["pixel_values"])
    txt = text_embeddings(parts.model, batch["input_ids"], batch["attention_mask"])
    logits = parts.model.retrieval_head.logit_scale.exp() * img @ txt.t()
    labels = torch.arange(4)
    clip = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
    assert torch.allclose(out.loss, clip, atol=1e-5)
    assert float(out.metrics["logit_scale"]) == pytest.approx(1 / 0.07, rel=1e-5)


# ---------------------------------------------------------------------------------------------------- init
@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    """The torchscale fixture as a BEiT-3 model directory (``vlmo convert beit3``)."""
    from safetensors.torch import load_file

    tmp = tmp_path_factory.mktemp("beit3_init")
    checkpoint = tmp / "fixture.pth"
    torch.save({"model": load_file(FIXTURE / "state_dict.safetensors")}, checkpoint)
    return convert_beit3(checkpoint, tmp / "converted", num_heads=4)


@pytest.mark.parametrize("task,source", [("vqa", "dir"), ("retrieval", "dir"), ("retrieval", "released file")])
def test_init_from_a_converted_beit3_dir_loads_the_backbone_and_makes_fresh_heads(converted, task, source):
    """From the directory ``vlmo convert beit3`` wrote, or from the checkpoint file itself (``beit3:PATH``)."""
    st = stage(TASKS[task], *FIXTURE_MODEL)
    init = str(converted) if source == "dir" else f"beit3:{converted.parent / 'fixture.pth'}"
    reports = []
    parts = build_stage(st, torch.device("cpu"), lambda: None,
                        load_weights=lambda m: reports.append(initialise(m, init)))
    report = reports[0]
    source = load_model(converted).state_dict()
    head = task_head(parts.model, task)
    assert report.fresh == sorted(k for k in parts.model.state_dict() if k.startswith(f"{head}_head."))
    assert report.loaded and all(k.startswith(("text_embed.", "vision_embed.", "encoder.")) for k in report.loaded)
    for key in report.loaded:
        assert torch.equal(parts.model.state_dict()[key], source[key])
    # the VQA model has no final LayerNorm (unilm): the source's is not used
    assert report.dropped == (["encoder.layer_norm.A.bias", "encoder.layer_norm.A.weight", "encoder.layer_norm.B.bias",
                               "encoder.layer_norm.B.weight"] if task == "vqa" else [])
    assert any("newly initialised" in n and head in n for n in report.notes())


def test_init_refuses_another_backbone_or_family(converted, demo_root, tmp_path, monkeypatch, capsys):
    from test_eval_cli import make_model

    monkeypatch.chdir(demo_root)

    with pytest.raises(CheckpointError, match="backbone does not match.*embed_dim 64 vs 128"):
        build_stage(stage("finetune.vqa"), torch.device("cpu"), lambda: None,
                    load_weights=lambda m: initialise(m, str(converted)))
    vlmo_dir = make_model(tmp_path / "vlmo", demo_root / "demo_data", ["pooler", "itc"])
    code, _, err = run(capsys, "finetune", "retrieval", "beit3_tiny", "--from", str(vlmo_dir),
                       f"train.output_dir={tmp_path / 'runs'}")
    assert code == 2 and "a VLMo model directory cannot initialise a BEiT-3 model" in err and "Traceback" not in err
    with pytest.raises(CheckpointError, match="a BEiT-3 model directory cannot initialise a VLMo model"):
        build_stage(load_recipe("tiny").resolve("finetune.vqa"), torch.device("cpu"), lambda: None,
                    load_weights=lambda m: initialise(m, str(converted)))


def test_finetune_cli_from_the_converted_fixture(converted, demo_root, tmp_path, monkeypatch, capsys):
    """``vlmo finetune vqa beit3_tiny --from DIR``: the init report, a checkpoint in the BEiT-3 layout, loadable."""
    monkeypatch.chdir(demo_root)
    code, out, err = run(capsys, "finetune", "vqa", "beit3_tiny", "--from", str(converted), *FIXTURE_MODEL,
                         "train.max_steps=2", "data.batch_size=4", "finetune.vqa.val_split=none",
                         "train.trackers=[]", "train.report=false", f"train.output_dir={tmp_path}")
    assert code == 0, err
    assert "from the source" in out and "newly initialised" in out and "vqa_head" in out
    model = load_model(tmp_path / "beit3-tiny-finetune-vqa")
    assert isinstance(model, Beit3) and model.config.heads == ["vqa"] and model.config.embed_dim == 64


def test_model_info_and_training_flops_of_a_beit3_recipe(demo_root, monkeypatch, capsys):
    from vlmo_cli.bench import train_flops_per_sample
    from vlmo_cli.model.flops import path_flops

    monkeypatch.chdir(demo_root)  # the answer count comes from the prepared VQA data
    code, out, err = run(capsys, "model", "info", "beit3_tiny")  # the pre-trained model: the first training stage
    assert code == 0, err
    assert "BEiT-3 beit3_tiny [pretrain.mdm]" in out and "head: mlm_head" in out and "MLM head (per text)" in out
    code, out, err = run(capsys, "model", "info", "beit3_tiny", "--stage", "finetune.vqa")
    assert code == 0, err
    assert "BEiT-3 beit3_tiny [finetune.vqa]" in out and "head: vqa_head" in out and "MLM head" not in out
    st = stage("finetune.nlvr2")
    cfg = build_stage(st, torch.device("cpu"), lambda: None).cfg
    f = path_flops(cfg, 16)
    assert train_flops_per_sample("finetune.nlvr2", cfg, st.task, 16) == 3 * 2 * f["pair (image first, then text)"]
    assert train_flops_per_sample("finetune.retrieval_coco", cfg, st.task, 16) == 3 * (
        f["image (dual encoder)"] + f["text (dual encoder)"])


def test_resumed_beit3_finetune_equals_the_uninterrupted_one(small_vqa_stage):
    """The one training loop's resume holds for a BEiT-3 model too: 2 + 2 resumed steps = 4 steps."""
    from safetensors.torch import load_file

    from vlmo_cli.train.loop import train

    full = train(small_vqa_stage("full"))
    assert train(small_vqa_stage("cut"), stop_after=2).state.step == 2
    resumed = train(small_vqa_stage("cut"), resume="auto")
    assert resumed.state.step == 4
    a, b = load_file(full.checkpoint / "model.safetensors"), load_file(resumed.checkpoint / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def small_vqa_stage(demo_root, tmp_path, monkeypatch):
    monkeypatch.chdir(demo_root)

    def make(name: str):
        return load_recipe("beit3_tiny", ["finetune.vqa.max_steps=4", "data.batch_size=4", "train.log_every=1",
                                          "finetune.vqa.val_split=none", "train.trackers=[]", "train.report=false",
                                          f"train.output_dir={tmp_path}", f"finetune.vqa.run_name={name}"]
                           ).resolve("finetune.vqa")
    return make
