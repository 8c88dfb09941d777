"""Loading at another resolution (reference §16) and parity of the absolute-position (base_plus-style) variant.

The parity test compares the converted model with a small independent forward written here in plain torch from the
reference text (§3–§6): manual attention in float32, split-at-text-length routing, absolute position embeddings.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vlmo_cli.factory import load_official
from vlmo_cli.model.config import get_config
from vlmo_cli.model.position import num_image_buckets, resize_image_relative_table
from vlmo_cli.model.vlmo import VLMo

HEADS = ["pooler", "itc", "itc_vl", "itm", "mlm"]
VOCAB = 300


# ---------------------------------------------------------------------- BEiT geometric resize vs scipy
def _beit_scipy_resize(table: np.ndarray, src_grid: int, dst_grid: int) -> np.ndarray:
    """BEiT's ``interp2d(kind='cubic')`` code path, with the equivalent ``RectBivariateSpline(kx=3, ky=3, s=0)``."""
    from scipy.interpolate import RectBivariateSpline

    src_size, dst_size = 2 * src_grid - 1, 2 * dst_grid - 1
    num_extra = table.shape[0] - src_size**2

    def geometric_progression(a, r, n):
        return a * (1.0 - r**n) / (1.0 - r)

    left, right = 1.01, 1.5
    while right - left > 1e-6:
        q = (left + right) / 2.0
        if geometric_progression(1, q, src_size // 2) > dst_size // 2:
            right = q
        else:
            left = q
    dis, cur = [], 1
    for i in range(src_size // 2):
        dis.append(cur)
        cur += q ** (i + 1)
    r_ids = [-d for d in reversed(dis)]
    x = np.array(r_ids + [0] + dis)
    y = np.array(r_ids + [0] + dis)
    t = dst_size // 2.0
    dx = np.arange(-t, t + 0.1, 1.0)
    dy = np.arange(-t, t + 0.1, 1.0)
    columns = []
    for col in range(table.shape[1]):
        z = table[: src_size**2, col].reshape(src_size, src_size)
        f = RectBivariateSpline(x, y, z, kx=3, ky=3, s=0)
        columns.append(f(dx, dy).reshape(-1, 1))
    return np.concatenate([np.concatenate(columns, -1), table[src_size**2 :]], 0), num_extra


@pytest.mark.parametrize("src,dst", [(3, 5), (4, 8), (14, 24), (14, 30), (4, 3)])
def test_geometric_resize_matches_scipy_spline(src, dst):
    pytest.importorskip("scipy.interpolate")
    g = torch.Generator().manual_seed(src * 100 + dst)
    table = torch.randn(num_image_buckets(src) + 11, 6, generator=g, dtype=torch.float64)
    ours = resize_image_relative_table(table, src, dst).numpy()
    ref, num_extra = _beit_scipy_resize(table.numpy(), src, dst)
    assert ours.shape == ref.shape == ((2 * dst - 1) ** 2 + num_extra, 6)
    np.testing.assert_allclose(ours, ref, atol=1e-9, rtol=0)
    ours32 = resize_image_relative_table(table.float(), src, dst)
    assert ours32.dtype == torch.float32
    np.testing.assert_allclose(ours32.numpy(), ref, atol=1e-5, rtol=0)


def test_resize_keeps_same_resolution_and_trailing_rows():
    table = torch.randn(num_image_buckets(3) + 397, 8)
    assert torch.equal(resize_image_relative_table(table, 3, 3), table)
    bigger = resize_image_relative_table(table, 3, 6)
    assert bigger.shape == (num_image_buckets(6) + 397, 8)
    torch.testing.assert_close(bigger[(2 * 6 - 1) ** 2 :], table[(2 * 3 - 1) ** 2 :], atol=0, rtol=0)
    # the exact offsets survive at the centre: offset 0 is an interpolation node
    centre_src, centre_dst = (5 * 5) // 2, (11 * 11) // 2
    torch.testing.assert_close(bigger[centre_dst], table[centre_src], atol=1e-5, rtol=0)


# ---------------------------------------------------------------------- official-format checkpoints
def _randomise(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("LayerNorm.weight") or ("norm" in name and name.endswith("weight")):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif name in ("logit_scale", "logit_vl_scale"):
                p.fill_(2.5)
            elif "pos_embed" in name or "token_type" in name or "cls_token" in name or "bias_table" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.08 * torch.randn(p.shape, generator=g))


def _save_official(model: VLMo, path, arch: str) -> None:
    state = dict(model.state_dict())
    state["text_embeddings.position_ids"] = torch.arange(model.config.max_text_len)[None]
    torch.save({"state_dict": state, "hyper_parameters": {"config": {"model_arch": arch, "drop_path_rate": 0.1,
                                                                  "max_text_len_of_initckpt": 196}}}, path)


def _abs_model(seed: int = 0) -> VLMo:
    # absolute positions: the head count (2) is not in any shape; loading states it (num_heads=2)
    cfg = get_config("tiny", relative_position=False, layer_scale_init=None, num_heads=2, vocab_size=VOCAB,
                     heads=HEADS)
    model = VLMo(cfg)
    _randomise(model, seed)
    return model.eval()


def test_absolute_position_checkpoint_loads_at_higher_resolution(tmp_path):
    model = _abs_model()
    path = tmp_path / "vlmo_base_plus_style.pt"
    _save_official(model, path, "vlmo_tiny_abs")
    big = load_official(path, num_heads=2, image_size=64).eval()
    assert big.config.image_size == 64 and not big.config.relative_position
    pos = model.transformer.pos_embed.detach()
    grid = pos[:, 1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    want = F.interpolate(grid, size=(8, 8), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(1, 64, -1)
    torch.testing.assert_close(big.transformer.pos_embed[:, 1:].detach(), want)
    torch.testing.assert_close(big.transformer.pos_embed[:, :1].detach(), pos[:, :1], atol=0, rtol=0)
    out = big.encode_image(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 128) and torch.isfinite(out).all()


def test_relative_position_checkpoint_loads_at_higher_resolution(tmp_path):
    cfg = get_config("tiny", vocab_size=VOCAB, heads=HEADS)
    model = VLMo(cfg)
    _randomise(model, 1)
    path = tmp_path / "vlmo_relpos.pt"
    _save_official(model, path, "vlmo_tiny_relpos")
    big = load_official(path, image_size=64).eval()
    src = model.relative_position_bias_table.detach()
    dst = big.relative_position_bias_table.detach()
    assert dst.shape[0] == src.shape[0] - (2 * 4 - 1) ** 2 + (2 * 8 - 1) ** 2
    torch.testing.assert_close(dst, resize_image_relative_table(src, 4, 8), atol=0, rtol=0)
    torch.testing.assert_close(dst[(2 * 8 - 1) ** 2 :], src[(2 * 4 - 1) ** 2 :], atol=0, rtol=0)
    ids = torch.randint(1, VOCAB, (2, 40))
    mask = torch.ones(2, 40, dtype=torch.long)
    with torch.no_grad():
        pair = big.forward_pair(ids, mask, torch.randn(2, 3, 64, 64))
    assert pair.image_features.shape == (2, 65, 128) and torch.isfinite(pair.pooled).all()


# ---------------------------------------------------------------------- independent reference (absolute positions)
def _ln(x, s, prefix, eps):
    return F.layer_norm(x, (x.shape[-1],), s[f"{prefix}.weight"], s[f"{prefix}.bias"], eps)


def _linear(x, s, prefix, bias=True):
    return F.linear(x, s[f"{prefix}.weight"], s[f"{prefix}.bias"] if bias else None)


def _mlp(x, s, prefix):
    return _linear(F.gelu(_linear(x, s, f"{prefix}.fc1")), s, f"{prefix}.fc2")


def _ref_block(x, s, i, heads, modality, mask, split, vlffn_start):
    p = f"transformer.blocks.{i}"
    b, n, d = x.shape
    hd = d // heads
    h = _ln(x, s, f"{p}.norm1", 1e-6)
    qkv_bias = torch.cat([s[f"{p}.attn.q_bias"], torch.zeros_like(s[f"{p}.attn.v_bias"]), s[f"{p}.attn.v_bias"]])
    qkv = F.linear(h, s[f"{p}.attn.qkv.weight"], qkv_bias).reshape(b, n, 3, heads, hd).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * hd**-0.5, qkv[1], qkv[2]
    attn = q.float() @ k.float().transpose(-2, -1)
    if mask is not None:
        attn = attn.masked_fill(~mask[:, None, None, :].bool(), float("-inf"))
    attn = attn.softmax(-1).type_as(x)
    x = x + _linear((attn @ v).transpose(1, 2).reshape(b, n, d), s, f"{p}.attn.proj")  # γ = 1.0 (no layer scale)
    if modality == "image":
        return x + _mlp(_ln(x, s, f"{p}.norm2_imag", 1e-6), s, f"{p}.mlp_imag")
    if modality == "text":
        return x + _mlp(_ln(x, s, f"{p}.norm2_text", 1e-6), s, f"{p}.mlp_text")
    if i >= vlffn_start:
        return x + _mlp(_ln(x, s, f"{p}.norm2_vl", 1e-6), s, f"{p}.mlp_vl")
    t, im = x[:, :split], x[:, split:]
    t = t + _mlp(_ln(t, s, f"{p}.norm2_text", 1e-6), s, f"{p}.mlp_text")
    im = im + _mlp(_ln(im, s, f"{p}.norm2_imag", 1e-6), s, f"{p}.mlp_imag")
    return torch.cat([t, im], 1)


class _Reference:
    """Plain-torch official forward over a state dict (reference §3–§6), absolute-position variant."""

    def __init__(self, state, heads, depth, vlffn_start, patch):
        self.s, self.heads, self.depth, self.vlffn_start, self.patch = state, heads, depth, vlffn_start, patch

    def text_embed(self, ids):
        s = self.s
        x = s["text_embeddings.word_embeddings.weight"][ids]
        x = x + s["text_embeddings.token_type_embeddings.weight"][0]
        x = x + s["text_embeddings.position_embeddings.weight"][: ids.shape[1]]
        x = _ln(x, s, "text_embeddings.LayerNorm", 1e-12)
        return x + s["token_type_embeddings.weight"][0]

    def image_embed(self, img, token_type=1):
        s = self.s
        x = F.conv2d(img, s["transformer.patch_embed.proj.weight"], s["transformer.patch_embed.proj.bias"],
                     stride=self.patch).flatten(2).transpose(1, 2)
        x = torch.cat([s["transformer.cls_token"].expand(x.shape[0], -1, -1), x], 1)
        return x + s["transformer.pos_embed"] + s["token_type_embeddings.weight"][token_type]

    def run(self, x, modality, mask, start, end, split=None):
        for i in range(start, end):
            x = _ref_block(x, self.s, i, self.heads, modality, mask, split, self.vlffn_start)
        return x

    def infer(self, ids, mask, img):
        t, i = self.text_embed(ids), self.image_embed(img)
        co_mask = torch.cat([mask, torch.ones(i.shape[:2], dtype=mask.dtype)], 1)
        x = _ln(self.run(torch.cat([t, i], 1), "vl", co_mask, 0, self.depth, split=ids.shape[1]), self.s,
                "transformer.norm", 1e-6)
        pooled = torch.tanh(_linear(x[:, 0], self.s, "pooler.dense"))
        return pooled, x[:, : ids.shape[1]], x[:, ids.shape[1]:]

    def unimodal(self, x, modality, mask, proj, vl_proj):
        lower = self.run(x, modality, mask, 0, self.vlffn_start)
        top = _ln(self.run(lower, modality, mask, self.vlffn_start, self.depth), self.s, "transformer.norm", 1e-6)
        vl = _ln(self.run(lower, "vl", mask, self.vlffn_start, self.depth), self.s, "transformer.norm", 1e-6)
        emb = F.normalize(_linear(top[:, 0], self.s, f"{proj}.fc", bias=False), dim=-1)
        vl_emb = F.normalize(_linear(vl[:, 0], self.s, f"{vl_proj}.fc", bias=False), dim=-1)
        return emb, vl_emb

    def infer_text(self, ids, mask):
        return self.unimodal(self.text_embed(ids), "text", mask, "itc_text_proj", "itc_vl_text_proj")

    def infer_image(self, img):
        return self.unimodal(self.image_embed(img), "image", None, "itc_image_proj", "itc_vl_image_proj")


def test_absolute_position_variant_matches_independent_reference(tmp_path):
    original = _abs_model(seed=7)
    path = tmp_path / "vlmo_base_plus_style.pt"
    _save_official(original, path, "vlmo_tiny_abs")
    model = load_official(path, num_heads=2).eval()
    cfg = model.config
    assert not cfg.relative_position and cfg.layer_scale_init is None and cfg.num_heads == 2
    state = torch.load(path, weights_only=True)["state_dict"]
    ref = _Reference(state, cfg.num_heads, cfg.depth, cfg.vlffn_start, cfg.patch_size)

    g = torch.Generator().manual_seed(11)
    ids = torch.randint(1, VOCAB, (3, 40), generator=g)
    mask = torch.ones(3, 40, dtype=torch.long)
    mask[1, 17:] = 0
    mask[2, 5:] = 0
    ids = ids * mask
    img = torch.randn(3, 3, 32, 32, generator=g)
    with torch.no_grad():
        pair = model.forward_pair(ids, mask, img)
        pooled, text_feats, image_feats = ref.infer(ids, mask, img)
        torch.testing.assert_close(pair.pooled, pooled, atol=1e-5, rtol=0)
        torch.testing.assert_close(pair.text_features, text_feats, atol=1e-5, rtol=0)
        torch.testing.assert_close(pair.image_features, image_feats, atol=1e-5, rtol=0)

        text_emb, text_vl = ref.infer_text(ids, mask)
        image_emb, image_vl = ref.infer_image(img)
        torch.testing.assert_close(model.encode_text(ids, mask), text_emb, atol=1e-5, rtol=0)
        torch.testing.assert_close(model.encode_image(img), image_emb, atol=1e-5, rtol=0)
        torch.testing.assert_close(model.contrastive_text(ids, mask, vl_branch=True).vl_embedding, text_vl,
                                   atol=1e-5, rtol=0)
        torch.testing.assert_close(model.contrastive_image(img, vl_branch=True).vl_embedding, image_vl,
                                   atol=1e-5, rtol=0)
    # the absolute positions matter in both modalities (a variant that ignored them would differ)
    shuffled = dict(state)
    text_pos = "text_embeddings.position_embeddings.weight"
    shuffled[text_pos] = state[text_pos].roll(1, 0)
    shuffled["transformer.pos_embed"] = state["transformer.pos_embed"].roll(1, 1)
    other = _Reference(shuffled, cfg.num_heads, cfg.depth, cfg.vlffn_start, cfg.patch_size).infer(ids, mask, img)
    assert (other[0] - pooled).abs().max() > 1e-3


def test_resize_from_a_two_patch_grid_is_a_clear_error():
    from vlmo_cli.errors import ConfigError

    with pytest.raises(ConfigError, match="at least 3x3 patches"):
        resize_image_relative_table(torch.zeros(num_image_buckets(2) + 5, 2), 2, 4)
