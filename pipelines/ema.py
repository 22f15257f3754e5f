"""An exponential moving average of a model's weights, to evaluate with (Myrtle.ai part 8).

As Myrtle's ``update_ema(momentum=0.99, update_freq=5)`` (davidcpage/cifar10-fast ``torch_backend.py``): every
``every`` steps (the steps whose index, from 0, is a multiple of ``every``) each floating-point tensor of the
model's state -- parameters and batch-norm running means and variances alike -- moves as
``ema = rho * ema + (1 - rho) * current`` with ``rho = momentum ** every``: the time constant of a per-step EMA
of ``momentum``, at 1/``every`` of its cost. Integer buffers (batch norm's ``num_batches_tracked``) are copied, not
averaged (Myrtle skips them). The average starts from the model's state when made (Myrtle's ``deepcopy``), or when
:meth:`reset`.

airbench's variant (Lookahead: the average is copied back into the trained weights, its decay warmed up from 0)
is not this: here training never sees the average; only evaluation does, through :meth:`applied`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class EMA:
    """The moving average of ``model``'s state. ``momentum``: per step, in (0, 1); ``every``: steps per update.

    Tensors are updated and swapped in place (foreach kernels, no host sync), so a compiled model or a captured
    CUDA graph keeps reading the same memory.
    """

    def __init__(self, model: nn.Module, *, momentum: float, every: int = 5) -> None:
        if not 0 < momentum < 1:
            raise ValueError(f"momentum must be in (0, 1), got {momentum}")
        if every < 1:
            raise ValueError(f"every must be >= 1 step, got {every}")
        self.every = every
        self.rho = momentum**every  # the decay of one update, standing for ``every`` steps
        tensors = list(itertools.chain(model.parameters(), model.buffers()))
        self._floats = [t for t in tensors if t.is_floating_point()]
        self._others = [t for t in tensors if not t.is_floating_point()]
        self.floats = [t.detach().clone() for t in self._floats]  # the average, aligned with the model's
        self.others = [t.detach().clone() for t in self._others]

    @torch.no_grad()
    def reset(self) -> None:
        """Start the average again from the model's current state (a new run on a reused model)."""
        torch._foreach_copy_(self.floats, self._floats)
        torch._foreach_copy_(self.others, self._others)

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Call after the optimizer step ``step`` (from 0): averages when ``step`` is a multiple of ``every``."""
        if step % self.every:
            return
        torch._foreach_lerp_(self.floats, self._floats, 1.0 - self.rho)
        torch._foreach_copy_(self.others, self._others)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Inside, the model holds the average (weights and batch-norm statistics); after, its own state again."""
        with torch.no_grad():
            saved = [t.detach().clone() for t in self._floats + self._others]
            torch._foreach_copy_(self._floats + self._others, self.floats + self.others)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self._floats + self._others, saved)
