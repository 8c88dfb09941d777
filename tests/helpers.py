"""Helpers shared by the test modules (importable because pytest puts this folder on ``sys.path``)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

from vlmo_cli.cli.app import main


def run(capsys, *args: str) -> tuple[int, str, str]:
    """Run the ``vlmo`` CLI in-process; returns (exit code, stdout, stderr)."""
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def export_pairs(demo_root, tmp_path, n: int, label: bool = False):
    """The first ``n`` demo pairs as image files and a JSONL list (with the shape as label when ``label``)."""
    from vlmo_cli.data.store import open_prepared

    rows = open_prepared(demo_root / "demo_data" / "pairs").split("train").select(range(n))
    lines = []
    for i, row in enumerate(rows):
        path = tmp_path / "images" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(row["image"]["bytes"])
        caption = row["captions"][0]
        item = {"image": str(path), "caption": caption}
        if label:  # the class to learn
            item["label"] = next(s for s in ("circle", "square", "triangle") if s in caption)
        lines.append(json.dumps(item))
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path / "data.jsonl"


#: the tiny VQ-KD tokenizer written by unilm's beit2 code (tests/fixtures/vqkd/README.md): 32 px images in 8 px
#: patches, width 32, 2 blocks, 4 heads, 64 codes of 8 dimensions; its state dict in the released key layout
VQKD_FIXTURE = Path(__file__).resolve().parent / "fixtures" / "vqkd"


def released_vqkd(tmp_path, name: str = "vqkd.pth", container: str = "model", **changes) -> Path:
    """The fixture's state dict saved as a released file would be (``{container: state}``), with ``changes``
    applied (a key mapped to ``None`` is deleted)."""
    import torch
    from safetensors.torch import load_file

    state = load_file(str(VQKD_FIXTURE / "state.safetensors"))
    for key, value in changes.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    path = tmp_path / name
    torch.save({container: state} if container else state, path)
    return path


def vqkd_dir(tmp_path) -> Path:
    """The fixture's tokenizer converted into a tokenizer directory (``tmp_path / "vqkd"``)."""
    from vlmo_cli.factory import convert_vqkd

    return convert_vqkd(released_vqkd(tmp_path), tmp_path / "vqkd", num_heads=4)


# ---------------------------------------------------------------------- DDP against one process
def gradients(module, batch) -> tuple[float, dict]:
    """One forward and backward of a step module ``(loss, metrics) = module(batch)``: the loss and the gradient of
    every parameter that got one (names without DDP's ``module.`` prefix)."""
    module.zero_grad(set_to_none=True)
    loss, _ = module(batch)
    loss.backward()
    return float(loss.detach()), {n.removeprefix("module."): p.grad.detach().clone()
                                  for n, p in module.named_parameters() if p.grad is not None}


def _ddp_worker(rank: int, port: int, out_dir: str, world: int, make_module, make_batch) -> None:
    import os

    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    batch = {k: v.chunk(world)[rank] for k, v in make_batch().items()}
    loss, grads = gradients(torch.nn.parallel.DistributedDataParallel(make_module()), batch)
    losses = [None] * world
    dist.all_gather_object(losses, loss)
    if rank == 0:
        torch.save((sum(losses) / world, grads), os.path.join(out_dir, "ddp.pt"))
    dist.destroy_process_group()


def assert_ddp_equals_one_process(make_module, make_batch, tmp_path, world: int = 2) -> None:
    """``world`` gloo processes, each with ``make_module()`` and its row share of ``make_batch()``, compute the mean
    loss and the gradients of one process on the whole batch (``make_*``: module-level functions, as they are
    pickled into the spawned interpreters)."""
    import socket

    import pytest
    import torch
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(port, str(tmp_path), world, make_module, make_batch), nprocs=world, join=True)
    ddp_loss, ddp_grads = torch.load(tmp_path / "ddp.pt")
    loss, grads = gradients(make_module(), make_batch())
    assert ddp_loss == pytest.approx(loss, rel=1e-5)
    assert grads.keys() == ddp_grads.keys() and len(grads) > 50
    for name, g in grads.items():
        torch.testing.assert_close(ddp_grads[name], g, rtol=1e-4, atol=1e-6, msg=name)


def mixed_batch(b: int = 8) -> dict:
    """A masked-data-modelling batch of ``b`` images, texts and pairs (32 px images of 16 patches; 12 text columns,
    ids 5–63, with padding) whose every image has 4 masked patches and every text 2 masked tokens (so that
    per-process means average to the global mean)."""
    import torch

    g = torch.Generator().manual_seed(3)
    patch_mask = torch.zeros(b, 16, dtype=torch.bool)
    for row in range(b):
        patch_mask[row, torch.randperm(16, generator=g)[:4]] = True

    def texts(rows):
        ids = torch.randint(5, 64, (rows, 12), generator=g)
        mask = torch.ones(rows, 12, dtype=torch.long)
        mask[:, 8:] = 0  # 4 columns of padding in every row: trimmed by the objective
        mask[: rows // 2, 7:] = 0
        ids = ids * mask
        mlm_ids, labels = ids.clone(), torch.full_like(ids, -100)
        labels[:, 1:4:2] = ids[:, 1:4:2]
        mlm_ids[:, 1:4:2] = 3
        return {"input_ids": ids, "attention_mask": mask, "mlm_input_ids": mlm_ids, "mlm_labels": labels}

    batch = {"image.pixel_values": torch.randn(b, 3, 32, 32, generator=g), "image.patch_mask": patch_mask}
    batch.update({f"text.{k}": v for k, v in texts(b).items()})
    batch.update({f"pair.{k}": v for k, v in texts(b).items()})
    batch["pair.pixel_values"] = torch.randn(b, 3, 32, 32, generator=g)
    batch["pair.patch_mask"] = patch_mask.flip(0)
    return batch


def train_values(run_dir, key: str) -> list[float]:
    """The logged training values of ``key`` in a run's metrics.jsonl, in step order (validation rows left out)."""
    from vlmo_cli.train.monitor import read_metrics

    return [m[key] for m in read_metrics(run_dir) if key in m and not any(k.startswith("val_") for k in m)]


BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """The script ``benchmarks/NAME.py`` as a module (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
