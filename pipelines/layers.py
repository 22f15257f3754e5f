"""Layer variants of Myrtle.ai's bag of tricks and airbench: the activation, ghost batch norm, batch-norm scales
frozen at 1, and the SGD param groups that give batch-norm biases their own LR and weight-decay scales.

Sources: davidcpage/cifar10-fast (``torch_backend.py``'s ``GhostBatchNorm`` and ``BatchNorm(weight_freeze=...)``;
``new_dawn.py``: ``GhostBatchNorm(num_splits=16, weight_freeze=True)``, ``CELU(alpha=0.3)``, bias LR x16 and
weight decay /16) and KellerJordan/cifar10-airbench (``airbench94.py``: GELU, BN weights frozen, BN biases' LR x64
with the decoupled weight decay unchanged, i.e. torch's coupled decay /64).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from pipelines.config import ACTIVATIONS

# Myrtle.ai part 8 ("bag of tricks"): CELU with alpha 0.075 while the BN scales learn; with the scales frozen at 1
# (they settle near 1/4 when learned) new_dawn.py multiplies alpha by 4: CELU(alpha=0.3). Dimensionless.
MYRTLE_CELU_ALPHA = 0.075


def activation(name: str, *, celu_alpha: float = MYRTLE_CELU_ALPHA) -> nn.Module:
    """A fresh activation module: ``relu`` (the recipe's, in place), ``celu`` (Myrtle: smooth, alpha = the scale
    of its negative saturation) or ``gelu`` (airbench; the exact erf form, torch's default)."""
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "celu":
        return nn.CELU(alpha=celu_alpha)
    if name == "gelu":
        return nn.GELU()
    raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {name!r}")


class GhostBatchNorm2d(nn.BatchNorm2d):
    """Batch norm whose training-time statistics come from chunks of ``ghost_batch`` images (Myrtle.ai part 8:
    chunks of 32 in batches of 512, ``num_splits=16``); in eval mode it is plain BatchNorm2d on the running stats.

    Training: a batch of N = S * ghost_batch images, float (N, C, H, W) in any memory format, is split along the
    batch into S contiguous chunks (a view, no copy); each chunk is normalised by its own per-channel mean and
    biased variance (statistics in float32, the output in the input's dtype). A batch that is not a multiple of
    ``ghost_batch`` raises ValueError (a shape check, static under torch.compile).

    Running statistics: one (C,) pair, moved by ``momentum`` towards the mean over chunks of the chunk means and
    of the chunk's unbiased variances. Myrtle keeps S pairs, moves each towards its own chunk's, and averages them
    when switching to eval; the average of S such averages is this one pair, so eval matches without the lazy
    collation in ``train()`` (which a compiled or captured model would not replay).
    """

    def __init__(self, num_features: int, *, ghost_batch: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)
        if ghost_batch < 1:
            raise ValueError(f"ghost_batch must be >= 1 images, got {ghost_batch}")
        self.ghost_batch = ghost_batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        n, c, h, w = x.shape
        g = self.ghost_batch
        if n % g:
            raise ValueError(f"GhostBatchNorm2d: a batch of {n} images is not a multiple of ghost_batch = {g}")
        chunks = x.float().view(n // g, g, c, h, w)  # chunk s = images s*g .. s*g + g - 1
        var, mean = torch.var_mean(chunks, dim=(1, 3, 4), correction=0, keepdim=True)  # (S, 1, C, 1, 1)
        scale = torch.rsqrt(var + self.eps) * self.weight.view(1, 1, c, 1, 1)
        y = (chunks - mean) * scale + self.bias.view(1, 1, c, 1, 1)
        with torch.no_grad():
            count = g * h * w  # values per chunk and channel
            self.running_mean.lerp_(mean.mean(0).view(c), self.momentum)
            self.running_var.lerp_(var.mean(0).view(c) * (count / max(count - 1, 1)), self.momentum)
            self.num_batches_tracked.add_(1)
        return y.reshape(n, c, h, w).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, ghost_batch={self.ghost_batch}"


def batch_norm(channels: int, *, ghost_batch: int = 0) -> nn.BatchNorm2d:
    """BatchNorm2d, or GhostBatchNorm2d over chunks of ``ghost_batch`` images when that is > 0."""
    return GhostBatchNorm2d(channels, ghost_batch=ghost_batch) if ghost_batch > 0 else nn.BatchNorm2d(channels)


def freeze_bn_weights(model: nn.Module) -> None:
    """Every batch norm's scale fixed at 1 (weight filled with 1, requires_grad False), its bias still learned.

    Myrtle.ai part 8: learned scales settle near 1/4; fixing them at 1 instead (with CELU's alpha x4, the biases'
    LR x16 and weight decay /16) trains as well with fewer parameters to fit; airbench freezes them too. Call it
    before torch.compile (a compiled graph guards on requires_grad) and before building the optimizer;
    ``reset_parameters`` refills the weight with 1 and keeps the flag.
    """
    for module in model.modules():
        if isinstance(module, _BatchNorm) and module.weight is not None:
            with torch.no_grad():
                module.weight.fill_(1.0)
            module.weight.requires_grad_(False)


def param_groups(
    model: nn.Module, *, weight_decay: float, bn_bias_lr_scale: float = 1.0, bn_bias_decay_scale: float = 1.0
) -> list[dict[str, Any]]:
    """The trainable parameters as SGD param groups: batch-norm biases, then everything else.

    Each group is a dict with ``params`` (a list), ``weight_decay`` (torch SGD's coupled L2 for that group) and
    ``lr_scale`` (what the step multiplies the LR curve by for that group); torch.optim.SGD keeps the extra key.
    Batch-norm biases get ``lr_scale = bn_bias_lr_scale`` and ``weight_decay * bn_bias_decay_scale`` (Myrtle: 16
    and 1/16; airbench: 64 and 1/64, its decoupled decay lr * wd unchanged); the rest 1 and ``weight_decay``.
    Frozen parameters (requires_grad False) are left out; an empty group is not returned. With both scales 1 (the
    recipe) one group holds every trainable parameter in the model's order: the update is the one it always was.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    if bn_bias_lr_scale == 1 and bn_bias_decay_scale == 1:
        return [{"params": trainable, "lr_scale": 1.0, "weight_decay": weight_decay}] if trainable else []
    bn_biases = {id(m.bias) for m in model.modules() if isinstance(m, _BatchNorm) and m.bias is not None}
    biases = [p for p in trainable if id(p) in bn_biases]
    rest = [p for p in trainable if id(p) not in bn_biases]
    groups = [
        {"params": biases, "lr_scale": bn_bias_lr_scale, "weight_decay": weight_decay * bn_bias_decay_scale},
        {"params": rest, "lr_scale": 1.0, "weight_decay": weight_decay},
    ]
    return [group for group in groups if group["params"]]
