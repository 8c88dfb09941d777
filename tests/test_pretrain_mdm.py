"""``vlmo pretrain-mdm``: BEiT-3's masked data modelling on VLMo. The mix of images, texts and pairs honours the
recipe's fractions, draws a seeded order that resumes exactly and splits over processes; every loss falls and the
masked-token accuracies beat chance on the demo data; a resumed run equals the uninterrupted one; 2 DDP processes
compute one process's gradients; bad recipe values are one message each, exit 2."""

from __future__ import annotations

import os
from collections import Counter
from types import SimpleNamespace

import pytest
import torch
from helpers import assert_ddp_equals_one_process, mixed_batch, run, train_values, vqkd_dir
from safetensors.torch import load_file

from vlmo_cli.config.recipe import load_recipe
from vlmo_cli.data.mixed import batch_sizes, split_parts
from vlmo_cli.errors import DataError
from vlmo_cli.model.config import get_config
from vlmo_cli.model.vlmo import VLMo
from vlmo_cli.train import stages
from vlmo_cli.train.build import StageModule
from vlmo_cli.train.loop import train
from vlmo_cli.train.mdm import mdm_loader, mdm_trainable
from vlmo_cli.train.monitor import read_metrics


def mdm_stage(overrides=(), in_demo=()):
    return load_recipe("tiny", ["data.batch_size=8", *in_demo, *overrides]).resolve("pretrain.mdm")


# ---------------------------------------------------------------------- the mix
def test_batch_split_follows_the_fractions():
    assert batch_sizes({"image": 0.25, "text": 0.25, "pair": 0.5}, 32) == {"image": 8, "text": 8, "pair": 16}
    assert batch_sizes({"image": 0.0, "text": 0.5, "pair": 0.5}, 4) == {"text": 2, "pair": 2}
    with pytest.raises(DataError, match="whole number of rows"):
        batch_sizes({"image": 0.25, "text": 0.25, "pair": 0.5}, 6)


def test_every_step_holds_the_recipe_mix_masked_as_asked(demo_root, monkeypatch):
    monkeypatch.chdir(demo_root)
    stage = mdm_stage(["pretrain.mdm.pair_image_mask_ratio=0.25"])
    loader = mdm_loader(stage, None)
    for step, batch in zip(range(3), loader):
        parts = split_parts(batch)
        assert {k: v["pixel_values" if k == "image" else "input_ids"].shape[0] for k, v in parts.items()} == {
            "image": 2, "text": 2, "pair": 4}
        assert int(batch["num_samples"]) == 8
        image, text, pair = parts["image"], parts["text"], parts["pair"]
        assert image["patch_mask"].float().mean() == pytest.approx(0.4, abs=0.1)  # 16 patches: ~6 masked
        assert pair["patch_mask"].float().mean() == pytest.approx(0.25, abs=0.1)
        assert "patch_mask" not in text and "mlm_labels" not in image
        for part, ratio in ((text, 0.15), (pair, 0.5)):  # whole-word masking of the real tokens
            masked = (part["mlm_labels"] != -100).sum(1).float()
            real = part["attention_mask"].sum(1).float()
            assert (masked >= 1).all() and (masked <= ratio * real + 2).all()
        pair_rate = (pair["mlm_labels"] != -100).sum() / pair["attention_mask"].sum()
        assert pair_rate > 0.3


def _order(batches):
    """The samples of each micro-batch (masks aside: they come from the global RNG, which the loop checkpoints)."""
    return [{k: v.tolist() for k, v in b.items() if k.partition(".")[2] in ("image_ids", "input_ids")} for b in batches]


def test_the_mix_is_seeded_cycles_each_part_and_resumes_at_any_micro_batch(demo_root, monkeypatch):
    """The val split: 100 images in batches of 40 (2 per pass), 200 texts and 200 captions in batches of 20 (10 per
    pass): the images start a new pass every 2 micro-batches, the mixed epoch is 10; starting at any (epoch, skip)
    continues the uninterrupted sequence exactly."""
    monkeypatch.chdir(demo_root)
    stage = mdm_stage(["data.batch_size=80", "pretrain.mdm.image_fraction=0.5", "pretrain.mdm.text_fraction=0.25",
                       "pretrain.mdm.pair_fraction=0.25", "data.randaugment=false"])

    def take(epoch, skip, n):
        loader = mdm_loader(stage, None, split="val", epoch=epoch, skip_batches=skip)
        out = []
        while len(out) < n:
            out += list(loader)[: n - len(out)]
            loader.sampler.set_epoch(loader.sampler.epoch + 1, 0)
        return out

    loader = mdm_loader(stage, None, split="val")
    assert loader.lengths == {"image": 2, "text": 10, "pair": 10} and loader.length == 10
    full = _order(take(0, 0, 30))
    assert full == _order(take(0, 0, 30))  # seeded
    images = [tuple(b["image.image_ids"]) for b in full]
    assert not set(images[0]) & set(images[1])  # one pass: 80 distinct images of the 100
    assert images[2] != images[0] and not set(images[2]) & set(images[3])  # the next pass: a new permutation
    assert _order(take(0, 7, 23)) == full[7:]
    assert _order(take(2, 3, 7)) == full[23:]
    other = _order(mdm_loader(mdm_stage(["data.batch_size=80", "pretrain.mdm.image_fraction=0.5",
                                         "pretrain.mdm.text_fraction=0.25", "pretrain.mdm.pair_fraction=0.25",
                                         "train.seed=5"]), None, split="val"))
    assert other[0] != full[0]


def test_each_process_draws_its_own_share_of_the_single_process_batch(demo_root, monkeypatch):
    monkeypatch.chdir(demo_root)
    stage = mdm_stage()
    one = mdm_loader(stage, None)
    ranks = [mdm_loader(stage, None, rank=r, world_size=2) for r in range(2)]
    for _, whole, *shares in zip(range(3), one, *ranks):
        for key in ("image.image_ids", "pair.image_ids"):
            assert sorted(torch.cat([s[key] for s in shares]).tolist()) == sorted(whole[key].tolist())
            assert not set(shares[0][key].tolist()) & set(shares[1][key].tolist())
        assert sorted(map(tuple, torch.cat([s["text.input_ids"] for s in shares]).tolist())) == sorted(
            map(tuple, whole["text.input_ids"].tolist()))


# ---------------------------------------------------------------------- objective and trainable parameters
def _model(heads=("mlm", "mim")) -> VLMo:
    torch.manual_seed(0)
    return VLMo(get_config("tiny", vocab_size=64, drop_path_rate=0.0, text_dropout=0.0, heads=list(heads)))


def _task(**overrides):
    base = dict(image_fraction=0.25, text_fraction=0.25, pair_fraction=0.5, pair_image_mask_ratio=0.0,
                target="pixels", teacher="")
    base.update(overrides)
    return SimpleNamespace(fractions={k: base[f"{k}_fraction"] for k in ("image", "text", "pair")}, **base)


def test_only_parameters_some_part_reaches_train():
    cfg = _model().config
    names = [n for n, _ in _model().named_parameters()]
    everything = _task()
    assert all(mdm_trainable(n, cfg, everything) for n in names)
    no_images = _task(image_fraction=0.0, pair_fraction=0.75)
    frozen = [n for n in names if not mdm_trainable(n, cfg, no_images)]
    assert any("blocks.3.mlp_imag" in n for n in frozen) and not any("blocks.0.mlp_imag" in n for n in frozen)
    assert any(n.startswith("mim_head") for n in frozen) and not any("mlp_vl" in n for n in frozen)
    texts_only = _task(image_fraction=0.0, text_fraction=1.0, pair_fraction=0.0)
    frozen = [n for n in names if not mdm_trainable(n, cfg, texts_only)]
    assert any("mlp_vl" in n for n in frozen) and any("patch_embed" in n for n in frozen)
    assert not any("mlp_text" in n or n.startswith("mlm_score") for n in frozen)


def test_the_objective_reports_every_part():
    out = stages.STAGE_DEFS["pretrain.mdm"].objective(_model(), mixed_batch(), _task())
    assert set(out.metrics) == {"mdm_image_loss", "mdm_text_loss", "mdm_text_acc", "mdm_pair_loss", "mdm_pair_acc",
                                "mdm_pair_image_loss"}
    parts = [out.metrics[k] for k in ("mdm_image_loss", "mdm_text_loss", "mdm_pair_loss", "mdm_pair_image_loss")]
    assert torch.allclose(out.loss, sum(parts))
    assert out.metrics["mdm_text_loss"] == pytest.approx(float(torch.log(torch.tensor(64.0))), rel=0.3)
    batch = {k: v for k, v in mixed_batch().items() if k != "pair.patch_mask"}
    assert "mdm_pair_image_loss" not in stages.STAGE_DEFS["pretrain.mdm"].objective(_model(), batch, _task()).metrics


def test_trimming_each_part_s_padding_is_exact():
    """The objective cuts the padding columns of the texts and pairs; loss and gradients equal the untrimmed ones."""
    from vlmo_cli.model.masked_data import VLMoMaskedData
    from vlmo_cli.objectives.masked_data import masked_data_loss, pixel_target_loss

    from vlmo_cli.data.collate import trim_text_padding

    assert trim_text_padding(split_parts(mixed_batch())["pair"])["mlm_input_ids"].shape == (8, 8)
    results = []
    for trimmed in (True, False):
        model = _model()
        batch = mixed_batch()
        if trimmed:
            loss = stages.STAGE_DEFS["pretrain.mdm"].objective(model, batch, _task()).loss
        else:
            loss = masked_data_loss(VLMoMaskedData(model), split_parts(batch), pixel_target_loss(8))[0]
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (a, grads_a), (b, grads_b) = results
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-5, atol=1e-6, msg=name)


def _stage_module():
    return StageModule(_model(), stages.STAGE_DEFS["pretrain.mdm"], _task())


@pytest.mark.slow  # two spawned interpreters importing torch
def test_two_gloo_processes_compute_the_single_process_gradients(tmp_path):
    assert_ddp_equals_one_process(_stage_module, mixed_batch, tmp_path)


# ---------------------------------------------------------------------- training runs
@pytest.mark.slow  # ~30 s on an idle 2-core machine
def test_pretrain_mdm_from_the_cli_learns_every_part(in_demo, tmp_path, capsys):
    """The shipped tiny section as it is (200 steps of 32): every loss falls, and the masked-token accuracies beat
    chance (1 / vocabulary) and, clearly, always answering the data's most frequent masked token."""
    code, out, err = run(capsys, "pretrain-mdm", "tiny", *in_demo)
    assert code == 0, out + err
    run_dir = tmp_path / "runs" / "tiny-pretrain-mdm"
    for key in ("mdm_image_loss", "mdm_text_loss", "mdm_pair_loss"):
        values = train_values(run_dir, key)
        assert len(values) == 10 and values[-1] < 0.9 * values[0], (key, values)
    text_acc, pair_acc = train_values(run_dir, "mdm_text_acc")[-1], train_values(run_dir, "mdm_pair_acc")[-1]
    final = read_metrics(run_dir)[-1]
    frequent = _frequent_token_rates(in_demo)
    curves = {k: train_values(run_dir, k)[::9] for k in ("mdm_image_loss", "mdm_text_loss", "mdm_pair_loss")}
    print(f"mdm after 200 steps: text acc {text_acc:.3f} (val {final['val_mdm_text_acc']:.3f}), pair acc "
          f"{pair_acc:.3f} (val {final['val_mdm_pair_acc']:.3f}); losses first/last window {curves}; most frequent "
          f"masked token: text {frequent['text']:.3f}, pair {frequent['pair']:.3f}; uniform {1 / 160:.4f}")
    assert text_acc > 1.3 * frequent["text"] and pair_acc > 1.3 * frequent["pair"], (text_acc, pair_acc, frequent)
    assert {"val_mdm_text_acc", "val_mdm_pair_acc", "val_mdm_image_loss"} <= set(final)


def _frequent_token_rates(in_demo) -> dict[str, float]:
    labels = {"text": Counter(), "pair": Counter()}
    for _, batch in zip(range(20), mdm_loader(mdm_stage(["data.batch_size=32"], in_demo), None)):
        for kind, counts in labels.items():
            counts.update(batch[f"{kind}.mlm_labels"][batch[f"{kind}.mlm_labels"] != -100].tolist())
    return {kind: counts.most_common(1)[0][1] / sum(counts.values()) for kind, counts in labels.items()}


@pytest.mark.slow  # three short runs
def test_resume_auto_equals_the_uninterrupted_run(in_demo, tmp_path):
    common = ["pretrain.mdm.max_steps=4", "pretrain.mdm.warmup=1", "pretrain.mdm.pair_image_mask_ratio=0.4"]
    full = train(mdm_stage([*common, "pretrain.mdm.run_name=full"], in_demo))
    cut = train(mdm_stage([*common, "pretrain.mdm.run_name=cut"], in_demo), stop_after=2)
    assert cut.state.step == 2
    resumed = train(mdm_stage([*common, "pretrain.mdm.run_name=cut"], in_demo), resume="auto")
    assert resumed.state.step == 4
    a, b = load_file(full.checkpoint / "model.safetensors"), load_file(resumed.checkpoint / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert train_values(full.run_dir, "loss") == train_values(resumed.run_dir, "loss")


# ---------------------------------------------------------------------- recipe mistakes
@pytest.mark.parametrize("overrides, message", [
    (["pretrain.mdm.image_fraction=0.5"], "they must sum to 1"),
    (["pretrain.mdm.pair_dataset=[]"], "pretrain.mdm.pair_dataset: missing"),
    (["pretrain.mdm.image_fraction=0", "pretrain.mdm.pair_fraction=0.75"], "given, but image_fraction is 0"),
    (["pretrain.mdm.target=dall-e"], "pretrain.mdm.target"),
    (["pretrain.mdm.target=teacher"], "needs the teacher"),
    (["pretrain.mdm.target=vqkd"],
     'pretrain.mdm.visual_tokenizer: target = "vqkd" needs the VQ-KD tokenizer directory'),
    (["pretrain.mdm.visual_tokenizer=tok"], 'pretrain.mdm.visual_tokenizer: given, but target is "pixels"'),
    (["data.batch_size=6"], "whole number of rows"),
])
def test_bad_recipe_values_are_one_message_exit_2(in_demo, capsys, overrides, message):
    code, out, err = run(capsys, "pretrain-mdm", "tiny", *in_demo, *overrides)
    assert code == 2, out + err
    assert message in " ".join(err.split()), err
    assert "Traceback" not in err


# ---------------------------------------------------------------------- teacher targets
def _teacher_dir(tmp_path, **overrides):
    from vlmo_cli.factory import save_model

    torch.manual_seed(1)
    cfg = get_config("tiny", vocab_size=160, embed_dim=64, num_heads=4, heads=[], **overrides)
    return save_model(VLMo(cfg), tmp_path / "teacher")


def test_teacher_targets_size_the_mim_head_and_are_matched_by_cosine(tmp_path):
    from vlmo_cli.objectives.masked_data import feature_target_loss

    teacher = _teacher_dir(tmp_path)
    stage = mdm_stage([f"pretrain.mdm.teacher={teacher}", "pretrain.mdm.target=teacher"])
    cfg = stages.stage_config(stage, lambda: None)
    assert cfg.mim_target_dim == 64 and cfg.heads == ["mlm", "mim"]
    assert VLMo(cfg).mim_head.decoder.out_features == 64
    target = torch.randn(2, 16, 64)
    loss = feature_target_loss(lambda pixels: target)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, :5] = True
    assert float(loss(3.0 * target, None, mask)) == pytest.approx(0.0, abs=1e-6)  # the scale does not matter
    assert float(loss(-target, None, mask)) == pytest.approx(2.0, abs=1e-6)


@pytest.mark.slow  # ~25 s on an idle 2-core machine
def test_pretrain_mdm_learns_a_teachers_patch_features(in_demo, tmp_path, capsys):
    teacher = _teacher_dir(tmp_path)
    code, out, err = run(capsys, "pretrain-mdm", "tiny", *in_demo, "data.batch_size=16", "pretrain.mdm.max_steps=20",
                         "pretrain.mdm.log_every=5", "pretrain.mdm.warmup=2", "pretrain.mdm.target=teacher",
                         f"pretrain.mdm.teacher={teacher}", "pretrain.mdm.pair_image_mask_ratio=0.4")
    assert code == 0, out + err
    run_dir = tmp_path / "runs" / "tiny-pretrain-mdm"
    image, pair_image = train_values(run_dir, "mdm_image_loss"), train_values(run_dir, "mdm_pair_image_loss")
    print(f"teacher-feature loss (1 - cos) per 5 steps: images {image}, pairs' images {pair_image}")
    assert len(image) == 4 and image[-1] < 0.7 * image[0], image
    assert len(pair_image) == 4 and pair_image[-1] < 0.7 * pair_image[0], pair_image
    weights = load_file(run_dir / "checkpoints" / "step_20" / "model.safetensors")
    assert weights["mim_head.decoder.weight"].shape == (64, 128)
    assert not any(k.startswith("teacher") for k in weights)  # the teacher is never part of the student


@pytest.mark.parametrize("make, message", [
    (lambda tmp: tmp / "nowhere", "no such model directory"),
    (lambda tmp: _teacher_dir(tmp, patch_size=16), "the patch grids must be the same"),
])
def test_an_unusable_teacher_is_one_message_exit_2(in_demo, tmp_path, capsys, make, message):
    code, out, err = run(capsys, "pretrain-mdm", "tiny", *in_demo, "pretrain.mdm.target=teacher",
                         f"pretrain.mdm.teacher={make(tmp_path)}")
    assert code == 2, out + err
    assert message in " ".join(err.split()) and "Traceback" not in err, err


# ---------------------------------------------------------------------- visual-token targets (BEiT v2's VQ-KD)
def test_vqkd_targets_size_the_mim_head_to_the_codebook(tmp_path):
    stage = mdm_stage([f"pretrain.mdm.visual_tokenizer={vqkd_dir(tmp_path)}", "pretrain.mdm.target=vqkd"])
    cfg = stages.stage_config(stage, lambda: None)
    assert cfg.mim_target_dim == 64 and VLMo(cfg).mim_head.decoder.out_features == 64


def test_the_objective_scores_the_tokenizer_s_ids_of_the_whole_image(tmp_path):
    """The image loss is the cross-entropy of the MIM head at the masked patches against the tokenizer's ids of the
    unmasked pixels; the masked-token accuracies are reported for images and pairs' images."""
    from vlmo_cli.factory import load_vqkd
    from vlmo_cli.model.vqkd import tokenizer_input
    from vlmo_cli.data.transforms import MEAN, STD

    directory = vqkd_dir(tmp_path)
    torch.manual_seed(0)
    model = VLMo(get_config("tiny", vocab_size=64, drop_path_rate=0.0, text_dropout=0.0, heads=["mlm", "mim"],
                            mim_target_dim=64)).eval()
    batch = mixed_batch()
    out = stages.STAGE_DEFS["pretrain.mdm"].objective(model, batch, _task(target="vqkd", visual_tokenizer=directory))
    assert {"mdm_image_acc", "mdm_pair_image_acc"} <= set(out.metrics)
    pixels, mask = batch["image.pixel_values"], batch["image.patch_mask"]
    with torch.no_grad():
        ids = load_vqkd(directory).tokenize(tokenizer_input(pixels, MEAN, STD))
        logits = model.mim_head(model.forward_image(pixels, patch_mask=mask).features[:, 1:])
    expected = torch.nn.functional.cross_entropy(logits[mask], ids[mask])
    assert float(out.metrics["mdm_image_loss"]) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.slow  # ~20 s on an idle 2-core machine
def test_pretrain_mdm_learns_vqkd_visual_tokens(in_demo, tmp_path, capsys):
    tokenizer = vqkd_dir(tmp_path)
    code, out, err = run(capsys, "pretrain-mdm", "tiny", *in_demo, "data.batch_size=16", "pretrain.mdm.max_steps=20",
                         "pretrain.mdm.log_every=5", "pretrain.mdm.warmup=2", "pretrain.mdm.target=vqkd",
                         f"pretrain.mdm.visual_tokenizer={tokenizer}", "pretrain.mdm.pair_image_mask_ratio=0.4")
    assert code == 0, out + err
    run_dir = tmp_path / "runs" / "tiny-pretrain-mdm"
    image, acc = train_values(run_dir, "mdm_image_loss"), train_values(run_dir, "mdm_image_acc")
    pair_image = train_values(run_dir, "mdm_pair_image_loss")
    print(f"visual-token cross-entropy per 5 steps: images {image}, pairs' images {pair_image}; accuracy {acc}")
    assert len(image) == 4 and image[-1] < 0.7 * image[0], image
    assert len(pair_image) == 4 and sum(pair_image[2:]) / 2 < 0.7 * pair_image[0], pair_image
    assert len(acc) == 4 and all(0.0 <= a <= 1.0 for a in acc)
    assert {"val_mdm_image_acc", "val_mdm_pair_image_acc"} <= set(read_metrics(run_dir)[-1])
    weights = load_file(run_dir / "checkpoints" / "step_20" / "model.safetensors")
    assert weights["mim_head.decoder.weight"].shape == (64, 128)
    assert not any(k.startswith(("encoder.", "quantize.", "encode_task_layer.")) for k in weights)


@pytest.mark.parametrize("make, message", [
    (lambda tmp: tmp / "nowhere", "no such VQ-KD tokenizer directory"),
    (lambda tmp: _teacher_dir(tmp), "not a VQ-KD tokenizer config"),
    (lambda tmp: _tokenizer_of_another_grid(tmp), "the patch grids must be the same"),
])
def test_an_unusable_visual_tokenizer_is_one_message_exit_2(in_demo, tmp_path, capsys, make, message):
    code, out, err = run(capsys, "pretrain-mdm", "tiny", *in_demo, "pretrain.mdm.target=vqkd",
                         f"pretrain.mdm.visual_tokenizer={make(tmp_path)}")
    assert code == 2, out + err
    assert message in " ".join(err.split()) and "Traceback" not in err, err


def _tokenizer_of_another_grid(tmp_path):
    """The fixture's tokenizer with its config claiming 16 px patches (64 px images): a 4×4 grid of other pixels."""
    import json

    directory = vqkd_dir(tmp_path)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "patch_size": 16, "image_size": 64}))
    return directory


@pytest.mark.slow  # two torchrun processes
def test_pretrain_mdm_under_torchrun_with_two_processes(demo_root, tmp_path):
    """The real loop under DDP (gloo): each process draws its share of every part (batch 16 = 2 × (2 images,
    2 texts, 4 pairs)), no trained parameter goes without a gradient, one checkpoint is written."""
    import json
    import subprocess
    import sys

    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "vlmo_cli", "pretrain-mdm", "tiny", "pretrain.mdm.max_steps=3", "train.log_every=1",
           "data.batch_size=16", "pretrain.mdm.pair_image_mask_ratio=0.4", f"train.output_dir={runs}",
           "--run-name", "ddp"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=demo_root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 process(es) × 8" in " ".join(proc.stdout.split())
    run_dir = runs / "ddp"
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_3"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "mdm_pair_image_loss" in r and "val_loss" not in r] == [1, 2, 3]


def test_validation_batches_keep_the_mix_within_64_rows():
    from vlmo_cli.train.mdm import validation_sizes

    assert validation_sizes(mdm_stage()) == {"image": 2, "text": 2, "pair": 4}
    thirds = ["data.batch_size=1536", "pretrain.mdm.image_fraction=0.3333333333333333",
              "pretrain.mdm.text_fraction=0.3333333333333333", "pretrain.mdm.pair_fraction=0.3333333333333334"]
    assert validation_sizes(mdm_stage(thirds)) == {"image": 21, "text": 21, "pair": 21}
