"""An auto run's report shows its search, built from summary.json alone; other runs keep their training curves."""

import html
import re
from pathlib import Path

import pytest
from PIL import Image

from headstart.report import search_plot
from headstart.report import sections as S
from headstart.report.figures import FigureWorker

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WINNER = "efficientnet_lite2 · linear head + 4 light views"
SELECTION = "5-fold stratified cross-validation on train+val (225 images)"


def _candidate(name: str, mean: float, std: float, loss: float, seconds: float, winner: bool = False) -> dict:
    return {"name": name, "family": "views" if "views" in name else "head", "backbone": name.split(" ")[0],
            "recipe": {"l2": 1e-3, "views": 4 if "views" in name else 0}, "cv_mean": mean, "cv_std": std,
            "fold_scores": [mean] * 5, "cv_loss": loss, "seconds": seconds, "trials": 16, "winner": winner}


@pytest.fixture
def summary() -> dict:
    """An auto run's summary: candidates in the order tried, two tied on accuracy, one skipped."""
    return {"mode": "auto", "search": {
        "budget_seconds": 600.0, "seconds": 36.5, "selection": SELECTION, "folds": 5, "winner": WINNER,
        "candidates": [_candidate("efficientnet_lite1 · linear head", 0.9511, 0.0327, 0.1574, 6.1),
                       _candidate("efficientnet_lite0 · linear head", 0.9511, 0.0166, 0.1564, 5.0),
                       _candidate(WINNER, 0.9689, 0.0227, 0.1297, 21.1, winner=True),
                       _candidate("<odd> & name", 0.9, 0.05, 0.3, 0.4)],
        "skipped": [{"name": "efficientnet_lite2 · linear head", "reason": "needs about 80 s, 12 s left"}]}}


@pytest.fixture
def draw():
    """Figures drawn in this process: a FigureWorker without workers."""
    with FigureWorker() as here:
        yield here.draw


def _tables(body: str) -> list[list[list[str]]]:
    """Each table of the HTML as rows of cell texts, its header row first."""
    return [[[html.unescape(cell) for cell in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row)]
             for row in re.findall(r"<tr>(.*?)</tr>", table)] for table in re.findall(r"<table>.*?</table>", body)]


def test_search_table_ranks_candidates_marks_the_winner_and_lists_the_skipped(summary, draw, tmp_path):
    section = S.history_section(summary, [], tmp_path, draw)
    body = section.html()
    assert (section.id, section.title) == ("search", "Search")
    assert SELECTION in html.unescape(body)
    candidates, skipped = _tables(body)
    assert candidates[0] == ["candidate", "CV accuracy", "± spread", "seconds", "trials"]
    assert candidates[1:] == [
        [f"{WINNER} (winner)", "0.9689", "0.0227", "21.1", "16"],
        ["efficientnet_lite0 · linear head", "0.9511", "0.0166", "5", "16"],  # the tie goes to the lower CV loss
        ["efficientnet_lite1 · linear head", "0.9511", "0.0327", "6.1", "16"],
        ["<odd> & name", "0.9", "0.05", "0.4", "16"],
    ]
    assert "within one standard error" in html.unescape(body)  # how the winner was chosen
    assert "<odd>" not in body  # escaped
    assert html.unescape(body).count("(winner)") == 1
    assert skipped == [["skipped candidate", "reason"],
                       ["efficientnet_lite2 · linear head", "needs about 80 s, 12 s left"]]
    png = tmp_path / "search.png"
    assert png.read_bytes().startswith(PNG_SIGNATURE)
    with Image.open(png) as img:
        img.load()  # the whole file decodes
        assert min(img.size) >= 300
    assert body.count('<img src="data:image/png;base64,') == 1


def test_a_search_without_candidates_or_skips_says_so(summary, draw, tmp_path):
    summary["search"]["skipped"] = []
    assert len(_tables(S.history_section(summary, [], tmp_path, draw).html())) == 1
    summary["search"]["candidates"] = []
    section = S.history_section(summary, [], tmp_path, draw)
    assert section.id == "search"
    assert "no search candidates" in section.html()


def test_search_plot_labels_every_point_and_highlights_the_winner(summary, tmp_path, monkeypatch):
    drawn = []
    save = search_plot._save
    monkeypatch.setattr(search_plot, "_save", lambda fig, out, **kw: drawn.append(fig) or save(fig, out, **kw))
    tried = summary["search"]["candidates"]
    search_plot.plot_search([c["name"] for c in tried], [c["seconds"] for c in tried], [c["cv_mean"] for c in tried],
                            [c["cv_std"] for c in tried], tmp_path / "search.png", winner=WINNER, folds=5)
    ax = drawn.pop().axes[0]
    labels = {t.get_text().replace("\n", " "): t for t in ax.texts}
    assert len(labels) == len(tried)
    assert {labels[k].get_fontweight() for k in labels if "(winner)" in k} == {"bold"}
    assert sum("(winner)" in k for k in labels) == 1
    assert ax.get_xscale() == "log"  # 0.4 s to 21 s: the cheap candidates would crowd one edge otherwise
    assert ax.get_xlabel().startswith("seconds") and "5 folds" in ax.get_ylabel()
    assert Path(tmp_path / "search.png").read_bytes().startswith(PNG_SIGNATURE)


def test_runs_in_other_modes_keep_the_training_curves(draw, tmp_path):
    history = [{"epoch": str(e), "phase": "features", "train_loss": str(1 / e), "train_accuracy": "0.8",
                "val_loss": str(1.1 / e), "val_accuracy": "0.75", "seconds": "1.0"} for e in range(1, 4)]
    section = S.history_section({"mode": "features"}, history, tmp_path, draw)
    assert (section.id, section.title) == ("curves", "Training curves")
    assert section.html().count("<img") == 1
    assert (tmp_path / "curves.png").is_file() and not (tmp_path / "search.png").exists()


def test_a_search_selected_on_the_val_split_says_val_accuracy(summary, draw, tmp_path):
    summary["search"].update(folds=1, selection="the val split (6000 images)")
    candidates, _ = _tables(S.history_section(summary, [], tmp_path, draw).html())
    assert candidates[0][1] == "val accuracy"
    assert S.score_name({"folds": 5}) == "CV accuracy" and S.score_name({}) == "CV accuracy"
