"""Auto mode's fine-tuning candidates: scored out of fold at their last epoch, the frozen prefix computed once
for the pool, and a fine-tuned winner saved as an ordinary run that reloads and predicts what training scored."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from conftest import make_synthetic_dataset
from headstart.backbones.model import build_network
from headstart.backbones.registry import get_spec
from headstart.config import TrainConfig
from headstart.data.folders import discover
from headstart.data.loading import decode_split
from headstart.extract.feature_cache import FeatureCache
from headstart.runtime.metrics import softmax
from headstart.training.distributed import make_fabric
from headstart.training.modes import RunContext
from headstart.training.search import finetune as search_finetune
from headstart.training.search import run as search_run
from headstart.training.search.folds import selection_folds
from headstart.training.search.plan import SearchBackbone

SPEC = get_spec("efficientnet_lite0")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("finetune") / "data",
                                  per_split={"train": 6, "val": 3, "test": 2})


def _context(data, tmp_path, views: int = 2) -> RunContext:
    pre = SPEC.preprocessing.with_crop(64)
    decoded = {split: decode_split(items, short_side=pre.resize_size, interpolation=pre.interpolation, threads=2)
               for split, items in discover(data).splits.items()}
    cfg = TrainConfig(data=str(data), mode="auto", image_size=64, extract_engine="torch", epochs=2, views=views,
                      report=False).resolved()
    fabric = make_fabric(accelerator="cpu", precision="32-true", devices=1, num_nodes=1, strategy="auto")
    return RunContext(cfg=cfg, spec=SPEC, preprocessing=pre, net=build_network(SPEC, 3, pretrained=False),
                      decoded=decoded, class_weights=None, fabric=fabric, accelerator="cpu", precision="32-true",
                      model_id=f"{SPEC.name}|random-for-tests", cache=FeatureCache(tmp_path / "cache"),
                      deadline=time.perf_counter() + 600)


def test_folds_score_held_out_images_and_share_one_prefix_pass(data, tmp_path, monkeypatch):
    ctx = _context(data, tmp_path)
    labels = np.array(ctx.decoded["train"].labels + ctx.decoded["val"].labels)
    folds, _ = selection_folds(labels, np.arange(18, 27), seed=0)
    backbone = SearchBackbone(SPEC, None, ctx.preprocessing)
    from headstart.training.modes import finetune as finetune_mode

    computed = []  # how many images each call of the prefix pass computes
    original = finetune_mode._prefix_activations

    def counting(fold_ctx, prefix, split, preset, view, engine):
        memo = fold_ctx.prefix_memo.table(preset, view)
        computed.append(sum(h not in memo for h in fold_ctx.decoded[split].hashes))
        return original(fold_ctx, prefix, split, preset, view, engine)

    monkeypatch.setattr(finetune_mode, "_prefix_activations", counting)
    folded = search_finetune.fold_finetune(ctx, backbone, 1, folds, labels, lambda: float("inf"), "test")
    scores, loss, oof, memo = folded.scores, folded.loss, folded.oof_logits, folded.memo
    assert len(scores) == 5 and oof.shape == (27, 3) and np.isfinite(loss)
    for (_, held), score in zip(folds, scores):  # each fold's score is its held-out images' out-of-fold logits
        assert score == pytest.approx(float((oof[held].argmax(1) == labels[held]).mean()))
    assert (np.abs(oof).sum(1) > 0).all()  # every pool image was held out once
    # every pool image's prefix runs once per view (2 augmented, 1 plain), however many folds there are
    assert sum(computed) == 27 * 3
    assert sorted(memo.tables) == [("light", 1), ("light", 2), ("none", 0)]
    assert all(len(t) == 27 for t in memo.tables.values()) and memo.seconds > 0 and memo.nbytes() > 0
    assert folded.refit_seconds > 0


def test_folds_whose_rest_and_refit_would_overrun_drop_the_candidate(data, tmp_path, monkeypatch):
    """After a fold, its training time (the prefix pass left out) plans the other folds and the refit."""
    from headstart.training.modes import finetune as finetune_mode

    ctx = _context(data, tmp_path)
    labels = np.array(ctx.decoded["train"].labels + ctx.decoded["val"].labels)
    folds, _ = selection_folds(labels, np.arange(18, 27), seed=0)
    trained = []
    fit = finetune_mode.fit_finetune

    def fold_then_mark(*args, **kwargs):
        result = fit(*args, **kwargs)
        trained.append(len(kwargs))
        return result

    monkeypatch.setattr(finetune_mode, "fit_finetune", fold_then_mark)

    def stop_at():  # ample while the first fold trains; once it has, far too little for four more and a refit
        return time.perf_counter() + (1e-3 if trained else 1e6)

    with pytest.raises(search_finetune.FoldsOutOfBudget, match="remaining folds and refit need about"):
        search_finetune.fold_finetune(ctx, SearchBackbone(SPEC, None, ctx.preprocessing), 1, folds, labels,
                                      stop_at, "test")
    assert len(trained) == 1  # one fold trained, then the candidate was dropped


def test_a_fold_past_the_deadline_drops_the_candidate(data, tmp_path):
    ctx = _context(data, tmp_path)
    labels = np.array(ctx.decoded["train"].labels + ctx.decoded["val"].labels)
    folds, _ = selection_folds(labels, np.arange(18, 27), seed=0)
    with pytest.raises(search_finetune.FoldsOutOfBudget, match="budget ran out"):
        search_finetune.fold_finetune(ctx, SearchBackbone(SPEC, None, ctx.preprocessing), 1, folds, labels,
                                      lambda: time.perf_counter() - 1, "test")


def test_a_fine_tuned_winner_reloads_and_predicts_what_training_scored(data, tmp_path, monkeypatch):
    import headstart

    def finetune_first(candidates, held_out=0):  # stands for a set where fine-tuning wins the cross-validation
        ranked = sorted(candidates, key=lambda c: (c.family != "finetune", -c.mean))
        return ranked[0] if ranked else None

    monkeypatch.setattr(search_run, "_best", finetune_first)
    # fp32: a bf16-trained network's logits move by more than the tolerance when reloaded in fp32
    run = headstart.train(str(data), mode="auto", budget="120s", image_size=64, epochs=2, precision="32",
                          out=str(tmp_path / "run"), report=False, seed=0)
    summary = json.loads((run.run_dir / "summary.json").read_text())
    winner = next(c for c in summary["search"]["candidates"] if c["winner"])
    assert winner["family"] == "finetune" and summary["search"]["winner"] == winner["name"]
    manifest = json.loads((run.run_dir / "model.json").read_text())
    assert manifest["backbone"] == winner["backbone"] and "taps" not in manifest["head"]
    assert manifest["parameters"]["trainable"] < manifest["parameters"]["total"]  # partly fine-tuned
    saved = np.load(run.run_dir / "logits.npz")
    assert len(saved["logits_train"]) == len(saved["paths_train"])  # the refit's pool rows cut back to train
    clf = headstart.load(run.run_dir)
    paths = [str(p) for p in saved["paths_test"]]
    predicted = np.array([[dict(r["top_k"])[c] for c in clf.classes] for r in clf.predict(paths, top_k=3)])
    np.testing.assert_allclose(predicted, softmax(saved["logits_test"], manifest["temperature"]), atol=2e-3)
    train_paths = [str(p) for p in saved["paths_train"]]  # the refit's pool rows, cut back to train, in order
    predicted = np.array([[dict(r["top_k"])[c] for c in clf.classes] for r in clf.predict(train_paths, top_k=3)])
    np.testing.assert_allclose(predicted, softmax(saved["logits_train"], manifest["temperature"]), atol=2e-3)
    # the fine-tuned backbone was saved, not the pretrained one it started from: the last stage moved
    from safetensors.numpy import load_file

    saved_state = load_file(run.run_dir / "model.safetensors")
    spec = get_spec(winner["backbone"])
    pretrained = build_network(spec, 3).state_dict()
    last_stage = [k for k in pretrained if k.startswith("backbone.") and "weight" in k
                  and any(k.removeprefix("backbone.").startswith(p) for p in spec.stages[-1])]
    first_stage = [k for k in pretrained if k.startswith("backbone.") and "weight" in k
                   and any(k.removeprefix("backbone.").startswith(p) for p in spec.stages[0])]
    assert last_stage and first_stage
    assert any(not np.allclose(saved_state[k], pretrained[k].numpy()) for k in last_stage)
    assert all(np.array_equal(saved_state[k], pretrained[k].numpy()) for k in first_stage)  # frozen
