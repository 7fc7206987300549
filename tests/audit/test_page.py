"""audit.html in a real browser (Debian's Chromium via playwright): self-contained, a section per finding, and
the choices saved as fixes.json, the untouched page giving the same file as --accept-suggested."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import CHROMIUM, CHROMIUM_ARGS, require_chromium
from headstart.audit.report import write_audit


def test_page_saves_the_chosen_fixes_and_loads_nothing(audited, tmp_path):
    sync_api = require_chromium()
    data, report = audited
    written = write_audit(report, tmp_path / "out", accept_suggested=True)
    html = written["html"].read_text()
    assert "http://" not in html and "https://" not in html and "data:image/jpeg;base64," in html
    suggested = json.loads(written["fixes"].read_text())
    requests: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(accept_downloads=True)
            page.on("request", lambda r: requests.append(r.url))
            page.goto(written["html"].as_uri())
            for anchor in ("labels", "leakage", "duplicates", "outliers", "health"):
                assert page.locator(f"section#{anchor}").count() == 1
            label = page.locator(".finding", has_text="train/green/red_3.jpg")
            assert label.locator("img").count() == 3  # the suspect, a typical green and a typical red
            assert all(img.evaluate("i => i.naturalWidth") > 0 for img in label.locator("img").all())
            leak = page.locator("section#leakage .finding", has_text="copy_of_blue_0.jpg")
            assert leak.locator("img").count() == 2  # the pair side by side
            with page.expect_download() as download:
                page.click("#save")
            assert download.value.suggested_filename == "fixes.json"
            untouched = json.loads(Path(download.value.path()).read_text())
            assert untouched == suggested  # the page's defaults are the suggestions

            label.locator("select").select_option("blue")  # relabel it as blue instead
            leak.locator("input[value=keep]").check()  # and keep the leaked copy
            with page.expect_download() as download:
                page.click("#save")
            chosen = json.loads(Path(download.value.path()).read_text())
            sync_api.expect(page.locator("#count")).to_have_text(f"{len(chosen['fixes'])} change(s) chosen")
        finally:
            browser.close()
    fixes = {f["path"]: f for f in chosen["fixes"]}
    assert fixes["train/green/red_3.jpg"]["label"] == "blue"
    assert "test/blue/copy_of_blue_0.jpg" not in fixes
    assert chosen["format"] == "headstart.fixes/1" and chosen["root"] == str(data)
    assert all(not url.startswith(("http:", "https:")) for url in requests), requests
