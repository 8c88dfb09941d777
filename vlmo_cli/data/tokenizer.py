"""WordPiece tokenisation through ``tokenizers``: load a BERT ``vocab.txt`` / ``tokenizer.json``, train a small one,
encode batches fast.

The released VLMo models use bert-base-uncased (30522 tokens) and encode every text as
``[CLS] tokens [SEP] [PAD]*`` padded and truncated to ``max_text_len`` (40); :meth:`TextTokenizer.encode_batch` does
exactly that with ``padding="max_length"`` and pads to the longest text with ``padding="longest"``. It also returns
the word index of every token, which whole-word masking needs (:mod:`vlmo_cli.data.masking`).

Lower-casing follows the vocabulary: a ``vocab.txt`` without any upper-case entry (outside ``[SPECIAL]`` tokens) is
uncased, so text is lower-cased and accents stripped as BERT-uncased does; a ``tokenizer.json`` carries its own
normaliser.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..errors import DataError, VlmoError
from ..layout import (SPM_NAME, SPM_SUFFIXES, TOKENIZER_CONFIG_NAME, TOKENIZER_FILES, TOKENIZER_JSON_NAME, VOCAB_NAME,
                      has_tokenizer, resolve_model_dir)

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


class TextTokenizer:
    """A ``tokenizers.Tokenizer`` with BERT special tokens and numpy batch encoding.

    Args:
        tokenizer: the underlying fast tokenizer; its post-processor must add ``[CLS]`` / ``[SEP]``.
        lowercase: whether its normaliser lower-cases (informational; recorded in manifests and model dirs).
    """

    def __init__(self, tokenizer, lowercase: bool) -> None:
        self._tok = tokenizer
        self.lowercase = lowercase
        ids = {}
        for token in SPECIAL_TOKENS:
            token_id = tokenizer.token_to_id(token)
            if token_id is None:
                raise DataError(f"tokenizer has no {token} token; a BERT-style WordPiece vocabulary is required")
            ids[token] = token_id
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (ids[t] for t in SPECIAL_TOKENS)
        self.special_ids = frozenset(ids.values())
        self._truncation: int | None = None

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def backend(self):
        """The wrapped ``tokenizers.Tokenizer``."""
        return self._tok

    def describe(self) -> dict[str, Any]:
        return {"vocab_size": self.vocab_size, "lowercase": self.lowercase}

    def tokenize(self, text: str) -> list[str]:
        return self._tok.encode(text).tokens

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def encode_batch(self, texts: list[str], max_len: int = 40, padding: str = "max_length") -> dict[str, np.ndarray]:
        """Encode ``texts`` as ``[CLS] ... [SEP] [PAD]*``.

        Args:
            texts: raw strings.
            max_len: truncation length (special tokens included); also the padded length for ``"max_length"``.
            padding: ``"max_length"`` (fixed, the official behaviour) or ``"longest"`` (dynamic).

        Returns:
            ``input_ids`` and ``attention_mask`` (int64 ``[B, L]``), ``word_ids`` (int64, word index of each token,
            -1 for special tokens and padding).
        """
        if padding not in ("max_length", "longest"):
            raise DataError(f"padding {padding!r} is not allowed; allowed: max_length, longest")
        if max_len < 2:
            raise DataError(f"max_len must be at least 2 ([CLS] and [SEP]), got {max_len}")
        if self._truncation != max_len:
            self._tok.enable_truncation(max_len)
            self._truncation = max_len
        encodings = self._tok.encode_batch([str(t) for t in texts])
        length = max_len if padding == "max_length" else max((len(e.ids) for e in encodings), default=2)
        ids = np.full((len(texts), length), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(texts), length), dtype=np.int64)
        words = np.full((len(texts), length), -1, dtype=np.int64)
        for row, enc in enumerate(encodings):
            n = len(enc.ids)
            ids[row, :n] = enc.ids
            mask[row, :n] = 1
            words[row, :n] = [-1 if w is None else w for w in enc.word_ids]
        return {"input_ids": ids, "attention_mask": mask, "word_ids": words}

    def save(self, directory: str | Path) -> Path:
        """Write ``tokenizer.json``, ``vocab.txt`` and ``tokenizer_config.json`` to ``directory``."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(out / TOKENIZER_JSON_NAME))
        vocab = self._tok.get_vocab(with_added_tokens=True)
        ordered = sorted(vocab.items(), key=lambda item: item[1])
        (out / VOCAB_NAME).write_text("".join(f"{token}\n" for token, _ in ordered), encoding="utf-8")
        config = {"tokenizer_class": "BertTokenizerFast", "do_lower_case": self.lowercase,
                  "model_max_length": 512, **{k: v for k, v in zip(("pad_token", "unk_token", "cls_token",
                                                                      "sep_token", "mask_token"), SPECIAL_TOKENS)}}
        (out / TOKENIZER_CONFIG_NAME).write_text(json.dumps(config, indent=1) + "\n")
        return out

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_tok"] = self._tok.to_str()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        from tokenizers import Tokenizer

        state["_tok"] = Tokenizer.from_str(state["_tok"])
        state["_truncation"] = None
        self.__dict__.update(state)


def vocab_is_uncased(tokens: Iterable[str]) -> bool:
    """True when no entry outside ``[...]`` special tokens has an ASCII upper-case letter (bert-*-uncased).

    Only ASCII counts: the uncased BERT vocabulary keeps a few upper-case symbols such as ``ℝ``.
    """
    return not any(any("A" <= c <= "Z" for c in t) for t in tokens if not (t.startswith("[") and t.endswith("]")))


def _bert_pipeline(tok, lowercase: bool):
    from tokenizers import decoders, normalizers, pre_tokenizers

    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                                lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(list(SPECIAL_TOKENS))  # already in the vocabulary: same ids, never split, skippable
    _add_post_processor(tok)
    return tok


def _add_post_processor(tok) -> None:
    from tokenizers import processors

    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    if cls is None or sep is None:
        raise DataError("tokenizer has no [CLS]/[SEP] tokens; a BERT-style WordPiece vocabulary is required")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )


def load_tokenizer(path: str | Path) -> TextTokenizer:
    """A tokenizer from a ``vocab.txt``, a ``tokenizer.json``, a SentencePiece model (``.spm``/``.model``: BEiT-3's
    :class:`~vlmo_cli.data.spm_tokenizer.SentencePieceTokenizer`), a folder holding one (``tokenizer.json`` first),
    or a model directory / run folder / checkpoint pointer (the tokenizer saved with the model)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordPiece

    path = Path(path)
    if (path.is_file() and path.name == "latest") or (path.is_dir() and not has_tokenizer(path)):
        try:  # a run folder or checkpoint pointer: its model directory
            path = resolve_model_dir(path)
        except VlmoError:
            pass
    if path.is_dir():
        for name in TOKENIZER_FILES:
            if (path / name).exists():
                return load_tokenizer(path / name)
        raise DataError(f"{path}: no tokenizer.json, vocab.txt or {SPM_NAME} inside")
    if not path.exists():
        raise DataError(f"{path}: tokenizer file not found")
    if path.suffix in SPM_SUFFIXES:
        from .spm_tokenizer import SentencePieceTokenizer

        return SentencePieceTokenizer.from_file(path)
    if path.suffix == ".json":
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as exc:
            raise DataError(f"{path}: not a tokenizers JSON file ({exc})") from exc
        spec = json.loads(path.read_text(encoding="utf-8"))
        lowercase = '"lowercase": true' in json.dumps(spec.get("normalizer")) or "Lowercase" in json.dumps(
            spec.get("normalizer"))
        if tok.post_processor is None:
            _add_post_processor(tok)
        tok.no_padding()
        return TextTokenizer(tok, lowercase)
    try:
        tokens = [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read vocabulary ({exc})") from exc
    tokens = [t for t in tokens if t]
    if not tokens:
        raise DataError(f"{path}: empty vocabulary")
    lowercase = vocab_is_uncased(tokens)
    vocab = {}
    for token in tokens:
        vocab.setdefault(token, len(vocab))
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    return TextTokenizer(_bert_pipeline(tok, lowercase), lowercase)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 30522, *, lowercase: bool = True,
                    min_frequency: int = 1, method: str = "wordpiece") -> TextTokenizer:
    """Train a BERT-style WordPiece tokenizer on ``texts`` (special tokens first, so ``[PAD]`` is id 0).

    Args:
        texts: training corpus.
        vocab_size: upper bound on the vocabulary size.
        lowercase: lower-case (and strip accents) before splitting, like bert-base-uncased.
        min_frequency: ignore pieces (``"wordpiece"``) or words (``"words"``) seen fewer times.
        method: ``"wordpiece"``: the ``tokenizers`` WordPiece trainer (sub-word merges; it breaks frequency ties in
            hash order, so two runs may differ slightly). ``"words"``: every character (also as ``##`` continuation)
            plus the most frequent whole words (ties alphabetical) - exactly reproducible, and ideal for small closed
            vocabularies such as the demo world, where every word becomes one token.
    """
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import WordPiece
    from tokenizers.trainers import WordPieceTrainer

    if vocab_size < len(SPECIAL_TOKENS) + 1:
        raise DataError(f"vocab_size {vocab_size} is too small")
    if method not in ("wordpiece", "words"):
        raise DataError(f"tokenizer method {method!r} is not allowed; allowed: wordpiece, words")
    normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                            lowercase=lowercase)
    if method == "words":
        vocab = _word_vocab(texts, vocab_size, normalizer, min_frequency)
        tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        return TextTokenizer(_bert_pipeline(tok, lowercase), lowercase)
    tok = Tokenizer(WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                               special_tokens=list(SPECIAL_TOKENS), continuing_subword_prefix="##",
                               show_progress=False)
    tok.train_from_iterator((str(t) for t in texts), trainer=trainer)
    _add_post_processor(tok)
    return TextTokenizer(tok, lowercase)


def _word_vocab(texts: Iterable[str], vocab_size: int, normalizer, min_frequency: int) -> dict[str, int]:
    from collections import Counter

    from tokenizers import pre_tokenizers

    split = pre_tokenizers.BertPreTokenizer()
    words: Counter[str] = Counter()
    for text in texts:
        words.update(w for w, _ in split.pre_tokenize_str(normalizer.normalize_str(str(text))))
    chars = sorted({c for w in words for c in w})
    tokens = list(SPECIAL_TOKENS) + chars + [f"##{c}" for c in chars]
    if len(tokens) > vocab_size:
        raise DataError(f"vocab_size {vocab_size} cannot hold the {len(tokens)} special and character tokens")
    seen = set(tokens)
    ranked = sorted((w for w, n in words.items() if n >= min_frequency and w not in seen), key=lambda w: (-words[w], w))
    tokens += ranked[: vocab_size - len(tokens)]
    return {t: i for i, t in enumerate(tokens)}
