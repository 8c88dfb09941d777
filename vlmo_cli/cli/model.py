"""``vlmo model info SIZE|RECIPE|MODEL_DIR``: parameters per component and forward FLOPs per path."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table


def _resolve_config(target: str, overrides: list[str]):
    from ..errors import ConfigError
    from ..model.config import ModelConfig, get_config, model_sizes

    path = Path(target)
    if target in model_sizes():
        return get_config(target), target
    if path.is_dir() and (path / "config.json").exists():
        return ModelConfig.load(path / "config.json"), str(path)
    try:
        from ..recipe import load_recipe
    except ImportError as exc:  # pragma: no cover - recipes ship with the package
        raise ConfigError(f"cannot read recipe {target}: {exc}") from exc
    recipe = load_recipe(target, overrides)
    return recipe.model.build_config(), target


def info(
    target: str = typer.Argument(..., help="a model size (tiny, base, base_plus, large), a recipe, or a model directory"),
    overrides: list[str] = typer.Argument(None, help="recipe overrides key.path=value"),
) -> None:
    """Parameters per component and forward FLOPs per sample for each path."""
    from ..model.flops import parameter_groups, path_flops
    from ..model.vlmo import VLMo

    cfg, label = _resolve_config(target, overrides or [])
    import torch

    with torch.device("meta"):
        model = VLMo(cfg)
    console = Console()
    table = Table(title=f"VLMo {label}: {cfg.depth}×{cfg.embed_dim}, {cfg.num_heads} heads, VL-FFN from block "
                  f"{cfg.vlffn_start}, {'relative' if cfg.relative_position else 'absolute'} positions, "
                  f"{cfg.image_size}px / patch {cfg.patch_size}")
    table.add_column("component")
    table.add_column("parameters", justify="right")
    groups = parameter_groups(model)
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
