"""``vlmo serve`` driven over real HTTP on 127.0.0.1 (an ephemeral port): the endpoints agree with the library,
bad input is a 4xx with a JSON body and the server keeps serving, concurrent requests share forward passes, and
the ``vlmo serve`` command starts and stops as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch

from vlmo_cli.factory import save_model
from vlmo_cli.data.tokenizer import load_tokenizer
from vlmo_cli.inference.embed import encode_texts
from vlmo_cli.model.config import get_config
from vlmo_cli.model.vlmo import VLMo
from vlmo_cli.serve import SearchService, ServeOptions, ServerThread, create_app

COLORS = [(220, 40, 40), (40, 200, 60), (50, 90, 230), (230, 210, 40), (200, 200, 200), (20, 20, 20)]
ANSWERS = ["yes", "no", "red", "blue"]
UPLOAD_LIMIT = 64 * 1024


def make_model(root: Path, tokenizer_dir: Path, heads: list[str]) -> Path:
    torch.manual_seed(1)
    save_model(VLMo(get_config("tiny", vocab_size=160, heads=heads, max_text_len=16, vqa_num_answers=len(ANSWERS))),
               root)
    load_tokenizer(tokenizer_dir).save(root)
    return root


def png_bytes(color, size=(24, 24)) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def setup(demo_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    model_dir = make_model(root / "model", demo_root / "demo_data" / "tokenizer", ["pooler", "itc", "itm", "vqa"])
    (model_dir / "answers.json").write_text(json.dumps(ANSWERS))
    gallery = root / "gallery"
    gallery.mkdir()
    for i, color in enumerate(COLORS):
        (gallery / f"img_{i}.png").write_bytes(png_bytes(color, (24 + i, 24)))
    (root / "outside.png").write_bytes(png_bytes((1, 2, 3)))
    return {"model": model_dir, "gallery": gallery, "root": root}


@pytest.fixture(scope="module")
def server(setup):
    service, _ = SearchService.open(setup["model"], index=setup["gallery"], device="cpu")
    options = ServeOptions(max_upload_bytes=UPLOAD_LIMIT, max_batch=32, max_wait_ms=20)
    with ServerThread(create_app(service, options), "127.0.0.1", 0) as running:
        with httpx.Client(base_url=running.url, timeout=60) as client:
            yield client, service


def image_file(name: str, data: bytes, kind: str = "image/png"):
    return {"image": (name, data, kind)}


def test_search_embed_score_classify_agree_with_the_library(server, setup):
    client, service = server
    reply = client.post("/search", json={"text": "a red square", "top_k": 3})
    assert reply.status_code == 200, reply.text
    results = reply.json()["results"]
    assert [r["rank"] for r in results] == [1, 2, 3]
    assert all(Path(r["path"]).parent == setup["gallery"] for r in results)
    model = service.model
    query = encode_texts(model, ["a red square"])[0]
    expected = sorted(((float(e @ query), i) for i, e in enumerate(service.index.embeddings)), reverse=True)[:3]
    assert [r["similarity"] for r in results] == pytest.approx([s for s, _ in expected], abs=1e-5)

    blue = (setup["gallery"] / "img_2.png").read_bytes()
    reply = client.post("/search", files=image_file("q.png", blue), data={"top_k": "2", "rerank_k": "0"})
    assert reply.status_code == 200, reply.text
    first = reply.json()["results"][0]
    assert first["path"].endswith("img_2.png") and first["similarity"] == pytest.approx(1.0, abs=1e-5)
    thumb = client.get(first["thumbnail"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg" and thumb.content[:2] == b"\xff\xd8"

    reranked = client.post("/search", json={"text": "a red square", "top_k": 3, "rerank_k": 3}).json()["results"]
    assert all(r["itm"] is not None and r["score"] == pytest.approx(r["itm"] + r["similarity"]) for r in reranked)

    vectors = client.post("/embed", json={"texts": ["red", "a blue square"]}).json()
    assert vectors["kind"] == "text" and vectors["dim"] == 128
    torch.testing.assert_close(torch.tensor(vectors["embeddings"]), encode_texts(model, ["red", "a blue square"]),
                               atol=1e-5, rtol=1e-5)
    images = client.post("/embed", files=[("images", ("a.png", blue, "image/png"))] * 2).json()
    torch.testing.assert_close(torch.tensor(images["embeddings"][0]), service.index.embeddings[2], atol=1e-5, rtol=1e-5)

    score = client.post("/score", files=image_file("q.png", blue), data={"text": "a blue square"}).json()
    text_vec = encode_texts(model, ["a blue square"])[0]
    assert score["similarity"] == pytest.approx(float(text_vec @ service.index.embeddings[2]), abs=1e-5)
    assert 0.0 < score["itm_probability"] < 1.0

    answer = client.post("/classify", files=image_file("q.png", blue), data={"text": "what colour is it?"}).json()
    assert answer["head"] == "vqa" and {p["label"] for p in answer["predictions"]} == set(ANSWERS)
    assert sum(p["probability"] for p in answer["predictions"]) == pytest.approx(1.0, abs=1e-5)

    health = client.get("/health").json()
    assert health["status"] == "ok" and health["index"]["size"] == len(COLORS) and "vqa" in health["heads"]
    assert client.get("/openapi.json").json()["paths"]["/search"]["post"]["requestBody"]["content"].keys() == {
        "application/json", "multipart/form-data"}
    page = client.get("/")
    assert page.status_code == 200 and 'id="query"' in page.text and "/search" in page.text


@pytest.mark.parametrize("request_kwargs, status, words", [
    ({"files": image_file("notes.txt", b"just some text", "text/plain")}, 400, "not a readable image"),
    ({"files": image_file("empty.png", b"")}, 400, "empty"),
    ({"json": {"text": "   "}}, 400, "text is empty"),
    ({"json": {"text": "red", "colour": "blue"}}, 422, "unknown field(s) 'colour'"),
    ({"data": {"text": "red", "limit": "3"}}, 422, "unknown field(s) 'limit'"),
    ({"json": {"text": "red", "top_k": "many"}}, 422, "top_k must be an integer"),
    ({"json": {"text": "red", "top_k": 0}}, 422, "between 1 and 100"),
    ({"json": ["red"]}, 422, "must be an object"),
    ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
    ({"content": b"red", "headers": {"content-type": "text/plain"}}, 415, "application/json"),
    ({"json": {"text": "x" * (UPLOAD_LIMIT + 10)}}, 413, "over the limit"),
    ({"content": iter([b"{" * 40000, b"}" * 40000]), "headers": {"content-type": "application/json"}}, 413,
     "over the limit"),  # streamed in chunks, no Content-Length
])
def test_bad_search_input_is_a_4xx_json_error(server, request_kwargs, status, words):
    client, _ = server
    reply = client.post("/search", **request_kwargs)
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert body["status"] == status and words in body["error"]
    assert client.get("/health").status_code == 200  # still serving


def test_other_refusals(server, setup):
    client, _ = server
    blue = png_bytes((50, 90, 230))
    cases = [
        (client.post("/embed", json={"texts": []}), 422, "non-empty list"),
        (client.post("/embed", json={"texts": ["ok", ""]}), 400, "texts[1] is empty"),
        (client.post("/score", json={"text": "red"}), 415, "multipart"),
        (client.post("/score", files=image_file("q.png", blue)), 422, "'text'"),
        (client.post("/classify", files=image_file("q.png", b"GIF89a broken"), data={"text": "q"}), 400, "readable"),
        (client.get("/thumbnail/99"), 404, "no indexed image 99"),
        (client.get("/thumbnail/-1"), 404, "no indexed image"),
        (client.get("/thumbnail/..%2Foutside.png"), 404, "Not Found"),  # rows only: no path reaches a file
        (client.get("/thumbnail/first"), 422, "row"),
        (client.get("/nothing-here"), 404, "Not Found"),
    ]
    for reply, status, words in cases:
        assert reply.status_code == status, reply.text
        assert words in reply.json()["error"], reply.json()


def test_concurrent_requests_share_forward_passes(server):
    client, _ = server
    before = client.get("/health").json()["batching"]["text"]
    queries = [f"a {c} {s}" for c in ("red", "green", "blue", "yellow") for s in
               ("circle", "square", "triangle", "star", "dot", "line", "ring", "cross")]
    assert len(queries) == 32

    def one(text: str) -> tuple[int, float]:
        t0 = time.perf_counter()
        reply = client.post("/search", json={"text": text, "top_k": 3})
        return reply.status_code, time.perf_counter() - t0

    t0 = time.perf_counter()
    with ThreadPoolExecutor(32) as pool:
        outcomes = list(pool.map(one, queries, timeout=120))
    wall = time.perf_counter() - t0
    assert [code for code, _ in outcomes] == [200] * 32
    after = client.get("/health").json()["batching"]["text"]
    calls, items = after["calls"] - before["calls"], after["items"] - before["items"]
    assert items == 32 and calls < 32, after  # some requests shared a forward pass
    latencies = sorted(t for _, t in outcomes)
    print(f"\n32 concurrent /search: {32 / wall:.1f} requests/s, p50 {latencies[15] * 1000:.0f} ms, "
          f"p99 {latencies[-1] * 1000:.0f} ms, {calls} text forward passes")


@pytest.mark.slow
def test_vlmo_serve_command_starts_answers_and_stops(setup):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(Path(__file__).parent.parent),
                                                                     os.environ.get("PYTHONPATH", "")) if p)}
    command = [sys.executable, "-m", "vlmo_cli", "serve", "--model", str(setup["model"]), "--index",
               str(setup["gallery"]), "--port", "0", "--device", "cpu"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        url, seen = None, []
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            if "serving on " in line:
                url = line.split("serving on ")[1].split()[0]
        assert url is not None and url.startswith("http://127.0.0.1:"), "".join(seen)
        health = httpx.get(f"{url}/health", timeout=30).json()
        assert health["index"]["size"] == len(COLORS)
        assert httpx.post(f"{url}/search", json={"text": "red"}, timeout=30).status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0


def test_vlmo_serve_refuses_bad_options(setup, capsys):
    from helpers import run

    code, _, err = run(capsys, "serve", "--model", str(setup["model"]), "--index", str(setup["gallery"]),
                       "--captions", str(setup["root"] / "caps.txt"))
    assert code == 2 and "not both" in err
    code, _, err = run(capsys, "serve", "--model", str(setup["root"] / "missing"))
    assert code == 2 and "missing" in err
