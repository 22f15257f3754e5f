"""The custom ResNet-9 of the course recipe (Myrtle.ai's "How to train your ResNet" network).

prep conv 64 -> layer1 (conv 128, maxpool, BN, ReLU + residual block) -> layer2 (conv 256, maxpool, BN, ReLU)
-> layer3 (conv 512, maxpool, BN, ReLU + residual block) -> maxpool 4 -> FC -> softmax (in the loss).
At width 1: 6,573,120 parameters (bias-free convolutions and FC, as in the recipe).

The bag of tricks (Myrtle.ai part 8, airbench), each a model.* key, all off by default: the activation after every
batch norm, ghost batch norm, batch-norm scales frozen at 1, and a fixed whitening layer before the prep block
(Myrtle's ``whitening_block``: whitening conv -> 1x1 conv -> BN -> activation in place of the prep's 3x3 conv).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pipelines.config import ModelConfig
from pipelines.layers import activation, batch_norm, freeze_bn_weights
from pipelines.whitening import Whitening

BASE_WIDTHS = (64, 128, 256, 512)  # prep, layer1, layer2, layer3 channels at width 1 (the recipe)
LOGIT_SCALE = 0.125  # Myrtle.ai part 4: scaling the final logits by 1/8 steadies training; adds no parameter


def conv_bn(c_in: int, c_out: int, cfg: ModelConfig, *, pool: bool = False, kernel_size: int = 3) -> nn.Sequential:
    """k x k conv (no bias: BN follows) [-> maxpool 2] -> BN (ghost with model.ghost_batch) -> model.activation.
    Keeps H, W unless pooled (then halves)."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    layers += [batch_norm(c_out, ghost_batch=cfg.ghost_batch), activation(cfg.activation, celu_alpha=cfg.celu_alpha)]
    return nn.Sequential(*layers)


class Residual(nn.Module):
    """x + block(x), block = two conv-BN-activation of the same width."""

    def __init__(self, channels: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.block = nn.Sequential(conv_bn(channels, channels, cfg), conv_bn(channels, channels, cfg))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class ResNet9(nn.Module):
    """images: float (N, 3, H, W), normalised, H and W at least 8 (the recipe's 32x32) -> logits (N, num_classes);
    softmax is in the loss. Built from the whole model config: every model.* key shapes it here.

    ``whiten`` (model.whiten set, else absent): a fixed :class:`~pipelines.whitening.Whitening` conv, zeros until
    fitted (:class:`~pipelines.reuse.RunCache` writes it); the prep block is then a 1x1 conv of its channels.
    """

    def __init__(self, config: ModelConfig, *, num_classes: int = 10) -> None:
        super().__init__()
        prep, c1, c2, c3 = (max(1, round(c * config.width)) for c in BASE_WIDTHS)
        self.whiten: Whitening | None = None
        if config.whiten != "none":
            self.whiten = Whitening(config.whiten)
            self.prep = conv_bn(self.whiten.spec.out_channels, prep, config, kernel_size=1)
        else:
            self.prep = conv_bn(3, prep, config)
        self.layer1 = nn.Sequential(conv_bn(prep, c1, config, pool=True), Residual(c1, config))
        self.layer2 = conv_bn(c1, c2, config, pool=True)
        self.layer3 = nn.Sequential(conv_bn(c2, c3, config, pool=True), Residual(c3, config))
        # the recipe's maxpool 4 (4x4 maps -> 1x1 for 32x32 inputs), for any size: the max over the whole map
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c3, num_classes, bias=False)
        if config.bn_weight == "frozen":  # before any compile or optimizer: both read requires_grad
            freeze_bn_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.whiten is not None:
            x = self.whiten(x)
        x = self.layer3(self.layer2(self.layer1(self.prep(x))))
        return self.fc(self.flatten(self.pool(x))) * LOGIT_SCALE


def build_model(cfg: ModelConfig, *, num_classes: int) -> ResNet9:
    return ResNet9(cfg, num_classes=num_classes)


def reset_parameters(model: nn.Module, *, seed: int) -> None:
    """Re-initialise every weight in place (a compiled model keeps its graph), reproducibly from ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
                module.reset_parameters()


def count_parameters(model: nn.Module, *, trainable: bool = False) -> int:
    """Parameters (frozen batch-norm scales included, the whitening buffer not); ``trainable``: those trained."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)


@dataclass(frozen=True)
class LayerRow:
    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int


def layer_table(model: nn.Module, *, input_size: tuple[int, int] = (32, 32)) -> list[LayerRow]:
    """One row per named block with its output shape for one (1, 3, H, W) input (CPU, eval mode)."""
    rows: list[LayerRow] = []
    hooks = []
    blocks = dict(model.named_children())
    for name, module in blocks.items():

        def hook(mod: nn.Module, _inputs: tuple, output: torch.Tensor, name: str = name) -> None:
            rows.append(LayerRow(name, _kind(mod), tuple(output.shape), count_parameters(mod)))

        hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, *input_size, device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    rows.append(LayerRow("softmax", "Softmax (in the loss)", rows[-1].output_shape, 0))
    return rows


def _kind(module: nn.Module) -> str:
    if isinstance(module, nn.Sequential):
        parts = []
        for child in module:
            if isinstance(child, Residual):
                parts.append(f"Residual(2x ConvBN{type(child.block[0][-1]).__name__})")
            elif isinstance(child, nn.Sequential):
                parts.append("+".join(type(c).__name__ for c in child))
            else:
                parts.append(type(child).__name__)
        return " -> ".join(parts) if len(parts) > 1 else parts[0]
    if isinstance(module, Whitening):
        return f"Whitening({module.mode}, fixed)"
    if isinstance(module, nn.Linear):
        return f"Linear({module.in_features}->{module.out_features}, x{LOGIT_SCALE})"
    return type(module).__name__
