"""The modes, one by one, on a hand-built RunContext: a random-weight EfficientNet-Lite0 at 64 px, decoded synthetic
splits and a real one-process CPU Fabric. Features mode trains only the head and reads its second run from the
cache; finetune trains the chosen stages only. Auto mode's search has its own tests (tests/training/search/)."""

from __future__ import annotations

import copy
import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import make_synthetic_dataset
from headstart import config
from headstart.backbones.model import build_network
from headstart.backbones.registry import get_spec
from headstart.backbones.spec import in_stage
from headstart.config import TrainConfig
from headstart.data.folders import discover
from headstart.data.loading import decode_split
from headstart.extract.feature_cache import FeatureCache, FeatureRows
from headstart.training.callbacks import BestCheckpoint, EarlyStopping, ResumeCheckpoint
from headstart.training.context import make_callbacks, make_loader, run_trainer
from headstart.training.distributed import make_fabric
from headstart.training.modes import MODES, RunContext, fit_auto, run_features, run_finetune
from headstart.training.modes.finetune import _stage_count, freeze_bn_wanted

SPEC = get_spec("efficientnet_lite0")
CLASSES = ("red", "green", "blue")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """What every RunContext here shares: the data, its decoded splits, a pristine network and the engine."""
    root = make_synthetic_dataset(tmp_path_factory.mktemp("modes") / "data", classes=CLASSES,
                                  per_split={"train": 4, "val": 2, "test": 2})
    pre = SPEC.preprocessing.with_crop(64)
    decoded = {split: decode_split(items, short_side=pre.resize_size, interpolation=pre.interpolation, threads=2)
               for split, items in discover(root).splits.items()}
    torch.manual_seed(0)
    net = build_network(SPEC, len(CLASSES), pretrained=False)
    fabric = make_fabric(accelerator="cpu", precision="32-true", devices=1, num_nodes=1, strategy="auto")
    return SimpleNamespace(root=root, pre=pre, decoded=decoded, net=net, fabric=fabric)


def _context(world, cache_dir, **settings) -> RunContext:
    settings = {"batch_size": 8, "extract_engine": "torch", "report": False, **settings}
    cfg = TrainConfig(data=str(world.root), backbone=SPEC.name, **settings).resolved()
    return RunContext(cfg=cfg, spec=SPEC, preprocessing=world.pre, net=copy.deepcopy(world.net),
                      decoded=world.decoded, class_weights=None, fabric=world.fabric, accelerator="cpu",
                      precision="32-true", model_id=f"{SPEC.name}|random-for-tests", cache=FeatureCache(cache_dir))


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers (BatchNorm's running statistics too), copied."""
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def _changed(before: dict, module: torch.nn.Module) -> set[str]:
    after = module.state_dict()
    return {name for name, value in before.items() if not torch.equal(value, after[name])}


def _stage_of(name: str) -> int | None:
    return next((i for i, prefixes in enumerate(SPEC.stages) if in_stage(name, prefixes)), None)


def test_modes_names_exactly_the_configs_modes():
    assert set(MODES) == set(config.MODES) and len(MODES) == len(config.MODES)
    assert MODES["features"] is run_features and MODES["finetune"] is run_finetune and MODES["auto"] is fit_auto


@pytest.mark.parametrize(("setting", "extracted"), [("auto", "32-true"), ("bf16-mixed", "bf16-mixed")])
def test_features_are_extracted_in_fp32_under_auto_precision(world, tmp_path, setting, extracted):
    """A bf16 session (auto on a CPU with native bf16) still extracts its frozen features in fp32; only an explicit
    --precision bf16-mixed extracts them in bf16."""
    from headstart.training.context import frozen_backbone

    ctx = _context(world, tmp_path / "cache", precision=setting)
    ctx = dataclasses.replace(ctx, precision="bf16-mixed")  # what the session resolved
    assert frozen_backbone(ctx).precision == extracted


def test_features_mode_trains_only_the_head(world, tmp_path):
    ctx = _context(world, tmp_path / "cache", epochs=2, lr=0.05)
    backbone, head = _snapshot(ctx.net.backbone), _snapshot(ctx.net.head)
    result = run_features(ctx)

    assert _changed(backbone, ctx.net.backbone) == set(), "the backbone (weights and BatchNorm statistics) is frozen"
    assert _changed(head, ctx.net.head) == set(head), "every head tensor trains"
    assert not any(p.requires_grad for p in ctx.net.backbone.parameters())
    assert [row["epoch"] for row in result.history] == [1, 2]  # run_features passes the run's own epochs
    assert result.logits.keys() == result.labels.keys() == world.decoded.keys()
    for split, d in world.decoded.items():
        assert result.logits[split].shape == (len(d.labels), len(CLASSES))
        assert result.labels[split].tolist() == d.labels


def test_the_second_features_run_reads_every_feature_from_the_cache(world, tmp_path):
    settings = dict(epochs=2, lr=0.05, augment="light", views=2)
    first_ctx = _context(world, tmp_path / "cache", **settings)
    first = run_features(first_ctx)
    images = sum(len(d.labels) for d in world.decoded.values())
    train = len(world.decoded["train"].labels)
    assert first.extraction["computed"] == first.extraction["total"] == images + 2 * train  # plain + 2 views
    all_hashes = [h for d in world.decoded.values() for h in d.hashes] + 2 * world.decoded["train"].hashes
    assert sorted(first_ctx.extracted_ids) == sorted(all_hashes)

    second_ctx = _context(world, tmp_path / "cache", **settings)
    second = run_features(second_ctx)
    assert second.extraction["computed"] == 0 and second.extraction["total"] == first.extraction["total"]
    assert second_ctx.extracted_ids == []
    for a, b in zip(first.history, second.history, strict=True):  # the same features: the same training
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-6)
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-6)

    # Augmented views depend on the seed, plain ones do not: another seed recomputes only the views.
    reseeded = run_features(_context(world, tmp_path / "cache", seed=7, **settings))
    assert reseeded.extraction["computed"] == 2 * train


def test_rows_extracted_after_int8_fell_back_are_filed_as_fp32(world, tmp_path, monkeypatch):
    """int8 that misses its check on the first batch extracts in fp32 from then on: those rows, the first
    batch's included, are filed under fp32's key, so a later fp32 run finds every one of them in the cache."""
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    import headstart.extract.engines as engines

    monkeypatch.setattr(engines, "_INT8_MAX_RELATIVE_ERROR", 0.0)  # no int8 output passes
    monkeypatch.setenv("HEADSTART_CPU_INT8", "1")
    images = sum(len(d.labels) for d in world.decoded.values())
    first = run_features(_context(world, tmp_path / "cache", epochs=1, int8_features=True,
                                  extract_engine="openvino"))
    assert (first.extraction["precision"], first.extraction["computed"]) == ("32-true", images)
    second = run_features(_context(world, tmp_path / "cache", epochs=1, extract_engine="openvino"))
    assert (second.extraction["precision"], second.extraction["computed"]) == ("32-true", 0)


@pytest.mark.parametrize(("unfreeze", "views"), [("last", 0), ("last", 2), ("2", 0)])
def test_finetune_trains_the_chosen_stages_and_leaves_the_others_alone(world, tmp_path, unfreeze, views):
    """views=0: epochs run on images through every stage; views=2: the frozen prefix is cached and bypassed."""
    ctx = _context(world, tmp_path / "cache", mode="finetune", unfreeze=unfreeze, views=views, epochs=1, lr=0.05,
                   freeze_bn="off")
    before = _snapshot(ctx.net.backbone)
    result = run_finetune(ctx)
    assert result.extraction["prefix_cached"] is (views > 0)
    assert len(result.history) == 1

    count = 1 if unfreeze == "last" else int(unfreeze)
    trained = set(range(len(SPEC.stages) - count, len(SPEC.stages)))
    changed = _changed(before, ctx.net.backbone)
    assert {_stage_of(name) for name in changed} == trained, "exactly the chosen stages change"
    first_stage = {name for name in before if _stage_of(name) == 0}
    assert first_stage and not first_stage & changed, "the first stage keeps its weights and BatchNorm statistics"
    for name, p in ctx.net.backbone.named_parameters():
        assert p.requires_grad is (_stage_of(name) in trained), name
    assert result.logits["test"].shape == (len(world.decoded["test"].labels), len(CLASSES))


@pytest.mark.parametrize(("unfreeze", "expected"), [("last", 1), ("1", 1), ("3", 3), ("all", 9), ("20", 9)])
def test_stage_count(unfreeze, expected):
    assert len(SPEC.stages) == 9
    ctx = SimpleNamespace(cfg=TrainConfig(data="d", mode="finetune", unfreeze=unfreeze), spec=SPEC)
    assert _stage_count(ctx) == expected


@pytest.mark.parametrize(("freeze_bn", "batch_size", "wanted"), [
    ("on", 64, True), ("off", 2, False), ("auto", 15, True), ("auto", 16, False),
])
def test_freeze_bn_wanted(freeze_bn, batch_size, wanted):
    cfg = TrainConfig(data="d", mode="finetune", freeze_bn=freeze_bn, batch_size=batch_size)
    assert freeze_bn_wanted(cfg) is wanted


def test_make_loader_shuffles_by_its_seed_and_reads_feature_rows_whole():
    def order(seed):
        return torch.cat(list(make_loader(torch.arange(40), 8, True, seed))).tolist()

    assert order(3) == order(3) and sorted(order(3)) == list(range(40))
    assert order(3) != order(4)
    assert torch.cat(list(make_loader(torch.arange(10), 4, False, 0))).tolist() == list(range(10))

    table = np.arange(12, dtype=np.float32).reshape(6, 2)
    rows = FeatureRows([table], np.zeros(6, dtype=np.int64), np.arange(6), labels=[5, 4, 3, 2, 1, 0])
    loader = make_loader(rows, 4, False, 0)
    assert loader.collate_fn == FeatureRows.collate  # the batch as __getitems__ gathers it, not stacked row by row
    features, labels = next(iter(loader))
    assert features.tolist() == table[:4].tolist() and labels.tolist() == [5, 4, 3, 2]


def test_make_callbacks_keeps_the_best_first_and_the_resume_state_last():
    def ctx(**settings):
        save_resume = settings.pop("save_resume", None)
        return SimpleNamespace(cfg=TrainConfig(data="d", **settings), save_checkpoint=None, save_resume=save_resume)

    best, callbacks = make_callbacks(ctx())
    assert isinstance(best, BestCheckpoint) and callbacks == [best]
    marker = object()
    best, callbacks = make_callbacks(ctx(early_stop=3, save_resume=lambda state: None), extra=[marker])
    assert [type(c) for c in callbacks] == [BestCheckpoint, object, EarlyStopping, ResumeCheckpoint]
    assert callbacks[0] is best and callbacks[1] is marker and callbacks[2].patience == 3


class _Trainer:
    def __init__(self, phase):
        self.phase, self.epoch, self.loaded = phase, 0, None

    def load_state_dict(self, state):
        self.loaded, self.epoch = state, state["epoch"]

    def fit(self, train, val, epochs):
        return [{"epoch": e} for e in range(self.epoch + 1, epochs + 1)]


def test_run_trainer_restores_only_its_own_phase_once():
    state = {"phase": "finetune", "epoch": 2}
    ctx = SimpleNamespace(resume_state=state)
    features = _Trainer("features")
    assert run_trainer(ctx, features, [], [], 3) == [{"epoch": 1}, {"epoch": 2}, {"epoch": 3}]
    assert features.loaded is None and ctx.resume_state is state  # kept for the phase it belongs to
    tuned = _Trainer("finetune")
    assert run_trainer(ctx, tuned, [], [], 3) == [{"epoch": 3}]
    assert tuned.loaded is state and ctx.resume_state is None
