"""Fine-tuning on users' own labelled image-text data: ``vlmo prepare pairs --label-col`` -> ``vlmo finetune
classify`` (fusion encoder + a fresh classification head sized by the prepared class names)."""

from __future__ import annotations

from helpers import export_pairs, run
from safetensors.torch import load_file

from vlmo_cli.data.store import open_prepared
from vlmo_cli.train.monitor import read_metrics


def test_prepare_labelled_pairs_then_finetune_classify(demo_root, tmp_path, capsys):
    export_pairs(demo_root, tmp_path, 120, label=True)
    code, out, err = run(capsys, "prepare", "pairs", str(tmp_path / "data.jsonl"), "--format", "jsonl",
                         "--image-col", "image", "--caption-col", "caption", "--label-col", "label",
                         "--val-fraction", "0.2", "--tokenizer", str(demo_root / "demo_data" / "tokenizer"),
                         "--out", str(tmp_path / "cls"), "--no-progress")
    assert code == 0, err
    assert open_prepared(tmp_path / "cls").label_names == ["circle", "square", "triangle"]

    code, out, err = run(capsys, "finetune", "classify", "tiny", f"finetune.classify.dataset={tmp_path / 'cls'}",
                         "finetune.classify.init=", "finetune.classify.max_steps=8", "train.log_every=4",
                         "data.batch_size=16", f"train.output_dir={tmp_path / 'runs'}")
    assert code == 0, err
    run_dir = tmp_path / "runs" / "tiny-finetune-classify"
    weights = load_file(run_dir / "checkpoints" / "step_8" / "model.safetensors")
    assert weights["classify_head.3.weight"].shape[0] == 3  # one row per class name
    logged = [m for m in read_metrics(run_dir) if "cls_loss" in m]
    assert logged and all(0 <= m["cls_acc"] <= 1 for m in logged)
    assert any("val_cls_acc" in m for m in read_metrics(run_dir))
