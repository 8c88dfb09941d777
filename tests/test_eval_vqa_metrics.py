"""The official VQA accuracy rule by rule (quirks included), results scoring, submission files, soft score."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from vlmo_cli.errors import DataError
from vlmo_cli.evaluate.vqa_metrics import (
    CONTRACTIONS,
    SoftVQAScore,
    load_vqa_annotations,
    normalize_answer,
    normalize_prediction,
    process_digit_article,
    process_punctuation,
    score_results,
    soft_score,
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


def test_ground_truth_is_not_normalised_when_all_answers_agree():
    # All 10 agree: ground truth stays raw, but the prediction is still lowercased -> "yes" != "Yes".
    assert vqa_accuracy("Yes", ["Yes"] * 10) == 0.0
    assert vqa_accuracy("yes", ["yes"] * 10) == 1.0
    # When they differ, ground truth gets processPunctuation only ("Yes!" -> "Yes"), still not lowercased.
    assert vqa_accuracy("yes", ["Yes!"] * 5 + ["no"] * 5) == 0.0
    assert vqa_accuracy("yes", ["yes."] * 5 + ["no"] * 5) == 1.0  # period deleted
    # "!" becomes a space and the ground truth is never stripped: "yes " != "yes".
    assert vqa_accuracy("yes", ["yes!"] * 5 + ["no"] * 5) == 0.0


def test_ground_truth_never_gets_number_words_or_articles_mapped():
    # The prediction "two" becomes "2"; ground truth "two" stays "two".
    assert vqa_accuracy("two", ["two"] * 5 + ["three"] * 5) == 0.0
    assert vqa_accuracy("two", ["2"] * 5 + ["3"] * 5) == 1.0
    assert vqa_accuracy("a dog", ["a dog"] * 5 + ["cat"] * 5) == 0.0
    assert vqa_accuracy("a dog", ["dog"] * 5 + ["cat"] * 5) == 1.0
    # Punctuation on the ground-truth side is handled when answers differ: "hot-dog" -> "hot dog".
    assert vqa_accuracy("hot dog", ["hot-dog"] * 3 + ["pizza"] * 7) == pytest.approx(0.9)


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
    # A duplicated id: the last entry wins (vqa.py builds a dict), and the duplicate is counted.
    report = score_results(RESULTS + [{"question_id": 5, "answer": "cat"}], QUESTIONS, ANNOTATIONS)
    assert report["overall"] == 76.0 and report["num_duplicate_results"] == 1
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
