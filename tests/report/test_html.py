"""The run report of a tiny real run: valid, self-contained HTML with every section and working images."""

import base64
import io
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import headstart
from conftest import CHROMIUM, CHROMIUM_ARGS, make_synthetic_dataset, require_chromium
from headstart.report.build import build_report

SECTIONS = ["Dataset", "Model", "Configuration", "Training curves", "Metrics", "Per-class metrics",
            "Confusion matrix", "Calibration", "Rejection", "Predictions", "Top losses", "Training samples",
            "First-layer filters", "Time and size"]
ODD_CLASS = 'a<b>&"c'  # a legal folder name that breaks HTML unless escaped
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class _Page(HTMLParser):
    """Checks that every element is closed in order, and collects images, links and h2 headings."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.errors, self.images, self.urls, self.links, self.h2 = [], [], [], [], [], []
        self._text = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag not in VOID:
            self.stack.append(tag)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag == "link":
            self.links.append(attrs)
        self.urls += [attrs[a] for a in ("src", "href", "action", "poster") if attrs.get(a)]
        if tag == "h2":
            self._text = []

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
            return
        self.stack.pop()
        if tag == "h2":
            self.h2.append("".join(self._text).strip())
            self._text = None

    def handle_data(self, data):
        if self._text is not None:
            self._text.append(data)


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    page.close()
    return page


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    data = make_synthetic_dataset(root / "data", classes=("red", "green", ODD_CLASS),
                                  per_split={"train": 10, "val": 5, "test": 5}, size=72)
    result = headstart.train(data, image_size=64, epochs=3, out=str(root / "run"), seed=0)
    clf = result.load()
    return result.run_dir, clf, build_report(result.run_dir, classifier=clf)


def test_report_is_valid_html_with_every_section(run):
    run_dir, _, path = run
    assert path == run_dir / "report.html"
    page = _parse(path.read_text(encoding="utf-8"))
    assert not page.errors, page.errors[:5]
    assert not page.stack, f"unclosed: {page.stack}"
    assert page.h2 == SECTIONS


def test_report_is_self_contained(run):
    text = run[2].read_text(encoding="utf-8")
    page = _parse(text)
    assert "http://" not in text and "https://" not in text
    assert not [u for u in page.urls if u.startswith("//")]
    assert not page.links, "no <link> (stylesheets, fonts, icons)"
    assert not re.search(r"<script[^>]+src=|@import|url\(", text)
    assert all(u.startswith(("#", "data:image/png;base64,")) for u in page.urls), page.urls
    assert len(page.images) >= 10
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        data = base64.b64decode(src.split(",", 1)[1], validate=True)
        with Image.open(io.BytesIO(data)) as img:
            assert img.format == "PNG"
            img.load()
            assert min(img.size) > 100


def test_report_shows_the_run_files(run):
    run_dir, _, path = run
    text = path.read_text(encoding="utf-8")
    manifest = json.loads((run_dir / "model.json").read_text())
    params = manifest["parameters"]
    assert f"{params['trainable']:,}" in text and f"{params['total']:,}" in text
    assert manifest["weights_sha256"] in text
    assert "a&lt;b&gt;&amp;&quot;c" in text and ODD_CLASS not in text, "class names must be escaped"
    weights_bytes = (run_dir / "model.safetensors").stat().st_size
    assert f"{weights_bytes:,} bytes" in text


def test_report_without_the_images_still_builds(run, tmp_path):
    run_dir, clf, _ = run
    moved = tmp_path / "run"
    shutil.copytree(run_dir, moved)
    split = json.loads((moved / "split.json").read_text())
    split["root"] = str(tmp_path / "gone")
    (moved / "split.json").write_text(json.dumps(split))
    page = _parse(build_report(moved, classifier=clf).read_text(encoding="utf-8"))
    assert not page.errors and page.h2 == SECTIONS
    text = (moved / "report.html").read_text(encoding="utf-8")
    assert "images are not available" in text
    assert 'alt="top losses with Grad-CAM"' not in text


def test_report_renders_in_chromium(run, tmp_path):
    """Every image decodes in a real browser and nothing is fetched; the screenshot is for people to see."""
    sync_api = require_chromium()
    requests = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            tab = browser.new_page(viewport={"width": 1280, "height": 900})
            tab.on("request", lambda r: requests.append(r.url))
            tab.goto(run[2].as_uri(), wait_until="load")
            widths = tab.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
            tab.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert widths and all(w > 0 for w in widths), widths
    assert all(u.startswith(("file:", "data:")) for u in requests), requests
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_report_reuses_the_logits_saved_by_training(run, monkeypatch):
    """Training saves logits.npz; the report must not score the split again."""
    run_dir = run[0]
    assert (run_dir / "logits.npz").is_file()
    from headstart.inference.classifier import TorchClassifier as Classifier

    calls = []
    original = Classifier.logits
    monkeypatch.setattr(Classifier, "logits", lambda self, images, *a, **k: calls.append(len(images)) or
                        original(self, images, *a, **k))
    build_report(run_dir)
    assert not [n for n in calls if n > 8], f"the report rescored a whole split: {calls}"


def test_with_the_saved_logits_only_the_shown_images_are_opened(run, monkeypatch):
    from headstart.report import sections
    from headstart.runtime import images

    run_dir, clf, _ = run
    val = {p for p, _ in discover_split(run_dir, "val")}
    opened = []
    original = images.open_image
    monkeypatch.setattr(images, "open_image", lambda source, *a, **k: opened.append(str(source)) or
                        original(source, *a, **k))
    monkeypatch.setattr(sections, "GRID_IMAGES", 3)
    build_report(run_dir, classifier=clf, top_n=2)
    assert 0 < len([p for p in opened if p in val]) <= 5 < len(val)


def _moved_run(run_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the run and of its data, with the saved logits' paths pointing into the copied data, as they
    would after moving both: the report then reuses the logits for the copy."""
    old_root = json.loads((run_dir / "split.json").read_text())["root"]
    copy, data = tmp_path / "run", tmp_path / "data"
    shutil.copytree(run_dir, copy)
    shutil.copytree(old_root, data)
    with np.load(copy / "logits.npz") as saved:
        arrays = {k: (np.char.replace(v, str(old_root), str(data)) if k.startswith("paths_") else v)
                  for k, v in saved.items()}
    np.savez(copy / "logits.npz", **arrays)
    return copy, data


def test_a_val_image_unreadable_since_training_is_left_out_of_the_grid(run, tmp_path, monkeypatch, caplog):
    """The saved logits still stand (nothing is scored again); the grid skips the file that cannot be opened
    any more, and says so."""
    from headstart.inference.classifier import TorchClassifier as Classifier
    from headstart.report import sections

    run_dir, clf, _ = run
    copy, data = _moved_run(run_dir, tmp_path)
    monkeypatch.setattr(sections, "GRID_IMAGES", 100)  # every val image in the grid, the broken one too
    monkeypatch.setattr(Classifier, "logits", lambda *a, **k: pytest.fail("the split was scored again"))
    broken = sorted((data / "val").rglob("*.jpg"))[0]
    broken.write_bytes(b"no longer a jpeg")
    with caplog.at_level("WARNING", logger="headstart"):
        page = build_report(copy, data=data, classifier=clf, top_n=0).read_text(encoding="utf-8")
    skipped = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert skipped and all(m.startswith(f"report: skipping {broken}: ") for m in skipped)
    predictions = page.split('id="predictions"')[1].split("</section>")[0]
    assert "<img" in predictions


def test_an_image_added_to_the_split_since_training_is_scored_with_the_rest(run, tmp_path, monkeypatch):
    from headstart.inference.classifier import TorchClassifier as Classifier

    run_dir, clf, _ = run
    copy, data = _moved_run(run_dir, tmp_path)
    first = sorted((data / "val").rglob("*.jpg"))[0]
    shutil.copy(first, first.with_name("added_since.jpg"))
    scored = []
    original = Classifier.logits
    monkeypatch.setattr(Classifier, "logits", lambda self, images, *a, **k: scored.append(len(images)) or
                        original(self, images, *a, **k))
    build_report(copy, data=data, classifier=clf, top_n=2)
    val = len(list((data / "val").rglob("*.jpg")))
    assert val in scored  # the whole split, the new image among them


def discover_split(run_dir, split):
    from headstart.data.folders import discover

    return discover(json.loads((run_dir / "split.json").read_text())["root"],
                    split_file=run_dir / "split.json").splits[split]


def _many_classes(n=102):
    classes = [f"class_{i:03d}" for i in range(n)]
    counts = {"train": {c: 10 + i % 30 for i, c in enumerate(classes)}, "val": {c: 3 for c in classes}}
    counts["train"]["class_007"] = 1
    per_class = {c: {"precision": 0.9, "recall": 0.9, "f1": 0.9, "support": 3} for c in classes}
    per_class["class_050"] = {"precision": 0.1, "recall": 0.2, "f1": 0.13, "support": 3}
    per_class["class_060"] = {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 3}
    return classes, {"counts": counts, "data": "/data/flowers", "split_origin": "generated"}, {"val": {
        "per_class": per_class}}


def _before_details(text: str) -> str:
    return text.split("<details")[0]


def test_many_classes_are_summarised_and_their_tables_collapsed():
    """102 classes (Flowers-102): the report opens with a summary, not a 102-row table; the tables are in
    <details> elements, closed until clicked, and every class is still in them."""
    from headstart.report.sections import dataset_section as _dataset_section
    from headstart.report.sections import per_class_section as _per_class_section

    classes, summary, metrics = _many_classes()
    for section in (_dataset_section(summary, classes), _per_class_section(metrics)):
        text = section.html()
        page = _parse(f"<div>{text}</div>")
        assert not page.errors and not page.stack, page.errors
        assert text.count("<details") >= 1 and "<details open" not in text
        assert all(c in text for c in classes)
        assert _before_details(text).count("<tr>") <= 12, "a long table outside <details>"
    dataset = _dataset_section(summary, classes).html()
    assert "class_007" in _before_details(dataset)  # the smallest class is named up front
    per_class = _per_class_section(metrics).html()
    shown = _before_details(per_class)
    assert "class_050" in shown and shown.index("class_050") < shown.index("class_060")  # worst first


def test_few_classes_keep_their_plain_tables():
    from headstart.report.sections import dataset_section as _dataset_section
    from headstart.report.sections import per_class_section as _per_class_section

    classes, summary, metrics = _many_classes(5)
    for section in (_dataset_section(summary, classes), _per_class_section(metrics)):
        text = section.html()
        assert "<details" not in text and all(c in text for c in classes)
