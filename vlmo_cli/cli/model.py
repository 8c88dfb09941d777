"""``vlmo model info RECIPE|MODEL_DIR|RUN_FOLDER|CHECKPOINT``: parameters per component and forward FLOPs per path."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table


#: the stage ``model info RECIPE`` describes unless ``--stage`` says otherwise: the full pre-trained model
DEFAULT_STAGE = "pretrain.vl"


def _recipe_config(target: str, overrides: list[str], stage_name: str | None):
    """The config the training loop builds for one stage of a recipe (default: pre-training stage 3)."""
    from ..data.store import open_prepared
    from ..config.recipe import load_recipe
    from ..train.stages import stage_config

    recipe = load_recipe(target, overrides)
    if stage_name is None:
        names = recipe.stage_names()
        stage_name = DEFAULT_STAGE if DEFAULT_STAGE in names or not names else names[-1]
    stage = recipe.resolve(stage_name)
    return stage_config(stage, lambda: open_prepared(stage.task.dataset[0])), f"{target} [{stage_name}]"


def _resolve_config(target: str, overrides: list[str], stage_name: str | None = None):
    """``(ModelConfig, label)`` of a recipe (name or file), a model directory, run folder, checkpoint directory or
    an official checkpoint file."""
    from ..model.config import ModelConfig
    from ..layout import CONFIG_NAME, resolve_model_dir

    path = Path(target)
    saved = path.is_dir() or (path.is_file() and path.suffix != ".toml")
    if saved and (overrides or stage_name):
        from ..errors import RecipeError

        raise RecipeError(f"{target}: overrides and --stage apply to recipes; a saved model is described as it is")
    if path.is_dir():
        directory = resolve_model_dir(path)
        return ModelConfig.load(directory / CONFIG_NAME), str(directory)
    if path.is_file() and path.suffix != ".toml":
        from ..interop.official import read_official

        return read_official(path)[2].config, str(path)
    return _recipe_config(target, overrides, stage_name)


def info(
    target: str = typer.Argument(
        ..., help="a recipe (tiny, base, base_plus, large or a .toml file), a model directory, a run folder, a "
        "checkpoint directory or an official checkpoint file"
    ),
    overrides: list[str] = typer.Argument(None, help="recipe overrides key.path=value"),
    stage: str = typer.Option(
        None, "--stage", help=f"recipe stage whose model to describe (default {DEFAULT_STAGE})"
    ),
) -> None:
    """Parameters per component and forward FLOPs per sample of exactly the model a recipe stage trains (its
    vocabulary, text length, heads) or a saved model holds."""
    from ..model.flops import parameter_counts, path_flops
    from ..model.vlmo import VLMo

    cfg, label = _resolve_config(target, overrides or [], stage)
    import torch

    with torch.device("meta"):
        model = VLMo(cfg)
    console = Console()
    table = Table(title=f"VLMo {escape(label)}: {cfg.depth}×{cfg.embed_dim}, {cfg.num_heads} heads, VL-FFN from block "
                  f"{cfg.vlffn_start}, {'relative' if cfg.relative_position else 'absolute'} positions, "
                  f"{cfg.image_size}px / patch {cfg.patch_size}")
    table.add_column("component")
    table.add_column("parameters", justify="right")
    groups = parameter_counts(model)
    for name, n in groups.items():
        table.add_row(name, f"{n:,}")
    table.add_row("[bold]total", f"[bold]{sum(groups.values()):,}")
    console.print(table)
    flops = Table(title=f"forward GFLOPs per sample (text length {cfg.max_text_len}, {cfg.num_image_tokens} image tokens)")
    flops.add_column("path")
    flops.add_column("GFLOPs", justify="right")
    for name, f in path_flops(cfg).items():
        flops.add_row(name, f"{f / 1e9:.2f}")
    console.print(flops)


def register(app: typer.Typer) -> None:
    sub = typer.Typer(help="Inspect model architectures.", no_args_is_help=True)
    sub.command("info")(info)
    app.add_typer(sub, name="model")
