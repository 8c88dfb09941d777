"""Official-checkpoint reading: containers, one clear error per broken input (library and CLI), and round trips."""

from __future__ import annotations

import pytest
import torch

from vlmo_cli.cli.app import main
from vlmo_cli.errors import CheckpointError
from vlmo_cli.factory import convert_official, load_model, load_official
from vlmo_cli.model.config import get_config
from vlmo_cli.model.vlmo import VLMo

HEADS = ["pooler", "itc", "itc_vl", "itm", "mlm", "vqa", "nlvr2"]


class NotATensor:
    """A custom class: unpickling an instance needs code from this module."""


def _official_state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    cfg = get_config("tiny", vocab_size=500, heads=HEADS, vqa_num_answers=7, num_modality_types=3)
    state = dict(VLMo(cfg).state_dict())
    with torch.no_grad():  # a non-zero table, as in a trained checkpoint
        state["relative_position_bias_table"] = torch.randn_like(state["relative_position_bias_table"])
    state["text_embeddings.position_ids"] = torch.arange(cfg.max_text_len)[None]  # transformers 4.8 buffer
    return state


@pytest.fixture(scope="module")
def state():
    return _official_state()


def _lightning(state: dict[str, torch.Tensor], **extra) -> dict:
    """The Lightning layout, with the stored config the official code writes (it sizes the text table rows)."""
    config = {"max_text_len": 40, "max_text_len_of_initckpt": 196, "drop_path_rate": 0.1}
    return {"state_dict": state, "hyper_parameters": {"config": config}, **extra}


@pytest.fixture()
def lightning_ckpt(tmp_path, state):
    path = tmp_path / "vlmo_tiny.pt"
    torch.save(_lightning(state), path)
    return path


def _inputs():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 500, (2, 40), generator=g)
    mask = torch.ones(2, 40, dtype=torch.long)
    mask[1, 25:] = 0
    return ids, mask, torch.randn(2, 3, 32, 32, generator=g)


def _outputs(model):
    ids, mask, images = _inputs()
    model.eval()
    with torch.no_grad():
        pair = model.forward_pair(ids, mask, images)
        return [pair.pooled, pair.text_features, pair.image_features, model.encode_text(ids, mask),
                model.encode_image(images), model.nlvr2_logits(ids, mask, images, images.flip(0))]


def _cli_error(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    return capsys.readouterr().err


def _expect_error(path, pattern: str, tmp_path, capsys) -> None:
    with pytest.raises(CheckpointError, match=pattern) as exc:
        load_official(path)
    assert str(path) in str(exc.value)
    err = _cli_error(["convert", "official", str(path), str(tmp_path / "out")], capsys)
    assert path.name in err and len(err.strip().splitlines()) <= 3  # one message (rich may wrap it)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------- broken files
def test_corrupt_file(tmp_path, capsys):
    path = tmp_path / "corrupt.pt"
    path.write_bytes(bytes(range(256)) * 20)
    _expect_error(path, "corrupt or truncated checkpoint", tmp_path, capsys)


def test_truncated_file(tmp_path, lightning_ckpt, capsys):
    path = tmp_path / "truncated.pt"
    path.write_bytes(lightning_ckpt.read_bytes()[: lightning_ckpt.stat().st_size // 2])
    _expect_error(path, "corrupt or truncated checkpoint", tmp_path, capsys)


def test_empty_file(tmp_path, capsys):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    _expect_error(path, "corrupt or truncated", tmp_path, capsys)


def test_pickle_needing_code_is_refused(tmp_path, state, capsys):
    path = tmp_path / "evil.pt"
    torch.save(_lightning(state, extra=NotATensor()), path)
    _expect_error(path, r"refused: this file needs code execution to load \(pickle\); not loaded \(it would call .*NotATensor\)", tmp_path, capsys)


def test_other_architecture(tmp_path, capsys):
    timm = pytest.importorskip("timm")
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=1)
    path = tmp_path / "vit.pt"
    torch.save(vit.state_dict(), path)
    _expect_error(path, "not a VLMo checkpoint", tmp_path, capsys)


def test_missing_file(tmp_path, capsys):
    _expect_error(tmp_path / "nope.pt", "no such checkpoint file", tmp_path, capsys)


def test_unexpected_key_is_named(tmp_path, state, capsys):
    path = tmp_path / "extra.pt"
    torch.save(_lightning({**state, "transformer.blocks.0.attn.k_bias": torch.zeros(128)}), path)
    _expect_error(path, r"unexpected keys \[transformer\.blocks\.0\.attn\.k_bias\]", tmp_path, capsys)


@pytest.mark.parametrize("key", ["itm_score.fc.bias", "transformer.blocks.3.mlp_vl.fc2.weight",
                                 "text_embeddings.word_embeddings.weight"])
def test_missing_key_is_named(tmp_path, state, key, capsys):
    path = tmp_path / "missing.pt"
    torch.save(_lightning({k: v for k, v in state.items() if k != key}), path)
    _expect_error(path, rf"missing keys \[{key.replace('.', '[.]')}\]", tmp_path, capsys)


# ---------------------------------------------------------------------- containers
def _same_weights(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_containers_give_the_same_model(tmp_path, state, lightning_ckpt):
    reference = load_official(lightning_ckpt)
    layouts = {
        "deepspeed.pt": {"module": {f"module.{k}": v for k, v in state.items()}},
        "model.pt": {"model": state},
        "bare.pt": state,
    }
    for name, obj in layouts.items():
        torch.save(obj, tmp_path / name)
        model = load_official(tmp_path / name, text_table_len=196)  # no stored config: the caller states it
        assert model.config == reference.config
        _same_weights(model, reference)


# ---------------------------------------------------------------------- round trips
def test_converted_directory_round_trip(tmp_path, lightning_ckpt):
    direct = load_official(lightning_ckpt)
    out = convert_official(lightning_ckpt, tmp_path / "model")
    assert (out / "config.json").exists() and (out / "model.safetensors").exists()
    assert (out / "official_config.json").exists()
    loaded = load_model(out)
    assert loaded.config == direct.config
    _same_weights(loaded, direct)
    for got, want in zip(_outputs(loaded), _outputs(direct)):
        torch.testing.assert_close(got, want, atol=0, rtol=0)
    _same_weights(load_model(lightning_ckpt), direct)


def test_inferred_config(lightning_ckpt):
    cfg = load_official(lightning_ckpt).config
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.vlffn_start) == (128, 4, 4, 2)
    assert cfg.relative_position and cfg.num_modality_types == 3 and cfg.vqa_num_answers == 7
    assert set(cfg.heads) == set(HEADS)


def test_cli_convert_official_with_vocab(tmp_path, lightning_ckpt):
    vocab = tmp_path / "my_vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhello\n")
    main(["convert", "official", str(lightning_ckpt), str(tmp_path / "m"), "--vocab", str(vocab), "--image-size", "64"])
    model = load_model(tmp_path / "m")
    assert (tmp_path / "m" / "vocab.txt").read_text() == vocab.read_text()
    assert model.config.image_size == 64
    assert model.eval().encode_image(torch.randn(1, 3, 64, 64)).shape == (1, 128)
