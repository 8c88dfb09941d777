"""FSDP2 through Accelerate on 2 CPU processes (gloo): the sharded stage-3 step computes the loss and gradients of
one process with the same global batch; the checkpoint payload holds the full weights (scalars kept scalars) and a
by-name optimizer state. The end-to-end runs (FSDP against DDP, exact resume) are in ``test_train_fsdp_runs.py``."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_train_distributed import CASES, WORLD, _free_port, assert_grads, hardest_negatives, make_batch, make_model, single, task

from vlmo_cli.errors import RecipeError
from vlmo_cli.train import stages
from vlmo_cli.train.distributed_setup import check_fsdp_settings
from vlmo_cli.train.build import StageModule

FSDP_CASES = ("full_with_grad", "itm_mlm")


def train_settings(**overrides) -> SimpleNamespace:
    return SimpleNamespace(**{"fsdp": True, "precision": "no", "compile": False, "fsdp_reshard_after_forward": True,
                              **overrides})


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    from vlmo_cli.train.distributed_setup import checkpoint_payload, make_accelerator, prepare_for_fsdp, uses_fsdp

    accelerator = make_accelerator(train_settings())
    stages.sample_hard_negatives = hardest_negatives
    batch = {k: v.chunk(WORLD)[rank] for k, v in make_batch().items()}
    results: dict = {"fsdp": uses_fsdp(accelerator)}
    for name in FSDP_CASES:
        model = make_model()
        initial = {k: v.clone() for k, v in model.state_dict().items()}
        prepare_for_fsdp(model)
        module = StageModule(model, stages.STAGE_DEFS["pretrain.vl"], task(**CASES[name]))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        module, optimizer = accelerator.prepare(module, optimizer)
        blocks = list(accelerator.unwrap_model(module).model.transformer.blocks)
        results[f"{name}_units"] = isinstance(module, FSDPModule) and all(isinstance(b, FSDPModule) for b in blocks)
        results[f"{name}_sharded"] = isinstance(blocks[0].attn.qkv.weight, DTensor)
        loss, _ = module(batch)
        accelerator.backward(loss)
        grads = {n: (p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad).clone()
                 for n, p in module.named_parameters() if p.grad is not None}
        # the temperatures are scalars again
        grads = {n: g.reshape(initial[n.removeprefix("model.")].shape) for n, g in grads.items()}
        losses = [None] * WORLD
        dist.all_gather_object(losses, float(loss.detach()))
        optimizer.step()
        weights, optim_state, bad = checkpoint_payload(accelerator, module, optimizer)
        if rank == 0:
            results[name] = (sum(losses) / WORLD, grads)
            results[f"{name}_weights_shapes"] = {k: tuple(v.shape) for k, v in weights.items()} == {
                k: tuple(v.shape) for k, v in initial.items()}
            results[f"{name}_weights_moved"] = not torch.equal(weights["transformer.blocks.0.attn.qkv.weight"],
                                                               initial["transformer.blocks.0.attn.qkv.weight"])
            results[f"{name}_optimizer"] = (optim_state["layout"], optim_state["state"]["model.logit_scale"]["exp_avg"].shape)
            results[f"{name}_bad"] = bad
        others = [None] * WORLD  # the other process gets nothing to write
        dist.all_gather_object(others, weights is None and optim_state is None)
        results[f"{name}_rank1_none"] = others[1]
    if rank == 0:
        torch.save(results, os.path.join(out_dir, "fsdp.pt"))
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def fsdp_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return torch.load(out / "fsdp.pt", weights_only=True)


def test_fsdp_runs_on_cpu_with_one_unit_per_mome_block(fsdp_results):
    assert fsdp_results["fsdp"]
    for name in FSDP_CASES:
        assert fsdp_results[f"{name}_units"] and fsdp_results[f"{name}_sharded"], name


@pytest.mark.parametrize("name", FSDP_CASES)
def test_sharded_step_equals_one_process(fsdp_results, name, monkeypatch):
    loss, grads = single(name, monkeypatch)
    fsdp_loss, fsdp_grads = fsdp_results[name]
    assert fsdp_loss == pytest.approx(loss, rel=1e-5)
    assert_grads(fsdp_grads, grads)


def test_checkpoint_payload_is_full_and_keyed_by_name(fsdp_results):
    for name in FSDP_CASES:
        assert fsdp_results[f"{name}_weights_shapes"] and fsdp_results[f"{name}_weights_moved"], name
        assert fsdp_results[f"{name}_optimizer"] == ("by_name", torch.Size([])), name  # the temperature's moment
        assert fsdp_results[f"{name}_bad"] == [] and fsdp_results[f"{name}_rank1_none"], name


@pytest.mark.parametrize("change, message", [
    (dict(precision="fp16"), "fp16"),
    (dict(compile=True), "train.compile"),
])
def test_unsupported_fsdp_combinations_are_refused(change, message):
    with pytest.raises(RecipeError, match=message):
        check_fsdp_settings(train_settings(**change))
    check_fsdp_settings(train_settings(fsdp=False, **change))  # without FSDP they are fine


def test_a_by_name_optimizer_state_needs_the_loops_loader():
    from vlmo_cli.errors import CheckpointError
    from vlmo_cli.train.checkpoint import restore_training_state, rng_state

    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.ones(2))])
    state = {"state": {}, "param_groups": []}
    blob = {"optimizer": {"layout": "by_name", **state}, "rng": rng_state()}
    with pytest.raises(CheckpointError, match="by parameter name"):
        restore_training_state(blob, optimizer)
    received = []
    assert restore_training_state(blob, optimizer, received.append) is None
    assert received == [state]  # the layout marker is not passed on
