"""An export scored against the PyTorch model it came from: top-1 agreement, the change in accuracy and in ECE,
the max logit difference, and speed (latency p50 for one image, throughput at batch 32) on its own runtime."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np

from headstart.runtime.metrics import expected_calibration_error, softmax

__all__ = ["agreement", "timing"]

BATCH = 32


def agreement(reference: np.ndarray, logits: np.ndarray, labels: Sequence[int] | None, temperature: float
              ) -> dict:
    """The export's logits against PyTorch's on the same images (each side preprocessing as its engine does).

    ECE is after temperature scaling (the confidences a client sees); changes are export minus PyTorch."""
    reference, logits = np.asarray(reference, np.float64), np.asarray(logits, np.float64)
    out: dict = {
        "n": len(reference),
        "top1_agreement": float((reference.argmax(1) == logits.argmax(1)).mean()) if len(reference) else 1.0,
        "max_abs_logit_diff": float(np.abs(reference - logits).max()) if len(reference) else 0.0,
    }
    if labels is not None and len(labels):
        labels = np.asarray(labels)
        acc_ref, acc = float((reference.argmax(1) == labels).mean()), float((logits.argmax(1) == labels).mean())
        ece_ref = expected_calibration_error(softmax(reference, temperature), labels)
        ece = expected_calibration_error(softmax(logits, temperature), labels)
        out.update(accuracy_torch=acc_ref, accuracy=acc, accuracy_change=acc - acc_ref,
                   ece_torch=ece_ref, ece=ece, ece_change=ece - ece_ref)
    return out


def _median_seconds(fn: Callable[[], object], repeats: int, budget_s: float) -> float:
    fn()  # warm-up: first-run allocations and lazy compilation
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < repeats and (len(times) < 3 or time.perf_counter() < deadline):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def timing(run: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray, *, repeats: int = 30,
           budget_s: float = 4.0) -> dict:
    """Latency p50 (ms) for one preprocessed image and throughput (images/s) for a batch of 32, the model call
    alone (preprocessing excluded); the batch repeats `inputs` as needed."""
    one = inputs[:1]
    batch = np.ascontiguousarray(np.resize(inputs, (BATCH, *inputs.shape[1:])))
    latency = _median_seconds(lambda: run(one), repeats, budget_s / 2)
    per_batch = _median_seconds(lambda: run(batch), max(3, repeats // 6), budget_s / 2)
    return {"latency_p50_ms": latency * 1000, "throughput_ips": BATCH / per_batch, "batch": BATCH}
