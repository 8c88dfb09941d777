"""Periodic validation during training (main process): the stage's objective and metrics on a held-out split,
and retrieval recall for the image-text stages."""

from __future__ import annotations

import torch

from ..errors import DataError
from ..model.family import has_task_head
from ..objectives.distributed import local_only

MAX_VAL_BATCHES = 20


@torch.no_grad()
def validate(module, stage, stage_def, device, tokenizer, max_batches: int = MAX_VAL_BATCHES) -> dict[str, float]:
    """Mean of the objective's metrics over up to ``max_batches`` validation batches (eval transforms, fixed order);
    ``val_tr_r1`` … for ``pretrain.vl`` and retrieval fine-tuning. Empty when the dataset has no such split."""
    from ..data.loader import build_dataloader
    from ..data.shards import is_shard_entry
    from ..data.store import open_prepared

    if stage_def.validate is not None:  # a stage with its own validation (mixed batches)
        return stage_def.validate(module, stage, device, tokenizer, max_batches)
    task, dcfg = stage.task, stage.data
    path = task.val_dataset or task.dataset[0]
    if is_shard_entry(path):  # streamed training data: validation needs a prepared val_dataset
        return {}
    prepared = open_prepared(path)
    if task.val_split not in prepared.splits:
        return {}
    model = module.model
    was_training = module.training
    module.eval()
    out: dict[str, float] = {}
    # main process only: no collectives (local_only), and the training RNG streams must not shift (fork_rng)
    with local_only(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        loader = build_dataloader(
            path, task.val_split, stage_def.data_task, tokenizer=tokenizer, image_size=dcfg.image_size,
            batch_size=max(2, min(dcfg.batch_size, 64)), train=False, max_text_len=dcfg.max_text_len,
            mlm=stage_def.mlm, mim=stage_def.mim, patch_size=model.config.patch_size, mim_ratio=dcfg.mim_mask_ratio,
            drop_last=stage_def.data_task == "pairs",
        )
        sums: dict[str, float] = {}
        n = 0
        for i, batch in enumerate(loader):
            if i >= max_batches:
                break
            batch = {k: v.to(device) for k, v in batch.items() if k != "num_skipped"}
            if not batch or next(iter(batch.values())).shape[0] < 2:
                continue
            res = stage_def.objective(model, batch, task)
            for k, v in {"loss": res.loss, **res.metrics}.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            n += 1
        out = {f"val_{k}": v / n for k, v in sums.items()} if n else {}
        if stage_def.data_task == "pairs" and has_task_head(model, "retrieval"):
            try:
                from ..evaluate.retrieval import retrieval_recall

                recall = retrieval_recall(model, path, task.val_split, tokenizer=tokenizer, image_size=dcfg.image_size,
                                          max_text_len=dcfg.max_text_len, device=device)
                out.update({f"val_{k}": v for k, v in recall.metrics.items()})
            except DataError:
                pass
    module.train(was_training)
    return out
