"""``vlmo bench``: the command runs on the tiny recipe and writes every field; the library pieces behave.

No timing assertions: the machine running the suite is shared and its timings are noise.
"""

from __future__ import annotations

import json

import pytest
import torch

from vlmo_cli.bench import (
    BenchSettings,
    TrainingStepper,
    default_peak_tflops,
    run_bench,
    summarise,
    synthetic_batch,
    train_flops_per_sample,
)
from vlmo_cli.cli.app import main
from vlmo_cli.config.schema import STAGES
from vlmo_cli.model.config import get_config
from vlmo_cli.model.flops import path_flops


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads and lose a lot to thread barriers on a loaded machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_cli_bench_vl_writes_json(tmp_path, capsys):
    out = tmp_path / "out.json"
    main(["bench", "tiny", "model.vocab_size=500", "--stage", "vl", "--steps", "2", "--warmup", "1",
          "--json", str(out)])
    printed = capsys.readouterr().out
    assert "samples/s" in printed and "forward" in printed
    data = json.loads(out.read_text())
    assert data["section"] == "pretrain.vl" and data["stage"] == "vl"
    assert data["batch"] == 8 and data["precision"] == "no"
    for phase in ("data", "forward", "backward", "optimizer", "step"):
        assert data["times"][phase] >= 0
    assert data["times"]["forward"] > 0 and data["samples_per_s"] >= data["extra"]["samples_per_s_with_data"] > 0
    assert data["flops_per_sample"] == train_flops_per_sample(
        "pretrain.vl", get_config("tiny", max_text_len=16, vocab_size=500), None, 16)
    assert data["peak_memory_mb"] > 0 and data["memory_kind"]
    assert data["mfu"] is None  # CPU: no known peak
    assert data["model"]["image_size"] == 32 and data["model"]["text_len"] == 16
    assert 0 < data["model"]["trainable"] <= data["model"]["parameters"]


def test_cli_bench_text_tokens_and_untrimmed(tmp_path, capsys):
    """Short synthetic texts: the step runs at the trimmed length (and the FLOPs follow it) unless --untrimmed."""
    runs = {}
    for flag in ([], ["--untrimmed"]):
        out = tmp_path / f"t{len(flag)}.json"
        main(["bench", "tiny", "model.vocab_size=500", "--text-tokens", "3-6", "--steps", "1", "--warmup", "0",
              "--json", str(out), *flag])
        runs[bool(flag)] = json.loads(out.read_text())
    cfg = get_config("tiny", max_text_len=16, vocab_size=500)
    assert runs[False]["extra"]["text_len_run"] == 8 and runs[True]["extra"]["text_len_run"] == 16
    assert runs[False]["flops_per_sample"] == train_flops_per_sample("pretrain.vl", cfg, None, 8)
    assert runs[True]["settings"]["implementation"] == "optimised+untrimmed"
    with pytest.raises(SystemExit) as exc:
        main(["bench", "tiny", "--text-tokens", "9-4"])
    assert exc.value.code == 2 and "--text-tokens takes MIN-MAX" in capsys.readouterr().err


def test_compiled_bench_step_buckets_the_text_length():
    """Building a compiled step is lazy (nothing compiles until the first call): check the wiring, not the compiler."""
    stepper = TrainingStepper(BenchSettings("tiny", stage="vl", batch=2, compile=True,
                                            overrides=("model.vocab_size=500",)))
    assert isinstance(stepper.module, torch._dynamo.eval_frame.OptimizedModule)
    assert stepper.module.length_buckets == 4 and stepper.module.trim_padding


def test_cli_bench_rejects_unknown_stage(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "tiny", "--stage", "pretrain"])
    assert exc.value.code == 2
    assert "eval-retrieval" in capsys.readouterr().err


def test_peak_tflops_gives_mfu_and_reference_runs():
    result = run_bench(BenchSettings("tiny", stage="vl", batch=4, steps=1, warmup=0, peak_tflops=1.0,
                                     overrides=("model.vocab_size=500",), implementation="reference"))
    assert result.mfu == pytest.approx(result.achieved_tflops / 1.0)
    assert result.achieved_tflops == pytest.approx(result.flops_per_sample * result.samples_per_s / 1e12)


#: every benchmarked training stage of the one list but vl (run by the command tests above)
TRAINING_BENCH_STAGES = [s.bench for s in STAGES.values() if s.bench and s.kind == "train" and s.bench != "vl"]


@pytest.mark.parametrize("stage", TRAINING_BENCH_STAGES)
def test_every_training_stage_runs_one_step(stage):
    batch = 4 if stage == "mdm" else 2  # the mix of 1/4 images, 1/4 texts, 1/2 pairs needs 4 rows
    settings = BenchSettings("tiny", stage=stage, batch=batch, overrides=("model.vocab_size=500",))
    stepper = TrainingStepper(settings)
    times = stepper.step()
    assert set(times) == {"data", "forward", "backward", "optimizer", "compute", "step"}
    assert times["step"] >= times["forward"] > 0


def test_eval_retrieval_bench_small(tmp_path):
    out = tmp_path / "r.json"
    main(["bench", "tiny", "model.vocab_size=500", "--stage", "eval-retrieval", "--num-images", "12", "--batch", "16",
          "--rerank-k", "2", "--rerank-queries", "3", "--json", str(out)])
    data = json.loads(out.read_text())
    assert data["extra"]["num_images"] == 12 and data["extra"]["num_texts"] == 60
    for key in ("encode_images_s", "encode_texts_s", "encode_s", "rank_s", "rerank_measured_s", "rerank_s"):
        assert data["times"][key] > 0, key
    assert data["extra"]["rerank_extrapolated"] is True
    assert data["extra"]["rerank_pairs_measured"] == (3 + 15) * 2
    assert data["extra"]["rerank_pairs_full"] == (12 + 60) * 2
    assert data["times"]["rerank_s"] == pytest.approx(data["times"]["rerank_measured_s"] * 144 / 36)


def test_synthetic_pairs_batch_has_padding_and_masks():
    cfg = get_config("tiny", vocab_size=500)
    batch = synthetic_batch("pairs", cfg, 16, 16, 32, torch.Generator().manual_seed(0))
    mask, ids, labels = batch["attention_mask"], batch["input_ids"], batch["mlm_labels"]
    assert batch["pixel_values"].shape == (16, 3, 32, 32)
    assert (ids[mask == 0] == 0).all() and not bool(mask.all()) and (mask[:, 0] == 1).all()
    assert ids.max() < 500
    assert ((labels != -100).sum(1) >= 1).all()
    assert (labels[mask == 0] == -100).all()
    assert (batch["mlm_input_ids"][labels != -100] == 4).all()
    vision = synthetic_batch("images", cfg, 3, 16, 32, torch.Generator().manual_seed(0))
    assert vision["patch_mask"].shape == (3, 16) and vision["patch_mask"].sum(1).min() >= 1


def test_synthetic_mixed_batch_has_the_loader_s_keys_and_mix(demo_root, monkeypatch):
    """The masked-data-modelling benchmark feeds what the mixed loader gives: the same keys and shapes, the recipe's
    rows per part and mask rates."""
    from vlmo_cli.config.recipe import load_recipe
    from vlmo_cli.train.mdm import mdm_loader

    monkeypatch.chdir(demo_root)
    stage = load_recipe("tiny", ["data.batch_size=16", "pretrain.mdm.pair_image_mask_ratio=0.5"]).resolve(
        "pretrain.mdm")
    real = next(iter(mdm_loader(stage, None)))
    cfg = get_config("tiny", vocab_size=160)
    fake = synthetic_batch("mixed", cfg, 16, 16, 32, torch.Generator().manual_seed(0), task=stage.task)
    assert set(fake) == set(real) - {"num_skipped", "num_samples"}
    for key, value in fake.items():
        assert value.dtype == real[key].dtype and value.shape[0] == real[key].shape[0], key
        assert value.shape[1:] == real[key].shape[1:] or key.endswith(("input_ids", "attention_mask", "labels")), key
    for key in ("image.patch_mask", "pair.patch_mask"):  # 6 and 8 of 16 patches in every row, as the loader
        assert torch.equal(fake[key].sum(1), real[key].sum(1)), key
    text_rate = (fake["pair.mlm_labels"] != -100).sum() / fake["pair.attention_mask"].sum()
    assert 0.3 < float(text_rate) < 0.6


def test_beit3_masked_data_modelling_bench_runs_one_step():
    stepper = TrainingStepper(BenchSettings("beit3_tiny", stage="mdm", batch=4))
    assert stepper.step()["step"] > 0 and type(stepper.model).__name__ == "Beit3"


def test_flops_and_peaks():
    cfg = get_config("base")
    f = path_flops(cfg, 40)
    vl = train_flops_per_sample("pretrain.vl", cfg, None, 40)
    assert vl == pytest.approx(3 * (4 * f["pair (fusion encoder)"] + f["image (dual encoder)"] + f["text (dual encoder)"]
                                    + f["image VL branch (extra)"] + f["text VL branch (extra)"] + f["MLM head (per text)"]))
    assert train_flops_per_sample("finetune.nlvr2", cfg, None, 40) == 6 * f["pair (fusion encoder)"]
    assert default_peak_tflops(torch.device("cpu"), "bf16") is None
    assert summarise([{"step": 1.0}, {"step": 9.0}, {"step": 2.0}]) == {"step": 2.0}


def test_bench_builds_the_model_training_builds(demo_root, monkeypatch):
    """The bench builds through train.build: with the recipe's prepared data at hand, the VQA head has the prepared
    answer count, as in training (and the recipe's [model] count without it)."""
    from vlmo_cli.data.store import open_prepared

    settings = BenchSettings("tiny", stage="vqa", batch=2, overrides=("model.vocab_size=500",))
    assert TrainingStepper(settings).cfg.vqa_num_answers == get_config("tiny").vqa_num_answers
    monkeypatch.chdir(demo_root)
    answers = len(open_prepared("demo_data/vqa").answers)
    stepper = TrainingStepper(settings)
    assert stepper.cfg.vqa_num_answers == answers != get_config("tiny").vqa_num_answers
    assert stepper.model.vqa_classifier[-1].out_features == answers
