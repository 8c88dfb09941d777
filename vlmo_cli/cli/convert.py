"""``vlmo convert official|beit|beit3|vqkd``: foreign checkpoints → model directories (config.json +
model.safetensors); ``vqkd`` writes a visual-tokenizer directory of the same layout."""

from __future__ import annotations

import math
from pathlib import Path

import typer
from rich.console import Console

convert_app = typer.Typer(
    help="Convert official VLMo, BEiT or BEiT-3 checkpoints into model directories, and BEiT v2 VQ-KD tokenizers.",
    no_args_is_help=True
)
console = Console()
OverwriteOpt = typer.Option(False, "--overwrite", help="replace a previous result of this command at OUT_DIR "
                                                        "(a folder holding anything else is never replaced)")


def _written(out: Path) -> tuple[int, str | None]:
    """The number of weights in ``out``'s model.safetensors and what its metadata says was inferred (read from the
    file header; no model is built)."""
    from safetensors import safe_open

    from ..layout import WEIGHTS_NAME

    with safe_open(str(out / WEIGHTS_NAME), framework="pt") as f:
        n = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
        return n, (f.metadata() or {}).get("inferred")


def _print_summary(out: Path, config_type: type, describe) -> None:
    """One line describing the written directory (``describe(config)``, its ``config_type`` read back from it), and
    where its architecture came from."""
    from ..layout import CONFIG_NAME

    description = describe(config_type.load(out / CONFIG_NAME))
    n, inferred = _written(out)
    console.print(f"wrote {out}: {description}, {n:,} weights", highlight=False, soft_wrap=True, markup=False)
    if inferred:
        console.print(f"architecture: {inferred}", highlight=False, soft_wrap=True, markup=False)


def _summary(out: Path) -> None:
    from ..model.config import ModelConfig

    _print_summary(out, ModelConfig, lambda cfg: (
        f"{cfg.depth}×{cfg.embed_dim}, {cfg.num_heads} heads, VL-FFN from block {cfg.vlffn_start}, "
        f"{'relative' if cfg.relative_position else 'absolute'} positions, {cfg.image_size}px, heads {cfg.heads}"))


def _beit3_summary(out: Path) -> None:
    from ..model.beit3_config import Beit3Config

    _print_summary(out, Beit3Config, lambda cfg: (
        f"BEiT-3 {cfg.depth}×{cfg.embed_dim}, {cfg.num_heads} heads, FFN {cfg.ffn_dim}, {cfg.image_size}px, "
        f"vocabulary {cfg.vocab_size}, final norm {'yes' if cfg.normalize_output else 'no'}, heads {cfg.heads}"))


@convert_app.command("official")
def official(
    checkpoint: Path = typer.Argument(..., help="official VLMo checkpoint (.pt: Lightning, DeepSpeed or bare)"),
    out_dir: Path = typer.Argument(..., help="model directory to write"),
    image_size: int = typer.Option(None, "--image-size", help="resize position information to this resolution"),
    vocab: Path = typer.Option(None, "--vocab", help="vocab.txt or tokenizer.json to copy into the directory"),
    num_heads: int = typer.Option(
        None, "--num-heads", min=1,
        help="attention heads, for absolute-position checkpoints that name no official model_arch",
    ),
    text_table_len: int = typer.Option(
        None, "--text-table-len", min=1,
        help="max_text_len_of_initckpt of the relative-position table, when the checkpoint stores no config",
    ),
    overwrite: bool = OverwriteOpt,
) -> None:
    """Convert a microsoft/unilm VLMo checkpoint. The architecture comes from the weights; what they cannot tell
    comes from the stored config (model_arch, max_text_len_of_initckpt) or the options, and is never guessed."""
    from ..factory import convert_official

    _summary(convert_official(checkpoint, out_dir, image_size=image_size, vocab=vocab, num_heads=num_heads,
                              text_table_len=text_table_len, overwrite=overwrite))


@convert_app.command("beit")
def beit(
    checkpoint: Path = typer.Argument(..., help="BEiT weights (unilm .pth or a timm beit_* state dict)"),
    out_dir: Path = typer.Argument(..., help="model directory to write"),
    size: str = typer.Option(..., "--size", help="VLMo size matching the BEiT weights (tiny, base, large, ...)"),
    image_size: int = typer.Option(None, "--image-size", help="target resolution (relative table resized)"),
    init_text_from: str = typer.Option("random", "--init-text-from", help="language experts: random | image"),
    init_vl_from: str = typer.Option("random", "--init-vl-from", help="VL experts: random | image"),
    no_vl_ffn: bool = typer.Option(False, "--no-vl-ffn", help="no VL experts (the official text-stage layout)"),
    final_norm: str = typer.Option(
        "auto", "--final-norm", help="auto: norm, else fc_norm | official: norm, else left at init"
    ),
    vocab: Path = typer.Option(None, "--vocab", help="vocab.txt or tokenizer.json to copy into the directory"),
    seed: int = typer.Option(0, "--seed", help="seed of the parameters BEiT does not provide"),
    num_heads: int = typer.Option(
        None, "--num-heads", min=1, help="attention heads, when they differ from --size (BEiT without relative tables)"
    ),
    overwrite: bool = OverwriteOpt,
) -> None:
    """Initialise VLMo's attention and vision experts from BEiT (stage-1 weights)."""
    from ..factory import convert_beit_to_dir
    from ..model.config import get_config

    overrides = {}
    if image_size:
        overrides["image_size"] = image_size
    if num_heads:
        overrides["num_heads"] = num_heads
    cfg = get_config(size, **overrides)
    if no_vl_ffn:
        cfg = cfg.replace(vlffn_start=cfg.depth, heads=[h for h in cfg.heads if h != "itc_vl"])
    out = convert_beit_to_dir(
        checkpoint, out_dir, cfg, vocab=vocab, init_text=init_text_from, init_vl=init_vl_from,
        final_norm=final_norm, seed=seed, overwrite=overwrite, config_by=f"option --size {size}",
        heads_by="option --num-heads" if num_heads else None,
    )
    _summary(out)


@convert_app.command("beit3")
def beit3(
    checkpoint: Path = typer.Argument(..., help="released BEiT-3 checkpoint (.pth: pre-trained or fine-tuned)"),
    out_dir: Path = typer.Argument(..., help="model directory to write"),
    image_size: int = typer.Option(None, "--image-size", min=1,
                                   help="resize the image position table to this resolution"),
    num_heads: int = typer.Option(
        None, "--num-heads", min=1, help="attention heads, for weights that are not a released architecture"
    ),
    drop_unexpected: bool = typer.Option(
        False, "--drop-unexpected", help="convert without the keys that fit neither the backbone nor a known head"
    ),
    overwrite: bool = OverwriteOpt,
) -> None:
    """Convert a microsoft/unilm BEiT-3 checkpoint (backbone and its VQA, NLVR2, retrieval or classification head)
    into a BEiT-3 model directory. The architecture comes from the weights; the head count from a released
    architecture of the same shape or --num-heads, never guessed."""
    from ..factory import convert_beit3

    out = convert_beit3(checkpoint, out_dir, num_heads=num_heads, image_size=image_size,
                        drop_unexpected=drop_unexpected, overwrite=overwrite)
    _beit3_summary(out)


def _vqkd_summary(out: Path) -> None:
    from ..model.vqkd import VqkdConfig

    _print_summary(out, VqkdConfig, lambda cfg: (
        f"VQ-KD tokenizer {cfg.depth}×{cfg.embed_dim}, {cfg.num_heads} heads, MLP {cfg.ffn_dim}, {cfg.image_size}px "
        f"in {cfg.patch_size}px patches ({cfg.num_patches} tokens per image), codebook "
        f"{cfg.codebook_size}×{cfg.codebook_dim}"))


@convert_app.command("vqkd")
def vqkd(
    checkpoint: Path = typer.Argument(..., help="released BEiT v2 VQ-KD tokenizer (.pth, e.g. "
                                                "vqkd_encoder_base_decoder_3x768x12_clip-d5036aa7.pth)"),
    out_dir: Path = typer.Argument(..., help="tokenizer directory to write"),
    num_heads: int = typer.Option(
        None, "--num-heads", min=1, help="attention heads of the encoder, when it is not the released ViT-B/16 one"
    ),
    overwrite: bool = OverwriteOpt,
) -> None:
    """Convert a microsoft/unilm BEiT v2 VQ-KD tokenizer into a tokenizer directory for pretrain-mdm's
    target = "vqkd": encoder, encode_task_layer and codebook kept; decoder, teacher and training statistics dropped.
    Sizes come from the weights; the head count from the released encoder's shape or --num-heads, never guessed."""
    from ..factory import convert_vqkd

    _vqkd_summary(convert_vqkd(checkpoint, out_dir, num_heads=num_heads, overwrite=overwrite))


def register(app: typer.Typer) -> None:
    app.add_typer(convert_app, name="convert")
