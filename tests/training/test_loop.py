"""The pure training step: gradient accumulation weighs every batch alike, the last short window included."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from headstart.training.loop import train_one_epoch


class _OneProcess:
    world_size = 1
    backward = staticmethod(lambda loss: loss.backward())
    autocast = staticmethod(contextlib.nullcontext)
    to_device = staticmethod(lambda batch: batch)
    no_backward_sync = staticmethod(lambda model, enabled=True: contextlib.nullcontext())


def test_accumulation_averages_each_window_including_a_short_last_one():
    torch.manual_seed(0)
    batches = [(torch.randn(4, 3), torch.randint(0, 2, (4,))) for _ in range(3)]
    model = nn.Linear(3, 2)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    train_one_epoch(model, batches, optimizer, None, nn.CrossEntropyLoss(), _OneProcess, accumulate=2)

    expected = nn.Linear(3, 2)
    expected.load_state_dict(start)
    manual = torch.optim.SGD(expected.parameters(), lr=0.5)
    for window in (batches[:2], batches[2:]):  # steps after batches 1+2 (their mean), then batch 3 alone
        manual.zero_grad()
        (sum(nn.functional.cross_entropy(expected(x), y) for x, y in window) / len(window)).backward()
        manual.step()
    for name, value in expected.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value)
