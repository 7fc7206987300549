#!/usr/bin/env python
"""What Lightning Fabric costs a one-process run: its import after torch and timm, building and setting up,
and the head's training steps through `fabric.backward` vs plain `loss.backward` (same model, data and seed).

    python benchmarks/fabric_overhead.py
"""

from __future__ import annotations

import json
import time

import timm  # noqa: F401  (imported first, as in a run: the cost measured is Fabric's own)
import torch
from torch import nn

STEPS, BATCH, FEATURES, CLASSES = 300, 32, 1280, 3


def _steps(model, optimizer, backward, data) -> float:
    started = time.perf_counter()
    for x, y in data:
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        backward(loss)
        optimizer.step()
    return time.perf_counter() - started


def main() -> None:
    torch.set_num_threads(1)  # as the head trains in a run
    torch.manual_seed(0)
    data = [(torch.randn(BATCH, FEATURES), torch.randint(0, CLASSES, (BATCH,))) for _ in range(STEPS)]
    started = time.perf_counter()
    from lightning_fabric import Fabric
    imported = time.perf_counter() - started

    rows = {"import_lightning_fabric_s": imported}
    for side in ("plain", "fabric", "plain", "fabric"):  # alternating: a busy machine shifts both alike
        torch.manual_seed(0)
        model = nn.Sequential(nn.Dropout(0.2), nn.Linear(FEATURES, CLASSES))
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        if side == "fabric":
            started = time.perf_counter()
            fabric = Fabric(accelerator="cpu", devices=1, precision="32-true")
            model, optimizer = fabric.setup(model, optimizer)
            rows["fabric_setup_s"] = time.perf_counter() - started
            seconds = _steps(model, optimizer, fabric.backward, data)
        else:
            seconds = _steps(model, optimizer, lambda loss: loss.backward(), data)
        rows.setdefault(f"{side}_{STEPS}_steps_s", []).append(seconds)
    best = {side: min(rows[f"{side}_{STEPS}_steps_s"]) for side in ("plain", "fabric")}
    rows["per_step_overhead_ms"] = (best["fabric"] - best["plain"]) / STEPS * 1000
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
