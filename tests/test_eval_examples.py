"""The VQA and NLVR2 example pictures of ``vlmo eval --examples N``: which examples are chosen, what each card shows
(checked pixel by pixel on hand-made images) and that the pictures are embedded in the run's HTML report."""

from __future__ import annotations

import base64
import io
import json
import re

import pytest
from PIL import Image

from vlmo_cli.evaluate.examples_choice import mixed_picks, spread
from vlmo_cli.evaluate.examples_draw import (BACKGROUND, FRAME_WIDTH, HIT_COLOUR, MISS_COLOUR, PAD, PANEL,
                                             PARTIAL_COLOUR, QUERY_COLOUR, default_font, line_height)
from vlmo_cli.evaluate.examples_nlvr2 import (Nlvr2Example, nlvr2_examples_size, pick_nlvr2_examples,
                                              save_nlvr2_examples)
from vlmo_cli.evaluate.examples_vqa import (GoldAnswer, VqaExample, gold_answers, pick_vqa_examples,
                                            save_vqa_examples, vqa_examples_size)
from vlmo_cli.evaluate.vqa_metrics import vqa_accuracy

RED, BLUE, YELLOW = (255, 0, 0), (0, 0, 255), (250, 220, 0)
LONG = ("what is the name of the extraordinarily long-winded object sitting on the left side of the table next to "
        "the other object ") * 4
LONG_WORD = "supercalifragilisticexpialidocious" * 4


def _encoded(colour, size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _legend_height(width: int, text: str) -> int:
    from vlmo_cli.evaluate.examples_draw import wrap_text

    font = default_font()
    return len(wrap_text(text, font, width - 2 * PAD, 3)) * line_height(font) + PAD


# --------------------------------------------------------------------------------------------- choice
def test_spread_is_evenly_spaced_from_first_to_last():
    assert spread(10, 3) == [0, 4, 9]
    assert spread(5, 9) == [0, 1, 2, 3, 4]
    assert spread(7, 1) == [0] and spread(0, 3) == [] and spread(4, 0) == []
    assert len(set(spread(1001, 37))) == 37


def test_mixed_picks_take_half_right_half_wrong_and_fill_from_the_other_group():
    right = [True] * 6 + [False] * 4
    picks = mixed_picks(right, 4)
    assert picks == sorted(picks) and picks == mixed_picks(right, 4)  # deterministic, in split order
    assert sum(right[i] for i in picks) == 2 and len(picks) == 4
    assert sum(right[i] for i in mixed_picks(right, 5)) == 3  # the odd one goes to the right ones
    one_wrong = [True] * 9 + [False]
    assert mixed_picks(one_wrong, 4) == [0, 4, 8, 9]  # the only wrong one, and three right ones fill up
    assert mixed_picks([False] * 3, 2) == [0, 2] and mixed_picks([True, False], 10) == [0, 1]
    assert mixed_picks([], 3) == [] and mixed_picks([True], 0) == []


# --------------------------------------------------------------------------------------------- VQA
def test_gold_answers_are_counted_ordered_and_scored_under_the_evaluator():
    gold = gold_answers(["yes"] * 8 + ["no"] * 2, "official")
    assert gold == [GoldAnswer("yes", 8, 1.0), GoldAnswer("no", 2, pytest.approx(0.6))]
    # answers that differ are normalised by the official evaluator ("Two" -> "2"), not by the legacy one
    assert gold_answers(["two"] * 9 + ["Two"], "official")[0].score == 1.0
    assert gold_answers(["two"] * 9 + ["Two"], "legacy")[0].score == 0.0


def _card_top(width: int, evaluator: str, index: int) -> int:
    from vlmo_cli.evaluate.examples_vqa import legend

    step = line_height(default_font())
    card = max(160, 11 * step)
    return PAD + _legend_height(width, legend(evaluator)) + index * (card + PAD)


def test_vqa_picture_frames_each_image_by_score_and_keeps_text_inside(tmp_path):
    examples = [
        VqaExample(_encoded(RED), "what colour?", 1, "red", 1.0, [GoldAnswer("red", 10, 1.0)], "what color"),
        VqaExample(Image.new("RGB", (30, 30), BLUE), LONG, 2, LONG_WORD, 0.3,
                   [GoldAnswer(f"{LONG_WORD}{i}", 1, 0.3) for i in range(8)], "what is the name"),
        VqaExample(_encoded(YELLOW), "how many?", 3, "2", 0.0, [GoldAnswer("3", 10, 1.0)], "how many"),
        VqaExample(b"not an image", "is it?", 4, "yes"),  # unlabelled, unreadable image
    ]
    path = save_vqa_examples(examples, tmp_path / "deep" / "vqa-examples.png", evaluator="official")
    with Image.open(path) as picture:
        picture.load()
        assert picture.format == "PNG" and picture.size == vqa_examples_size(4, evaluator="official")
        width, height = picture.size
        tops = [_card_top(width, "official", i) for i in range(4)]
        assert tops[-1] + max(160, 11 * line_height(default_font())) + PAD == height
        for top, image_colour, frame in ((tops[0], RED, HIT_COLOUR), (tops[1], BLUE, PARTIAL_COLOUR),
                                         (tops[2], YELLOW, MISS_COLOUR)):
            assert picture.getpixel((PAD + 80, top + 80)) == image_colour  # the image fills the tile centre
            assert picture.getpixel((PAD + 1, top + 10)) == frame  # framed in the colour of its score
        assert picture.getpixel((PAD + 1, tops[3] + 10)) == QUERY_COLOUR  # nothing to score: blue
        assert picture.getpixel((PAD + 150, tops[3] + 150)) == PANEL  # unreadable image: a text panel
        # text is drawn right of the tiles, and nothing (long question, long answers) runs past the right edge
        text_x = PAD + 160 + 2 * PAD
        assert any(picture.getpixel((x, tops[1] + 20)) != BACKGROUND for x in range(text_x, width - PAD))
        for y in range(height):
            for x in range(width - PAD, width):
                assert picture.getpixel((x, y)) == BACKGROUND, (x, y)
        # the wrong answer's prediction line (3rd line: header, the one-line question, prediction) is red
        step = line_height(default_font())
        row = [picture.getpixel((x, y)) for x in range(text_x, text_x + 200)
               for y in range(tops[2] + 2 * step, tops[2] + 3 * step)]
        assert any(r > 150 and g < 110 and b < 110 for r, g, b in row)
    with pytest.raises(ValueError, match="tile_size"):
        save_vqa_examples(examples, tmp_path / "x.png", tile_size=8)


def test_vqa_examples_picked_from_a_prepared_split_mix_right_and_wrong(demo_root):
    from vlmo_cli.data.store import open_prepared

    prepared = open_prepared(demo_root / "demo_data" / "vqa")
    rows = prepared.split("val").select_columns(["question_id", "answers", "image_row"]).to_dict()
    # right (the most given gold answer) for even rows, a nonsense answer for odd rows; train questions unanswered
    predictions = [(int(q), max(set(a), key=a.count) if i % 2 == 0 else "zebra crossing")
                   for i, (q, a) in enumerate(zip(rows["question_id"], rows["answers"]))]
    examples = pick_vqa_examples(prepared, "train+val", predictions + predictions[:3], 6, "official")
    assert len(examples) == 6
    by_id = {int(q): i for i, q in enumerate(rows["question_id"])}
    assert sum(e.score > 0 for e in examples) == 3 and sum(e.score == 0 for e in examples) == 3
    val_images = prepared.image_table("val")
    for example in examples:
        i = by_id[example.question_id]  # only answered (val) questions are drawn
        assert example.score == vqa_accuracy(example.prediction, rows["answers"][i], "official")
        assert sum(g.count for g in example.gold) == len(rows["answers"][i])
        # the image of a val question inside "train+val" comes from the val image table (offset applied)
        assert example.image == val_images[int(rows["image_row"][i])]["image"]["bytes"]
    assert [e.question_id for e in examples] == [e.question_id for e in
                                                 pick_vqa_examples(prepared, "train+val", predictions, 6, "official")]


# --------------------------------------------------------------------------------------------- NLVR2
def test_nlvr2_picture_shows_both_images_and_marks_right_and_wrong(tmp_path):
    examples = [Nlvr2Example(_encoded(RED), _encoded(BLUE, (20, 60)), "two red shapes", "dev-0-0-0", True, True),
                Nlvr2Example(_encoded(YELLOW), b"broken", LONG, "dev-1-0-1", True, False)]
    path = save_nlvr2_examples(examples, tmp_path / "n.png", tile_size=100)
    from vlmo_cli.evaluate.examples_nlvr2 import LEGEND

    with Image.open(path) as picture:
        picture.load()
        width, height = picture.size
        assert (width, height) == nlvr2_examples_size(2, tile_size=100)
        step = line_height(default_font())
        card = max(100, 10 * step) + 2 * PAD
        top = PAD + _legend_height(width, LEGEND)
        assert top + 2 * (card + PAD) == height
        left_x, right_x = PAD + 2 * PAD, PAD + 2 * PAD + 100 + PAD
        for i, (frame, left, right) in enumerate(((HIT_COLOUR, RED, BLUE), (MISS_COLOUR, YELLOW, PANEL))):
            y = top + i * (card + PAD)
            assert picture.getpixel((PAD + 1, y + card // 2)) == frame  # the card's frame: right green, wrong red
            assert picture.getpixel((width - PAD - 2, y + 1)) == frame
            assert picture.getpixel((left_x + 50, y + PAD + 50)) == left
            assert picture.getpixel((right_x + 50, y + PAD + 50)) == right
        assert picture.getpixel((right_x + 2, top + PAD + 50)) == BACKGROUND  # the narrow right image, letterboxed
        for y in range(height):  # the long statement is wrapped inside the card
            assert picture.getpixel((width - PAD - FRAME_WIDTH - 1, y)) in (BACKGROUND, HIT_COLOUR, MISS_COLOUR)


def test_nlvr2_examples_picked_from_a_prepared_split(demo_root):
    from vlmo_cli.data.store import open_prepared

    prepared = open_prepared(demo_root / "demo_data" / "nlvr2")
    rows = prepared.split("dev").select_columns(["identifier", "label"]).to_dict()
    predictions = {str(k): bool(v) if i % 3 else not bool(v)
                   for i, (k, v) in enumerate(zip(rows["identifier"], rows["label"])) if i < 40}
    examples = pick_nlvr2_examples(prepared, "dev", predictions, 4)
    assert len(examples) == 4 and sum(e.correct for e in examples) == 2
    assert {e.identifier for e in examples} <= set(predictions)
    index = {str(k): i for i, k in enumerate(rows["identifier"])}
    pairs = prepared.split("dev").select_columns(["image_0", "image_1"])
    for example in examples:
        i = index[example.identifier]
        assert example.label == bool(rows["label"][i]) and example.prediction == predictions[example.identifier]
        assert (example.left, example.right) == (pairs[i]["image_0"]["bytes"], pairs[i]["image_1"]["bytes"])


# --------------------------------------------------------------------------------------------- HTML report
def test_run_report_embeds_the_vqa_and_nlvr2_pictures(tmp_path):
    from vlmo_cli.train.report import render_run_report

    run = tmp_path / "runs" / "ft"
    (run / "eval").mkdir(parents=True)
    (run / "recipe.toml").write_text("[train]\n")
    vqa = save_vqa_examples([VqaExample(_encoded(RED), "q?", 1, "a", 0.0, [GoldAnswer("b", 10, 1.0)])],
                            run / "eval" / "vqa-examples.png")
    nlvr2 = save_nlvr2_examples([Nlvr2Example(_encoded(RED), _encoded(BLUE), "s", "dev-0", True, False)],
                                run / "eval" / "nlvr2-examples.png")
    (run / "eval" / "vqa.json").write_text(json.dumps({"task": "vqa", "metrics": {"overall": 1.0},
                                                       "examples": str(vqa)}))
    (run / "eval" / "nlvr2.json").write_text(json.dumps({"task": "nlvr2", "metrics": {"accuracy": 0.0},
                                                         "examples": "nlvr2-examples.png"}))  # relative: beside it
    page = render_run_report(run)
    embedded = [base64.b64decode(data) for data in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]
    assert vqa.read_bytes() in embedded and nlvr2.read_bytes() in embedded
    assert "vqa-examples.png" in page and "nlvr2-examples.png" in page
