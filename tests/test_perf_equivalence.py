"""The optimised stage-3 step (``vl_objective``: SDPA, one batched ITM fusion pass, shared VL-branch trunk, text padding
trimmed) computes the same losses and gradients as the straightforward oracle (``reference_vl_step``: manual attention,
four fusion passes, padded text) given the same hard negatives, to 1e-5 in fp32; trimming the padding is exact for
every other stage too."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from vlmo_cli.bench import synthetic_batch
from vlmo_cli.data.collate import text_extent, trim_text_padding
from vlmo_cli.model.config import get_config
from vlmo_cli.model.vlmo import VLMo
from vlmo_cli.objectives.matching import HardNegatives
from vlmo_cli.config.recipe import load_recipe
from vlmo_cli.train import stages
from vlmo_cli.train.build import StageModule
from vlmo_cli.bench.reference_step import reference_vl_step

HEADS = ["pooler", "itc", "itc_vl", "itm", "mlm"]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a loaded 2-core machine the thread barriers make them
    many times slower: run this file single-threaded, then restore the suite's setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def fixed_negatives(logits_i2t, logits_t2i, local_batch, **_) -> HardNegatives:
    """A deterministic choice (never the positive): text b gets image b+1, image b gets text b+2."""
    pool = logits_i2t.shape[1]
    rows = torch.arange(local_batch, device=logits_i2t.device)
    return HardNegatives(image_index=(rows + 1) % pool, text_index=(rows + 2) % pool)


def _model(**arch) -> VLMo:
    """A tiny model in train mode (dropout and drop-path off) with every weight perturbed away from its init, so
    that the pooled features, ITM head and position table all matter."""
    torch.manual_seed(0)
    cfg = get_config("tiny", max_text_len=12, vocab_size=300, drop_path_rate=0.0, heads=HEADS, **arch)
    model = VLMo(cfg).train()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _grads(model: VLMo) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _step(fn, model: VLMo, batch, task):
    model.zero_grad(set_to_none=True)
    out = fn(model, batch, task)
    out.loss.backward()
    return out, _grads(model)


def _stage_module_step(model, batch, task, trim: bool = True):
    """The training step as the loop runs it (``StageModule``: padding trimmed first), as an objective."""
    loss, metrics = StageModule(model, stages.STAGE_DEFS["pretrain.vl"], task, trim_padding=trim)(batch)
    return stages.StepOutput(loss, metrics)


@pytest.mark.parametrize(
    "arch, checkpointing, itc_vl, text_tokens",
    [
        ({}, False, True, None),  # relative positions, layer scale (base/large layout), little shared padding
        ({}, False, True, (3, 7)),  # ... short texts: every row's padding past column 8 is trimmed
        ({"relative_position": False, "layer_scale_init": None}, True, False, (3, 7)),  # base_plus layout, ckpt
    ],
)
def test_optimised_step_matches_reference(monkeypatch, arch, checkpointing, itc_vl, text_tokens):
    model = _model(**arch)
    cfg = model.config
    model.set_grad_checkpointing(checkpointing)
    task = dataclasses.replace(load_recipe("tiny").resolve("pretrain.vl").task, itc_vl=itc_vl)
    batch = synthetic_batch("pairs", cfg, 6, 12, cfg.image_size, torch.Generator().manual_seed(1), text_tokens)
    assert not bool(batch["attention_mask"].all()), "the batch must contain padding"
    if text_tokens:
        assert text_extent(batch) == 8, "the optimised step must run on trimmed text"
    monkeypatch.setattr(stages, "sample_hard_negatives", fixed_negatives)

    fast, fast_grads = _step(_stage_module_step, model, batch, task)
    ref, ref_grads = _step(lambda m, b, t: reference_vl_step(m, b, t, sampler=fixed_negatives), model, batch, task)

    torch.testing.assert_close(fast.loss, ref.loss, rtol=1e-5, atol=1e-5)
    for key in ("itc_loss", "itm_loss", "mlm_loss"):
        torch.testing.assert_close(fast.metrics[key], ref.metrics[key], rtol=1e-5, atol=1e-5, msg=key)
    assert fast_grads.keys() == ref_grads.keys()
    assert len(fast_grads) > 50
    for name in ref_grads:
        torch.testing.assert_close(fast_grads[name], ref_grads[name], rtol=1e-5, atol=1e-5, msg=name)


def test_reference_step_detects_a_different_computation(monkeypatch):
    """Guard against a vacuous comparison: other negatives change the ITM loss."""
    model = _model()
    cfg = model.config
    task = load_recipe("tiny").resolve("pretrain.vl").task
    batch = synthetic_batch("pairs", cfg, 6, 12, cfg.image_size, torch.Generator().manual_seed(1))

    def other(li2t, lt2i, b, **_):
        rows = torch.arange(b)
        return HardNegatives(image_index=(rows + 3) % b, text_index=(rows + 4) % b)

    with torch.no_grad():
        a = reference_vl_step(model, batch, task, sampler=fixed_negatives)
        b = reference_vl_step(model, batch, task, sampler=other)
    assert not torch.allclose(a.metrics["itm_loss"], b.metrics["itm_loss"], atol=1e-6)


def test_text_extent_and_trimming():
    mask = torch.zeros(3, 40, dtype=torch.long)
    mask[0, :5], mask[1, :11], mask[2, :3] = 1, 1, 1
    labels = torch.full((3, 40), -100)
    batch = {"attention_mask": mask, "input_ids": mask * 7, "mlm_labels": labels, "pixel_values": torch.zeros(3, 3, 4, 4)}
    assert text_extent(batch) == 12 and text_extent(batch, multiple=8) == 16 and text_extent(batch, multiple=1) == 11
    labels[2, 17] = 9  # a label past every real token (never produced by the collators) keeps its column
    assert text_extent(batch, multiple=1) == 18
    trimmed = trim_text_padding(batch)
    assert {k: tuple(v.shape) for k, v in trimmed.items()} == {
        "attention_mask": (3, 20), "input_ids": (3, 20), "mlm_labels": (3, 20), "pixel_values": (3, 3, 4, 4)}
    assert trim_text_padding({"pixel_values": torch.zeros(1)}) == {"pixel_values": torch.zeros(1)}
    full = {"attention_mask": torch.ones(2, 12, dtype=torch.long)}
    assert text_extent(full) == 12 and trim_text_padding(full) is full  # rounding never exceeds the padded length


def test_compiled_steps_see_few_text_lengths():
    """Under torch.compile the trimmed length is one of 4 buckets (each new shape recompiles the step)."""
    from vlmo_cli.train.padding import bucket_length, trimmed_length

    assert [bucket_length(n, 40, 4) for n in (1, 10, 11, 24, 31, 40)] == [10, 10, 20, 30, 40, 40]
    assert {bucket_length(n, 196, 4) for n in range(1, 197)} == {49, 98, 147, 196}
    mask = torch.zeros(2, 40, dtype=torch.long)
    mask[0, :13] = 1
    assert trimmed_length({"attention_mask": mask}) == 16 and trimmed_length({"attention_mask": mask}, 4) == 20
    assert trimmed_length({"pixel_values": torch.zeros(1)}, 4) is None


def _one_stage_per_text_objective() -> list[str]:
    """The first stage of each objective that reads text, but stage 3 (compared with its oracle above) and the
    stages of mixed batches (their objective trims each part itself: tests/test_pretrain_mdm.py)."""
    first = {}
    for name, stage_def in stages.STAGE_DEFS.items():
        if stage_def.data_task != "images" and name != "pretrain.vl" and stage_def.loader is None:
            first.setdefault(stage_def.objective, name)
    return list(first.values())


@pytest.mark.parametrize("section", _one_stage_per_text_objective())
def test_trimming_the_padding_is_exact_for_every_stage(monkeypatch, section):
    """Loss and every gradient equal with and without trimming (ITM hard negatives fixed for the retrieval task)."""
    stage = load_recipe("tiny").resolve(section)
    stage_def = stages.STAGE_DEFS[section]
    task = stage.task
    if section.startswith("finetune.retrieval"):
        task = dataclasses.replace(task, with_itm=True)
    torch.manual_seed(0)
    base = get_config("tiny", max_text_len=24, vocab_size=300, drop_path_rate=0.0, text_dropout=0.0)
    cfg = stages.stage_model_config(stage_def, base, task, num_answers=7, num_classes=3)
    model = VLMo(cfg).train()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    batch = synthetic_batch(stage_def.data_task, cfg, 6, 24, cfg.image_size, torch.Generator().manual_seed(2), (3, 9))
    assert text_extent(batch) < 24
    monkeypatch.setattr(stages, "sample_hard_negatives", fixed_negatives)

    def objective(trim):
        def run(m, b, t):
            loss, metrics = StageModule(m, stage_def, t, trim_padding=trim)(b)
            return stages.StepOutput(loss, metrics)
        return run

    trimmed, trimmed_grads = _step(objective(True), model, batch, task)
    padded, padded_grads = _step(objective(False), model, batch, task)
    torch.testing.assert_close(trimmed.loss, padded.loss, rtol=1e-5, atol=1e-6)
    assert trimmed_grads.keys() == padded_grads.keys() and len(trimmed_grads) > 20
    for name in padded_grads:
        torch.testing.assert_close(trimmed_grads[name], padded_grads[name], rtol=1e-5, atol=1e-6, msg=name)
