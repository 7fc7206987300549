"""Auto mode's search: candidates cheapest first, every one scored on the same folds, within the run's budget.

1. heads on the run's backbone's cached features (optuna over the L2 strength; heads.py), on its pooled
   features alone and joined by the pooled outputs of three inner stages (backbones.model.Tapped), both from
   one extraction;
2. the same on every other backbone whose weights are installed offline, while its extraction fits the budget;
3. the best candidate's heads trained on K augmented views of each image as well, K as the budget allows;
4. fine-tuning the best backbone's last stage, then its last two (finetune.py), each scored on the same folds
   (one training per fold), while their folds and a refit fit the budget.
Each phase is planned from the throughput measured so far and skipped, with the reason, when it would not fit.
The winner is the cheapest candidate within one standard error of the best mean held-out accuracy (_best), so
it is never a candidate that an earlier, cheaper one beat. The test split is never read here.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from headstart.config import budget_seconds
from headstart.training.context import RunContext, frozen_backbone, report_progress, split_features
from headstart.training.errors import TrainingInterrupted
from headstart.training.search.finetune import FoldsOutOfBudget, fold_finetune
from headstart.training.search.folds import selection_folds
from headstart.training.search.heads import search_head
from headstart.training.search.plan import SearchBackbone, relative_cost, search_backbones

__all__ = ["Candidate", "FeatureSet", "SearchResult", "search"]

log = logging.getLogger(__name__)

TRIALS = 16  # optuna trials per feature set
VIEW_PRESET = "light"
MAX_VIEWS = 4
RESERVE_FRACTION, MIN_RESERVE = 0.05, 10.0  # of the budget, kept for the refit, the run directory and its report
REPORT_SECONDS = 15.0  # kept for report.html (Grad-CAM, figures) when the run writes one
FALLBACK_RATE = 0.05  # seconds per image at 224 px, until an extraction has been timed
FINETUNE_STAGES = (1, 2)  # how many of the last stages a fine-tuning candidate trains, cheaper first


@dataclass
class FeatureSet:
    """A backbone's features of the pool (train, then val images), center crops and augmented views: the inner
    stages' pooled outputs first, then the backbone's own pooled features (its last `final` columns)."""

    backbone: SearchBackbone
    ctx: RunContext  # its network is the Tapped one when the backbone has stages to tap
    frozen: object  # the FrozenBackbone that extracted them: reused for views and the test split
    center: np.ndarray  # [N, D]
    final: int  # the width of the backbone's own features
    views: np.ndarray | None = None  # [V, N, D]
    seconds: float = 0.0  # spent extracting them

    @property
    def tapped(self) -> bool:
        return self.center.shape[1] > self.final

    def columns(self, stages: bool) -> slice:
        return slice(0, None) if stages else slice(self.center.shape[1] - self.final, None)


@dataclass
class Candidate:
    name: str
    family: str  # "head" | "views" | "finetune"
    backbone: str
    recipe: dict  # the head's parameters, and the number of views
    fold_scores: list[float]
    loss: float
    seconds: float
    oof_logits: np.ndarray = field(repr=False)
    trials: int = 0
    memo: object = field(default=None, repr=False)  # a fine-tuning candidate's PrefixMemo, for its refit

    @property
    def mean(self) -> float:
        return float(np.mean(self.fold_scores))

    @property
    def std(self) -> float:
        return float(np.std(self.fold_scores))

    def row(self) -> dict:
        return {"name": self.name, "family": self.family, "backbone": self.backbone, "recipe": self.recipe,
                "cv_mean": self.mean, "cv_std": self.std, "fold_scores": self.fold_scores, "cv_loss": self.loss,
                "seconds": self.seconds, "trials": self.trials}


@dataclass
class SearchResult:
    candidates: list[Candidate]
    features: dict[str, FeatureSet]  # by backbone name
    selection: str
    folds: list
    pool_labels: np.ndarray
    budget: float | None
    seconds: float
    skipped: list[dict] = field(default_factory=list)

    @property
    def winner(self) -> Candidate:
        return _best(self.candidates, _held_out(self.folds))

    def summary(self) -> dict:
        winner = self.winner
        return {"budget_seconds": self.budget, "seconds": self.seconds, "selection": self.selection,
                "folds": len(self.folds), "winner": winner.name,
                "candidates": [dict(c.row(), winner=c is winner) for c in self.candidates], "skipped": self.skipped}


def _held_out(folds: list) -> int:
    return sum(len(held) for _, held in folds)


def _best(candidates: list[Candidate], held_out: int = 0) -> Candidate | None:
    """The one-standard-error rule (Hastie et al., The Elements of Statistical Learning, 7.10): the earliest
    (cheapest) candidate whose mean held-out accuracy is within one standard error of the top one's. With a few
    hundred images, a costlier candidate ahead by an image or two is as likely luck as skill, and picking the
    maximum of many noisy scores favours luck. The top one: the best mean, then the lower held-out loss, then
    the earlier. Its standard error: the fold scores' spread / sqrt(folds); with one split, the binomial one on
    its `held_out` images."""
    if not candidates:
        return None
    top = sorted(enumerate(candidates), key=lambda ic: (-ic[1].mean, ic[1].loss, ic[0]))[0][1]
    folds = len(top.fold_scores)
    if folds > 1:
        error = float(np.std(top.fold_scores, ddof=1)) / np.sqrt(folds)
    else:
        error = float(np.sqrt(top.mean * (1 - top.mean) / held_out)) if held_out else 0.0
    return next(c for c in candidates if c.mean >= top.mean - error - 1e-12)


class _OutOfBudget(Exception):
    pass


class _Search:
    def __init__(self, ctx: RunContext, backbones: list[SearchBackbone], tail_images: int):
        self.ctx, self.cfg, self.backbones = ctx, ctx.cfg, backbones
        self.started = time.perf_counter()
        self.budget = budget_seconds(ctx.cfg.budget) if ctx.cfg.budget else None  # the whole run's
        self.tail_images = tail_images  # the test images the kept model is scored on after the search
        train, val = ctx.decoded["train"], ctx.decoded["val"]
        self.labels = np.array(train.labels + val.labels, dtype=np.int64)
        self.num_classes = ctx.net.head[-1].out_features
        val_index = np.arange(len(train.labels), len(self.labels))
        self.folds, self.selection = selection_folds(self.labels, val_index, ctx.cfg.seed)
        self.rate: float | None = None  # extraction seconds per image per unit of relative cost
        self.trial_rate: float | None = None  # head-search seconds per trial per training row
        self.candidates: list[Candidate] = []
        self.features: dict[str, FeatureSet] = {}
        self.skipped: list[dict] = []
        self.refit_reserve = 0.0  # seconds the best candidate's refit needs after the search (fine-tuning)

    @property
    def stop_at(self) -> float:
        """When the search must end: the run's deadline less what the kept model still needs (its test features,
        the run directory, the report), re-estimated as throughput is measured."""
        if self.ctx.deadline is None:
            return float("inf")
        rate = self.rate if self.rate is not None else FALLBACK_RATE
        tail = self.tail_images * rate * max(b.relative_cost for b in self.backbones)
        tail += REPORT_SECONDS if self.cfg.report else 0.0
        tail += self.refit_reserve  # a fine-tuned leader's refit, which runs after the search
        tail += self._own_decode_reserve(rate)
        return self.ctx.deadline - max(MIN_RESERVE, RESERVE_FRACTION * (self.budget or 0)) - tail

    def _own_decode_reserve(self, rate: float) -> float:
        """A head leader on a backbone whose native size differs from the search's decode is refitted on the
        pool decoded at its own size, its features (center and views) extracted again (modes/auto.py,
        _pool_as_deployed): their extraction, budgeted like the test split's."""
        leader = self.best()
        if leader is None or leader.family == "finetune":
            return 0.0
        backbone = next(b for b in self.backbones if b.name == leader.backbone)
        if backbone.preprocessing.resize_size == self.ctx.decoded["train"].short_side:
            return 0.0
        return len(self.labels) * (1 + leader.recipe.get("views", 0)) * rate * backbone.relative_cost

    def left(self) -> float:
        return self.stop_at - time.perf_counter()

    def best(self, among: list[Candidate] | None = None) -> Candidate | None:
        return _best(self.candidates if among is None else among, _held_out(self.folds))

    def skip(self, name: str, reason: str) -> None:
        log.info("auto: skipping %s: %s", name, reason)
        self.skipped.append({"name": name, "reason": reason})

    def _context(self, backbone: SearchBackbone) -> RunContext:
        """The backbone's network with its inner stages tapped (when it has some): one extraction gives both
        feature sets; its own features are the last columns."""
        from headstart.backbones.model import build_network, tap_names
        from headstart.extract.feature_cache import model_id

        spec, taps = backbone.spec, tap_names(backbone.spec)
        if not taps and spec.name == self.ctx.spec.name:
            return self.ctx
        net = build_network(spec, self.num_classes, weights=backbone.weights, dropout=self.cfg.dropout, taps=taps)
        identity = model_id(spec.name, spec.weights.kind, spec.weights.ref, backbone.weights)
        return dataclasses.replace(self.ctx, spec=spec, preprocessing=backbone.preprocessing, net=net,
                                   model_id=identity + (f"|taps={','.join(taps)}" if taps else ""))

    def _extract(self, ctx: RunContext, frozen, preset: str, view: int, bounded: bool = True) -> np.ndarray:
        """Pool features (train then val rows) for one view; raises _OutOfBudget past the search's end when
        bounded (the first backbone's are not: without them there is no model)."""
        def stop() -> bool:
            return ctx.should_stop() or (bounded and time.perf_counter() > self.stop_at)

        stoppable = dataclasses.replace(ctx, should_stop=stop)
        parts, computed, started = [], 0, time.perf_counter()
        try:
            for split in ("train", "val"):
                rows, n = split_features(stoppable, frozen, split, preset, view)
                parts.append(rows.features())
                computed += n
        except TrainingInterrupted:
            if ctx.should_stop():
                raise  # the user's Ctrl-C, not the budget
            raise _OutOfBudget from None
        if computed and self.rate is None:
            self.rate = (time.perf_counter() - started) / computed / relative_cost(ctx.preprocessing)
        return np.concatenate(parts)

    def estimate_extraction(self, backbone: SearchBackbone, views: int = 1) -> float:
        rate = self.rate if self.rate is not None else FALLBACK_RATE
        return rate * backbone.relative_cost * len(self.labels) * views

    def estimate_heads(self, rows: int) -> float:
        return 0.0 if self.trial_rate is None else self.trial_rate * rows * TRIALS

    def heads(self, fs: FeatureSet, family: str, stages: bool) -> None:
        views = 0 if fs.views is None else len(fs.views)
        name = fs.backbone.name + (" · multi-stage" if stages else "") + " · linear head" + (
            f" + {views} {VIEW_PRESET} views" if views else "")
        best = self.best()
        task = f"search {fs.backbone.name}" + (" stages" if stages else "") + (f" +{views} views" if views else "") \
            + (f" (best {best.mean:.3f})" if best else "")
        started = time.perf_counter()
        cols = fs.columns(stages)
        result = search_head(fs.center[:, cols], None if fs.views is None else fs.views[:, :, cols], self.labels,
                             self.folds, self.num_classes, seed=self.cfg.seed, trials=TRIALS, deadline=self.stop_at,
                             progress=lambda done, total: report_progress(self.ctx, task, done, total))
        seconds = time.perf_counter() - started
        rows = len(self.labels) * (1 + views) * (fs.center.shape[1] if stages else fs.final) / fs.final
        if self.trial_rate is None:
            self.trial_rate = seconds / max(result.trials, 1) / rows
        recipe = dict(result.best.params, views=views, stages=stages)
        self.candidates.append(Candidate(name, family, fs.backbone.name, recipe, result.best.fold_scores,
                                         result.best.loss, seconds + fs.seconds, result.best.oof_logits,
                                         result.trials))
        log.info("auto: %s: %.4f ± %.4f (%d trials)", name, self.candidates[-1].mean, self.candidates[-1].std,
                 result.trials)

    def backbone_phase(self, backbone: SearchBackbone, first: bool) -> None:
        if not first:
            needed = self.estimate_extraction(backbone) + 2 * self.estimate_heads(len(self.labels))
            if needed > self.left():
                self.skip(f"{backbone.name} · linear head",
                          f"needs about {needed:.0f} s, {max(self.left(), 0):.0f} s left")
                return
        ctx = self._context(backbone)
        frozen = frozen_backbone(ctx)
        started = time.perf_counter()
        try:
            center = self._extract(ctx, frozen, "none", 0, bounded=not first)
        except _OutOfBudget:
            self.skip(f"{backbone.name} · linear head", "the budget ran out during its extraction")
            return
        fs = FeatureSet(backbone, ctx, frozen, center, backbone.spec.in_features,
                        seconds=time.perf_counter() - started)
        self.features[backbone.name] = fs
        self.heads(fs, "head", stages=False)
        if fs.tapped:
            self.heads(fs, "head", stages=True)

    def views_phase(self) -> None:
        best = self.best()
        fs = self.features[best.backbone]
        per_view = self.estimate_extraction(fs.backbone)
        stages = best.recipe["stages"]
        name = f"{best.backbone}{' · multi-stage' if stages else ''} · linear head + {VIEW_PRESET} views"
        affordable = 0
        for views in range(1, MAX_VIEWS + 1):
            if per_view * views + self.estimate_heads(len(self.labels) * (1 + views)) <= self.left():
                affordable = views
        if affordable == 0:
            self.skip(name, f"one view needs about {per_view:.0f} s, {max(self.left(), 0):.0f} s left")
            return
        started = time.perf_counter()
        try:
            views = np.stack([self._extract(fs.ctx, fs.frozen, VIEW_PRESET, v) for v in range(1, affordable + 1)])
        except _OutOfBudget:
            self.skip(name, "the budget ran out during the views' extraction")
            return
        with_views = dataclasses.replace(fs, views=views, seconds=fs.seconds + time.perf_counter() - started)
        self.features[best.backbone] = with_views  # the views are the winner's if this candidate wins
        self.heads(with_views, "views", stages=stages)

    def _finetune_unfit(self) -> str | None:
        """Why no fine-tuning candidate can run here, or None."""
        train, val = self.ctx.decoded["train"], self.ctx.decoded["val"]
        if self.ctx.world > 1 or train.images is None or val.images is None:
            return "fine-tuning candidates run on one process, on small sets held in memory"
        if len(self.folds) == 1:
            return "fine-tuning candidates need cross-validation folds (here the val split selects)"
        if not self.cfg.views:
            return "--views 0: the frozen stages would run again every epoch"
        return None

    def finetune_phase(self) -> None:
        """Fine-tune the best head's backbone (its plain network): the last stage, then the last two."""
        best = self.best([c for c in self.candidates if c.family != "finetune"])
        fs = self.features[best.backbone]
        names = [f"{best.backbone} · fine-tune last {stages} stage{'s' if stages > 1 else ''}"
                 for stages in FINETUNE_STAGES[:len(fs.backbone.spec.stages)]]
        unfit = self._finetune_unfit()
        if unfit and names:
            self.skip(names[0], unfit)
            return
        for stages, name in zip(FINETUNE_STAGES, names):
            # Its prefix runs once per image and view: at most the cost of as many extractions.
            views = 1 + (self.cfg.views if self.cfg.augment != "none" else 0)
            activations = self.estimate_extraction(fs.backbone, views=views)
            if 2 * activations > self.left():
                self.skip(name, f"its activations alone need about {activations:.0f} s, "
                                f"{max(self.left(), 0):.0f} s left")
                return
            started = time.perf_counter()
            task = f"fine-tune {best.backbone} last {stages} (best {self.best().mean:.3f})"
            try:
                folds = fold_finetune(self.ctx, fs.backbone, stages, self.folds, self.labels, lambda: self.stop_at,
                                      task, reserved=self.refit_reserve)
            except FoldsOutOfBudget as exc:
                self.skip(name, str(exc))
                return
            except TrainingInterrupted:
                raise
            except Exception as exc:  # a diverging or failing candidate must not cost the run its heads
                log.warning("auto: %s failed: %s: %s", name, type(exc).__name__, exc, exc_info=True)
                self.skip(name, f"failed: {type(exc).__name__}: {exc}")
                return
            recipe = {"unfreeze": stages, "epochs": self.cfg.epochs, "lr": self.cfg.lr, "augment": self.cfg.augment,
                      "views": self.cfg.views, "stages": False}
            candidate = Candidate(name, "finetune", best.backbone, recipe, folds.scores, folds.loss,
                                  time.perf_counter() - started, folds.oof_logits, trials=1, memo=folds.memo)
            refit = folds.refit_seconds
            del folds  # the memo lives on in the candidate only while it leads (its refit needs it)
            self.candidates.append(candidate)
            log.info("auto: %s: %.4f ± %.4f", name, candidate.mean, candidate.std)
            leader = self.best()
            for other in self.candidates:
                if other is not leader:
                    other.memo = None
            if leader is candidate:  # later candidates must leave time for its refit
                self.refit_reserve = refit
            del candidate

def search(ctx: RunContext, tail_images: int = 0) -> SearchResult:
    """Run the candidates that fit the budget and return them all, with the features the winner needs.
    tail_images: how many test images the kept model will be scored on (their extraction is budgeted)."""
    backbones = search_backbones(ctx.cfg, ctx.spec, ctx.preprocessing)
    s = _Search(ctx, backbones, tail_images)
    log.info("auto: selecting by %s; search budget %.0f s", s.selection, s.left())
    for i, backbone in enumerate(backbones):
        s.backbone_phase(backbone, first=i == 0)
    s.views_phase()
    s.finetune_phase()
    return SearchResult(s.candidates, s.features, s.selection, s.folds, s.labels, s.budget,
                        time.perf_counter() - s.started, s.skipped)
