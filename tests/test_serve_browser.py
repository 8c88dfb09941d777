"""The search page in a real headless browser: type a query, get thumbnails with scores. Skipped unless both
``chromium`` (the system browser) and the ``playwright`` package are installed; the screenshot goes to the temporary
folder, never into the repository."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

from test_serve import ANSWERS, COLORS, make_model, png_bytes
from vlmo_cli.serve import SearchService, ServerThread, create_app

CHROMIUM = next((p for p in ("/usr/lib/chromium/chromium", shutil.which("chromium") or "",
                             shutil.which("chromium-browser") or "") if p and Path(p).is_file()), None)
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")]


def test_page_search_shows_thumbnails_with_scores(demo_root, tmp_path):
    model_dir = make_model(tmp_path / "model", demo_root / "demo_data" / "tokenizer", ["pooler", "itc"])
    (model_dir / "answers.json").write_text(json.dumps(ANSWERS))
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for i, color in enumerate(COLORS):
        (gallery / f"img_{i}.png").write_bytes(png_bytes(color, (40, 40)))
    service, _ = SearchService.open(model_dir, index=gallery, device="cpu")
    shot = Path(tempfile.gettempdir()) / "vlmo_serve_page.png"
    with ServerThread(create_app(service), "127.0.0.1", 0) as server, playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.goto(server.url + "/", timeout=60_000)
            page.fill("#query", "a red circle")
            page.fill("#top-k", "4")
            page.click("#search-button")
            page.wait_for_selector(".hit img", timeout=60_000)
            page.wait_for_function("[...document.querySelectorAll('.hit img')].every(i => i.complete && "
                                   "i.naturalWidth > 0)", timeout=60_000)
            cards = page.locator(".hit")
            assert cards.count() == 4
            assert cards.nth(0).locator(".score").inner_text().startswith("#1")
            assert "4 results" in page.inner_text("#status")
            page.fill("#query", "   ")
            page.click("#search-button")
            page.wait_for_function("document.getElementById('status').textContent.startsWith('error')")
            assert "text is empty" in page.inner_text("#status")
            page.fill("#query", "a blue square")
            page.click("#search-button")
            page.wait_for_selector(".hit img", timeout=60_000)
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert shot.stat().st_size > 1000
