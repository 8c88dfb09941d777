"""``vlmo convert beit3``: synthetic checkpoints in the released key layout (``model`` → ``beit3.`` backbone + the
unilm fine-tuning heads), every head, resolution change and one clear error per broken input."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import run
from safetensors import safe_open

from vlmo_cli.interop.beit3 import HEAD_LAYOUTS, convert_state
from vlmo_cli.model.beit3 import Beit3
from vlmo_cli.model.beit3_config import get_beit3_config
from vlmo_cli.factory import is_beit3_dir, load_beit3

#: tiny backbone: width 32, 2 blocks, 32 px images in 8 px patches, 100-word vocabulary, 20 text positions
SHAPE = dict(embed_dim=32, depth=2, num_heads=4, ffn_dim=64, vocab_size=100, max_source_positions=20)


def _released_head(head: str, dim: int = 32) -> dict[str, torch.Tensor]:
    """The keys of a unilm fine-tuning head, with their shapes (VQA 7 answers, NLVR2 2 classes, ImageNet 5 classes)."""
    g = torch.Generator().manual_seed(1)
    shapes = {
        "vqa": {"pooler.norm.weight": (dim,), "pooler.norm.bias": (dim,), "pooler.dense.weight": (dim, dim),
                "pooler.dense.bias": (dim,), "head.0.weight": (2 * dim, dim), "head.0.bias": (2 * dim,),
                "head.1.weight": (2 * dim,), "head.1.bias": (2 * dim,), "head.3.weight": (7, 2 * dim),
                "head.3.bias": (7,)},
        "nlvr2": {"head.norm1.weight": (4 * dim,), "head.norm1.bias": (4 * dim,),
                  "head.dense1.weight": (2 * dim, 4 * dim), "head.dense1.bias": (2 * dim,),
                  "head.norm2.weight": (2 * dim,), "head.norm2.bias": (2 * dim,),
                  "head.dense2.weight": (2, 2 * dim), "head.dense2.bias": (2,)},
        "retrieval": {"vision_head.weight": (dim, dim), "language_head.weight": (dim, dim), "logit_scale": ()},
        "classify": {"fc_norm.weight": (dim,), "fc_norm.bias": (dim,), "head.weight": (5, dim), "head.bias": (5,)},
        "captioning": {"mlm_head.weight": (100, dim), "mlm_head.bias": (100,)},
    }[head]
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


def _backbone(normalize_output: bool = True, **shape) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    cfg = get_beit3_config("tiny", **{**SHAPE, **shape}, normalize_output=normalize_output)
    return {k: v + 0.05 * torch.randn_like(v) for k, v in Beit3(cfg).state_dict().items()}


def _released(head: str | None = None, normalize_output: bool = True, **shape) -> dict[str, torch.Tensor]:
    state = {f"beit3.{k}": v for k, v in _backbone(normalize_output, **shape).items()}
    return state | (_released_head(head) if head else {})


def _save(tmp_path, state, name: str = "beit3.pth", container: str = "model"):
    path = tmp_path / name
    torch.save({container: state} if container else state, path)
    return path


def _inputs():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 100, (2, 6), generator=g)
    pad = torch.zeros(2, 6, dtype=torch.long)
    pad[1, 3:] = 1
    return torch.randn(2, 3, 32, 32, generator=g), ids, pad


def _convert(capsys, *args: str) -> tuple[int, str, str]:
    """``vlmo convert beit3 ARGS --num-heads 4``: tiny weights are no released architecture, so the tests state their
    head count as a user would."""
    return run(capsys, "convert", "beit3", *args, "--num-heads", "4")


@pytest.mark.parametrize("head", [None, "vqa", "nlvr2", "retrieval", "classify", "captioning"])
def test_convert_each_released_layout(tmp_path, capsys, head):
    """Backbone and head convert and load; backbone outputs equal those of the source weights."""
    normalize = head not in ("vqa", "classify")  # unilm switches the final LayerNorm off for these two
    state = _released(head, normalize_output=normalize)
    code, out, err = _convert(capsys, str(_save(tmp_path, state)), str(tmp_path / "out"))
    assert code == 0, err
    assert "num_heads 4 (option --num-heads)" in out and "BEiT-3 2×32" in out
    assert is_beit3_dir(tmp_path / "out")
    data = json.loads((tmp_path / "out" / "config.json").read_text())
    assert data["family"] == "beit3" and data["heads"] == ([head] if head else [])
    assert data["normalize_output"] is normalize
    model = load_beit3(tmp_path / "out").eval()
    source = Beit3(model.config.replace(heads=[]))
    source.load_state_dict({k.removeprefix("beit3."): v for k, v in state.items() if k.startswith("beit3.")})
    image, ids, pad = _inputs()
    with torch.no_grad():
        ours, theirs = model.encode_pair(image, ids, pad), source.eval().encode_pair(image, ids, pad)
    assert torch.equal(ours.features, theirs.features)
    # every released head key is in the converted weights, unchanged
    saved = model.state_dict()
    for key, value in (_released_head(head) if head else {}).items():
        ours = next(p + key[len(o):] for o, p in HEAD_LAYOUTS[head][1].items() if key.startswith(o))
        assert torch.equal(saved[ours], value), key


def test_head_shapes_after_conversion(tmp_path, capsys):
    """Head sizes come from the weights: VQA 7 answers, NLVR2 2 classes, ImageNet 5 classes, captioning 100 words."""
    image, ids, pad = _inputs()
    for head, call, size in (("vqa", lambda m: m.vqa_logits(image, ids, pad), 7),
                             ("nlvr2", lambda m: m.nlvr2_logits(image, image.flip(0), ids, pad), 2),
                             ("classify", lambda m: m.classify_logits(image), 5),
                             ("captioning", lambda m: m.captioning_logits(image, ids, pad)[:, 0], 100)):
        out = tmp_path / head
        code, _, err = _convert(capsys, str(_save(tmp_path, _released(head), f"{head}.pth")), str(out))
        assert code == 0, err
        with torch.no_grad():
            assert call(load_beit3(out).eval()).shape == (2, size)
    code, _, err = _convert(capsys, str(_save(tmp_path, _released("retrieval"), "r.pth")),
                       str(tmp_path / "r"))
    assert code == 0, err
    with torch.no_grad():
        img, txt = load_beit3(tmp_path / "r").eval().retrieval_embeddings(image, ids, pad)
    assert img.shape == txt.shape == (2, 32)
    assert torch.allclose(img.norm(dim=-1), torch.ones(2)) and torch.allclose(txt.norm(dim=-1), torch.ones(2))


def test_released_shape_gives_the_head_count():
    """Width 768, depth 12, FFN 3072 is the released base: 12 heads, said so in the sources (meta tensors: no RAM)."""
    with torch.device("meta"):
        state = Beit3(get_beit3_config("base", num_heads=8)).state_dict()
    from vlmo_cli.interop.beit3 import infer_config, split_released

    backbone, _ = split_released(state, "base")
    cfg, sources = infer_config(backbone, {}, [], "base")
    assert (cfg.num_heads, cfg.image_size, cfg.vocab_size, cfg.max_source_positions) == (12, 224, 64010, 1024)
    assert "released BEiT-3 base architecture" in sources["num_heads"]


def test_other_shape_needs_num_heads(tmp_path, capsys):
    path = _save(tmp_path, _released())
    code, _, err = run(capsys, "convert", "beit3", str(path), str(tmp_path / "out"))
    assert code == 2 and "cannot infer the number of attention heads" in err and "--num-heads" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()
    code, out, err = _convert(capsys, str(path), str(tmp_path / "out"))
    assert code == 0, err
    assert "num_heads 4 (option --num-heads)" in out
    code, _, err = run(capsys, "convert", "beit3", str(path), str(tmp_path / "o2"), "--num-heads", "5")
    assert code == 2 and "does not divide the width 32" in err


def test_unexpected_keys_are_named_and_refused(tmp_path, capsys):
    state = _released("vqa") | {"mim_head.weight": torch.zeros(100, 32), "beit3.encoder.output_projection.weight":
                                torch.zeros(100, 32)}
    path = _save(tmp_path, state)
    code, _, err = _convert(capsys, str(path), str(tmp_path / "out"))
    assert code == 2
    assert "unexpected keys [mim_head.weight, beit3.encoder.output_projection.weight]" in err
    assert "--drop-unexpected" in err
    code, out, err = _convert(capsys, str(path), str(tmp_path / "out"), "--drop-unexpected")
    assert code == 0, err
    assert "dropped keys [mim_head.weight, beit3.encoder.output_projection.weight]" in out
    assert load_beit3(tmp_path / "out").config.heads == ["vqa"]


def test_incomplete_head_and_missing_backbone_keys(tmp_path, capsys):
    state = _released("nlvr2")
    del state["head.norm2.bias"]
    code, _, err = _convert(capsys, str(_save(tmp_path, state)), str(tmp_path / "out"))
    assert code == 2 and "the nlvr2 head is incomplete: missing keys [head.norm2.bias]" in err
    state = _released()
    del state["beit3.encoder.layers.1.ffn.B.fc2.bias"]
    code, _, err = _convert(capsys, str(_save(tmp_path, state, "b.pth")), str(tmp_path / "out"))
    assert code == 2 and "missing keys [encoder.layers.1.ffn.B.fc2.bias]" in err


def test_not_a_beit3_checkpoint(tmp_path, capsys):
    path = _save(tmp_path, {"transformer.cls_token": torch.zeros(1, 1, 8)})
    code, _, err = _convert(capsys, str(path), str(tmp_path / "out"))
    assert code == 2 and "not a BEiT-3 checkpoint" in err and "vision_embed.proj.weight" in err


class NotATensor:
    """Unpickling an instance needs code from this module."""


def test_pickle_needing_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"model": _released(), "extra": NotATensor()}, path)
    code, _, err = _convert(capsys, str(path), str(tmp_path / "out"))
    assert code == 2 and "refused: this file needs code execution" in err and not (tmp_path / "out").exists()


def test_containers_and_bare_torchscale_layout(tmp_path, capsys):
    """``module`` container and a bare torchscale state dict (no prefix) convert to the same backbone."""
    bare = _backbone()
    for name, state, container in (("m.pth", _released(), "module"), ("bare.pth", bare, None)):
        code, _, err = _convert(capsys, str(_save(tmp_path, state, name, container)),
                           str(tmp_path / name.replace(".pth", "")))
        assert code == 0, err
    a, b = load_beit3(tmp_path / "m").state_dict(), load_beit3(tmp_path / "bare").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resolution_change_interpolates_positions(tmp_path, capsys):
    """--image-size 48: the 4×4 patch rows become 6×6 (bicubic), the 2 offset rows and CLS row are kept."""
    state = _released("retrieval")
    code, _, err = _convert(capsys, str(_save(tmp_path, state)), str(tmp_path / "out"),
                       "--image-size", "48")
    assert code == 0, err
    model = load_beit3(tmp_path / "out").eval()
    assert model.config.image_size == 48
    table = model.state_dict()["encoder.embed_positions.A.weight"]
    old = state["beit3.encoder.embed_positions.A.weight"]
    assert table.shape == (3 + 36, 32) and torch.equal(table[:3], old[:3])
    expected = torch.nn.functional.interpolate(old[3:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2), size=(6, 6),
                                               mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(36, 32)
    assert torch.allclose(table[3:], expected)
    with torch.no_grad():
        img, _ = model.retrieval_embeddings(torch.randn(1, 3, 48, 48))
    assert img.shape == (1, 32)
    code, _, err = _convert(capsys, str(_save(tmp_path, state, "x.pth")), str(tmp_path / "o2"),
                       "--image-size", "50")
    assert code == 2 and "not a multiple of the patch size 8" in err


def test_output_directory_rule(tmp_path, capsys):
    """A folder holding anything else is never replaced; a previous conversion only with --overwrite."""
    path = _save(tmp_path, _released())
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    code, _, err = _convert(capsys, str(path), str(tmp_path / "mine"))
    assert code == 2 and (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    assert _convert(capsys, str(path), str(tmp_path / "out"))[0] == 0
    code, _, err = _convert(capsys, str(path), str(tmp_path / "out"))
    assert code == 2 and "--overwrite" in err
    assert _convert(capsys, str(path), str(tmp_path / "out"), "--overwrite")[0] == 0
    with safe_open(str(tmp_path / "out" / "model.safetensors"), framework="pt") as f:
        assert f.metadata()["source"] == "beit3:beit3.pth"


def test_convert_state_is_pure():
    """The library call converts in memory and leaves its input untouched."""
    state = _released("vqa")
    before = {k: v.clone() for k, v in state.items()}
    converted = convert_state(state, "mem", num_heads=4, image_size=48)
    assert converted.config.image_size == 48 and converted.config.heads == ["vqa"]
    assert state.keys() == before.keys() and all(torch.equal(state[k], before[k]) for k in state)
    assert "vqa_head.head.3.weight" in converted.state and "beit3.text_embed.weight" not in converted.state


def test_vision_only_classification_layout(tmp_path, capsys):
    """The released ImageNet-1k layout: vision side only (no text embedding, text positions or B experts)."""
    full = _released("classify", normalize_output=False)
    vision = {k: v for k, v in full.items()
              if not (k.startswith("beit3.text_embed") or ".B." in k)}
    code, out, err = _convert(capsys, str(_save(tmp_path, vision)), str(tmp_path / "out"))
    assert code == 0, err
    assert "language False (no text embedding in the weights: vision side only)" in out
    model = load_beit3(tmp_path / "out").eval()
    assert model.config.language is False and model.text_embed is None
    assert not any(".B." in k for k in model.state_dict())
    image, ids, pad = _inputs()
    source = Beit3(model.config.replace(language=True, vocab_size=100, max_source_positions=20))
    source.load_state_dict({k.removeprefix("beit3."): v for k, v in full.items() if k.startswith("beit3.")}
                           | {k: v for k, v in model.state_dict().items() if k.startswith("classify_head.")})
    with torch.no_grad():
        assert torch.equal(model.classify_logits(image), source.eval().classify_logits(image))
        with pytest.raises(ValueError, match="no language side"):
            model.encode_text(ids, pad)
    # a vision-only file whose head needs text is refused with the reason
    bad = {k: v for k, v in _released("vqa").items() if not (k.startswith("beit3.text_embed") or ".B." in k)}
    code, _, err = _convert(capsys, str(_save(tmp_path, bad, "bad.pth")), str(tmp_path / "bad"))
    assert code == 2 and "need the language side" in err


def test_model_directories_load_and_describe_in_their_family(tmp_path, capsys):
    """A converted BEiT-3 directory loads as a BEiT-3 model, and ``vlmo model info`` describes it as one."""
    from vlmo_cli.factory import load_model

    assert _convert(capsys, str(_save(tmp_path, _released())), str(tmp_path / "out"))[0] == 0
    assert isinstance(load_model(tmp_path / "out"), Beit3)
    code, out, err = run(capsys, "model", "info", str(tmp_path / "out"))
    assert code == 0, err
    assert "BEiT-3" in out and "language experts" in out and "pair (image first, then text)" in out


def test_retrieval_without_logit_scale(tmp_path, capsys):
    """A retrieval head stored without ``logit_scale`` gets the value unilm's model starts from, and says so."""
    state = _released("retrieval")
    del state["logit_scale"]
    code, out, err = _convert(capsys, str(_save(tmp_path, state)), str(tmp_path / "out"))
    assert code == 0, err
    assert "not in the checkpoint, set to unilm's initial value: logit_scale" in out
    scale = load_beit3(tmp_path / "out").retrieval_head.logit_scale.item()
    assert scale == pytest.approx(math.log(1 / 0.07))
    state = _released("retrieval")
    del state["language_head.weight"]
    code, _, err = _convert(capsys, str(_save(tmp_path, state, "b.pth")), str(tmp_path / "b"))
    assert code == 2 and "the retrieval head is incomplete: missing keys [language_head.weight]" in err


def test_captioning_head_must_score_the_vocabulary(tmp_path, capsys):
    state = _released("captioning") | {"mlm_head.weight": torch.zeros(90, 32), "mlm_head.bias": torch.zeros(90)}
    code, _, err = _convert(capsys, str(_save(tmp_path, state)), str(tmp_path / "out"))
    assert code == 2 and "the captioning head scores 90 words but the text embedding has 100" in err


def test_blocks_must_be_numbered_from_zero(tmp_path, capsys):
    state = {k.replace("encoder.layers.1.", "encoder.layers.2."): v for k, v in _released().items()}
    code, _, err = _convert(capsys, str(_save(tmp_path, state)), str(tmp_path / "out"))
    assert code == 2 and "the blocks are not numbered 0..N-1 (found [0, 2])" in err
