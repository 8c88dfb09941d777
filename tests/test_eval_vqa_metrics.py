"""The official VQA accuracy rule by rule (quirks included), results scoring, submission files, soft score."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from vlmo_cli.errors import DataError
from vlmo_cli.data.sources.vqa_answers import (
    CONTRACTIONS,
    normalize_answer,
    normalize_prediction,
    process_digit_article,
    process_punctuation,
    soft_score,
)
from vlmo_cli.evaluate.vqa_metrics import (
    SoftVQAScore,
    load_vqa_annotations,
    round_like_python2,
    score_results,
    soft_vqa_scores,
    vqa_accuracy,
    write_submission,
)

# --- processPunctuation ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("hot-dog", "hot dog"),  # no space next to '-': replaced by a space
        ("yes, sir", "yes sir"),  # ', ' present: ',' deleted
        ("a - b", "a  b"),  # ' -' present: deleted (double space stays until split)
        ("yes,no", "yes no"),
        ("1,000", "1000"),  # a comma between digits deletes every punctuation character ...
        ("1,000 (approx)", "1000 approx"),  # ... including the brackets, which would otherwise become spaces
        ("red/white", "red white"),
        ("what?!", "what  "),
        ("3.5", "3.5"),  # a period followed by a digit stays
        ("u.s.a.", "usa"),  # other periods are deleted
        ("5.a", "5a"),  # the malformed look-behind does not protect a period after a digit
        ("it's", "it's"),  # apostrophes are not in the list
        ("a:b", "a:b"),  # nor colons
    ],
)
def test_process_punctuation(text, expected):
    assert process_punctuation(text) == expected


def test_process_punctuation_checks_the_original_text_for_each_character():
    # '/' is handled before '-'. In "a/-b" the '/' becomes a space ("a -b"); the '-' is then judged on the
    # original text, which has no space next to it, so it becomes a space too (not deleted).
    assert process_punctuation("a/-b") == "a  b"
    assert process_punctuation("a /-b") == "a  b"  # ' /' present: '/' deleted; '-' spaced


def test_period_strip_removes_at_most_32_periods():
    # vqaEval passes re.UNICODE (= 32) as Pattern.sub's count argument.
    assert process_punctuation("." * 40) == "." * 8
    assert process_punctuation("." * 32 + "x") == "x"


# --- processDigitArticle -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Two Dogs", "2 dogs"),  # lowercased, number word -> digit
        ("none", "0"),
        ("zero", "0"),
        ("ten", "10"),
        ("eleven", "eleven"),  # only none/zero..ten are mapped
        ("the dog", "dog"),
        ("a an the cat", "cat"),
        ("an", ""),
        ("dont know", "don't know"),
        ("whats up", "what's up"),
        ("Im here", "im here"),  # capitalised keys of the table never match after lowercasing
        ("somebody'd", "somebodyd"),  # a backwards entry of the table, kept
        ("  spaced \t out  ", "spaced out"),
    ],
)
def test_process_digit_article(text, expected):
    assert process_digit_article(text) == expected


def test_contraction_table_is_the_official_one():
    assert len(CONTRACTIONS) == 120
    assert CONTRACTIONS["twas"] == "'twas" and CONTRACTIONS["y'allll"] == "y'all'll"


def test_prediction_whitespace_and_full_normalisation():
    assert normalize_prediction("\tThe  Two\ncats.\n") == "2 cats"
    assert normalize_answer("The Two cats.") == "2 cats"
    assert normalize_answer("1,000") == "1000"
    assert normalize_answer("Yes!") == "yes"


# --- per-question accuracy ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("k, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (7, 1.0), (10, 1.0)])
def test_leave_one_annotator_out_accuracy(k, expected):
    # k of the 10 answers equal the prediction. Held-out answer i scores min(1, matches among the other 9 / 3):
    #   k=1: the matching one sees 0 -> 0; the 9 others see 1 -> 1/3.     mean = 9 * (1/3) / 10      = 0.3
    #   k=2: the 2 matching see 1 -> 1/3; the 8 others see 2 -> 2/3.      mean = (2/3 + 16/3) / 10   = 0.6
    #   k=3: the 3 matching see 2 -> 2/3; the 7 others see 3 -> 1.        mean = (2 + 7) / 10        = 0.9
    #   k=4: the 4 matching see 3 -> 1;   the 6 others see 4 -> 1.        mean = 1.0
    answers = ["cat"] * k + ["dog"] * (10 - k)
    assert vqa_accuracy("cat", answers) == pytest.approx(expected, abs=1e-12)
    assert vqa_accuracy("cat", answers) == pytest.approx(soft_score(k), abs=1e-12)


def _ten(*groups: tuple[str, int]) -> list[str]:
    """Ten annotator answers from (answer, count) groups."""
    answers = [answer for answer, count in groups for _ in range(count)]
    assert len(answers) == 10
    return answers


# (prediction, answers, official = master a013f00, legacy = before it, why). Each score is derived by hand from the
# two code versions; the leave-one-out rule gives 0 / .3 / .6 / .9 / 1 for k = 0, 1, 2, 3, >=4 matching answers.
EVALUATOR_CASES = [
    # --- all ten answers identical: master compares the two raw (whitespace-cleaned) strings, legacy still
    #     normalises the prediction and leaves the answers as they are
    ("yes", _ten(("yes", 10)), 1.0, 1.0, "identical strings"),
    ("Yes", _ten(("Yes", 10)), 1.0, 0.0, "legacy lowercases only the prediction"),
    ("yes.", _ten(("yes", 10)), 0.0, 1.0, "master does not strip the prediction's period when answers agree"),
    ("hot-dog", _ten(("hot-dog", 10)), 1.0, 0.0, "unanimous punctuation: legacy turns the prediction's '-' to ' '"),
    ("hot dog", _ten(("hot-dog", 10)), 0.0, 0.0, "unanimous punctuation: nobody touches the answers"),
    ("two", _ten(("2", 10)), 0.0, 1.0, "number word mapped only by legacy (prediction side)"),
    ("two", _ten(("two", 10)), 1.0, 0.0, "legacy maps the prediction to '2' but not the answers"),
    ("the dog", _ten(("dog", 10)), 0.0, 1.0, "article dropped only by legacy (prediction side)"),
    (" yes\n", _ten(("yes", 10)), 1.0, 1.0, "both clean the prediction's whitespace"),
    ("yes", _ten(("yes ", 10)), 1.0, 0.0, "only master strips the answers"),
    # whitespace decides unanimity: master strips first, so these ten agree and are compared raw ("Yes" != "yes");
    # legacy sees two distinct strings, punctuation-processes them (no change) and matches 9 "yes" -> k = 9
    ("Yes", _ten(("yes", 9), ("yes ", 1)), 0.0, 1.0, "stripping before the unanimity test"),
    # --- answers differ: master runs both normalisers on both sides, legacy only processPunctuation on answers
    ("Two", _ten(("two", 5), ("three", 5)), 1.0, 0.0, "number words in the answers: k = 5 for master"),
    ("a dog", _ten(("a dog", 5), ("cat", 5)), 1.0, 0.0, "articles in the answers"),
    ("dog", _ten(("the dog", 3), ("cat", 7)), 0.9, 0.0, "k = 3 after dropping 'the' from the answers"),
    ("Yes", _ten(("Yes!", 5), ("no", 5)), 1.0, 0.0, "'!' -> ' ': legacy keeps 'Yes ' (not stripped, not lowercased)"),
    ("yes", _ten(("yes.", 5), ("no", 5)), 1.0, 1.0, "a period is deleted on both sides in both versions"),
    ("0", _ten(("none", 4), ("1", 6)), 1.0, 0.0, "'none' -> '0' in the answers only for master"),
    ("none", _ten(("0", 4), ("1", 6)), 1.0, 1.0, "'none' -> '0' in the prediction for both"),
    ("don't", _ten(("dont", 4), ("no", 6)), 1.0, 0.0, "contraction fixed in the answers only for master"),
    ("dont know", _ten(("don't know", 4), ("no", 6)), 1.0, 1.0, "contraction fixed in the prediction for both"),
    ("Im", _ten(("I'm", 4), ("no", 6)), 0.0, 0.0, "the table's capitalised key 'Im' never matches after lowercasing"),
    # processPunctuation details (same in both versions)
    ("1,000 hot-dog", _ten(("1000 hotdog", 4), ("x", 6)), 1.0, 1.0, "a digit comma deletes every listed character"),
    ("hot-dog", _ten(("hotdog", 4), ("x", 6)), 0.0, 0.0, "without a digit comma '-' becomes a space"),
    ("5.a", _ten(("5a", 4), ("x", 6)), 1.0, 1.0, "the broken look-behind: a period after a digit is deleted too"),
    ("3.5", _ten(("35", 4), ("x", 6)), 0.0, 0.0, "a period before a digit stays"),
    ("." * 32 + "yes", _ten(("yes", 4), ("no", 6)), 1.0, 1.0, "32 periods are deleted"),
    ("." * 33 + "yes", _ten(("yes", 4), ("no", 6)), 0.0, 0.0, "the 33rd period stays (count = re.UNICODE = 32)"),
    ("\u0663.\u0665", _ten(("\u0663\u0665", 4), ("x", 6)), 1.0, 1.0, "\\d is ASCII: an Arabic-Indic digit does not "
     "protect the period"),
]


@pytest.mark.parametrize("prediction, answers, official, legacy, why", EVALUATOR_CASES,
                         ids=[case[-1] for case in EVALUATOR_CASES])
def test_official_and_legacy_evaluators_rule_by_rule(prediction, answers, official, legacy, why):
    assert vqa_accuracy(prediction, answers) == pytest.approx(official, abs=1e-12)  # the default is master
    assert vqa_accuracy(prediction, answers, "official") == pytest.approx(official, abs=1e-12)
    assert vqa_accuracy(prediction, answers, "legacy") == pytest.approx(legacy, abs=1e-12)


def test_unknown_evaluator_is_a_data_error():
    with pytest.raises(DataError, match="unknown VQA evaluator 'master'; allowed: official, legacy"):
        vqa_accuracy("x", ["x"] * 10, "master")


def test_leave_one_out_compares_answer_dicts_like_the_original():
    # Official answers differ by answer_id, so exactly one is held out. Identical dicts (no answer_id) are all
    # removed together: holding out one of 4 identical "cat" dicts leaves 0 matches for those 4 -> (4*0 + 6*1)/10.
    with_ids = [{"answer": "cat", "answer_id": i + 1} for i in range(4)]
    with_ids += [{"answer": "dog", "answer_id": i + 5} for i in range(6)]
    assert vqa_accuracy("cat", with_ids) == 1.0
    without_ids = [{"answer": "cat"}] * 4 + [{"answer": "dog"}] * 6
    assert vqa_accuracy("cat", without_ids) == pytest.approx(0.6)


def test_accuracy_rejects_empty_answers():
    with pytest.raises(DataError):
        vqa_accuracy("x", [])


# --- results files -----------------------------------------------------------------------------------------------


def annotation(qid: int, answers: list[str], answer_type: str, question_type: str) -> dict:
    return {
        "question_id": qid,
        "image_id": qid * 10,
        "question_type": question_type,
        "answer_type": answer_type,
        "multiple_choice_answer": answers[0],
        "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)],
    }


ANNOTATIONS = {
    "annotations": [
        annotation(1, ["yes"] * 10, "yes/no", "is the"),  # pred yes -> 1.0
        annotation(2, ["no"] * 8 + ["yes"] * 2, "yes/no", "is the"),  # pred yes -> 0.6
        annotation(3, ["2"] * 3 + ["3"] * 7, "number", "how many"),  # pred "two" -> "2": 0.9
        annotation(4, ["red"] * 1 + ["blue"] * 9, "other", "what color is the"),  # pred red -> 0.3
        annotation(5, ["cat"] * 10, "other", "what is the"),  # pred dog -> 0
    ]
}
QUESTIONS = {"questions": [{"question_id": q, "image_id": q * 10, "question": "?"} for q in range(1, 7)]}
RESULTS = [
    {"question_id": 1, "answer": "yes"},
    {"question_id": 2, "answer": "yes"},
    {"question_id": 3, "answer": "two"},
    {"question_id": 4, "answer": "Red."},
    {"question_id": 5, "answer": "dog"},
]


def test_score_results_overall_and_per_type(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(ANNOTATIONS))
    (tmp_path / "q.json").write_text(json.dumps(QUESTIONS))
    (tmp_path / "r.json").write_text(json.dumps(RESULTS))
    report = score_results(tmp_path / "r.json", tmp_path / "q.json", tmp_path / "a.json", per_question=True)
    # (1.0 + 0.6 + 0.9 + 0.3 + 0.0) / 5 = 0.56
    assert report["overall"] == 56.0
    assert report["per_answer_type"] == {"yes/no": 80.0, "number": 90.0, "other": 15.0}
    assert report["per_question_type"] == {"is the": 80.0, "how many": 90.0, "what color is the": 30.0,
                                           "what is the": 0.0}  # fmt: skip
    assert report["per_question"] == {1: 100.0, 2: 60.0, 3: 90.0, 4: 30.0, 5: 0.0}
    assert report["num_questions"] == 5 and report["num_duplicate_results"] == 0


def test_score_results_rounds_like_the_official_code():
    # One of three questions right: 100/3 = 33.333.. -> 33.33
    annotations = [annotation(q, ["x"] * 10, "other", "what") for q in (1, 2, 3)]
    results = [{"question_id": 1, "answer": "x"}, {"question_id": 2, "answer": "y"}, {"question_id": 3, "answer": "y"}]
    assert score_results(results, None, annotations)["overall"] == 33.33


def test_score_results_coverage_and_duplicates():
    with pytest.raises(DataError, match=r"missing predictions for 1 \(e.g. 5\)"):
        score_results(RESULTS[:4], QUESTIONS, ANNOTATIONS)
    with pytest.raises(DataError, match=r"1 \(e.g. 99\) predicted question ids are not in the annotations"):
        score_results(RESULTS + [{"question_id": 99, "answer": "x"}], QUESTIONS, ANNOTATIONS)
    # A repeated id with the same answer cannot change a score: dropped and counted.
    report = score_results(RESULTS + [{"question_id": 5, "answer": "dog"}], QUESTIONS, ANNOTATIONS)
    assert report["overall"] == 56.0 and report["num_duplicate_results"] == 1
    assert report["num_conflicting_duplicates"] == 0
    with pytest.raises(DataError, match="not in the questions file"):
        score_results(RESULTS, {"questions": QUESTIONS["questions"][:2]}, ANNOTATIONS)
    with pytest.raises(DataError, match="non-string answer"):
        score_results([{"question_id": 1, "answer": 3}], None, ANNOTATIONS)
    with pytest.raises(DataError, match="'annotations'"):
        load_vqa_annotations({"questions": []})


def test_score_results_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        score_results(tmp_path / "nope.json", None, ANNOTATIONS)


# --- submission ----------------------------------------------------------------------------------------------------


def test_write_submission_deduplicates_first_wins(tmp_path, caplog):
    pairs = [(3, "yes"), (1, "two"), (3, "no"), {"question_id": 2, "answer": "red"}, (1, "two")]
    with caplog.at_level(logging.WARNING):
        summary = write_submission(pairs, tmp_path / "submit.json", expected_question_ids=[1, 2, 3])
    written = json.loads((tmp_path / "submit.json").read_text())
    assert written == [
        {"question_id": 1, "answer": "two"},
        {"question_id": 2, "answer": "red"},
        {"question_id": 3, "answer": "yes"},
    ]
    assert (summary.num_written, summary.num_duplicates, summary.num_conflicting_duplicates) == (3, 2, 1)
    assert "dropped 2 duplicated" in caplog.text


def test_write_submission_checks_coverage(tmp_path):
    target = tmp_path / "submit.json"
    with pytest.raises(DataError, match=r"no answer for 2 \(e.g. 4, 5\)"):
        write_submission([(1, "a"), (2, "b")], target, expected_question_ids=[1, 2, 4, 5])
    with pytest.raises(DataError, match=r"1 \(e.g. 7\) question ids that are not in the split"):
        write_submission([(1, "a"), (7, "b")], target, expected_question_ids=[1])
    assert not target.exists()
    with pytest.raises(DataError, match="answer must be a string"):
        write_submission([(1, None)], target, expected_question_ids=[1])
    summary = write_submission([(torch.tensor(5), "a")], target, expected_question_ids=None)
    assert summary.num_written == 1 and json.loads(target.read_text()) == [{"question_id": 5, "answer": "a"}]


# --- training-time soft score ---------------------------------------------------------------------------------------


def test_soft_vqa_scores_take_the_target_of_the_argmax():
    logits = torch.tensor([[0.1, 2.0, 0.3], [5.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
    targets = torch.tensor([[0.0, 0.6, 1.0], [0.3, 0.0, 0.0], [1.0, 0.0, 0.0]])
    assert soft_vqa_scores(logits, targets).tolist() == pytest.approx([0.6, 0.3, 0.0])
    meter = SoftVQAScore()
    meter.update(logits, targets)
    meter.update(logits[:1], targets[:1])
    assert meter.compute() == pytest.approx((0.6 + 0.3 + 0.0 + 0.6) / 4)
    meter.reset()
    assert meter.compute() == 0.0
    with pytest.raises(ValueError):
        soft_vqa_scores(logits, targets[:, :2])


# --- duplicates, versions and rounding of whole results files ------------------------------------------------------


def test_conflicting_duplicates_are_refused_unless_dedupe_says_which_to_keep():
    # question 5 answered "dog" (0.0) and then "cat" (1.0); question 2 "yes" (0.6) then "no" (0.4 -> k=8: 1.0)
    results = RESULTS + [{"question_id": 5, "answer": "cat"}, {"question_id": 2, "answer": "no"},
                         {"question_id": 1, "answer": "yes"}]
    with pytest.raises(DataError, match=r"2 \(e.g. 2, 5\) question ids have several different answers; "
                                        r"keep one with --dedupe first or --dedupe last"):
        score_results(results, QUESTIONS, ANNOTATIONS)
    first = score_results(results, QUESTIONS, ANNOTATIONS, dedupe="first")
    last = score_results(results, QUESTIONS, ANNOTATIONS, dedupe="last")
    assert first["overall"] == 56.0  # (1.0 + 0.6 + 0.9 + 0.3 + 0.0) / 5
    assert last["overall"] == 84.0  # (1.0 + 1.0 + 0.9 + 0.3 + 1.0) / 5
    for report in (first, last):
        assert report["num_duplicate_results"] == 3 and report["num_conflicting_duplicates"] == 2
    assert (first["dedupe"], last["dedupe"]) == ("first", "last")
    with pytest.raises(DataError, match="allowed: first, last"):
        score_results(results, QUESTIONS, ANNOTATIONS, dedupe="newest")


def test_score_results_names_the_evaluator_and_its_commit():
    # question 1 is unanimous "Yes": master compares raw strings (1.0), legacy lowercases the prediction only (0.0);
    # question 2 has "two" among differing answers: master maps both sides to "2" (k=5: 1.0), legacy only the
    # prediction (0.0); question 3 is scored 1.0 by both.
    annotations = [annotation(1, ["Yes"] * 10, "yes/no", "is"), annotation(2, ["two"] * 5 + ["3"] * 5, "number", "how"),
                   annotation(3, ["red"] * 10, "other", "what")]
    results = [{"question_id": 1, "answer": "Yes"}, {"question_id": 2, "answer": "two"},
               {"question_id": 3, "answer": "red"}]
    official = score_results(results, None, annotations, per_question=True)
    legacy = score_results(results, None, annotations, per_question=True, evaluator="legacy")
    assert (official["overall"], legacy["overall"]) == (100.0, 33.33)
    assert official["per_question"] == {1: 100.0, 2: 100.0, 3: 100.0}
    assert legacy["per_question"] == {1: 0.0, 2: 0.0, 3: 100.0}
    assert legacy["per_answer_type"] == {"yes/no": 0.0, "number": 0.0, "other": 100.0}
    assert (official["evaluator"], official["evaluator_commit"]) == ("official", "a013f00")
    assert (legacy["evaluator"], legacy["evaluator_commit"]) == ("legacy", "458a8b2")


def test_means_use_unrounded_accuracies_and_python2_rounding():
    # 0.3 on each of three questions: per question 30.0; the mean is taken before rounding.
    annotations = [annotation(q, ["x"] + ["y"] * 9, "other", "what") for q in (1, 2, 3)]
    report = score_results([{"question_id": q, "answer": "x"} for q in (1, 2, 3)], None, annotations,
                           per_question=True)
    assert report["per_question"] == {1: 30.0, 2: 30.0, 3: 30.0} and report["overall"] == 30.0
    # 1 right of 800: 100 * 1 / 800 = 0.125 exactly; Python 2 (the evaluator's language) rounds the tie away from
    # zero to 0.13, Python 3's round would give 0.12.
    annotations = [annotation(q, ["x"] * 10, "other", "what") for q in range(800)]
    results = [{"question_id": q, "answer": "x" if q == 0 else "y"} for q in range(800)]
    assert score_results(results, None, annotations)["overall"] == 0.13
    assert round_like_python2(2.675) == 2.67  # not a tie in binary: nearest, as in both Pythons
    assert round_like_python2(-0.125) == -0.13
