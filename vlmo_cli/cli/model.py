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
    """The config the training loop builds for one stage of a recipe (default: pre-training stage 3, else the
    recipe's first training stage)."""
    from ..config.schema import STAGES
    from ..data.store import open_prepared
    from ..config.recipe import load_recipe
    from ..train.build import stage_config_of

    recipe = load_recipe(target, overrides)
    if stage_name is None:
        names = recipe.stage_names()
        trained = [n for n in names if STAGES[n].kind == "train"]
        stage_name = DEFAULT_STAGE if DEFAULT_STAGE in names or not names else (trained or names)[0]
    stage = recipe.resolve(stage_name)
    return stage_config_of(stage, lambda: open_prepared(stage.task.dataset[0])), f"{target} [{stage_name}]"


def _resolve_config(target: str, overrides: list[str], stage_name: str | None = None):
    """``(config, label)`` of a recipe (name or file), a model directory, run folder, checkpoint directory (VLMo or
    BEiT-3) or an official checkpoint file."""
    from ..factory import load_config
    from ..layout import resolve_model_dir

    path = Path(target)
    saved = path.is_dir() or (path.is_file() and path.suffix != ".toml")
    if saved and (overrides or stage_name):
        from ..errors import RecipeError

        raise RecipeError(f"{target}: overrides and --stage apply to recipes; a saved model is described as it is")
    if path.is_dir():
        directory = resolve_model_dir(path)
        return load_config(directory), str(directory)
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
    from ..model.beit3 import Beit3
    from ..model.beit3_config import Beit3Config
    from ..model.flops import parameter_counts, path_flops
    from ..model.vlmo import VLMo

    cfg, label = _resolve_config(target, overrides or [], stage)
    import torch

    beit3 = isinstance(cfg, Beit3Config)
    with torch.device("meta"):
        model = Beit3(cfg) if beit3 else VLMo(cfg)
    console = Console()
    layout = (f"FFN {cfg.ffn_dim}, multiway (image A / text B), absolute positions" if beit3 else
              f"VL-FFN from block {cfg.vlffn_start}, {'relative' if cfg.relative_position else 'absolute'} positions")
    table = Table(title=f"{'BEiT-3' if beit3 else 'VLMo'} {escape(label)}: {cfg.depth}×{cfg.embed_dim}, "
                  f"{cfg.num_heads} heads, {layout}, {cfg.image_size}px / patch {cfg.patch_size}")
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
