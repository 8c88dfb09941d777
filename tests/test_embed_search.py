"""``vlmo embed`` and ``vlmo search`` with a tiny random model: embeddings equal the model's own, ids survive the
round trip, the search index re-embeds only what changed and drops what was deleted, and errors are clear."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from helpers import run
from vlmo_cli.factory import load_inference_model, save_model
from vlmo_cli.data.tokenizer import load_tokenizer
from vlmo_cli.inference.embed import embed, load_embeddings
from vlmo_cli.errors import VlmoError
from vlmo_cli.model.config import get_config
from vlmo_cli.model.vlmo import VLMo
from vlmo_cli.inference.collection_index import INDEX_NAME, load_index, update_index
from vlmo_cli.inference.search import search_folder

COLORS = [(220, 40, 40), (40, 200, 60), (50, 90, 230), (230, 210, 40), (200, 200, 200)]


@pytest.fixture(scope="module")
def model_dirs(demo_root, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("embed_models")
    out = {}
    for name, heads in (("itm", ["pooler", "itc", "itm"]), ("itc", ["pooler", "itc"])):
        torch.manual_seed(1)
        save_model(VLMo(get_config("tiny", vocab_size=160, heads=heads, max_text_len=16)), root / name)
        load_tokenizer(demo_root / "demo_data" / "tokenizer").save(root / name)
        out[name] = root / name
    return out


def write_images(folder: Path, count: int = 5) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"img_{i}.png"
        Image.new("RGB", (24 + i, 24), COLORS[i % len(COLORS)]).save(path)
        paths.append(path)
    return paths


def test_embed_images_cli_round_trip(model_dirs, tmp_path, capsys):
    images = write_images(tmp_path / "imgs", 3)
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "e.safetensors"
    code, stdout, err = run(capsys, "embed", "--model", str(model_dirs["itc"]), "--images", str(images[0]),
                            str(tmp_path / "imgs"), "--out", str(out), "--batch-size", "2")
    assert code == 0, err
    saved = load_embeddings(out)
    assert saved.kind == "image" and saved.embeddings.shape == (4, 128)  # img_0 given twice: once as file
    assert saved.ids[0] == str(images[0]) and set(saved.ids[1:]) == {str(p) for p in images}
    assert len(saved.skipped) == 1 and saved.skipped[0]["id"].endswith("broken.jpg")
    assert torch.allclose(saved.embeddings.norm(dim=1), torch.ones(4), atol=1e-5)
    assert torch.allclose(saved.embeddings[0], saved.embeddings[1], atol=1e-6)
    assert "skipped 1" in stdout


def test_embed_texts_match_the_model(model_dirs, tmp_path):
    lines = tmp_path / "t.txt"
    lines.write_text("a red circle on the left\n\nthree blue squares at the top\n")
    result, path = embed(model_dirs["itc"], tmp_path / "t.safetensors", texts=lines)
    saved = load_embeddings(path)
    assert saved.ids == ["1", "3"] and saved.texts == ["a red circle on the left", "three blue squares at the top"]
    loaded = load_inference_model(model_dirs["itc"], device="cpu")
    enc = loaded.tokenizer.encode_batch(saved.texts, 16)
    with torch.no_grad():
        direct = loaded.model.encode_text(torch.from_numpy(enc["input_ids"]), torch.from_numpy(enc["attention_mask"]))
    assert torch.allclose(saved.embeddings, direct, atol=1e-5)


def test_encode_texts_shortest_first_keeps_the_input_order(model_dirs):
    """Texts are encoded sorted by length with each batch cut to its longest text; the result is in input order and
    equals encoding every text padded to the full length."""
    from vlmo_cli.inference.embed import encode_texts

    loaded = load_inference_model(model_dirs["itc"], device="cpu")
    words = "red green blue circle square triangle left right top bottom small big".split()
    texts = [" ".join(words[(3 * i) % 12:(3 * i) % 12 + 1 + (5 * i) % 11]) for i in range(11)]
    assert len({len(t.split()) for t in texts}) > 5
    got = encode_texts(loaded, texts, batch_size=3)
    enc = loaded.tokenizer.encode_batch(texts, 16)
    with torch.no_grad():
        direct = loaded.model.encode_text(torch.from_numpy(enc["input_ids"]), torch.from_numpy(enc["attention_mask"]))
    torch.testing.assert_close(got, direct, atol=1e-5, rtol=1e-5)


def test_embed_needs_exactly_one_input_kind(model_dirs, tmp_path, capsys):
    code, _, err = run(capsys, "embed", "--model", str(model_dirs["itc"]), "--out", str(tmp_path / "x.safetensors"))
    assert code == 2 and "--texts" in err
    code, _, err = run(capsys, "embed", "--model", str(model_dirs["itc"]), "--texts", str(tmp_path / "none.txt"),
                       "--out", str(tmp_path / "x.safetensors"))
    assert code == 2 and "none.txt" in err


def test_index_updates_only_what_changed(model_dirs, tmp_path):
    from PIL import Image

    folder = tmp_path / "gallery"
    paths = write_images(folder, 5)
    model = load_inference_model(model_dirs["itc"], device="cpu")
    index, stats = update_index(model, folder)
    assert stats.rebuilt and stats.added == 5 and len(index) == 5 and (folder / INDEX_NAME).exists()
    first = index.embeddings.clone()

    index, stats = update_index(model, folder)  # nothing changed: nothing embedded
    assert (stats.embedded, stats.removed, stats.kept, stats.rebuilt) == (0, 0, 5, False)
    assert torch.equal(index.embeddings, first)

    paths[1].unlink()
    Image.new("RGB", (30, 30), (10, 10, 10)).save(paths[2])  # changed content and size
    os.utime(paths[2], ns=(1, 10**18))
    write_images(folder / "sub", 1)
    index, stats = update_index(model, folder)
    assert (stats.added, stats.changed, stats.removed, stats.kept) == (1, 1, 1, 3)
    names = [e.path for e in index.entries]
    assert names == ["img_0.png", "img_2.png", "img_3.png", "img_4.png", "sub/img_0.png"]
    assert torch.equal(index.embeddings[0], first[0]) and not torch.allclose(index.embeddings[1], first[2])
    stored = load_index(folder)
    assert [e.path for e in stored.entries] == names and torch.equal(stored.embeddings, index.embeddings)


def test_index_is_rebuilt_for_another_model(model_dirs, tmp_path):
    folder = tmp_path / "g"
    write_images(folder, 2)
    update_index(load_inference_model(model_dirs["itc"], device="cpu"), folder)
    _, stats = update_index(load_inference_model(model_dirs["itm"], device="cpu"), folder)
    assert stats.rebuilt and stats.added == 2


def test_search_cli_text_image_and_rerank(model_dirs, tmp_path, capsys):
    folder = tmp_path / "g"
    paths = write_images(folder, 4)
    code, stdout, err = run(capsys, "search", "--model", str(model_dirs["itm"]), "--index", str(folder),
                            "a red square", "--top-k", "3", "--rerank-k", "2")
    assert code == 0, err
    assert "top 3" in stdout and "ITM" in stdout and "rebuilt" in stdout
    code, stdout, err = run(capsys, "search", "--model", str(model_dirs["itm"]), "--index", str(folder),
                            "--image", str(paths[2]), "--top-k", "1")
    assert code == 0, err
    assert "img_2.png" in stdout and "0 embedded" in stdout  # the query image is its own nearest neighbour
    model = load_inference_model(model_dirs["itm"], device="cpu")
    plain = search_folder(model, folder, "a red square", top_k=4)
    reranked = search_folder(model, folder, "a red square", top_k=4, rerank_k=4)
    assert sorted(h.path for h in plain.hits) == sorted(h.path for h in reranked.hits)
    assert all(h.itm is not None for h in reranked.hits)
    assert [h.score for h in reranked.hits] == sorted((h.score for h in reranked.hits), reverse=True)
    for hit in reranked.hits:
        assert hit.score == pytest.approx(hit.itm + hit.similarity)


def test_search_rerank_without_itm_head_fails_before_indexing(model_dirs, tmp_path, capsys):
    folder = tmp_path / "g"
    write_images(folder, 2)
    code, _, err = run(capsys, "search", "--model", str(model_dirs["itc"]), "--index", str(folder), "red",
                       "--rerank-k", "3")
    assert code == 2 and "ITM head" in err
    assert not (folder / INDEX_NAME).exists()


def test_search_with_cache_dir_and_empty_folder(model_dirs, tmp_path):
    model = load_inference_model(model_dirs["itc"], device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VlmoError, match="no image files"):
        search_folder(model, tmp_path / "empty", "red")
    folder = tmp_path / "g"
    write_images(folder, 2)
    result = search_folder(model, folder, "red", cache_dir=tmp_path / "cache", top_k=5)
    assert len(result.hits) == 2 and result.index.file.parent == tmp_path / "cache"
    assert not (folder / INDEX_NAME).exists()
    assert [h.rank for h in result.hits] == [1, 2]


def test_embedding_with_a_model_without_itc_heads_is_one_line(demo_root, tmp_path, capsys):
    from test_eval_cli import make_model

    model = make_model(tmp_path / "mim-only", demo_root / "demo_data", ["pooler", "mlm"])
    (tmp_path / "captions.txt").write_text("a red circle\n")
    code, _, err = run(capsys, "embed", "--model", str(model), "--texts", str(tmp_path / "captions.txt"),
                       "--out", str(tmp_path / "e.safetensors"))
    assert code == 2 and "has none" in err and "Traceback" not in err
