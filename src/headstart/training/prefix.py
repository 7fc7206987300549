"""Caching the frozen prefix of a partly fine-tuned backbone.

When only the last stages train, everything before them computes the same thing every epoch for the same
input. We record the order in which modules run (forward pre-hooks: no tracing, so it works for any model),
swap the frozen modules that run before the first trainable stage for Identity, and feed the network their
cached output instead of the image. The swap is verified: the patched network on the cached activation must
reproduce the full forward pass, else the caller falls back to the plain image path.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import torch
from torch import nn

from headstart.backbones.spec import in_stage

__all__ = ["FrozenPrefix", "PrefixMemo", "find_frozen_prefix"]

log = logging.getLogger(__name__)


class PrefixMemo:
    """Prefix activations kept across fine-tuning runs on the same images (auto mode's folds and refit): one
    table per (augmentation preset, view), by image content hash, and the seconds spent computing them."""

    def __init__(self):
        self.tables: dict[tuple[str, int], dict[str, torch.Tensor]] = {}
        self.seconds = 0.0

    def table(self, preset: str, view: int) -> dict[str, torch.Tensor]:
        return self.tables.setdefault((preset, view), {})

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for table in self.tables.values() for t in table.values())


class FrozenPrefix:
    """The modules of `body` that run before `boundary` (a module name), and how to bypass them.

    `chain`: the bypassed modules as one nn.Sequential, when running them one after the other is all the prefix
    does (checked, like the bypass): a plain module, which a compiled engine can export and run several times
    faster than the hooked forward pass. None when the body's forward does more between them.
    """

    def __init__(self, body: nn.Module, boundary: str, bypassed: list[str]):
        self.body = body
        self.boundary = boundary
        self.bypassed = bypassed
        self.chain: nn.Sequential | None = None

    @torch.inference_mode()
    def activations(self, images: torch.Tensor) -> torch.Tensor:
        """The input that the first trainable module receives for these images."""
        captured: list[torch.Tensor] = []

        def grab(module, args):
            captured.append(args[0])
            raise _Stop

        handle = self.body.get_submodule(self.boundary).register_forward_pre_hook(grab)
        was_training = self.body.training
        self.body.eval()  # frozen: BatchNorm uses its running statistics, as in training's frozen part
        try:
            self.body(images)
        except _Stop:
            pass
        finally:
            handle.remove()
            self.body.train(was_training)
        return captured[0]

    @contextmanager
    def bypassed_modules(self):
        """Within the block, the bypassed modules are Identity: body(activation) == body(image)."""
        originals = {name: self.body.get_submodule(name) for name in self.bypassed}
        try:
            for name in self.bypassed:
                self.body.set_submodule(name, nn.Identity())
            yield self.body
        finally:
            for name, module in originals.items():
                self.body.set_submodule(name, module)


class _Stop(Exception):
    """Raised by the capture hook: nothing after the boundary needs computing."""


def find_frozen_prefix(body: nn.Module, trainable_prefixes: tuple[str, ...], sample: torch.Tensor
                       ) -> FrozenPrefix | None:
    """A verified FrozenPrefix for `body`, or None when the bypass does not reproduce the forward pass.

    trainable_prefixes: parameter-name prefixes of the stages that train (the spec's stage entries).
    """
    order: list[str] = []
    handles = [m.register_forward_pre_hook(lambda mod, args, name=name: order.append(name))
               for name, m in body.named_modules() if name]
    was_training = body.training
    body.eval()
    try:
        with torch.inference_mode():
            expected = body(sample)
    finally:
        for h in handles:
            h.remove()
    boundary_index = next((i for i, name in enumerate(order) if in_stage(name, trainable_prefixes)), None)
    if boundary_index is None or boundary_index == 0:
        body.train(was_training)
        return None
    boundary = order[boundary_index]
    after = set(order[boundary_index:])
    before = [n for n in dict.fromkeys(order[:boundary_index]) if n not in after]
    # Bypass maximal subtrees only: a module none of whose descendants runs after the boundary.
    blocked = {n for n in before for a in after if a.startswith(n + ".")}
    candidates = [n for n in before if n not in blocked]
    bypassed = [n for n in candidates if not any(n.startswith(c + ".") for c in candidates if c != n)]
    prefix = FrozenPrefix(body, boundary, bypassed)
    try:
        activation = prefix.activations(sample)
        with prefix.bypassed_modules(), torch.inference_mode():
            replayed = body(activation)
        ok = replayed.shape == expected.shape and torch.allclose(replayed, expected, rtol=1e-4, atol=1e-5)
        prefix.chain = _verified_chain(body, bypassed, sample, activation) if ok else None
    except Exception as exc:  # any model whose forward does more than chain modules: not bypassable
        log.info("frozen prefix not cacheable (%s: %s); training on images", type(exc).__name__, exc)
        ok = False
    finally:
        body.train(was_training)
    if not ok:
        return None
    log.info("caching the frozen prefix: %d modules bypassed, boundary %s, activation %s%s", len(bypassed), boundary,
             tuple(activation.shape[1:]), "" if prefix.chain is None else ", as a plain module chain")
    return prefix


def _verified_chain(body: nn.Module, bypassed: list[str], sample: torch.Tensor, activation: torch.Tensor
                    ) -> nn.Sequential | None:
    """The bypassed modules in a row, if that reproduces `activation` (body already in eval mode)."""
    chain = nn.Sequential(*[body.get_submodule(name) for name in bypassed])  # shares the modules: no copy
    try:
        with torch.inference_mode():
            got = chain(sample)
    except Exception:  # the modules do not compose on their own (a forward with more than module calls)
        return None
    same = got.shape == activation.shape and torch.allclose(got, activation, rtol=1e-4, atol=1e-5)
    return chain if same else None
