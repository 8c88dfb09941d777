"""Retrieval recall on hand-built score matrices, chunked == full matrix, re-ranking, example grid and reports."""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image

from vlmo_cli.errors import DataError
from vlmo_cli.evaluate.examples_grid import grid_size, save_retrieval_grid
from vlmo_cli.evaluate.report import flatten_metrics, metrics_table, write_json, write_report
from vlmo_cli.evaluate.retrieval_metrics import (
    TopK,
    build_text_to_image,
    evaluate_retrieval,
    recall_at_k,
    rerank_retrieval,
    rerank_topk,
    retrieval_topk,
    topk_similarity,
)


def embeddings_for_scores(scores: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Image/text embeddings whose dot products are exactly ``scores`` [N_img, N_txt] (images are one-hot)."""
    matrix = torch.tensor(scores, dtype=torch.float32)
    return torch.eye(matrix.shape[0]), matrix.T.contiguous()


def brute_force_ranking(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The documented tie rule written naively: sort by (-score, index)."""
    rows = []
    for row in scores.tolist():
        rows.append(sorted(range(len(row)), key=lambda j: (-row[j], j))[:k])
    return torch.tensor(rows)


# Texts 0-6 belong to image 0 (seven captions), 7-8 to image 1, 9 to image 2.
TEXT_TO_IMAGE = [0, 0, 0, 0, 0, 0, 0, 1, 1, 2]
SCORES = [
    # t0 t1 t2 t3 t4 t5 t6 t7 t8 t9
    [1, 1, 7, 1, 1, 1, 1, 9, 8, 0],  # image 0: best own caption t2 is 3rd (after t7, t8)
    [2, 2, 2, 2, 2, 2, 2, 9, 3, 0],  # image 1: own t7 is 1st
    [5, 5, 5, 5, 5, 5, 5, 1, 1, 3],  # image 2: own t9 is 8th (seven captions of image 0 score higher)
]


def test_multi_caption_recall_with_ties_and_seven_captions():
    images, texts = embeddings_for_scores(SCORES)
    result = evaluate_retrieval(images, texts, TEXT_TO_IMAGE)
    m = result.metrics
    # TR (image -> text): image 0 hits at rank 3, image 1 at rank 1, image 2 at rank 8.
    assert m["tr_r1"] == pytest.approx(100 / 3)
    assert m["tr_r5"] == pytest.approx(200 / 3)
    assert m["tr_r10"] == pytest.approx(100.0)
    # IR (text -> image), columns of SCORES:
    #   t0,t1,t3..t6: [1, 2, 5] -> own image 0 is 3rd; t2: [7, 2, 5] -> 1st;
    #   t7: [9, 9, 1] -> tie between images 0 and 1, the lower index (0) ranks first, so own image 1 is 2nd;
    #   t8: [8, 3, 1] -> 2nd; t9: [0, 0, 3] -> 1st.  R@1 = 2/10; with 3 images every R@5/R@10 is 100.
    assert m["ir_r1"] == pytest.approx(20.0)
    assert m["ir_r5"] == m["ir_r10"] == pytest.approx(100.0)
    six = [m[f"{d}_r{k}"] for d in ("tr", "ir") for k in (1, 5, 10)]
    assert m["r_mean"] == pytest.approx(sum(six) / 6)
    assert m["rsum"] == pytest.approx(sum(six))
    assert m["tr_mean"] == pytest.approx(sum(six[:3]) / 3)
    assert result.t2i.indices[7].tolist() == [0, 1, 2]
    assert result.i2t.indices[0, :3].tolist() == [7, 8, 2]
    assert result.num_images == 3 and result.num_texts == 10


@pytest.mark.parametrize("foreign_index, expected_r1", [(2, 0.0), (8, 100.0)])
def test_tie_with_foreign_caption_is_broken_by_index(foreign_index, expected_r1):
    # Image 0's own caption is text 5; a caption of image 1 scores the same. Lower index ranks first.
    text_to_image = [1] * 10
    text_to_image[5] = 0
    row0 = [0.0] * 10
    row0[5] = row0[foreign_index] = 4.0
    row1 = [1.0] * 10
    images, texts = embeddings_for_scores([row0, row1])
    result = evaluate_retrieval(images, texts, text_to_image, ks=(1,), keep_top=2)
    # tr_r1 averages image 0 (depends on the tie) and image 1 (always a hit: all its scores tie, text 0 is its).
    assert result.metrics["tr_r1"] == (expected_r1 + 100.0) / 2
    assert result.i2t.indices[0, :2].tolist() == sorted([5, foreign_index])


def test_recall_matches_official_topk_formula_without_ties():
    torch.manual_seed(0)
    counts = torch.randint(1, 8, (40,)).tolist()
    mapping = build_text_to_image(counts)
    images = torch.nn.functional.normalize(torch.randn(40, 24), dim=-1)
    texts = torch.nn.functional.normalize(torch.randn(len(mapping), 24) + images[mapping], dim=-1)
    result = evaluate_retrieval(images, texts, mapping, chunk_size=7, candidate_chunk_size=33)
    scores = images @ texts.T
    iids = torch.arange(40)
    for k in (1, 5, 10):  # VLMo compute_irtr_recall
        tr = (iids[:, None] == mapping[scores.topk(k, dim=1).indices]).any(dim=1).float().mean()
        ir = (mapping[None, :] == iids[scores.topk(k, dim=0).indices]).any(dim=0).float().mean()
        assert result.metrics[f"tr_r{k}"] == pytest.approx(100 * tr.item())
        assert result.metrics[f"ir_r{k}"] == pytest.approx(100 * ir.item())
    assert 0 < result.metrics["tr_r1"] < 100


@pytest.mark.parametrize("chunk_size, candidate_chunk_size", [(1, 1000), (7, 16), (37, 1), (64, 5000)])
def test_chunked_equals_full_matrix_random(chunk_size, candidate_chunk_size):
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(37, 16, generator=generator)
    texts = torch.randn(150, 16, generator=generator)
    mapping = torch.randint(0, 37, (150,), generator=generator)
    mapping[:37] = torch.arange(37)  # every image has a caption
    full = evaluate_retrieval(images, texts, mapping, keep_top=12, chunk_size=10**6, candidate_chunk_size=10**6)
    chunked = evaluate_retrieval(
        images, texts, mapping, keep_top=12, chunk_size=chunk_size, candidate_chunk_size=candidate_chunk_size
    )
    assert torch.equal(chunked.i2t.indices, full.i2t.indices)
    assert torch.equal(chunked.t2i.indices, full.t2i.indices)
    torch.testing.assert_close(chunked.i2t.scores, full.i2t.scores)
    assert chunked.metrics == full.metrics
    scores = images @ texts.T
    assert torch.equal(full.i2t.indices, brute_force_ranking(scores, 12))
    assert torch.equal(full.t2i.indices, brute_force_ranking(scores.T, 12))


@pytest.mark.parametrize("chunk_size, candidate_chunk_size", [(1, 1), (3, 7), (13, 4), (100, 100)])
def test_chunked_equals_full_matrix_with_many_ties(chunk_size, candidate_chunk_size):
    # Small integer embeddings: exact scores with many ties, also across the top-k boundary.
    generator = torch.Generator().manual_seed(2)
    images = torch.randint(0, 3, (13, 4), generator=generator).float()
    texts = torch.randint(0, 3, (40, 4), generator=generator).float()
    i2t, t2i = retrieval_topk(images, texts, 10, chunk_size=chunk_size, candidate_chunk_size=candidate_chunk_size)
    scores = images @ texts.T
    assert torch.equal(i2t.indices, brute_force_ranking(scores, 10))
    assert torch.equal(t2i.indices, brute_force_ranking(scores.T, 10))
    assert torch.equal(i2t.scores, scores.gather(1, i2t.indices))
    search = topk_similarity(texts, images, 20, chunk_size=chunk_size, candidate_chunk_size=candidate_chunk_size)
    assert search.indices.shape == (40, 13)  # k capped at the number of candidates
    assert torch.equal(search.indices, brute_force_ranking(scores.T, 13))


def test_half_precision_inputs_are_ranked_in_fp32():
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float16)
    texts = torch.tensor([[1.0, 0.001], [0.999, 0.0]], dtype=torch.float16)
    result = topk_similarity(images, texts, 2)
    assert result.scores.dtype == torch.float32
    assert result.indices[0].tolist() == [0, 1] and result.indices[1].tolist() == [0, 1]
    # The matmul precision is forced to "highest" while ranking and restored afterwards.
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        topk_similarity(images, texts, 1)
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(previous)


def test_input_errors_name_the_problem():
    images, texts = embeddings_for_scores(SCORES)
    with pytest.raises(DataError, match="outside"):
        evaluate_retrieval(images, texts, TEXT_TO_IMAGE[:-1] + [3])
    with pytest.raises(DataError, match="no caption"):
        evaluate_retrieval(images, texts, [0] * 9 + [1])
    with pytest.raises(DataError, match="10 texts"):
        evaluate_retrieval(images, texts, TEXT_TO_IMAGE[:5])
    with pytest.raises(DataError, match="NaN"):
        evaluate_retrieval(images * float("nan"), texts, TEXT_TO_IMAGE)
    with pytest.raises(DataError, match="widths differ"):
        evaluate_retrieval(images, texts[:, :2], TEXT_TO_IMAGE)
    with pytest.raises(ValueError):
        evaluate_retrieval(images, texts, TEXT_TO_IMAGE, chunk_size=0)


def test_build_text_to_image():
    assert build_text_to_image([2, 3, 1]).tolist() == [0, 0, 1, 1, 1, 2]


def test_recall_counts_short_lists_and_custom_ks():
    # Two images, three texts; lists shorter than K count what they hold.
    mapping = torch.tensor([0, 1, 1])
    metrics = recall_at_k(torch.tensor([[1, 0], [0, 2]]), torch.tensor([[1], [1], [0]]), mapping, ks=(1, 2))
    assert metrics["tr_r1"] == 0.0 and metrics["tr_r2"] == 100.0
    assert metrics["ir_r1"] == pytest.approx(100 / 3) and metrics["ir_r2"] == pytest.approx(100 / 3)


# --- re-ranking --------------------------------------------------------------------------------------------------


def test_rerank_topk_reorders_head_and_keeps_tail():
    topk = TopK(indices=torch.tensor([[4, 2, 7, 1, 3]]), scores=torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5]]))
    new = torch.tensor([[0.1, 0.5, 0.3]])  # rerank the first 3: 2 (0.5), 7 (0.3), 4 (0.1)
    reranked = rerank_topk(topk, 3, candidate_scores=new)
    assert reranked.indices.tolist() == [[2, 7, 4, 1, 3]]
    assert reranked.scores[0, :3].tolist() == pytest.approx([0.5, 0.3, 0.1])
    assert reranked.scores[0, 3:].tolist() == pytest.approx([0.6, 0.5])
    added = rerank_topk(topk, 3, candidate_scores=new, combine="add")  # 1.0, 1.3, 1.0 -> 2, then 4 and 7 tie
    assert added.indices.tolist() == [[2, 4, 7, 1, 3]]  # the tie keeps the first-stage order


def test_rerank_with_a_fake_itm_scorer_changes_the_order_and_recall():
    images, texts = embeddings_for_scores(SCORES)
    mapping = torch.tensor(TEXT_TO_IMAGE)
    result = evaluate_retrieval(images, texts, mapping, keep_top=10)
    calls: list[tuple[list[int], list[int]]] = []

    def itm(image_idx: torch.Tensor, text_idx: torch.Tensor) -> torch.Tensor:
        """A perfect 'ITM head' that knows the ground truth; records its calls."""
        assert image_idx.shape == text_idx.shape and image_idx.numel() <= 4
        calls.append((image_idx.tolist(), text_idx.tolist()))
        return (mapping[text_idx] == image_idx).float()

    reranked = rerank_retrieval(result, itm, rerank_k=10, batch_size=4)
    assert reranked.metrics["tr_r1"] == 100.0 and reranked.metrics["ir_r1"] == 100.0
    assert result.metrics["tr_r1"] < 100.0
    # Image 0's own captions now lead (first-stage order among them kept: t2 scored 7, then t0, t1, t3...).
    assert reranked.i2t.indices[0, :7].tolist() == [2, 0, 1, 3, 4, 5, 6]
    # Text 7's own image moved from 2nd to 1st.
    assert reranked.t2i.indices[7].tolist() == [1, 0, 2]
    # Both directions called the scorer as (image_idx, text_idx): 3 images x 10 texts + 10 texts x 3 images.
    pairs = {(i, t) for image_idx, text_idx in calls for i, t in zip(image_idx, text_idx)}
    assert pairs == {(i, t) for i in range(3) for t in range(10)}
    assert sum(len(image_idx) for image_idx, _ in calls) == 60


def test_rerank_only_within_k_leaves_recall_beyond_k_unchanged():
    images, texts = embeddings_for_scores(SCORES)
    result = evaluate_retrieval(images, texts, TEXT_TO_IMAGE)
    reversed_scores = -torch.arange(5, dtype=torch.float32).expand(3, 5)  # keeps the order
    same = rerank_topk(result.i2t, 5, candidate_scores=reversed_scores)
    assert torch.equal(same.indices, result.i2t.indices)
    flipped = rerank_topk(result.i2t, 2, candidate_scores=torch.arange(2, dtype=torch.float32).expand(3, 2))
    assert torch.equal(flipped.indices[:, :2], result.i2t.indices[:, :2].flip(1))
    assert torch.equal(flipped.indices[:, 2:], result.i2t.indices[:, 2:])
    with pytest.raises(ValueError, match="exactly one"):
        rerank_topk(result.i2t, 2)


# --- example grid and report -------------------------------------------------------------------------------------


def test_save_retrieval_grid_writes_png_of_expected_size(tmp_path):
    red = Image.new("RGB", (40, 30), (255, 0, 0))
    import io

    encoded = io.BytesIO()
    Image.new("RGB", (20, 50), (0, 0, 255)).save(encoded, format="JPEG")
    path = save_retrieval_grid(
        queries=["a red square on a white background", "a very long caption " * 12],
        results=[[red, encoded.getvalue(), red], [encoded.getvalue(), red]],
        scores=[[0.91, 0.5, 0.1], [0.7, 0.2]],
        path=tmp_path / "grid" / "examples.png",
        hits=[[True, False, False], [False, True]],
        tile_size=64,
    )
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == grid_size(2, 3, tile_size=64)
        image.load()
        # The hit frame of the first result (row 0, column 1) is green.
        assert image.getpixel((4 + 64 + 4 + 1, 4 + 10)) == (40, 160, 60)
    width, height = grid_size(2, 3, tile_size=64)
    assert width == 4 * (64 + 4) + 4 and height > 2 * 64


def test_grid_shows_a_missed_ground_truth_in_its_own_column_with_a_legend(tmp_path):
    red, blue = Image.new("RGB", (40, 40), (255, 0, 0)), Image.new("RGB", (40, 40), (0, 0, 255))
    path = save_retrieval_grid(
        queries=["found", "missed"], results=[[red, blue], [blue, blue]], scores=[[0.9, 0.1], [0.5, 0.4]],
        path=tmp_path / "g.png", hits=[[True, False], [False, False]], tile_size=64, truths=[None, red],
    )
    line = grid_size(1, 2, tile_size=64, truth_column=True)[1] - grid_size(1, 2, tile_size=64)[1] - 4
    with Image.open(path) as image:
        assert image.size == grid_size(2, 2, tile_size=64, truth_column=True)
        assert image.width == grid_size(2, 2, tile_size=64)[0] + 64 + 4
        image.load()
        top = 4 + line + 4  # below the legend line
        row_height = (grid_size(2, 2, tile_size=64)[1] - 4) // 2
        truth_x = 4 + 3 * (64 + 4)
        # row 1 missed: its ground truth (red) sits in the last column inside a green frame
        assert image.getpixel((truth_x + 32, top + row_height + 32)) == (255, 0, 0)
        assert image.getpixel((truth_x + 1, top + row_height + 10)) == (40, 160, 60)
        # row 0 found it: the last column holds text on a light panel, no image
        assert image.getpixel((truth_x + 60, top + 60)) == (240, 240, 240)
        # the legend line is drawn (dark pixels above the first row)
        assert any(image.getpixel((x, 4 + line // 2)) != (255, 255, 255) for x in range(4, 300))
    with pytest.raises(ValueError, match="truths has 1 entries for 2 queries"):
        save_retrieval_grid(["a", "b"], [[red], [red]], [[1.0], [1.0]], tmp_path / "x.png", truths=[None])


def test_grid_with_image_queries_and_caption_results(tmp_path):
    path = save_retrieval_grid(
        queries=[Image.new("RGB", (8, 8))], results=[["a cat", "a dog"]], scores=[[1.0, 0.5]], path=tmp_path / "g.png"
    )
    with Image.open(path) as image:
        assert image.size == grid_size(1, 2)
    with pytest.raises(ValueError):
        save_retrieval_grid(queries=["q"], results=[], scores=[], path=tmp_path / "x.png")


def test_write_report_is_atomic_json_and_table_renders(tmp_path):
    report = {"metrics": {"tr_r1": 12.3456, "ir_r1": torch.tensor(5.0)}, "path": tmp_path, "ks": (1, 5, 10)}
    target = write_report(report, tmp_path / "eval" / "retrieval.json")
    loaded = json.loads(target.read_text())
    assert loaded["metrics"] == {"tr_r1": 12.3456, "ir_r1": 5.0} and loaded["ks"] == [1, 5, 10]
    assert [p.name for p in target.parent.iterdir()] == ["retrieval.json"]  # no temporary left behind
    write_json({"x": 1}, target)
    assert json.loads(target.read_text()) == {"x": 1}
    with pytest.raises(TypeError):
        write_json({"bad": object()}, target)
    assert json.loads(target.read_text()) == {"x": 1}  # a failed write keeps the previous file
    assert [p.name for p in target.parent.iterdir()] == ["retrieval.json"]
    assert flatten_metrics({"a": {"b": 1, "c": {"d": 2.0}}}) == {"a.b": 1, "a.c.d": 2.0}
    from rich.console import Console

    console = Console(record=True, width=80)
    console.print(metrics_table({"tr_r1": 12.3456, "nan": math.nan, "per": {"yes/no": 80.0}}, title="t"))
    text = console.export_text()
    assert "12.35" in text and "per.yes/no" in text and "80.00" in text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_ranking_equals_cpu():
    generator = torch.Generator().manual_seed(3)
    images = torch.randint(0, 3, (50, 8), generator=generator).float()
    texts = torch.randint(0, 3, (120, 8), generator=generator).float()
    mapping = torch.arange(120) % 50
    cpu = evaluate_retrieval(images, texts, mapping, chunk_size=16, candidate_chunk_size=32)
    gpu = evaluate_retrieval(images.cuda().half(), texts.cuda().half(), mapping, chunk_size=16, candidate_chunk_size=32)
    assert torch.equal(cpu.i2t.indices, gpu.i2t.indices) and torch.equal(cpu.t2i.indices, gpu.t2i.indices)
    assert cpu.metrics == gpu.metrics
