"""Released BEiT-3 checkpoints (microsoft/unilm ``beit3/``) → (state dict, :class:`Beit3Config`), pure functions
(:func:`vlmo_cli.factory.convert_beit3` writes the model directory).

The released files (``beit3_base_patch16_224.pth``, ``beit3_large_patch16_224.pth``, the fine-tuned VQA, NLVR2,
COCO/Flickr retrieval and ImageNet models) hold the state dict of a unilm fine-tuning model under ``model`` (or
``module``): the backbone under the prefix ``beit3.`` with torchscale's names, which are ours, and the task head at
the top level with the names of ``beit3/modeling_finetune.py``. Conversion strips the prefix and moves the head's
keys under the prefix of our head (:data:`HEAD_LAYOUTS`). A bare torchscale ``BEiT3`` state dict (no prefix, no
head) converts too.

What the weights fix is read from them (width, depth, FFN width, vocabulary, patch size, resolution, text positions,
final LayerNorm, head sizes). The number of attention heads is in no shape: it comes from ``--num-heads`` or, when
width, depth and FFN width are those of a released architecture (base, large), from that architecture; otherwise the
conversion is refused. Keys that fit nowhere are named and refused unless the caller asks to drop them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..errors import CheckpointError, ConfigError
from ..model.beit3_config import OFFICIAL_SHAPES, Beit3Config, get_beit3_config
from .shapes import given_heads, numbered_blocks, square_image_size

PREFIX = "beit3."
State = dict[str, torch.Tensor]

#: head → (a key that identifies it, {released key prefix: our key prefix}, every released key of that head)
HEAD_LAYOUTS: dict[str, tuple[str, dict[str, str], tuple[str, ...]]] = {
    "vqa": ("head.0.weight", {"pooler.": "vqa_head.pooler.", "head.": "vqa_head.head."},
            ("pooler.norm.weight", "pooler.norm.bias", "pooler.dense.weight", "pooler.dense.bias", "head.0.weight",
             "head.0.bias", "head.1.weight", "head.1.bias", "head.3.weight", "head.3.bias")),
    "nlvr2": ("head.dense1.weight", {"head.": "nlvr2_head."},
              ("head.norm1.weight", "head.norm1.bias", "head.dense1.weight", "head.dense1.bias", "head.norm2.weight",
               "head.norm2.bias", "head.dense2.weight", "head.dense2.bias")),
    "retrieval": ("vision_head.weight", {"vision_head.": "retrieval_head.vision_head.",
                                         "language_head.": "retrieval_head.language_head.",
                                         "logit_scale": "retrieval_head.logit_scale"},
                  ("vision_head.weight", "language_head.weight", "logit_scale")),
    "classify": ("fc_norm.weight", {"fc_norm.": "classify_head.fc_norm.", "head.": "classify_head.head."},
                 ("fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias")),
    "captioning": ("mlm_head.weight", {"mlm_head.": "captioning_head."}, ("mlm_head.weight", "mlm_head.bias")),
}

#: head keys a checkpoint may lack, with the value the unilm model holds when its loader finds none (it loads
#: non-strictly): the retrieval temperature ``logit_scale`` = log(1 / 0.07), as ``BEiT3ForRetrieval`` creates it
UNILM_INITIAL = {"logit_scale": lambda: torch.tensor(math.log(1 / 0.07))}

#: backbone keys every BEiT-3 state dict has (torchscale names)
REQUIRED = ("vision_embed.proj.weight", "vision_embed.cls_token", "encoder.embed_positions.A.weight",
            "encoder.layers.0.ffn.A.fc1.weight", "encoder.layers.0.self_attn.inner_attn_ln.A.weight")
#: the text embedding: present = the model has its language side; absent = a vision-only checkpoint (the released
#: ImageNet-1k models keep only the vision-related parameters), which must then hold no language expert either
LANGUAGE_MARKER = "text_embed.weight"


@dataclass
class Converted:
    """A converted checkpoint: our state dict, its config, where the fields the weights do not fix came from, and
    the keys that were dropped on request."""

    state: State
    config: Beit3Config
    sources: dict[str, str]
    dropped: list[str] = field(default_factory=list)
    initial: list[str] = field(default_factory=list)

    def describe(self) -> str:
        parts = [f"{name} {getattr(self.config, name)} ({how})" for name, how in self.sources.items()]
        if self.initial:
            parts.append(f"not in the checkpoint, set to unilm's initial value: {', '.join(self.initial)}")
        if self.dropped:
            parts.append(f"dropped keys {_few(self.dropped)}")
        return "; ".join(parts + ["every other field from the weights"])


def _few(items: list[str], n: int = 6) -> str:
    return f"[{', '.join(items[:n])}{', ...' if len(items) > n else ''}] ({len(items)} in all)"


def split_released(state: State, source: str) -> tuple[State, State]:
    """``(backbone with torchscale names, the other keys)`` of a released or bare torchscale state dict."""
    if any(k.startswith(PREFIX) for k in state):
        backbone = {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}
        rest = {k: v for k, v in state.items() if not k.startswith(PREFIX)}
    else:
        backbone, rest = dict(state), {}
    missing = [k for k in REQUIRED if k not in backbone]
    if missing:
        layout = "released (prefix beit3.)" if rest or any(k.startswith(PREFIX) for k in state) else "torchscale"
        raise CheckpointError(
            f"{source}: not a BEiT-3 checkpoint in the {layout} layout: missing keys [{', '.join(missing)}]; "
            f"first keys: {list(state)[:5]}"
        )
    return backbone, rest


def map_heads(rest: State, source: str):
    """``(head weights under our names, heads found, keys that belong to no head, keys set to unilm's initial value
    because the checkpoint lacks them)``."""
    out: State = {}
    heads: list[str] = []
    claimed: set[str] = set()
    initial: list[str] = []
    for head, (marker, prefixes, keys) in HEAD_LAYOUTS.items():
        if marker not in rest:
            continue
        missing = [k for k in keys if k not in rest and k not in UNILM_INITIAL]
        if missing:
            raise CheckpointError(f"{source}: the {head} head is incomplete: missing keys [{', '.join(missing)}]")
        for key in keys:
            old = next(p for p in prefixes if key.startswith(p))
            if key not in rest:
                initial.append(key)
            out[prefixes[old] + key[len(old):]] = rest[key] if key in rest else UNILM_INITIAL[key]()
        claimed.update(keys)
        heads.append(head)
    return out, heads, sorted(set(rest) - claimed), initial


def _num_heads(dim: int, depth: int, ffn: int, num_heads: int | None, source: str) -> tuple[int, str]:
    given = given_heads(num_heads, dim, source)
    if given is not None:
        return given
    size = OFFICIAL_SHAPES.get((dim, depth))
    official = get_beit3_config(size) if size else None
    if official is not None and official.ffn_dim == ffn:
        return official.num_heads, f"released BEiT-3 {size} architecture (width {dim}, depth {depth}, FFN {ffn})"
    raise CheckpointError(
        f"{source}: cannot infer the number of attention heads: no weight's shape holds it and width {dim}, depth "
        f"{depth}, FFN {ffn} are not a released BEiT-3 architecture (base 768/12/3072, large 1024/24/4096); "
        f"pass --num-heads N (a divisor of {dim})"
    )


def infer_config(backbone: State, heads: State, head_names: list[str],
                 source: str, num_heads: int | None = None) -> tuple[Beit3Config, dict[str, str]]:
    """The :class:`Beit3Config` of the weights and the source of each field they do not fix."""
    proj = backbone["vision_embed.proj.weight"]
    dim = proj.shape[0]
    language = LANGUAGE_MARKER in backbone
    depth = numbered_blocks(backbone, r"encoder\.layers\.(\d+)\.", "the blocks", source)
    ffn = backbone["encoder.layers.0.ffn.A.fc1.weight"].shape[0]
    heads_n, how = _num_heads(dim, depth, ffn, num_heads, source)
    image_size = square_image_size(backbone["encoder.embed_positions.A.weight"].shape[0], 3, proj.shape[-1],
                                   "the image position table", "2 offset rows + CLS", source)
    fields = dict(
        image_size=image_size, patch_size=proj.shape[-1], in_chans=proj.shape[1],
        embed_dim=dim, depth=depth, num_heads=heads_n, ffn_dim=ffn, language=language,
        normalize_output="encoder.layer_norm.A.weight" in backbone, heads=head_names, name="converted",
    )
    sources = {"num_heads": how}
    if language:
        fields["vocab_size"] = backbone[LANGUAGE_MARKER].shape[0]
        text_positions = backbone.get("encoder.embed_positions.B.weight")
        if text_positions is None:
            raise CheckpointError(f"{source}: the text embedding has no text position table: missing keys "
                                  "[encoder.embed_positions.B.weight]")
        fields["max_source_positions"] = text_positions.shape[0]
    else:
        sources["language"] = "no text embedding in the weights: vision side only"
    if "vqa" in head_names:
        fields["vqa_num_answers"] = heads["vqa_head.head.3.weight"].shape[0]
    if "nlvr2" in head_names:
        fields["nlvr2_num_classes"] = heads["nlvr2_head.dense2.weight"].shape[0]
    if language and "captioning" in head_names and heads["captioning_head.weight"].shape[0] != fields["vocab_size"]:
        raise CheckpointError(f"{source}: the captioning head scores {heads['captioning_head.weight'].shape[0]} "
                              f"words but the text embedding has {fields['vocab_size']}")
    if "classify" in head_names:
        fields["num_classes"] = heads["classify_head.head.weight"].shape[0]
    try:
        cfg = Beit3Config(**fields)
    except ConfigError as exc:
        raise CheckpointError(f"{source}: {exc}") from exc
    return cfg, sources


def adapt_state(state: State, old: Beit3Config, new: Beit3Config) -> State:
    """A copy of ``state`` whose image position table fits ``new`` (bicubic resize of the patch rows)."""
    from ..model.beit3 import resize_vision_positions

    state = dict(state)
    key = "encoder.embed_positions.A.weight"
    if old.grid_size != new.grid_size:
        state[key] = resize_vision_positions(state[key], new.grid_size)
    return state


def convert_state(state: State, source: str, num_heads: int | None = None,
                  image_size: int | None = None, drop_unexpected: bool = False) -> Converted:
    """Pure conversion of a released (or bare torchscale) BEiT-3 state dict.

    Args:
        state: the state dict (already taken out of its ``model``/``module`` container).
        source: names the input in messages.
        num_heads: attention heads, when the checkpoint is not a released architecture.
        image_size: target resolution (the image position table is resized).
        drop_unexpected: drop keys that belong neither to the backbone nor to a known head instead of refusing.
    """
    backbone, rest = split_released(state, source)
    head_state, head_names, leftover, initial = map_heads(rest, source)
    cfg, sources = infer_config(backbone, head_state, head_names, source, num_heads)
    expected = _backbone_keys(cfg)
    unexpected = sorted(set(backbone) - expected)
    missing = sorted(expected - set(backbone))
    if missing:
        raise CheckpointError(f"{source}: weights do not match the BEiT-3 architecture: missing keys {_few(missing)}")
    prefix = PREFIX if any(k.startswith(PREFIX) for k in state) else ""
    dropped = leftover + [prefix + k for k in unexpected]
    if dropped and not drop_unexpected:
        raise CheckpointError(
            f"{source}: unexpected keys {_few(dropped)} (neither the BEiT-3 backbone nor a known head: "
            f"{', '.join(HEAD_LAYOUTS)}); pass --drop-unexpected to convert without them"
        )
    out = {k: v for k, v in backbone.items() if k in expected} | head_state
    if image_size and image_size != cfg.image_size:
        if image_size % cfg.patch_size:
            raise CheckpointError(f"--image-size {image_size} is not a multiple of the patch size {cfg.patch_size}")
        new = cfg.replace(image_size=image_size)
        out, cfg = adapt_state(out, cfg, new), new
    return Converted(out, cfg, sources, dropped, initial)


def _backbone_keys(cfg: Beit3Config) -> set[str]:
    """Names of the backbone parameters of ``cfg`` (built on the meta device: no memory, no initialisation cost)."""
    from ..model.beit3 import Beit3

    with torch.device("meta"):
        model = Beit3(cfg.replace(heads=[]))
    return set(model.state_dict())
