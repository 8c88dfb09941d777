"""SentencePiece tokenisation for the BEiT-3 family: the released ``beit3.spm`` read by the ``sentencepiece``
library, with the id layout of fairseq's XLM-R dictionary that BEiT-3 uses through ``XLMRobertaTokenizer``.

Ids: ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3; a SentencePiece piece id ``i`` becomes ``i + 1`` (the piece
model's own ``<unk>``, id 0, becomes 3); ``<mask>`` is ``len(pieces) + 1``, so the vocabulary has ``len(pieces) + 2``
ids (64,002 for ``beit3.spm``, inside BEiT-3's 64,010-row embedding). A text is encoded as unilm's BEiT-3 data code
does: ``<s> pieces </s>``, the pieces truncated to ``max_len - 2``, padded with ``<pad>``; no lower-casing (the piece
model's own normaliser applies). A word starts at every piece that begins with ``▁`` (whole-word masking).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..errors import DataError
from ..layout import SPM_NAME, TOKENIZER_CONFIG_NAME
from .tokenizer import TextTokenizer

BOS, PAD, EOS, UNK = 0, 1, 2, 3
#: the piece model's ids that fairseq's dictionary replaces by its own specials
_OFFSET = 1
WORD_START = "\u2581"


def _processor(model_proto: bytes, source: str):
    try:
        import sentencepiece
    except ImportError:
        raise DataError(f"{source}: a SentencePiece model needs the sentencepiece package: pip install sentencepiece"
                        ) from None
    processor = sentencepiece.SentencePieceProcessor()
    try:
        processor.load_from_serialized_proto(model_proto)
    except (RuntimeError, OSError) as exc:
        raise DataError(f"{source}: not a SentencePiece model ({str(exc).splitlines()[0]})") from None
    return processor


class SentencePieceTokenizer(TextTokenizer):
    """A SentencePiece model with the XLM-R/BEiT-3 id layout; the :class:`TextTokenizer` interface.

    Args:
        model_proto: the serialized SentencePiece model (the bytes of ``beit3.spm``).
        source: where it came from, for messages.
    """

    def __init__(self, model_proto: bytes, source: str = "SentencePiece model") -> None:  # noqa: D107
        self._proto = bytes(model_proto)
        self._sp = _processor(self._proto, source)
        self.lowercase = False
        self.pad_id, self.unk_id, self.cls_id, self.sep_id = PAD, UNK, BOS, EOS
        self.mask_id = len(self._sp) + _OFFSET
        self.special_ids = frozenset({BOS, PAD, EOS, UNK, self.mask_id})

    @classmethod
    def from_file(cls, path: str | Path) -> "SentencePieceTokenizer":
        try:
            return cls(Path(path).read_bytes(), str(path))
        except OSError as exc:
            raise DataError(f"{path}: cannot read the SentencePiece model ({exc.strerror or exc})") from None

    @property
    def vocab_size(self) -> int:
        return len(self._sp) + _OFFSET + 1

    @property
    def backend(self):
        """The wrapped ``sentencepiece.SentencePieceProcessor``."""
        return self._sp

    def describe(self) -> dict[str, Any]:
        return {"vocab_size": self.vocab_size, "lowercase": False, "kind": "sentencepiece"}

    def _ids(self, piece_ids: list[int]) -> list[int]:
        return [i + _OFFSET if i != self._sp.unk_id() else UNK for i in piece_ids]

    def tokenize(self, text: str) -> list[str]:
        return self._sp.encode(str(text), out_type=str)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        names = {BOS: "<s>", PAD: "<pad>", EOS: "</s>", UNK: "<unk>", self.mask_id: "<mask>"}
        text, pieces = [], []  # special tokens as their names, runs of pieces decoded by the piece model
        for i in (int(i) for i in ids):
            if i in names:
                if not skip_special_tokens:
                    text.append(self._sp.decode_pieces(pieces))
                    text.append(names[i])
                    pieces = []
            elif 0 <= i - _OFFSET < len(self._sp):
                pieces.append(self._sp.id_to_piece(i - _OFFSET))
        return "".join(text) + self._sp.decode_pieces(pieces)

    def encode_batch(self, texts: list[str], max_len: int = 40, padding: str = "max_length") -> dict[str, np.ndarray]:
        """Encode ``texts`` as ``<s> ... </s> <pad>*`` (see :meth:`TextTokenizer.encode_batch` for the arguments
        and the returned arrays)."""
        if padding not in ("max_length", "longest"):
            raise DataError(f"padding {padding!r} is not allowed; allowed: max_length, longest")
        if max_len < 2:
            raise DataError(f"max_len must be at least 2 (<s> and </s>), got {max_len}")
        encoded = self._sp.encode([str(t) for t in texts])
        rows = [self._ids(piece_ids[: max_len - 2]) for piece_ids in encoded]
        length = max_len if padding == "max_length" else max((len(r) + 2 for r in rows), default=2)
        ids = np.full((len(texts), length), PAD, dtype=np.int64)
        mask = np.zeros((len(texts), length), dtype=np.int64)
        words = np.full((len(texts), length), -1, dtype=np.int64)
        for row, (token_ids, piece_ids) in enumerate(zip(rows, encoded)):
            n = len(token_ids)
            ids[row, : n + 2] = [BOS, *token_ids, EOS]
            mask[row, : n + 2] = 1
            word = -1
            for col, piece_id in enumerate(piece_ids[:n]):
                if word < 0 or self._sp.id_to_piece(piece_id).startswith(WORD_START):
                    word += 1
                words[row, col + 1] = word
        return {"input_ids": ids, "attention_mask": mask, "word_ids": words}

    def save(self, directory: str | Path) -> Path:
        """Write ``sentencepiece.bpe.model`` and ``tokenizer_config.json`` (readable by ``XLMRobertaTokenizer``)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        (out / SPM_NAME).write_bytes(self._proto)
        config = {"tokenizer_class": "XLMRobertaTokenizer", "model_max_length": 512, "bos_token": "<s>",
                  "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>", "unk_token": "<unk>",
                  "pad_token": "<pad>", "mask_token": "<mask>"}
        (out / TOKENIZER_CONFIG_NAME).write_text(json.dumps(config, indent=1) + "\n")
        return out

    def __getstate__(self) -> dict[str, Any]:
        return {"proto": self._proto}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["proto"])  # type: ignore[misc]
