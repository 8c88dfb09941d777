"""The FAISS search index: approximate kinds find the exact neighbours (recall measured at build), incremental
updates by content hash (moved / copied / touched files cost no forward pass, removed entries leave the ANN index),
caption files for image -> text search with ITM re-ranking, and the CLI options."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import run
from vlmo_cli.factory import load_inference_model, save_model
from vlmo_cli.data.tokenizer import load_tokenizer
from vlmo_cli.model.config import get_config
from vlmo_cli.model.vlmo import VLMo
from vlmo_cli.inference.ann import FLAT_MAX, AnnIndex, plan, recall_at_k, resolve_kind
from vlmo_cli.inference.collection_index import ANN_FILE, INDEX_NAME, load_index, update_caption_index, update_index
from vlmo_cli.inference.search import nearest, search_folder


@pytest.fixture(scope="module")
def models(demo_root, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("search_models")
    out = {}
    for name, heads in (("itm", ["pooler", "itc", "itm"]), ("itc", ["pooler", "itc"])):
        torch.manual_seed(1)
        save_model(VLMo(get_config("tiny", vocab_size=160, heads=heads, max_text_len=16)), root / name)
        load_tokenizer(demo_root / "demo_data" / "tokenizer").save(root / name)
        out[name] = root / name
    return out


def write_images(folder: Path, count: int, start: int = 0) -> list[Path]:
    """``count`` distinct images (colour and size vary with the number)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + count):
        path = folder / f"img_{i:03d}.png"
        Image.new("RGB", (20 + i % 7, 20 + i % 5), ((37 * i) % 256, (91 * i) % 256, (173 * i) % 256)).save(path)
        paths.append(path)
    return paths


def clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Unit vectors around n / 10 random centres (real embeddings have neighbours; uniform noise has none)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n // 10, dim)).astype(np.float32)
    x = centres[rng.integers(0, len(centres), n)] + 0.3 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_auto_picks_exact_then_ivfpq_and_plans_fit_the_size():
    assert resolve_kind("auto", FLAT_MAX - 1) == "flat" and resolve_kind("auto", FLAT_MAX) == "ivfpq"
    assert resolve_kind("hnsw", 5) == "hnsw"
    big, tiny = plan("ivfpq", 1_000_000, 768), plan("ivfpq", 10, 128)
    assert (big.nlist, big.m, big.nbits, big.nprobe) == (1024, 96, 8, 32)
    assert tiny.nlist == 1 and tiny.nbits == 3 and 128 % tiny.m == 0  # 10 vectors cannot train 256 centroids
    from vlmo_cli.errors import VlmoError

    with pytest.raises(VlmoError, match="--ann must be one of"):
        resolve_kind("ivf", 10)


@pytest.mark.parametrize("kind", ["ivfpq", "hnsw"])
def test_approximate_index_recall_and_removal(kind):
    vectors = clustered(1000, 32)
    ids = np.arange(100, 1100)
    ann = AnnIndex.build(plan(kind, len(vectors), 32), vectors, ids)
    assert len(ann) == 1000
    assert recall_at_k(ann, vectors, ids, k=10, queries=200) >= 0.9
    if kind == "hnsw":
        assert not ann.supports_removal()
        return
    _, found = ann.search(vectors[:1], 5)
    assert found[0][0] == 100  # a vector's nearest neighbour is itself
    ann.remove([100, 101])
    _, found = ann.search(vectors[:2], 20)
    assert len(ann) == 998 and not {100, 101} & set(found.ravel().tolist())
    ann.add(vectors[:1], [7])
    assert ann.search(vectors[:1], 1)[1][0][0] == 7


def test_moved_copied_and_touched_files_are_not_re_embedded(models, tmp_path):
    import shutil

    folder = tmp_path / "g"
    paths = write_images(folder, 4)
    model = load_inference_model(models["itc"], device="cpu")
    first, stats = update_index(model, folder)
    assert stats.embedded == 4 and (folder / INDEX_NAME / "manifest.json").is_file()
    paths[0].rename(folder / "moved.png")
    shutil.copy(paths[1], folder / "copy.png")
    os.utime(paths[2], ns=(1, 10**18))  # touched: same content, new time
    index, stats = update_index(model, folder)
    assert (stats.added, stats.removed, stats.kept, stats.embedded, stats.reused) == (2, 1, 3, 0, 2)
    row = {e.path: r for r, e in enumerate(index.entries)}
    old = {e.path: r for r, e in enumerate(first.entries)}
    assert torch.equal(index.embeddings[row["moved.png"]], first.embeddings[old["img_000.png"]])
    assert index.entries[row["copy.png"]].sha256 == first.entries[old["img_001.png"]].sha256


def test_ivfpq_index_is_updated_incrementally(models, tmp_path, capsys):
    folder = tmp_path / "many"
    paths = write_images(folder, 48)
    model = load_inference_model(models["itc"], device="cpu")
    index, stats = update_index(model, folder, ann="ivfpq")
    assert stats.ann_built and 0.0 <= stats.recall_at_10 <= 1.0 and index.ann.params.kind == "ivfpq"
    assert (index.file / ANN_FILE).is_file() and len(index.ann) == 48
    query = index.embeddings[:3]
    exact = (query @ index.embeddings.T).topk(3, dim=1).values
    for row, (hits, best) in enumerate(zip(nearest(index, query, 3), exact)):
        assert hits[0][0] == row  # each indexed image finds itself first
        assert [s for _, s in hits] == pytest.approx(best.tolist(), abs=1e-5)  # exact cosines, not PQ estimates

    paths[5].unlink()
    write_images(folder, 1, start=100)
    index, stats = update_index(model, folder)  # the stored choice (ivfpq) is kept
    assert not stats.ann_built and stats.embedded == 1 and stats.removed == 1
    assert index.ann.params.kind == "ivfpq" and len(index.ann) == 48 == len(index)
    stored = load_index(folder)
    assert len(stored.ann) == 48 and stored.ids == index.ids and stored.recall_at_10 == index.recall_at_10
    found = {str(h.path.name) for h in search_folder(model, folder, "red", top_k=48).hits}
    assert "img_005.png" not in found and "img_100.png" in found

    code, out, err = run(capsys, "search", "--model", str(models["itc"]), "--index", str(folder), "red",
                         "--ann", "hnsw", "--top-k", "2")
    assert code == 0, err
    assert "HNSW" in out and "recall@10" in out and "built now" in out


def test_caption_file_image_to_text_with_rerank(models, tmp_path, capsys):
    images = write_images(tmp_path / "imgs", 1)
    captions = tmp_path / "caps.txt"
    captions.write_text("a red circle\n\na blue square\na green triangle\n")
    model = load_inference_model(models["itm"], device="cpu")
    result = search_folder(model, None, image=images[0], captions=captions, top_k=3, rerank_k=3)
    assert {h.text for h in result.hits} == {"a red circle", "a blue square", "a green triangle"}
    assert {h.line for h in result.hits} == {1, 3, 4} and all(h.path is None for h in result.hits)
    assert all(h.itm is not None and h.score == pytest.approx(h.itm + h.similarity) for h in result.hits)
    assert result.index.kind == "text" and result.index.file == tmp_path / f".caps.txt{INDEX_NAME}"

    captions.write_text("a yellow star\na red circle\na blue square\na green triangle\n")
    index, stats = update_caption_index(model, captions)
    # line 1 is new text (embedded), "a red circle" moved to line 2 (re-used), lines 3-4 are unchanged (kept)
    assert (stats.embedded, stats.reused, stats.kept, len(index)) == (1, 1, 2, 4)

    code, out, err = run(capsys, "search", "--model", str(models["itm"]), "--captions", str(captions),
                         "--image", str(images[0]), "--top-k", "2")
    assert code == 0, err
    assert "caption" in out and "4 captions" in out
    code, _, err = run(capsys, "search", "--model", str(models["itm"]), "--captions", str(captions),
                       "--index", str(tmp_path / "imgs"), "red")
    assert code == 2 and "exactly one" in err
    code, _, err = run(capsys, "search", "--model", str(models["itm"]), "--index", str(tmp_path / "imgs"), "red",
                       "--ann", "ivf")
    assert code == 2 and "--ann must be one of auto, flat, ivfpq, hnsw" in err


def test_search_prints_long_paths_whole(models, tmp_path, capsys):
    """The status line and every hit name their file in full however narrow the console (a path the user can copy)."""
    folder = tmp_path.joinpath(*[f"a_rather_long_folder_name_{i}" for i in range(4)])
    paths = write_images(folder, 3)
    code, out, err = run(capsys, "search", "--model", str(models["itc"]), "--index", str(folder), "red",
                         "--top-k", "3")
    assert code == 0, err
    lines = out.splitlines()
    assert any(line.startswith(f"index {folder}") for line in lines), out  # the status line is never wrapped
    cells = "".join(line.split("│")[-2].strip() for line in lines if line.count("│") >= 4)  # the folded image column
    assert all(str(p) in cells for p in paths), out
