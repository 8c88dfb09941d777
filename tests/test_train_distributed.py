"""Stage 3 under DDP: a 2-process gloo run computes the same ITC/ITM/MLM losses and gradients as one process with
the same global batch, hard negatives drawn from the same gathered pool.

With the official gather (no gradient through other processes' features, every process computing the global loss),
DDP's gradient averaging scales the ITC gradient by 1/world_size; ``gather_with_grad`` (open_clip's scheme) gives the
single-process gradient exactly. Both facts are checked here.
"""

from __future__ import annotations

import os
import socket
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vlmo_cli.model.config import get_config
from vlmo_cli.model.vlmo import VLMo
from vlmo_cli.objectives.matching import HardNegatives
from vlmo_cli.train import stages
from vlmo_cli.train.build import StageModule

B, WORLD = 8, 2
CASES = {  # name: task overrides
    "full_with_grad": dict(gather_with_grad=True),
    "itc_official": dict(itm_weight=0.0, mlm_weight=0.0),
    "itm_mlm": dict(itc_weight=0.0),
}


def hardest_negatives(logits_i2t, logits_t2i, local_batch, image_ids=None, generator=None, positives=None):
    """Deterministic stand-in for the sampler: the most similar non-positive (same pool, same choice everywhere)."""
    with torch.no_grad():
        eye = torch.zeros(local_batch, logits_i2t.shape[1], dtype=torch.bool)
        eye[torch.arange(local_batch), positives if positives is not None else torch.arange(local_batch)] = True
        i2t = logits_i2t[:local_batch].masked_fill(eye, float("-inf"))
        t2i = logits_t2i[:local_batch].masked_fill(eye, float("-inf"))
        return HardNegatives(image_index=t2i.argmax(1), text_index=i2t.argmax(1))


def make_model() -> VLMo:
    torch.manual_seed(0)
    cfg = get_config("tiny", vocab_size=64, drop_path_rate=0.0, text_dropout=0.0,
                     heads=["pooler", "itc", "itc_vl", "itm", "mlm"])
    return VLMo(cfg)


def make_batch() -> dict[str, torch.Tensor]:
    """Padded to 24 columns; process 0's rows need 8 of them, process 1's 12: both processes must agree on 12 for
    the hard-negative texts they exchange (and the single process trims to 12 as well)."""
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(5, 64, (B, 24), generator=g)
    mask = torch.ones(B, 24, dtype=torch.long)
    mask[:, 12:] = 0
    mask[: B // 2, 6:] = 0
    mask[B // 2 + 1 :: 2, 9:] = 0
    ids = ids * mask
    mlm_ids, labels = ids.clone(), torch.full_like(ids, -100)
    for row in range(B):  # two masked tokens per row: per-process MLM means average to the global mean
        for col in (1, 3):
            labels[row, col] = ids[row, col]
            mlm_ids[row, col] = 4
    return {"pixel_values": torch.randn(B, 3, 32, 32, generator=g), "input_ids": ids, "attention_mask": mask,
            "mlm_input_ids": mlm_ids, "mlm_labels": labels, "image_ids": torch.arange(B)}


def task(**overrides) -> SimpleNamespace:
    base = dict(itc_vl=True, logit_scale_max=0.0, gather_with_grad=False, itm_exclude_same_image=False,
                mlm_weight=0.25, itc_weight=1.0, itm_weight=1.0)
    return SimpleNamespace(**{**base, **overrides})


def step(module: torch.nn.Module, batch) -> tuple[float, dict[str, torch.Tensor]]:
    module.zero_grad(set_to_none=True)
    loss, _ = module(batch)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}
    return float(loss.detach()), {n.removeprefix("module."): g for n, g in grads.items()}


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    stages.sample_hard_negatives = hardest_negatives
    batch = {k: v.chunk(WORLD)[rank] for k, v in make_batch().items()}
    results = {}
    for name, overrides in CASES.items():
        ddp = torch.nn.parallel.DistributedDataParallel(StageModule(make_model(), stages.STAGE_DEFS["pretrain.vl"],
                                                                    task(**overrides)))
        loss, grads = step(ddp, batch)
        losses = [None] * WORLD
        dist.all_gather_object(losses, loss)
        results[name] = (sum(losses) / WORLD, grads)
    # selective fetching equals indexing the fully gathered pool, in both pool orders, for rows of every process
    from vlmo_cli.objectives.distributed import fetch_pool_rows, gather_local_first, gather_rank_order

    index = torch.tensor([7, 0, 5, 2, 6, 1]) if rank == 0 else torch.tensor([3, 4, 4, 0, 7, 2])
    local = {k: v.chunk(WORLD)[rank] for k, v in make_batch().items()}
    for local_first, gather in ((True, gather_local_first), (False, gather_rank_order)):
        fetched = fetch_pool_rows([local["pixel_values"], local["input_ids"]], index, local_first)
        expected = [gather(local["pixel_values"])[index], gather(local["input_ids"])[index]]
        results[f"fetch_local_first={local_first}_rank{rank}"] = all(torch.equal(a, b) for a, b in zip(fetched, expected))
    results.update(_same_text_exclusion(rank))
    results.update(_same_group_exclusion(rank))
    flags = [None] * WORLD
    dist.all_gather_object(flags, {k: v for k, v in results.items()
                                   if k.startswith(("fetch", "same_text", "same_group"))})
    if rank == 0:
        for f in flags:
            results.update(f)
        torch.save(results, os.path.join(out_dir, "ddp.pt"))
    dist.destroy_process_group()


#: caption groups of the global batch of 8 (4 per process): process 0's rows 0 and 1 are process 1's rows 0 and 2
CAPTION_GROUPS = torch.tensor([0, 1, 2, 3, 0, 4, 1, 5])


def _same_text_exclusion(rank: int) -> dict[str, bool]:
    """Inside a worker: with ``itm_exclude_same_text`` the caption keys gathered from both processes keep every
    same-caption pair (also the other process's) out of the draws; without them such pairs dominate."""
    from vlmo_cli.objectives.distributed import gather_local_first
    from vlmo_cli.objectives.matching import sample_hard_negatives

    groups = CAPTION_GROUPS.chunk(WORLD)[rank]
    ids = torch.randint(20, 60, (len(groups), 8), generator=torch.Generator().manual_seed(rank))  # junk padding
    ids[:, :4] = torch.stack([torch.full_like(groups, 2), 10 + groups, 11 + groups, torch.full_like(groups, 3)], 1)
    mask = torch.zeros_like(ids)
    mask[:, :4] = 1
    pool_groups = gather_local_first(groups)
    logits = 30.0 * (groups[:, None] == pool_groups[None, :]).float()
    keys = stages.negative_exclusions({"input_ids": ids, "attention_mask": mask}, gather_local_first, False, True)
    g = torch.Generator().manual_seed(0)
    hits = {}
    for name, exclusions in (("on", keys), ("off", {})):
        picked = [sample_hard_negatives(logits, logits, len(groups), generator=g, **exclusions) for _ in range(30)]
        same = [(pool_groups[p.text_index] == groups) | (pool_groups[p.image_index] == groups) for p in picked]
        repeated = (groups[:, None] == CAPTION_GROUPS[None, :]).sum(1) > 1
        hits[name] = torch.stack(same)[:, repeated].float().mean().item()
    return {f"same_text_excluded_rank{rank}": hits["on"] == 0.0, f"same_text_dominates_without_rank{rank}": hits["off"] > 0.9}


def _same_group_exclusion(rank: int) -> dict[str, bool]:
    """Inside a worker: with ``itm_exclude_same_group`` the group ids gathered from both processes keep every pair of
    the positive's duplicate group (also the other process's) out of the draws, both ways; without them such pairs
    dominate. The captions are all different here: only the group says they are duplicates."""
    from vlmo_cli.objectives.distributed import gather_local_first
    from vlmo_cli.objectives.matching import sample_hard_negatives

    groups = CAPTION_GROUPS.chunk(WORLD)[rank]
    pool_groups = gather_local_first(groups)
    logits = 30.0 * (groups[:, None] == pool_groups[None, :]).float()
    keys = stages.negative_exclusions({"group_ids": groups}, gather_local_first, False, False, True)
    g = torch.Generator().manual_seed(0)
    hits = {}
    for name, exclusions in (("on", keys), ("off", {})):
        picked = [sample_hard_negatives(logits, logits, len(groups), generator=g, **exclusions) for _ in range(30)]
        same = [(pool_groups[p.text_index] == groups) | (pool_groups[p.image_index] == groups) for p in picked]
        repeated = (groups[:, None] == CAPTION_GROUPS[None, :]).sum(1) > 1
        hits[name] = torch.stack(same)[:, repeated].float().mean().item()
    return {f"same_group_excluded_rank{rank}": hits["on"] == 0.0,
            f"same_group_dominates_without_rank{rank}": hits["off"] > 0.9}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return torch.load(out / "ddp.pt", weights_only=True)


def single(name: str, monkeypatch) -> tuple[float, dict[str, torch.Tensor]]:
    monkeypatch.setattr(stages, "sample_hard_negatives", hardest_negatives)
    return step(StageModule(make_model(), stages.STAGE_DEFS["pretrain.vl"], task(**CASES[name])), make_batch())


def assert_grads(a: dict, b: dict, scale: float = 1.0, unscaled: tuple[str, ...] = ()) -> None:
    assert a.keys() == b.keys()
    for k in a:
        s = 1.0 if k.endswith(unscaled) else scale
        torch.testing.assert_close(a[k], b[k] * s, atol=2e-6, rtol=1e-4, msg=k)


def test_hard_negatives_fetch_only_the_chosen_rows_exactly(ddp_results):
    fetch = {k: v for k, v in ddp_results.items() if k.startswith("fetch")}
    assert len(fetch) == 4 and all(fetch.values()), fetch


def test_same_caption_pairs_of_every_process_are_excluded_from_the_negatives(ddp_results):
    flags = {k: v for k, v in ddp_results.items() if k.startswith("same_text")}
    assert len(flags) == 2 * WORLD and all(flags.values()), flags


def test_same_group_pairs_of_every_process_are_excluded_from_the_negatives(ddp_results):
    flags = {k: v for k, v in ddp_results.items() if k.startswith("same_group")}
    assert len(flags) == 2 * WORLD and all(flags.values()), flags


def test_with_gradient_gather_ddp_equals_one_process(ddp_results, monkeypatch):
    loss, grads = single("full_with_grad", monkeypatch)
    ddp_loss, ddp_grads = ddp_results["full_with_grad"]
    assert ddp_loss == pytest.approx(loss, rel=1e-5)
    assert_grads(ddp_grads, grads)


def test_itm_and_mlm_from_the_gathered_pool_equal_one_process(ddp_results, monkeypatch):
    loss, grads = single("itm_mlm", monkeypatch)
    ddp_loss, ddp_grads = ddp_results["itm_mlm"]
    assert ddp_loss == pytest.approx(loss, rel=1e-5)
    assert_grads(ddp_grads, grads)


def test_official_gather_gives_the_same_itc_loss_and_gradient_over_world_size(ddp_results, monkeypatch):
    loss, grads = single("itc_official", monkeypatch)
    ddp_loss, ddp_grads = ddp_results["itc_official"]
    assert ddp_loss == pytest.approx(loss, rel=1e-5)
    # features reach the loss only through their own process's rows: 1/world_size after DDP's averaging; the
    # temperatures multiply every logit on every process, so their gradient is the full one
    assert_grads(ddp_grads, grads, scale=1 / WORLD, unscaled=("logit_scale", "logit_vl_scale"))
