"""The serve page in a real browser (Debian's Chromium via playwright) against a real uvicorn on loopback.

HEADSTART_UPDATE_SCREENSHOT=1 also rewrites docs/serve_screenshot.png, from a run trained at the backbone's
full input size (slower, but the picture people see in the docs should show a real model).
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from conftest import CHROMIUM, CHROMIUM_ARGS, DEMO_DATA, REPO, require_chromium

pytest.importorskip("fastapi")
from headstart.serve import create_app

UPDATE = os.environ.get("HEADSTART_UPDATE_SCREENSHOT") == "1"
SCREENSHOT = REPO / "docs" / "serve_screenshot.png"
THRESHOLD = 0.8  # served as the default threshold, so that some demo images come out "unsure"
TEXT_FILE = {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"a shopping list, not a photo\n"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(base URL, classifier, images to upload, threshold served) of uvicorn running the app in a thread on
    a free loopback port."""
    import uvicorn

    import headstart

    out = tmp_path_factory.mktemp("serve-browser") / "run"
    settings = {"epochs": 10} if UPDATE else {"image_size": 64, "epochs": 3}
    run = headstart.train(DEMO_DATA, report=False, out=str(out), **settings).run_dir
    images, threshold = pick_images(headstart.load(run))
    app = create_app(run, engine="torch", default_threshold=threshold)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", app.state.classifier, images, threshold
    server.should_exit = True
    thread.join(10)
    sock.close()


def pick_images(clf) -> tuple[list[Path], float]:
    """One image per class plus the least confident test image, and a threshold that makes that one "unsure"
    (THRESHOLD, or higher for a model more confident than that)."""
    paths = sorted((DEMO_DATA / "test").glob("*/*.jpg"))
    predictions = clf.predict([str(p) for p in paths])
    per_class = [next(p for p in paths if p.parent.name == name) for name in clf.classes]
    lowest, doubtful = min(zip(predictions, paths), key=lambda pair: pair[0]["confidence"])
    threshold = max(THRESHOLD, math.ceil(lowest["confidence"] * 20 + 1e-9) / 20)
    return [*per_class, *([doubtful] if doubtful not in per_class else [])], threshold


def test_page_classifies_uploads_and_shows_errors(server, tmp_path):
    sync_api = require_chromium()
    base, clf, images, threshold = server
    expected = {Path(r["path"]).name: r for r in clf.predict([str(p) for p in images], threshold=threshold)}
    assert any(r["label"] == "unsure" for r in expected.values()), "no unsure image to show"
    requests: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 820})
            page.on("request", lambda r: requests.append(r.url))
            expect = sync_api.expect
            page.goto(base + "/")
            expect(page.locator("#model-info")).to_contain_text("efficientnet_lite0")
            expect(page.locator("#model-info")).to_contain_text("torch engine")

            page.set_input_files("#files", [str(p) for p in images])
            expect(page.locator(".card")).to_have_count(len(images))
            expect(page.locator(".card.pending")).to_have_count(0, timeout=30_000)
            for name, want in expected.items():
                card = page.locator(".card", has=page.locator(".filename", has_text=name))
                expect(card.locator(".verdict .label")).to_have_text(want["label"])
                expect(card.locator(".confidence")).to_have_text(f"{100 * want['confidence']:.1f}%")
                expect(card).to_have_class("card unsure" if want["label"] == "unsure" else "card sure")
                expect(card.locator(".topk li")).to_have_count(3)
                expect(card.locator(".topk li").first.locator(".name")).to_have_text(want["top_k"][0][0])

            page.set_input_files("#files", files=[TEXT_FILE])
            bad = page.locator(".card", has=page.locator(".filename", has_text="notes.txt"))
            expect(bad).to_have_class("card failed")
            expect(bad.locator(".error")).to_contain_text("notes.txt: not an image")
            page.screenshot(path=str(tmp_path / "serve.png"), full_page=True)
            if UPDATE:
                SCREENSHOT.parent.mkdir(exist_ok=True)
                shutil.copyfile(tmp_path / "serve.png", SCREENSHOT)

            page.check("#gradcam")
            cam = page.locator(".card.sure .cam").first
            expect(cam).to_be_visible(timeout=30_000)
            assert cam.get_attribute("src").startswith("data:image/png;base64,")
            assert cam.evaluate("img => img.complete && img.naturalWidth") > 0
            expect(page.locator(".card.sure .cam:visible")).to_have_count(page.locator(".card.sure").count())
            page.screenshot(path=str(tmp_path / "serve_gradcam.png"), full_page=True)
            page.uncheck("#gradcam")
            expect(cam).to_be_hidden()

            page.goto(base + "/docs")  # Swagger UI from the fastapi-offline package, no CDN
            expect(page.locator(".swagger-ui .info .title")).to_contain_text("headstart", timeout=30_000)
            expect(page.locator(".opblock-summary-path", has_text="/predict")).to_have_count(1)
        finally:
            browser.close()
    assert (tmp_path / "serve.png").stat().st_size > 10_000
    outside = [u for u in requests if not u.startswith((base, "data:", "blob:"))]
    assert not outside, f"the page fetched from elsewhere: {outside}"
