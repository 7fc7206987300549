"""Auto mode's search on a hand-built RunContext: what it tries, what it skips, what it never reads."""

from __future__ import annotations

import copy
import dataclasses
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import make_synthetic_dataset
from headstart.backbones.model import build_network
from headstart.backbones.registry import get_spec
from headstart.config import TrainConfig
from headstart.data.folders import discover
from headstart.data.loading import decode_split
from headstart.extract.feature_cache import FeatureCache
from headstart.training.distributed import make_fabric
from headstart.training.modes import RunContext
from headstart.training.search import run as search_run
from headstart.training.search.run import Candidate, SearchResult, search

SPEC = get_spec("efficientnet_lite0")


class _Untouchable:
    """Stands for the test split: any use of it fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"the search read the test split ({name})")

    def __len__(self):
        raise AssertionError("the search read the test split (len)")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = make_synthetic_dataset(tmp_path_factory.mktemp("search") / "data",
                                  per_split={"train": 6, "val": 3, "test": 2})
    pre = SPEC.preprocessing.with_crop(64)
    decoded = {split: decode_split(items, short_side=pre.resize_size, interpolation=pre.interpolation, threads=2)
               for split, items in discover(root).splits.items()}
    fabric = make_fabric(accelerator="cpu", precision="32-true", devices=1, num_nodes=1, strategy="auto")
    return SimpleNamespace(root=root, pre=pre, decoded=decoded, fabric=fabric,
                           net=build_network(SPEC, 3, pretrained=False))


def _context(world, tmp_path, seconds: float) -> RunContext:
    cfg = TrainConfig(data=str(world.root), mode="auto", image_size=64, extract_engine="torch",
                      report=False).resolved()
    decoded = dict(world.decoded, test=_Untouchable())
    return RunContext(cfg=cfg, spec=SPEC, preprocessing=world.pre, net=copy.deepcopy(world.net), decoded=decoded,
                      class_weights=None, fabric=world.fabric, accelerator="cpu", precision="32-true",
                      model_id=f"{SPEC.name}|random-for-tests", cache=FeatureCache(tmp_path / "cache"),
                      deadline=time.perf_counter() + seconds)


def test_the_search_scores_by_cross_validation_and_never_reads_the_test_split(world, tmp_path):
    found = search(_context(world, tmp_path, 600))  # ample: nothing is skipped even on a loaded machine
    assert len(found.folds) == 5 and found.selection.startswith("5-fold stratified cross-validation")
    names = [c.name for c in found.candidates]
    assert names[:2] == ["efficientnet_lite0 · linear head",  # the run's own backbone first
                         "efficientnet_lite0 · multi-stage · linear head"]
    assert {"efficientnet_lite1 · linear head", "efficientnet_lite2 · multi-stage · linear head"} <= set(names)
    assert any(c.family == "views" for c in found.candidates) and not found.skipped
    finetuned = [c for c in found.candidates if c.family == "finetune"]
    assert [c.recipe["unfreeze"] for c in finetuned] == [1, 2]  # the last stage, then the last two
    best_head = search_run._best([c for c in found.candidates if c.family != "finetune"])
    assert {c.backbone for c in finetuned} == {best_head.backbone}  # the best head's backbone, fine-tuned
    assert found.winner.memo is not None or found.winner.family != "finetune"
    assert all(c.memo is None for c in found.candidates if c is not found.winner)  # only the refit's are kept
    pool = len(world.decoded["train"].labels) + len(world.decoded["val"].labels)
    for c in found.candidates:
        assert len(c.fold_scores) == 5 and c.oof_logits.shape == (pool, 3) and c.trials >= 1
    winner = found.winner
    rank = found.candidates.index(winner)
    assert all(winner.mean > c.mean for c in found.candidates[:rank])  # never below a cheaper candidate
    assert sum(c["winner"] for c in found.summary()["candidates"]) == 1


def test_what_does_not_fit_the_budget_is_skipped_with_its_reason(world, tmp_path):
    # The reserve for writing the run already exceeds this budget: only the run's own backbone is tried, on
    # the features of its one extraction, one trial each.
    found = search(_context(world, tmp_path, 1.0))
    assert [c.name for c in found.candidates] == ["efficientnet_lite0 · linear head",
                                                  "efficientnet_lite0 · multi-stage · linear head"]
    assert [c.trials for c in found.candidates] == [1, 1]
    skipped = {s["name"]: s["reason"] for s in found.skipped}
    assert "efficientnet_lite2 · linear head" in skipped and "left" in skipped["efficientnet_lite2 · linear head"]
    assert any("views" in name for name in skipped)


def test_a_failing_fine_tuning_candidate_is_skipped_and_the_heads_are_kept(world, tmp_path, monkeypatch):
    from headstart.training.loop import NonFiniteLossError

    def diverges(*args, **kwargs):
        raise NonFiniteLossError("loss is nan at epoch 1")

    monkeypatch.setattr(search_run, "fold_finetune", diverges)
    found = search(_context(world, tmp_path, 600))
    assert not any(c.family == "finetune" for c in found.candidates) and found.winner.family != "finetune"
    reasons = [s["reason"] for s in found.skipped if "fine-tune" in s["name"]]
    assert reasons == ["failed: NonFiniteLossError: loss is nan at epoch 1"]  # and no deeper one is tried


def _candidate(name, scores, loss):
    return Candidate(name, "head", name, {"l2": 1.0, "views": 0}, scores, loss, 1.0, np.zeros((2, 2)))


def test_the_winner_is_the_cheapest_within_one_standard_error_of_the_best():
    def winner(*candidates, held_out=0):
        folds = [(None, range(held_out))] if held_out else []
        return SearchResult(list(candidates), {}, "", folds, np.zeros(2), 60.0, 1.0).winner.name

    # the best mean 0.9 with fold scores 0.8-1.0: standard error 0.1 / sqrt(3) = 0.058
    noisy_best = _candidate("costly", [0.8, 0.9, 1.0], 0.2)
    assert winner(_candidate("cheap", [0.85, 0.85, 0.85], 0.3), noisy_best) == "cheap"  # within it: cheaper wins
    assert winner(_candidate("cheap", [0.8, 0.8, 0.8], 0.3), noisy_best) == "costly"  # beyond it: better wins
    assert winner(_candidate("a", [0.9, 0.9], 0.3), _candidate("b", [0.9, 0.9], 0.2)) == "a"  # a tie: cheaper
    assert winner(_candidate("a", [0.8, 0.9], 0.3), _candidate("b", [0.9, 0.9], 0.5)) == "b"  # no spread: exact
    # one split (large sets): the binomial standard error of the best's accuracy on its held-out images
    assert winner(_candidate("a", [0.95], 0.3), _candidate("b", [0.96], 0.2), held_out=100) == "a"  # 0.0196
    assert winner(_candidate("a", [0.95], 0.3), _candidate("b", [0.96], 0.2), held_out=10_000) == "b"  # 0.002


def test_a_leader_on_another_decode_size_keeps_time_for_its_own_pool_features(world, tmp_path):
    """A head leader whose backbone's native size differs from the search's decode is refitted on features of
    its own decode (center and views), so the search ends earlier by their estimated extraction."""
    from headstart.training.search.plan import SearchBackbone

    ctx = _context(world, tmp_path, seconds=600)
    other = SearchBackbone(get_spec("efficientnet_lite2"), None, world.pre.with_crop(96))
    search_ = search_run._Search(ctx, [SearchBackbone(SPEC, None, world.pre), other], tail_images=0)
    search_.rate = 0.01
    before = search_.stop_at
    search_.candidates = [dataclasses.replace(_candidate("same size", [0.9, 0.9], 0.3), backbone=SPEC.name,
                                              recipe={"views": 2})]
    assert search_.stop_at == pytest.approx(before, abs=1e-3)
    search_.candidates.insert(0, dataclasses.replace(_candidate("own size", [0.95, 0.95], 0.2),
                                                     backbone=other.name, recipe={"views": 2}))
    pool = len(search_.labels)
    assert before - search_.stop_at == pytest.approx(pool * 3 * 0.01 * other.relative_cost, rel=1e-3)
    search_.candidates[0].family = "finetune"  # a fine-tuned leader's refit is budgeted on its own
    assert search_.stop_at == pytest.approx(before, abs=1e-3)


def test_first_backbone_extraction_is_not_cut_by_the_budget(world, tmp_path, monkeypatch):
    """Without the run's own features there is no model: they are extracted whatever the budget says."""
    everything = search_run.search_backbones
    monkeypatch.setattr(search_run, "search_backbones", lambda cfg, spec, pre: everything(cfg, spec, pre)[:1])
    found = search(_context(world, tmp_path, -5.0))
    assert [c.backbone for c in found.candidates] == [SPEC.name] * 2
    assert torch.isfinite(torch.from_numpy(found.winner.oof_logits)).all()


def test_the_same_seed_gives_the_same_candidates_and_scores(world, tmp_path):
    first, again = (search(_context(world, tmp_path / run, 1.0)) for run in ("a", "b"))
    assert [(c.name, c.recipe, c.fold_scores) for c in first.candidates] == \
        [(c.name, c.recipe, c.fold_scores) for c in again.candidates]
    assert first.winner.name == again.winner.name
