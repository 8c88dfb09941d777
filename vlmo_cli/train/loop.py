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

from ..data.streaming import gather_stream_state, set_loader_epoch, stream_tracker
from ..errors import RecipeError
from ..model.vlmo import VLMo
from .build import StageParts, build_stage, stage_def_of
from .checkpoint import (TrainerState, find_resume, list_checkpoints, load_training_state, restore_training_state,
                         save_checkpoint)
from .distributed_setup import (checkpoint_payload, fsdp_note, load_optimizer_state, make_accelerator, plain_norm,
                                prepare_for_fsdp, sharded_grad_norm, unsharded_copy, uses_fsdp)
from .environment import write_environment
from .guards import TrainingDiverged, check_step, diverged, grad_norm, non_finite_weights, write_checkpoint
from .init import initialise
from .monitor import Monitor, format_metrics, truncate_metrics
from .optim import lr_factor, set_lr, warmup_steps
from .report import write_run_report
from .run_dir import RunFolder, check_resume_recipe, run_path_for, write_recipe
from .signals import StopRequest, TrainingInterrupted
from .stream_hooks import stream_metrics, stream_options, stream_summary
from .stages import STAGE_DEFS, StageDef, init_tokenizer
from .trackers import resolve_trackers, start_trackers, tracker_project
from .validate import validate


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


def batch_rows(batch: dict) -> int:
    return next(v.shape[0] for v in batch.values() if isinstance(v, torch.Tensor) and v.ndim > 0)


def batch_samples(batch: dict) -> int:
    """Samples in a micro-batch: a mixed batch's ``num_samples`` (:mod:`vlmo_cli.data.mixed`), else the rows of its
    text or images."""
    if "num_samples" in batch:
        return int(batch["num_samples"])
    return batch[next(k for k in ("input_ids", "pixel_values") if k in batch)].shape[0]


def truncate_batch(batch: dict, rows: int) -> dict:
    """The first ``rows`` samples of a batch: every process must contribute equally many rows to the gathered
    contrastive and hard-negative pools, so a batch shrunk by a skipped image shrinks the others' too."""
    if batch_rows(batch) == rows:
        return batch
    return {k: v[:rows] if isinstance(v, torch.Tensor) and v.ndim > 0 else v for k, v in batch.items()}


def batches_per_epoch(loader) -> int | None:
    """Micro-batches in one whole pass over the data, also when ``loader`` resumes mid-epoch (its sampler then
    skips the batches already seen); ``None`` for streamed data of unknown length."""
    try:
        remaining = len(loader)
    except TypeError:
        return None
    return remaining + getattr(loader.sampler, "skip_batches", 0)


def rounded_metrics(metrics: dict) -> dict:
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


# ---------------------------------------------------------------------- set-up steps
def setup_accelerator(stage, run_path: Path, log_with: list[str]):
    """Accelerate for the recipe's precision, trackers and FSDP settings; without CUDA it says so, and ``torchrun``
    / ``accelerate launch`` processes then run as a gloo group on the CPU."""
    return make_accelerator(stage.train, log_with=log_with, project_config=tracker_project(run_path),
                            source=str(stage.source))


@dataclass
class StageData:
    """The stage's training data: its prepared directories (the first one opened, for the answer and class
    counts) or webdataset shards (``prepared`` is then ``None``), and the tokenizer the loader uses."""

    stage: Any
    accelerator: Any
    paths: list[str]
    prepared: Any
    tokenizer: str | None

    def loader(self, epoch: int, skip: int, stream_state: dict | None = None):
        """The training DataLoader of this process, starting ``skip`` micro-batches into ``epoch`` (streamed data:
        at the positions ``stream_state`` saved with the checkpoint)."""
        from ..data.loader import build_dataloader
        from ..data.streaming import resume_positions

        stage, accelerator = self.stage, self.accelerator
        stage_def, task, dcfg = stage_def_of(stage), stage.task, stage.data
        if stage_def.loader is not None:
            return stage_def.loader(self, epoch, skip, stream_state)
        plan = stage.batch_plan(accelerator.num_processes)
        return build_dataloader(
            self.paths, task.split, stage_def.data_task, tokenizer=self.tokenizer, image_size=dcfg.image_size,
            batch_size=plan.micro_batch_size, train=True, seed=stage.train.seed, workers=dcfg.num_workers,
            rank=accelerator.process_index, world_size=accelerator.num_processes, epoch=epoch, skip_batches=skip,
            max_text_len=dcfg.max_text_len, mlm=stage_def.mlm, mlm_probability=dcfg.mlm_probability,
            mlm_budget="real" if dcfg.mlm_budget_on_real_tokens else "padded", mim=stage_def.mim,
            patch_size=stage.model.get("patch_size"), mim_ratio=dcfg.mim_mask_ratio, randaug=dcfg.randaugment,
            hflip=None if stage_def.data_task in ("vqa", "nlvr2") else dcfg.horizontal_flip,
            pin_memory=accelerator.device.type == "cuda", stream=stream_options(dcfg),
            stream_resume=resume_positions(stream_state, accelerator.process_index, accelerator.num_processes,
                                           dcfg.num_workers),
        )


def setup_data(stage, accelerator, init: str) -> StageData:
    """Open the stage's prepared data (or check its shards: a task shards cannot feed, or a pattern matching nothing,
    is refused here; mixed batches: each part's, :func:`~vlmo_cli.train.mdm.check_parts`); the tokenizer is the
    recipe's, the prepared data's, or the init model's."""
    from ..data.shards import names_shards
    from ..data.store import open_prepared
    from ..data.streaming import check_stream_source

    paths = list(stage.task.dataset)
    if stage_def_of(stage).data_task == "mixed":  # several datasets (pretrain.mdm): each part checked on its own
        from .mdm import check_parts

        prepared = check_parts(stage)
        return StageData(stage, accelerator, paths, prepared, stage.data.tokenizer or init_tokenizer(prepared, init))
    streamed = names_shards(paths)
    if streamed:
        check_stream_source(paths, stage_def_of(stage).data_task)
    prepared = None if streamed else open_prepared(paths[0])
    tokenizer = stage.data.tokenizer or init_tokenizer(prepared, init)
    return StageData(stage, accelerator, paths, prepared, tokenizer)


def setup_model(stage, accelerator, data: StageData, init: str, resume_from: Path | None,
                allow_missing_init: bool) -> tuple[StageParts, list[str], Any]:
    """The stage's model, step module and optimizer (:func:`~vlmo_cli.train.build.build_stage`), started from the
    init source or the checkpoint resumed; also the notes to print and the init report (``None`` when resuming)."""
    notes: list[str] = []
    reports: list[Any] = []

    def load_weights(model: VLMo) -> None:
        if resume_from is None:
            report = initialise(model, init, getattr(stage.task, "init_vlffn", "random"),
                                allow_missing=allow_missing_init)
            reports.append(report)
            notes.extend(report.notes())
        else:
            from ..layout import WEIGHTS_NAME
            from ..model.weights import load_state_dict_checked, read_weights

            load_state_dict_checked(model, read_weights(resume_from / WEIGHTS_NAME), str(resume_from))
            notes.append(f"resumed from {resume_from}")

    parts = build_stage(stage, accelerator.device, lambda: data.prepared, load_weights=load_weights)
    return parts, notes, (reports[0] if reports else None)


def count_steps(stage, per_epoch: int | None, grad_accum: int) -> int:
    """Optimizer steps of the run: ``max_steps``, else ``max_epochs`` passes over the data."""
    tcfg = stage.train
    if tcfg.max_steps:
        return tcfg.max_steps
    if per_epoch is None:
        raise RecipeError(f"{stage.source}: [{stage.name}] streams data of unknown length: set max_steps")
    total = tcfg.max_epochs * max(1, per_epoch // grad_accum)
    if total < 1:
        raise RecipeError(f"{stage.source}: [{stage.name}] trains 0 steps: set max_steps or max_epochs")
    return total


def write_run_files(run_path: Path, stage, accelerator, state: TrainerState, recipe_text: str, resumed: bool,
                    init_report, log_with: list[str], notes: list[str]) -> None:
    """The main process's files of a (re)started run: the recipe, the environment, ``metrics.jsonl`` cut back to
    the step resumed, ``init.json`` (every tensor: from the source, copied, or fresh), and the trackers."""
    write_recipe(run_path, recipe_text, resumed=resumed)
    write_environment(run_path, accelerator)
    dropped = truncate_metrics(run_path, state.step)
    if dropped:
        notes.append(f"metrics.jsonl: dropped {dropped} row(s) logged after step {state.step}, which this run "
                     "trains again")
    if init_report is not None:
        (run_path / "init.json").write_text(json.dumps(init_report.to_dict(), indent=1) + "\n")
    if log_with:
        start_trackers(accelerator, log_with, run_path)


def announce(console: Console, stage, stage_def: StageDef, run_path: Path, model: VLMo, notes: list[str],
             total: int, warm: int, plan, device) -> None:
    """What is about to train, on what, and for how long."""
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    console.print(f"[bold]{stage.name}[/] → {run_path}")
    for note in notes:
        console.print(f"  {note}")
    console.print(
        f"  {n_train:,} trainable of {sum(p.numel() for p in model.parameters()):,} parameters; "
        f"{total} steps (warmup {warm}); batch {plan.global_batch_size} = {plan.world_size} process(es) × "
        f"{plan.micro_batch_size} × {plan.grad_accum} accumulation; device {device}, "
        f"precision {stage.train.precision}"
    )
    if plan.grad_accum > 1 and stage_def.uses_contrastive:
        console.print(
            f"  [yellow]note:[/] contrastive negatives span one micro-batch × processes = "
            f"{plan.micro_batch_size * plan.world_size} pairs, not the batch of {plan.global_batch_size}"
        )


def check_vocabulary(stage, tokenizer, vocab_size: int) -> None:
    """Refuse a tokenizer with more tokens than the model's embedding has rows."""
    if tokenizer is not None and tokenizer.vocab_size > vocab_size:
        raise RecipeError(
            f"{stage.source}: the tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is "
            f"{vocab_size}; set [model] vocab_size = {tokenizer.vocab_size} (or more)"
        )


# ---------------------------------------------------------------------- the entry point
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
        stage: a :class:`~vlmo_cli.config.schema.ResolvedStage` of kind ``train``.
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
    if stage.kind != "train" or stage.name not in STAGE_DEFS:
        raise RecipeError(f"{stage.name} is not a training stage; allowed: {sorted(STAGE_DEFS)}")
    run_path = run_path_for(stage, run_dir)
    log_with = resolve_trackers(stage.train.trackers)
    accelerator = setup_accelerator(stage, run_path, log_with)
    # the main process locks and prepares the folder for the whole run; a failed run that created it and left
    # nothing in it removes it again
    console = console or Console()
    with RunFolder(run_path, resume, overwrite, take_over_lock, enabled=accelerator.is_main_process) as folder:
        for note in folder.notes:  # at once: they hold also when the run stops early
            console.print(f"{run_path}: {note}", highlight=False)
        accelerator.wait_for_everyone()
        return _train(stage, accelerator, folder, log_with, init=init if init is not None else stage.model.init,
                      resume=resume, console=console, stop_after=stop_after, resume_changed=resume_changed,
                      allow_missing_init=allow_missing_init)


def _train(stage, accelerator, folder: RunFolder, log_with: list[str], *, init: str, resume: str,
           console: Console, stop_after: int | None, resume_changed: bool, allow_missing_init: bool) -> RunResult:
    """Inside the locked run folder: set up data, model, optimizer and state, then fit."""
    from accelerate.utils import set_seed

    run_path, main = folder.path, accelerator.is_main_process
    plan = stage.batch_plan(accelerator.num_processes)
    set_seed(stage.train.seed)
    data = setup_data(stage, accelerator, init)
    resume_from = find_resume(run_path, resume) if resume else None
    parts, notes, init_report = setup_model(stage, accelerator, data, init, resume_from, allow_missing_init)
    if uses_fsdp(accelerator):
        prepare_for_fsdp(parts.model)
    module, optimizer = accelerator.prepare(parts.module, parts.optimizer)

    state = TrainerState(stage=stage.name)
    if resume_from is not None:
        blob, state = load_training_state(resume_from)
        by_name = lambda st: load_optimizer_state(accelerator, module, optimizer, st)  # noqa: E731
        notes += [n for n in (restore_training_state(blob, optimizer, by_name),) if n]
    notes += [n for n in (fsdp_note(stage.train, accelerator),) if n]
    loader = data.loader(state.epoch, state.micro_batches_in_epoch, state.stream)
    per_epoch = batches_per_epoch(loader)
    total = count_steps(stage, per_epoch, plan.grad_accum)
    if resume_from is not None and state.step >= total:
        return _already_done(run_path, resume_from, state, total, console if main else None)
    state.total_steps = total

    recipe_text = stage.to_toml()
    if resume_from is not None:  # on every process, so that all of them stop on a refused change
        notes += check_resume_recipe(run_path, resume_from, recipe_text, stage.name, resume_changed)
    if main:
        write_run_files(run_path, stage, accelerator, state, recipe_text, resume_from is not None, init_report,
                        log_with, notes)
        announce(console, stage, parts.stage_def, run_path, parts.model, notes, total,
                 warmup_steps(stage.train.warmup, total), plan, accelerator.device)
    tokenizer = getattr(loader.collate_fn, "tokenizer", None)
    check_vocabulary(stage, tokenizer, parts.cfg.vocab_size)

    fit = Fit(stage, accelerator, module, optimizer, loader, state, run_path, tokenizer, total, per_epoch)
    final_path = fit.run(console, stop_after)
    if fit.stream is not None:
        counts = stream_metrics(fit.stream, accelerator)
        notes.append(stream_summary(counts))
        if main:
            console.print(f"  {stream_summary(counts)}", highlight=False)
    if main and log_with:
        accelerator.end_training()
    if main and stage.train.report:
        write_run_report(run_path)
    if final_path is None:
        final_path = list_checkpoints(run_path)[-1]
    return RunResult(run_dir=run_path, checkpoint=final_path, state=state, metrics=fit.last_metrics,
                     notes=folder.notes + notes)


# ---------------------------------------------------------------------- the fit loop
class Fit:
    """The optimizer steps of a set-up run: :meth:`run` loops over :meth:`train_step`, logs every ``log_every``
    steps (:meth:`log_window`), validates (:meth:`validate_now`) and checkpoints (:meth:`checkpoint`)."""

    def __init__(self, stage, accelerator, module, optimizer, loader, state: TrainerState, run_path: Path,
                 tokenizer, total: int, per_epoch: int | None) -> None:
        self.stage, self.accelerator, self.module, self.optimizer = stage, accelerator, module, optimizer
        self.loader, self.state, self.run_path, self.tokenizer = loader, state, run_path, tokenizer
        self.total, self.per_epoch = total, per_epoch
        self.stage_def = stage_def_of(stage)
        self.tcfg = stage.train
        self.plan = stage.batch_plan(accelerator.num_processes)
        self.main = accelerator.is_main_process
        self.warm = warmup_steps(self.tcfg.warmup, total)
        self.end_factor = self.tcfg.end_lr / self.tcfg.lr
        self.data_iter = iter(loader)
        self.stream = stream_tracker(loader)  # None for prepared data
        # the metrics line in progress (continued from the checkpoint when resuming)
        self.sums: dict[str, float] = dict(state.window.get("sums", {}))
        self.count = int(state.window.get("count", 0))
        self.last_metrics: dict[str, float] = {}
        self.t_log = time.perf_counter()
        self.samples_since = 0
        self.check_grads = accelerator.scaler is None  # fp16 loss scaling skips non-finite steps by design
        self.reduce = (lambda t: accelerator.reduce(t, "sum")) if accelerator.num_processes > 1 else None

    def run(self, console: Console, stop_after: int | None) -> Path | None:
        """Train to ``total`` steps (or ``stop_after`` steps of this call); the final checkpoint's path, or
        ``None`` when the last step's checkpoint was already written."""
        state, total, tcfg = self.state, self.total, self.tcfg
        steps_this_call = 0
        final_path = None
        with Monitor(self.run_path, total, state.step, self.accelerator, enabled=self.main, console=console) as monitor, \
                StopRequest() as stop:
            while state.step < total:
                verdict = self.train_step(stop)
                steps_this_call += 1
                monitor.advance(state.step, format_metrics(self.last_metrics, ("loss",)))
                if state.step % tcfg.log_every == 0 or state.step == total:
                    self.log_window(monitor)
                # FSDP: every process takes part in gathering the full weights the main process validates with
                if (self.main or uses_fsdp(self.accelerator)) and (
                        state.step == total or (tcfg.eval_every and state.step % tcfg.eval_every == 0)):
                    self.validate_now(monitor)
                if tcfg.save_every and state.step % tcfg.save_every == 0 and state.step < total:
                    self.checkpoint()
                if stop_after is not None and steps_this_call >= stop_after and state.step < total:
                    final_path = self.checkpoint()
                    break
                if verdict.stop and state.step < total:
                    raise TrainingInterrupted(self.checkpoint(), stop.requested or 15)
            else:
                final_path = self.checkpoint()
        return final_path

    def next_batch(self) -> dict:
        """The next micro-batch on the device (a new epoch when the data runs out), equally long on every process."""
        accelerator, state = self.accelerator, self.state
        try:
            batch = next(self.data_iter)
        except StopIteration:
            state.epoch += 1
            state.micro_batches_in_epoch = 0
            set_loader_epoch(self.loader, state.epoch)
            self.data_iter = iter(self.loader)
            batch = next(self.data_iter)
        state.micro_batches_in_epoch += 1
        batch = _to_device(batch, accelerator.device)
        batch.pop("num_skipped", None)
        if self.stream is not None:
            self.stream.note(batch)
        if accelerator.num_processes > 1 and self.stage_def.equal_rows:  # an unreadable image shrank a batch
            rows = torch.tensor([batch_rows(batch)], device=accelerator.device)
            batch = truncate_batch(batch, int(accelerator.gather(rows).min()))
        return batch

    def train_step(self, stop: StopRequest):
        """One optimizer step over ``grad_accum`` micro-batches, refused (before the update) when it diverged."""
        accelerator, module, state, tcfg, plan = self.accelerator, self.module, self.state, self.tcfg, self.plan
        module.train()
        step_losses = []
        for micro in range(plan.grad_accum):
            batch = self.next_batch()
            sync = micro == plan.grad_accum - 1
            ctx = contextlib.nullcontext() if sync else accelerator.no_sync(module)
            with ctx:
                with accelerator.autocast():
                    loss, metrics = module(batch)
                step_losses.append(loss.detach())
                accelerator.backward(loss / plan.grad_accum)
            for k, v in metrics.items():
                self.sums[k] = self.sums.get(k, 0.0) + float(v)
            self.sums["loss"] = self.sums.get("loss", 0.0) + float(loss.detach())
            self.count += 1
            self.samples_since += batch_samples(batch)
        trained = [p for p in module.parameters() if p.requires_grad]
        norm = accelerator.clip_grad_norm_(trained, tcfg.grad_clip) if tcfg.grad_clip > 0 else None
        if norm is None and self.check_grads:
            norm = sharded_grad_norm(trained) if uses_fsdp(accelerator) else grad_norm(trained)
        norm = plain_norm(norm)  # FSDP: a sharded (DTensor) norm becomes the full one
        verdict = check_step(step_losses, norm if self.check_grads else None, bool(stop.requested), self.reduce)
        if verdict.problem:
            raise diverged(self.stage.name, verdict.problem, state.step + 1, self.run_path,
                           "stopped before the update")
        self.lr = set_lr(self.optimizer, tcfg.lr, lr_factor(state.step, self.total, self.warm, tcfg.schedule,
                                                            self.end_factor))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        state.step += 1
        state.samples_seen += plan.global_batch_size
        return verdict

    def log_window(self, monitor: Monitor) -> None:
        """Average the metrics since the last line over steps and processes, log and print them."""
        accelerator, state = self.accelerator, self.state
        avg = {k: v / self.count for k, v in self.sums.items()}
        avg = {k: float(accelerator.reduce(torch.tensor(v, device=accelerator.device), "mean")) for k, v in avg.items()}
        elapsed = time.perf_counter() - self.t_log
        avg.update(lr=self.lr, epoch=state.epochs_done(self.per_epoch),
                   samples_per_s=self.samples_since * accelerator.num_processes / max(elapsed, 1e-9))
        if self.stream is not None:  # skipped samples, unreadable shards, refilled streams: all processes
            avg.update(stream_metrics(self.stream, accelerator))
        self.last_metrics = avg
        monitor.log(rounded_metrics(avg), state.step)
        monitor.print(f"step {state.step}/{self.total}  " + format_metrics(avg))
        self.sums, self.count, self.samples_since, self.t_log = {}, 0, 0, time.perf_counter()

    def validate_now(self, monitor: Monitor) -> None:
        """The stage's validation metrics (main process; under FSDP every process gathers the weights first),
        added to the last metrics."""
        val_module = unsharded_copy(self.accelerator, self.module)
        if not self.main:
            return
        val = validate(val_module, self.stage, self.stage_def, self.accelerator.device, self.tokenizer)
        if val:
            self.last_metrics.update(val)
            monitor.log(rounded_metrics(val), self.state.step)
            monitor.print(f"validation at step {self.state.step}: " + format_metrics(val))

    def checkpoint(self) -> Path | None:
        """Write a checkpoint (main process; every process checks the weights first); its path on the main one."""
        accelerator, state = self.accelerator, self.state
        state.last_metrics = rounded_metrics(self.last_metrics)
        state.window = {"sums": dict(self.sums), "count": self.count}  # the metrics line in progress continues on resume
        state.stream = gather_stream_state(self.loader, accelerator)  # every process's shard-stream position
        accelerator.wait_for_everyone()
        path = None
        model = accelerator.unwrap_model(self.module).model
        weights, optim_state, bad = checkpoint_payload(accelerator, self.module, self.optimizer)  # FSDP: gathered
        if not uses_fsdp(accelerator):
            bad = non_finite_weights(model)  # every process: the same weights
        if bad:
            raise diverged(self.stage.name, f"{len(bad)} weight tensors hold NaN/inf ({', '.join(bad[:3])}, …)",
                           state.step, self.run_path, "this checkpoint was not written")
        if self.main:
            path = write_checkpoint(
                lambda: save_checkpoint(self.run_path, model, self.optimizer, state, tokenizer=self.tokenizer,
                                        keep_last_n=self.tcfg.keep_last_n, weights=weights,
                                        optimizer_state=optim_state),
                self.run_path, state.step)
        accelerator.wait_for_everyone()
        return path
