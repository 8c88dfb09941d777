"""Datasets smaller than one batch: training keeps the one smaller batch where the objective allows it, else one line
"DATASET has N samples, fewer than the batch of M; lower data.batch_size" (exit 2) — never a bare StopIteration."""

from __future__ import annotations

from helpers import export_pairs, run

from vlmo_cli.data.store import open_prepared


def prepare_pairs(capsys, demo_root, tmp_path, n, *extra):
    source = export_pairs(demo_root, tmp_path, n, label="--label-col" in extra)
    code, _, err = run(capsys, "prepare", "pairs", str(source), "--format", "jsonl", "--tokenizer",
                       str(demo_root / "demo_data" / "tokenizer"), "--out", str(tmp_path / "data"), "--no-progress",
                       *extra)
    assert code == 0, err
    return tmp_path / "data"


def test_two_images_train_stage1_with_a_smaller_batch(demo_root, tmp_path, capsys):
    export_pairs(demo_root, tmp_path, 2)
    code, _, err = run(capsys, "prepare", "images", str(tmp_path / "images"), "--out", str(tmp_path / "imgs"),
                       "--no-progress")
    assert code == 0, err
    code, _, err = run(capsys, "pretrain-vision", "tiny", f"pretrain.vision.dataset={tmp_path / 'imgs'}",
                       "pretrain.vision.max_steps=2", "train.log_every=1", f"train.output_dir={tmp_path / 'runs'}")
    assert code == 0, err


def test_one_pair_is_too_few_for_contrastive_pretraining(demo_root, tmp_path, capsys):
    data = prepare_pairs(capsys, demo_root, tmp_path, 1)
    code, _, err = run(capsys, "pretrain-vl", "tiny", f"pretrain.vl.dataset={data}", "pretrain.vl.init=",
                       "pretrain.vl.max_steps=2", f"train.output_dir={tmp_path / 'runs'}")
    assert code == 2
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"{data} (train) has 1 samples, fewer than the batch of 32; lower data.batch_size" in err


def test_small_labelled_set_finetunes_classify_and_data_without_tokenizer_uses_the_init_models(
        demo_root, tmp_path, capsys):
    data = prepare_pairs(capsys, demo_root, tmp_path, 5, "--label-col", "label")
    code, _, err = run(capsys, "finetune", "classify", "tiny", f"finetune.classify.dataset={data}",
                       "finetune.classify.init=", "finetune.classify.max_steps=2", "train.log_every=1",
                       f"train.output_dir={tmp_path / 'runs'}")
    assert code == 0, err
    # the same rows prepared without --tokenizer (as the recipe's comment shows): the init model's tokenizer is used
    code, _, err = run(capsys, "prepare", "pairs", str(tmp_path / "data.jsonl"), "--format", "jsonl", "--label-col",
                       "label", "--out", str(tmp_path / "plain"), "--no-progress")
    assert code == 0, err
    assert open_prepared(tmp_path / "plain").tokenizer_path is None
    code, _, err = run(capsys, "finetune", "classify", "tiny", f"finetune.classify.dataset={tmp_path / 'plain'}",
                       f"finetune.classify.init={tmp_path / 'runs' / 'tiny-finetune-classify'}",
                       "finetune.classify.max_steps=1", f"train.output_dir={tmp_path / 'runs2'}")
    assert code == 0, err
    saved = tmp_path / "runs2" / "tiny-finetune-classify" / "checkpoints" / "step_1"
    assert (saved / "vocab.txt").read_text() == (demo_root / "demo_data" / "tokenizer" / "vocab.txt").read_text()
    # nothing to take it from: one line saying where a tokenizer can come from
    code, _, err = run(capsys, "finetune", "classify", "tiny", f"finetune.classify.dataset={tmp_path / 'plain'}",
                       "finetune.classify.init=", "finetune.classify.max_steps=1",
                       f"train.output_dir={tmp_path / 'runs3'}")
    assert code == 2 and "needs a tokenizer" in err and "--tokenizer" in err
