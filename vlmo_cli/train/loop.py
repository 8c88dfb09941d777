"""The one training loop: every pre-training stage and fine-tuning task runs through :func:`train`.

Accelerate handles device placement, mixed precision and DDP (launch with ``accelerate launch`` or ``torchrun``).
One optimizer step consumes ``grad_accum`` micro-batches; the data position, optimizer, schedule and RNG streams are
checkpointed so that ``--resume`` continues exactly where the run stopped.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from ..errors import RecipeError, VlmoError
from ..model.vlmo import VLMo
from ..run_report import write_run_report
from .checkpoint import (TrainerState, find_resume, list_checkpoints, load_training_state, restore_training_state,
                         save_checkpoint)
from .environment import write_environment
from .guards import TrainingDiverged, check_step, diverged, grad_norm, non_finite_weights, write_checkpoint
from .init import initialise
from .monitor import Monitor, format_metrics, truncate_metrics
from .optim import build_optimizer, lr_factor, set_lr, warmup_steps
from .padding import COMPILED_LENGTH_BUCKETS, trim_to_longest
from .run_dir import RunFolder, check_resume_recipe, run_path_for, write_recipe
from .signals import StopRequest, TrainingInterrupted
from .stream_hooks import stream_metrics, stream_options, stream_summary
from .stages import STAGES, StageDef, StepOutput, init_tokenizer, retrieval_objective, stage_config, vl_objective
from .trackers import resolve_trackers, tracker_init_kwargs, tracker_project
from .validate import validate


class StageModule(nn.Module):
    """Runs a stage's objective inside ``forward`` so that DDP sees one forward per backward.

    Args:
        model: the model.
        stage_def: the stage or task.
        task: its recipe settings.
        trim_padding: drop text columns that are padding in every row first (exact; off only to measure it).
        length_buckets: round the trimmed length up to one of this many lengths (set when the step is compiled).
    """

    def __init__(self, model: VLMo, stage_def: StageDef, task: Any, trim_padding: bool = True,
                 length_buckets: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.stage_def = stage_def
        self.task = task
        self.trim_padding = trim_padding
        self.length_buckets = length_buckets

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.trim_padding:
            batch = trim_to_longest(batch, self.length_buckets)
        out: StepOutput = self.stage_def.objective(self.model, batch, self.task)
        return out.loss, out.metrics


@dataclass
class RunResult:
    """What a finished run leaves: its folder, the final checkpoint (a model directory) and the last metrics."""

    run_dir: Path
    checkpoint: Path
    state: TrainerState
    metrics: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------- helpers
def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _dataset_paths(task) -> list[str]:
    return list(task.dataset)


def batch_rows(batch: dict) -> int:
    return next(v.shape[0] for v in batch.values() if isinstance(v, torch.Tensor) and v.ndim > 0)


def truncate_batch(batch: dict, rows: int) -> dict:
    """The first ``rows`` samples of a batch: every process must contribute equally many rows to the gathered
    contrastive and hard-negative pools, so a batch shrunk by a skipped image shrinks the others' too."""
    if batch_rows(batch) == rows:
        return batch
    return {k: v[:rows] if isinstance(v, torch.Tensor) and v.ndim > 0 else v for k, v in batch.items()}


def batches_per_epoch(loader) -> int | None:
    """Micro-batches in one pass over the data (None for streamed data of unknown length)."""
    try:
        return len(loader)
    except TypeError:
        return None


def _fmt(metrics: dict) -> dict:
    return {k: (round(float(v), 6) if isinstance(v, (float, int, torch.Tensor)) else v) for k, v in metrics.items()}


def _already_done(run_path: Path, checkpoint: Path, state: TrainerState, total: int,
                  console: Console | None) -> RunResult:
    """A resume of a run that already trained ``total`` steps: nothing to do, say so."""
    if console is not None:
        console.print(f"{run_path} already reached its target: step {state.step} of {total}; nothing to train "
                      f"(raise train.max_steps to train further). Model directory {checkpoint}")
    note = f"already reached its target ({state.step} of {total} steps)"
    return RunResult(run_dir=run_path, checkpoint=checkpoint, state=state, metrics=dict(state.last_metrics),
                     notes=[note])


# ---------------------------------------------------------------------- the loop
def train(
    stage,
    *,
    init: str | None = None,
    resume: str = "",
    run_dir: str | Path | None = None,
    overwrite: bool = False,
    console: Console | None = None,
    stop_after: int | None = None,
    take_over_lock: bool = False,
    resume_changed: bool = False,
    allow_missing_init: bool = False,
) -> RunResult:
    """Train one resolved recipe stage (``recipe.resolve("pretrain.vl")``).

    Args:
        stage: a :class:`~vlmo_cli.recipe_schema.ResolvedStage` of kind ``train``.
        init: weights to start from (overrides ``[model] init``); ignored when resuming.
        resume: ``"auto"`` (newest complete checkpoint of the run folder, if any) or a checkpoint path.
        run_dir: run folder (default ``output_dir/run_name``).
        overwrite: replace the previous run in the run folder (refused for a folder holding anything else).
        stop_after: stop (with a checkpoint) after this many optimizer steps of this invocation — simulates an
            interruption in tests and lets users train in slices.
        take_over_lock: take over the stale lock of a killed run (a live run's lock is never taken).
        resume_changed: resume although the recipe changed the data order, batches or model.
        allow_missing_init: train backbone tensors missing from the init source from random values instead of
            refusing the source.
    """
    from accelerate import Accelerator

    if stage.kind != "train" or stage.name not in STAGES:
        raise RecipeError(f"{stage.name} is not a training stage; allowed: {sorted(STAGES)}")
    run_path = run_path_for(stage, run_dir)
    log_with = resolve_trackers(stage.train.trackers)
    # without CUDA, say so: accelerate then runs torchrun / `accelerate launch` processes as a gloo group on the CPU
    accelerator = Accelerator(mixed_precision=stage.train.precision, log_with=log_with or None,
                              project_config=tracker_project(run_path), cpu=not torch.cuda.is_available())
    # the main process locks and prepares the folder for the whole run; a failed run that created it and left
    # nothing in it removes it again
    console = console or Console()
    with RunFolder(run_path, resume, overwrite, take_over_lock, enabled=accelerator.is_main_process) as folder:
        for note in folder.notes:  # at once: they hold also when the run stops early
            console.print(f"{run_path}: {note}", highlight=False)
        accelerator.wait_for_everyone()
        return _train(stage, accelerator, folder, log_with, init=init, resume=resume, console=console,
                      stop_after=stop_after, resume_changed=resume_changed, allow_missing_init=allow_missing_init)


def _train(stage, accelerator, folder: RunFolder, log_with: list[str], *, init: str | None, resume: str,
           console: Console, stop_after: int | None, resume_changed: bool, allow_missing_init: bool) -> RunResult:
    """The body of :func:`train`, inside the locked run folder."""
    from accelerate.utils import set_seed

    from ..data.loader import build_dataloader
    from ..data.shards import names_shards
    from ..data.store import open_prepared
    from ..data.streaming import (check_stream_source, gather_stream_state, resume_positions, set_loader_epoch,
                                  stream_tracker)

    stage_def = STAGES[stage.name]
    tcfg, dcfg, task = stage.train, stage.data, stage.task
    run_path = folder.path
    main = accelerator.is_main_process
    plan = stage.batch_plan(accelerator.num_processes)
    set_seed(tcfg.seed)

    # ---------------- data
    paths = _dataset_paths(task)
    streamed = names_shards(paths)  # webdataset shards: no prepared directory
    if streamed:
        check_stream_source(paths, stage_def.data_task)  # a task shards cannot feed or a pattern matching nothing
    prepared = None if streamed else open_prepared(paths[0])
    tokenizer_arg = dcfg.tokenizer or init_tokenizer(prepared, init if init is not None else stage.model.init)

    def loader_for(epoch: int, skip: int, stream_state: dict | None = None):
        return build_dataloader(
            paths, task.split, stage_def.data_task, tokenizer=tokenizer_arg, image_size=dcfg.image_size,
            batch_size=plan.micro_batch_size, train=True, seed=tcfg.seed, workers=dcfg.num_workers,
            rank=accelerator.process_index, world_size=accelerator.num_processes, epoch=epoch, skip_batches=skip,
            max_text_len=dcfg.max_text_len, mlm=stage_def.mlm, mlm_probability=dcfg.mlm_probability,
            mlm_budget="real" if dcfg.mlm_budget_on_real_tokens else "padded", mim=stage_def.mim,
            patch_size=stage.model.get("patch_size"), mim_ratio=dcfg.mim_mask_ratio, randaug=dcfg.randaugment,
            hflip=None if stage_def.data_task in ("vqa", "nlvr2") else dcfg.horizontal_flip,
            pin_memory=accelerator.device.type == "cuda", stream=stream_options(dcfg),
            stream_resume=resume_positions(stream_state, accelerator.process_index, accelerator.num_processes,
                                           dcfg.num_workers),
        )

    # ---------------- model
    cfg = stage_config(stage, lambda: prepared)
    model = VLMo(cfg)
    resume_from = find_resume(run_path, resume) if resume else None
    notes: list[str] = []
    init_report = None
    if resume_from is None:
        init_report = initialise(model, init if init is not None else stage.model.init,
                                 getattr(task, "init_vlffn", "random"), allow_missing=allow_missing_init)
        notes = init_report.notes()
    else:
        from ..model.io import WEIGHTS_NAME, load_state_dict_checked, read_weights

        load_state_dict_checked(model, read_weights(resume_from / WEIGHTS_NAME), str(resume_from))
        notes = [f"resumed from {resume_from}"]
    for name, p in model.named_parameters():
        if not stage_def.trainable(name, cfg, task):
            p.requires_grad_(False)
    if tcfg.activation_checkpointing:
        model.set_grad_checkpointing(True)
    fused = tcfg.fused_adamw if isinstance(tcfg.fused_adamw, bool) else accelerator.device.type == "cuda"
    model.to(accelerator.device)
    optimizer = build_optimizer(model, tcfg, fused=fused)
    module = StageModule(model, stage_def, task, length_buckets=COMPILED_LENGTH_BUCKETS if tcfg.compile else None)
    if tcfg.compile:
        module = torch.compile(module)
    module, optimizer = accelerator.prepare(module, optimizer)

    state = TrainerState(stage=stage.name)
    if resume_from is not None:
        blob, state = load_training_state(resume_from)
        notes += [n for n in (restore_training_state(blob, optimizer),) if n]
    loader = loader_for(state.epoch, state.micro_batches_in_epoch, state.stream)
    stream = stream_tracker(loader)  # None for prepared data
    full_epoch = loader_for(0, 0)
    per_epoch = batches_per_epoch(full_epoch)
    if tcfg.max_steps:
        total = tcfg.max_steps
    else:
        total = tcfg.max_epochs * max(1, len(full_epoch) // plan.grad_accum)
    if total < 1:
        raise RecipeError(f"{stage.source}: [{stage.name}] trains 0 steps: set max_steps or max_epochs")
    if resume_from is not None and state.step >= total:
        return _already_done(run_path, resume_from, state, total, console if main else None)
    state.total_steps = total
    warm = warmup_steps(tcfg.warmup, total)
    end_factor = tcfg.end_lr / tcfg.lr

    recipe_text = stage.to_toml()
    if resume_from is not None:  # on every process, so that all of them stop on a refused change
        notes += check_resume_recipe(run_path, resume_from, recipe_text, stage.name, resume_changed)
    if main:
        write_recipe(run_path, recipe_text, resumed=resume_from is not None)
        write_environment(run_path, accelerator)
        dropped = truncate_metrics(run_path, state.step)
        if dropped:
            notes.append(f"metrics.jsonl: dropped {dropped} row(s) logged after step {state.step}, which this run "
                         "trains again")
        if init_report is not None:  # every tensor: from the source, copied, or fresh
            (run_path / "init.json").write_text(json.dumps(init_report.to_dict(), indent=1) + "\n")
        if log_with:
            accelerator.init_trackers(run_path.name, init_kwargs=tracker_init_kwargs(log_with, run_path))
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if main:
        console.print(f"[bold]{stage.name}[/] → {run_path}")
        for note in notes:
            console.print(f"  {note}")
        console.print(
            f"  {n_train:,} trainable of {sum(p.numel() for p in model.parameters()):,} parameters; "
            f"{total} steps (warmup {warm}); batch {plan.global_batch_size} = {plan.world_size} process(es) × "
            f"{plan.micro_batch_size} × {plan.grad_accum} accumulation; device {accelerator.device}, "
            f"precision {tcfg.precision}"
        )
        if plan.grad_accum > 1 and stage_def.objective in (vl_objective, retrieval_objective):
            console.print(
                f"  [yellow]note:[/] contrastive negatives span one micro-batch × processes = "
                f"{plan.micro_batch_size * plan.world_size} pairs, not the batch of {plan.global_batch_size}"
            )

    tokenizer = getattr(loader.collate_fn, "tokenizer", None)
    if tokenizer is not None and tokenizer.vocab_size > cfg.vocab_size:
        raise RecipeError(
            f"{stage.source}: the tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is "
            f"{cfg.vocab_size}; set [model] vocab_size = {tokenizer.vocab_size} (or more)"
        )

    def checkpoint() -> Path | None:
        state.window = {"sums": dict(sums), "count": count}  # the metrics line in progress continues on resume
        state.stream = gather_stream_state(loader, accelerator)  # every process's shard-stream position
        accelerator.wait_for_everyone()
        path = None
        bad = non_finite_weights(accelerator.unwrap_model(module).model)  # every process: the same weights
        if bad:
            raise diverged(stage.name, f"{len(bad)} weight tensors hold NaN/inf ({', '.join(bad[:3])}, …)",
                           state.step, run_path, "this checkpoint was not written")
        if main:
            path = write_checkpoint(
                lambda: save_checkpoint(run_path, accelerator.unwrap_model(module).model, optimizer, state,
                                        tokenizer=tokenizer, keep_last_n=tcfg.keep_last_n),
                run_path, state.step)
        accelerator.wait_for_everyone()
        return path

    data_iter = iter(loader)
    sums: dict[str, float] = dict(state.window.get("sums", {}))
    count = int(state.window.get("count", 0))
    last_metrics: dict[str, float] = {}
    t_log = time.perf_counter()
    samples_since = 0
    steps_this_call = 0
    final_path = None
    check_grads = accelerator.scaler is None  # fp16 loss scaling skips non-finite steps by design
    reduce = (lambda t: accelerator.reduce(t, "sum")) if accelerator.num_processes > 1 else None
    with Monitor(run_path, total, state.step, accelerator, enabled=main, console=console) as monitor, \
            StopRequest() as stop:
        while state.step < total:
            module.train()
            step_losses = []
            for micro in range(plan.grad_accum):
                try:
                    batch = next(data_iter)
                except StopIteration:
                    state.epoch += 1
                    state.micro_batches_in_epoch = 0
                    set_loader_epoch(loader, state.epoch)
                    data_iter = iter(loader)
                    batch = next(data_iter)
                state.micro_batches_in_epoch += 1
                batch = _to_device(batch, accelerator.device)
                batch.pop("num_skipped", None)
                if stream is not None:
                    stream.note(batch)
                if accelerator.num_processes > 1:  # an unreadable image shrank some process's batch
                    rows = torch.tensor([batch_rows(batch)], device=accelerator.device)
                    batch = truncate_batch(batch, int(accelerator.gather(rows).min()))
                sync = micro == plan.grad_accum - 1
                ctx = contextlib.nullcontext() if sync else accelerator.no_sync(module)
                with ctx:
                    with accelerator.autocast():
                        loss, metrics = module(batch)
                    step_losses.append(loss.detach())
                    accelerator.backward(loss / plan.grad_accum)
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
                count += 1
                samples_since += batch[next(k for k in ("input_ids", "pixel_values") if k in batch)].shape[0]
            trained = [p for p in module.parameters() if p.requires_grad]
            norm = accelerator.clip_grad_norm_(trained, tcfg.grad_clip) if tcfg.grad_clip > 0 else None
            if norm is None and check_grads:
                norm = grad_norm(trained)
            verdict = check_step(step_losses, norm if check_grads else None, bool(stop.requested), reduce)
            if verdict.problem:
                raise diverged(stage.name, verdict.problem, state.step + 1, run_path, "stopped before the update")
            lr = set_lr(optimizer, tcfg.lr, lr_factor(state.step, total, warm, tcfg.schedule, end_factor))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            steps_this_call += 1
            state.samples_seen += plan.global_batch_size
            monitor.advance(state.step, format_metrics(last_metrics, ("loss",)))
            if state.step % tcfg.log_every == 0 or state.step == total:
                avg = {k: v / count for k, v in sums.items()}
                avg = {k: float(accelerator.reduce(torch.tensor(v, device=accelerator.device), "mean")) for k, v in avg.items()}
                elapsed = time.perf_counter() - t_log
                avg.update(lr=lr, epoch=state.epochs_done(per_epoch),
                           samples_per_s=samples_since * accelerator.num_processes / max(elapsed, 1e-9))
                if stream is not None:  # skipped samples, unreadable shards, refilled streams: all processes
                    avg.update(stream_metrics(stream, accelerator))
                last_metrics = avg
                monitor.log(_fmt(avg), state.step)
                monitor.print(f"step {state.step}/{total}  " + format_metrics(avg))
                sums, count, samples_since, t_log = {}, 0, 0, time.perf_counter()
            if main and (state.step == total or (tcfg.eval_every and state.step % tcfg.eval_every == 0)):
                val = validate(accelerator.unwrap_model(module), stage, stage_def, accelerator.device, tokenizer)
                if val:
                    last_metrics.update(val)
                    monitor.log(_fmt(val), state.step)
                    monitor.print(f"validation at step {state.step}: " + format_metrics(val))
            if tcfg.save_every and state.step % tcfg.save_every == 0 and state.step < total:
                state.last_metrics = _fmt(last_metrics)
                checkpoint()
            if stop_after is not None and steps_this_call >= stop_after and state.step < total:
                state.last_metrics = _fmt(last_metrics)
                final_path = checkpoint()
                break
            if verdict.stop and state.step < total:
                state.last_metrics = _fmt(last_metrics)
                raise TrainingInterrupted(checkpoint(), stop.requested or 15)
        else:
            state.last_metrics = _fmt(last_metrics)
            final_path = checkpoint()
    if stream is not None:
        counts = stream_metrics(stream, accelerator)
        notes.append(stream_summary(counts))
        if main:
            console.print(f"  {stream_summary(counts)}", highlight=False)
    if main and log_with:
        accelerator.end_training()
    if main and tcfg.report:
        write_run_report(run_path)
    if final_path is None:
        final_path = list_checkpoints(run_path)[-1]
    return RunResult(run_dir=run_path, checkpoint=final_path, state=state, metrics=last_metrics,
                     notes=folder.notes + notes)
