"""VQA answer normalisation, vocabulary and soft scores, as the official VQA tools and VLMo's ``write_vqa.py`` do it.

- answers are normalised with VLMo/ViLT's ``normalize_word`` (:func:`normalize_answer`: the official evaluator's
  punctuation and number/article/contraction steps, then commas removed).
- the evaluator's own steps (:func:`process_punctuation`, :func:`process_digit_article`, :func:`clean_whitespace`)
  live here too, with their tables copied from ``vqaEval.py`` as data; :mod:`vlmo_cli.evaluate.vqa_metrics` scores
  predictions with them, as described there.
- :func:`build_vocab`: normalised ``multiple_choice_answer`` kept when seen ``min_count`` (9) times -> 3129 answers on
  VQAv2 train+val; ordered by decreasing count, ties alphabetically, so the label ids are reproducible.
- :func:`soft_targets`: counts of the 10 raw answers -> 0.3 / 0.6 / 0.9 / 1.0 for 1 / 2 / 3 / >=4 annotators. Parity
  quirk kept by default: the raw answer strings are looked up in the normalised vocabulary without normalising them.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from typing import Iterable

# --- tables of vqaEval.py (the contraction table is copied as data, typos and dead capitalised keys included) ---
CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}  # fmt: skip
NUMBER_WORDS: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES: frozenset[str] = frozenset({"a", "an", "the"})
PUNCTUATION: tuple[str, ...] = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!",
)  # fmt: skip
# the malformed look-behind is kept as in the original; re.ASCII: Python 2 patterns match only ASCII digits
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)", re.ASCII)
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(\,)(\d)", re.ASCII)
_PERIOD_STRIP_COUNT = int(re.UNICODE)  # the original passes re.UNICODE (= 32) as Pattern.sub's count


@functools.lru_cache(maxsize=1 << 16)
def process_punctuation(text: str) -> str:
    """``vqaEval.processPunctuation``: delete or space out punctuation, then strip (up to 32) periods."""
    out = text
    digit_comma = _COMMA_BETWEEN_DIGITS.search(text) is not None
    for p in PUNCTUATION:
        if (p + " " in text or " " + p in text) or digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, count=_PERIOD_STRIP_COUNT)


@functools.lru_cache(maxsize=1 << 16)
def process_digit_article(text: str) -> str:
    """``vqaEval.processDigitArticle``: lowercase, number words -> digits, drop articles, fix contractions."""
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in ARTICLES]
    return " ".join(CONTRACTIONS.get(word, word) for word in words)


def clean_whitespace(answer: str) -> str:
    """The evaluators' first step: ``\\n`` and ``\\t`` become spaces, outer whitespace is stripped."""
    return answer.replace("\n", " ").replace("\t", " ").strip()


def both_normalisers(text: str) -> str:
    """``processPunctuation`` then ``processDigitArticle``."""
    return process_digit_article(process_punctuation(text))


def normalize_prediction(answer: str) -> str:
    """What the legacy evaluator compares for a predicted answer (always applied to predictions there)."""
    return both_normalisers(clean_whitespace(answer))


def normalize_answer(answer: str) -> str:
    """VLMo/ViLT ``glossary.normalize_word``: the normalisation used to build the answer vocabulary.

    The evaluator's two steps (without its whitespace handling) followed by deleting every remaining comma.
    """
    return both_normalisers(answer).replace(",", "")


def soft_score(count: int) -> float:
    """VLMo ``get_score``: soft target of an answer given by ``count`` annotators (0, .3, .6, .9, 1)."""
    if count <= 0:
        return 0.0
    return (0.3, 0.6, 0.9)[count - 1] if count < 4 else 1.0


def build_vocab(answers: Iterable[str], min_count: int = 9) -> list[str]:
    """Normalised answers seen at least ``min_count`` times, most frequent first (ties alphabetical)."""
    counts = Counter(normalize_answer(a) for a in answers)
    kept = [(a, n) for a, n in counts.items() if n >= min_count and a]
    return [a for a, _ in sorted(kept, key=lambda item: (-item[1], item[0]))]


def soft_targets(raw_answers: list[str], answer_to_id: dict[str, int], *, normalize_raw: bool = False
                 ) -> tuple[list[int], list[float]]:
    """(label ids, soft scores) of one question from its raw annotator answers."""
    counts = Counter(normalize_answer(a) if normalize_raw else a for a in raw_answers)
    labels, scores = [], []
    for answer, n in counts.items():
        if answer in answer_to_id:
            labels.append(answer_to_id[answer])
            scores.append(soft_score(n))
    return labels, scores
