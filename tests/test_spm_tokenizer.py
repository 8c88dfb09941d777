"""BEiT-3's SentencePiece tokenizer: ids equal to ``transformers``' ``XLMRobertaTokenizer`` (what unilm's BEiT-3 code
uses on ``beit3.spm``) on a piece model trained here, whole words, decoding, saving with prepared data and models,
and a BEiT-3 fine-tune on data prepared with it."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
from helpers import export_pairs, run

from vlmo_cli.data.spm_tokenizer import SentencePieceTokenizer
from vlmo_cli.data.tokenizer import load_tokenizer
from vlmo_cli.errors import DataError

sentencepiece = pytest.importorskip("sentencepiece", reason="needs sentencepiece (the test extra)")

TEXTS = ["a red circle on the left", "there are three blue squares at the top", "Grüße aus München, 123 Äpfel!",
         "二つの赤い円", "on the right are two green triangles", "the quick brown fox jumps over the lazy dog",
         "VLMo and BEiT-3 share self-attention", "circles , all green , at the bottom"]
PROBES = ["a red circle xyz Ω", "", "   spaces   around  ", "Über-long " * 30, "BEiT-3, VLMo!", "二つ"]


@pytest.fixture(scope="module")
def spm_file(tmp_path_factory) -> Path:
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(TEXTS * 40), model_writer=model, vocab_size=60,
                                             model_type="unigram", character_coverage=1.0, minloglevel=2,
                                             hard_vocab_limit=False)
    path = tmp_path_factory.mktemp("spm") / "beit3.spm"
    path.write_bytes(model.getvalue())
    return path


@pytest.mark.parametrize("max_len", [8, 40])
def test_ids_equal_xlm_roberta_tokenizer(spm_file, tmp_path, max_len):
    transformers = pytest.importorskip("transformers", reason="needs transformers (the test extra)")
    folder = tmp_path / "xlmr"
    folder.mkdir()
    (folder / "sentencepiece.bpe.model").write_bytes(spm_file.read_bytes())
    reference = transformers.XLMRobertaTokenizer.from_pretrained(str(folder))
    ours = load_tokenizer(spm_file)
    assert isinstance(ours, SentencePieceTokenizer)
    assert (ours.vocab_size, ours.mask_id, ours.pad_id, ours.cls_id, ours.sep_id, ours.unk_id) == (
        len(reference), reference.mask_token_id, reference.pad_token_id, reference.bos_token_id,
        reference.eos_token_id, reference.unk_token_id)
    texts = TEXTS + PROBES
    expected = reference(texts, max_length=max_len, truncation=True, padding="max_length")
    got = ours.encode_batch(texts, max_len)
    assert got["input_ids"].tolist() == expected["input_ids"]
    assert got["attention_mask"].tolist() == expected["attention_mask"]
    longest = ours.encode_batch(texts[:3], max_len, padding="longest")
    width = max(sum(row) for row in expected["attention_mask"][:3])
    assert longest["input_ids"].tolist() == [row[:width] for row in expected["input_ids"][:3]]
    for text in texts:
        assert ours.tokenize(text) == reference.tokenize(text)


def test_word_ids_start_at_word_pieces_and_decode_round_trips(spm_file):
    tok = load_tokenizer(spm_file)
    enc = tok.encode_batch(["a red circle", "the lazy dog"], 16)
    for row, text in enumerate(["a red circle", "the lazy dog"]):
        n = int(enc["attention_mask"][row].sum())
        words = enc["word_ids"][row, 1 : n - 1]
        pieces = tok.tokenize(text)
        assert words.tolist() == list(np.cumsum([p.startswith("\u2581") for p in pieces]) - 1)
        assert enc["word_ids"][row, 0] == -1 and enc["word_ids"][row, n - 1] == -1 and words.max() == 2
        assert tok.decode(enc["input_ids"][row]) == text
    assert tok.decode([tok.cls_id, tok.mask_id], skip_special_tokens=False) == "<s><mask>"


def test_saved_with_a_model_and_pickled_for_workers(spm_file, tmp_path):
    tok = load_tokenizer(spm_file)
    tok.save(tmp_path / "tok")
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == ["sentencepiece.bpe.model", "tokenizer_config.json"]
    again = load_tokenizer(tmp_path / "tok")
    copy = pickle.loads(pickle.dumps(tok))
    for other in (again, copy):
        assert other.encode_batch(TEXTS, 12)["input_ids"].tolist() == tok.encode_batch(TEXTS, 12)["input_ids"].tolist()


def test_a_file_that_is_not_a_piece_model_is_one_message(tmp_path):
    bad = tmp_path / "beit3.spm"
    bad.write_bytes(b"not a model")
    with pytest.raises(DataError, match="not a SentencePiece model"):
        load_tokenizer(bad)


def test_beit3_finetune_on_pairs_prepared_with_the_piece_model(spm_file, demo_root, tmp_path, capsys):
    export_pairs(demo_root, tmp_path, 24)
    code, _, err = run(capsys, "prepare", "pairs", str(tmp_path / "data.jsonl"), "--format", "jsonl",
                       "--image-col", "image", "--caption-col", "caption", "--val-fraction", "0.25",
                       "--tokenizer", str(spm_file), "--out", str(tmp_path / "pairs"), "--no-progress")
    assert code == 0, err
    assert (tmp_path / "pairs" / "tokenizer" / "sentencepiece.bpe.model").read_bytes() == spm_file.read_bytes()
    code, out, err = run(capsys, "finetune", "retrieval", "beit3_tiny", "train.trackers=[]", "train.report=false",
                         "data.batch_size=6", f"train.output_dir={tmp_path / 'runs'}",
                         f"finetune.retrieval_coco.dataset={tmp_path / 'pairs'}", "finetune.retrieval_coco.max_steps=2")
    assert code == 0, err
    model_dir = tmp_path / "runs" / "beit3-tiny-finetune-retrieval_coco"
    tok = load_tokenizer(model_dir)
    assert isinstance(tok, SentencePieceTokenizer) and tok.vocab_size == load_tokenizer(spm_file).vocab_size
