"""VQA answer normalisation, vocabulary and soft scores, as the official VQA tools and VLMo's ``write_vqa.py`` do it.

- :func:`normalize_answer`: the official evaluation normalisation (punctuation handling, number words to digits,
  articles dropped, common missing apostrophes restored).
- :func:`build_vocab`: normalised ``multiple_choice_answer`` kept when seen ``min_count`` (9) times -> 3129 answers on
  VQAv2 train+val; ordered by decreasing count, ties alphabetically, so the label ids are reproducible.
- :func:`soft_targets`: counts of the 10 raw answers -> 0.3 / 0.6 / 0.9 / 1.0 for 1 / 2 / 3 / >=4 annotators. Parity
  quirk kept by default: the raw answer strings are looked up in the normalised vocabulary without normalising them.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable

_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)")
_PERIOD = re.compile(r"(?<!\d)\.(?!\d)")
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
            "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
# answers typed without the apostrophe -> the spelling the official evaluation uses
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's",
    "im": "i'm", "ive": "i've", "isnt": "isn't", "itd": "it'd", "itll": "it'll", "lets": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "oclock": "o'clock", "shant": "shan't", "shed": "she'd", "shes": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "somebodys": "somebody's", "someones": "someone's",
    "thats": "that's", "thered": "there'd", "theres": "there's", "theyd": "they'd", "theyll": "they'll",
    "theyre": "they're", "theyve": "they've", "wasnt": "wasn't", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "wholl": "who'll",
    "whos": "who's", "whove": "who've", "whys": "why's", "wont": "won't", "wouldve": "would've",
    "wouldnt": "wouldn't", "yall": "y'all", "youd": "you'd", "youll": "you'll", "youre": "you're", "youve": "you've",
}


def normalize_answer(text: str) -> str:
    """The official VQA answer normalisation (``processPunctuation`` then ``processDigitArticle``)."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    strip_all = _COMMA_IN_NUMBER.search(text) is not None
    out = text
    for p in _PUNCT:
        if strip_all or (p + " ") in text or (" " + p) in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    out = _PERIOD.sub("", out)
    words = [_NUMBERS.get(w, w) for w in out.lower().split()]
    words = [_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES]
    return " ".join(words)


def score(count: int) -> float:
    """Soft score of an answer given by ``count`` of the 10 annotators."""
    return 0.0 if count <= 0 else (0.3, 0.6, 0.9)[count - 1] if count < 4 else 1.0


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
            scores.append(score(n))
    return labels, scores
