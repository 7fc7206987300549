import math

import numpy as np
import pytest

from headstart.runtime.metrics import (
    PRIOR_OBSERVATIONS,
    classification_metrics,
    coverage_curve,
    expected_calibration_error,
    fit_temperature,
    softmax,
    threshold_for_accuracy,
)


def _overconfident(n=600, k=4, seed=0):
    """Logits from a model right 70% of the time but ~99% confident: temperature must rise above 1."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    pred = np.where(rng.random(n) < 0.7, labels, (labels + rng.integers(1, k, n)) % k)
    logits = rng.normal(0, 0.5, (n, k))
    logits[np.arange(n), pred] += 6.0
    return logits, labels


def test_temperature_scaling_lowers_nll_and_ece():
    logits, labels = _overconfident()
    t = fit_temperature(logits, labels)
    before = classification_metrics(logits, labels, list("abcd"))
    after = classification_metrics(logits, labels, list("abcd"), temperature=t)
    assert t > 1.5
    assert after["nll_calibrated"] < before["loss"] - 0.1
    assert after["ece_calibrated"] < before["ece"] / 2
    assert after["accuracy"] == before["accuracy"]  # scaling never changes the argmax


def _underconfident(n, k=3, accuracy=0.97, seed=0):
    """Logits like a label-smoothed head's: right ~97% of the time but ~0.85 confident at T = 1 (best T ~0.56)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    pred = np.where(rng.random(n) < accuracy, labels, (labels + rng.integers(1, k, n)) % k)
    logits = rng.normal(0, 0.4, (n, k))
    logits[np.arange(n), pred] += 2.5
    return logits, labels


def test_a_small_all_correct_split_cannot_claim_certainty():
    # 24 validation images, all right (the pets demo's split): the plain NLL fit sharpens without limit and
    # stops only at the bound; the prior's 10 pseudo-observations keep T where one split of 24 can support it.
    logits, labels = _underconfident(200, accuracy=1.0)
    logits, labels = logits[:24], labels[:24]
    assert fit_temperature(logits, labels, prior_observations=0) == pytest.approx(0.25, rel=1e-6)
    t = fit_temperature(logits, labels)
    assert 0.4 < t < 1.0  # still sharpened (every answer was right), but not to certainty
    assert softmax(logits, t).max(axis=1).mean() < 0.995


def test_the_prior_counts_as_n0_observations_and_fades_with_data():
    logits, labels = _underconfident(45, seed=1)
    assert (logits.argmax(axis=1) != labels).sum() == 1  # like pizza_steak_sushi's validation split
    mle = fit_temperature(logits, labels, prior_observations=0)
    shrunk = fit_temperature(logits, labels)
    assert mle < shrunk < 1.0  # pulled towards 1, not past it: a correction the data support survives
    # n0 pseudo-observations against n images: the same split twice over weighs exactly like half the prior
    twice = fit_temperature(np.tile(logits, (2, 1)), np.tile(labels, 2))
    assert twice == pytest.approx(fit_temperature(logits, labels, prior_observations=PRIOR_OBSERVATIONS / 2),
                                  rel=1e-6)
    assert mle < twice < shrunk  # twice the evidence: closer to the plain fit
    # with thousands of images the prior no longer matters
    many_logits, many_labels = _underconfident(5000, seed=4)
    assert math.log(fit_temperature(many_logits, many_labels)) == pytest.approx(
        math.log(fit_temperature(many_logits, many_labels, prior_observations=0)), abs=0.01)
    assert fit_temperature(logits[:0], labels[:0]) == 1.0  # no evidence at all: the prior's mode


def test_metrics_and_confusion_matrix():
    logits = np.array([[2, 0], [0, 2], [2, 0], [0, 2]], dtype=float)
    labels = np.array([0, 1, 1, 1])
    m = classification_metrics(logits, labels, ["a", "b"], threshold=0.5)
    assert m["accuracy"] == 0.75
    assert m["confusion_matrix"] == [[1, 0], [1, 2]]
    assert m["per_class"]["a"] == {"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1}
    assert m["rejection"]["rejected_rate"] == 0.0


def test_coverage_and_target_threshold():
    logits, labels = _overconfident(seed=1)
    probs = softmax(logits)
    curve = coverage_curve(probs, labels)
    assert curve[0]["coverage"] == 1.0
    assert all(a["coverage"] >= b["coverage"] for a, b in zip(curve, curve[1:]))
    row = threshold_for_accuracy(probs, labels, 0.72)
    assert row is not None and row["accuracy"] >= 0.72 and row["coverage"] < 1.0


def test_ece_zero_for_perfectly_calibrated_bins():
    probs = np.array([[1.0, 0.0]] * 10)
    assert expected_calibration_error(probs, np.zeros(10, dtype=int)) == 0.0


@pytest.fixture(scope="module")
def class_folder_run(tmp_path_factory):
    """A run trained on a folder of class folders (val held out by headstart), and a second such folder."""
    import headstart
    from conftest import make_synthetic_dataset

    root = make_synthetic_dataset(tmp_path_factory.mktemp("class-folders"), per_split={"photos": 8, "new": 4})
    run = headstart.train(root / "photos", epochs=2, image_size=64, report=False, out=str(root / "run"))
    return root, run.run_dir


def test_a_folder_of_class_folders_is_evaluated_whole(class_folder_run, tmp_path):
    from headstart.evaluate import evaluate_run

    root, run_dir = class_folder_run
    m = evaluate_run(run_dir, root / "new", out_dir=tmp_path)
    assert m["split"] == "all" and m["n"] == 12  # 3 classes x 4 images, none held out
    assert (tmp_path / "evaluation_all.json").is_file() and not m.get("notes")


def test_the_folder_the_run_trained_on_is_scored_on_its_held_out_val_only(class_folder_run, tmp_path):
    import json

    from headstart.evaluate import evaluate_run

    root, run_dir = class_folder_run
    val = json.loads((run_dir / "split.json").read_text())["files"]["val"]
    m = evaluate_run(run_dir, root / "photos", out_dir=tmp_path)
    assert m["split"] == "val" and m["n"] == len(val) < 24


def test_explicit_split_still_picks_a_split_folder(class_folder_run, tmp_path):
    import shutil

    from headstart.evaluate import evaluate_run

    root, run_dir = class_folder_run
    for split in ("val", "test"):
        shutil.copytree(root / "new", tmp_path / "data" / split)
    assert evaluate_run(run_dir, tmp_path / "data", split="val", out_dir=tmp_path)["split"] == "val"
    assert evaluate_run(run_dir, tmp_path / "data", out_dir=tmp_path)["split"] == "test"


def test_training_images_scored_whole_are_flagged(class_folder_run, tmp_path):
    """A run whose split came from split folders, scored on its own train folder: every image counts, and the
    result says that the run trained on them."""
    import json
    import shutil

    from headstart.evaluate import evaluate_run

    root, run_dir = class_folder_run
    copy = shutil.copytree(run_dir, tmp_path / "run")
    trained = [f"photos/{p.parent.name}/{p.name}" for p in sorted((root / "photos").rglob("*.jpg"))[:5]]
    (copy / "split.json").write_text(json.dumps({"root": str(root), "origin": "folders", "files": {
        "train": trained, "val": []}}))
    m = evaluate_run(copy, root / "photos", out_dir=tmp_path)
    assert m["split"] == "all" and m["n"] == 24
    assert m["notes"] == ["5 of these images are in the run's training split: their scores are optimistic"]
