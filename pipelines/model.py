"""The custom ResNet-9 of the course recipe (Myrtle.ai's "How to train your ResNet" network).

prep conv 64 -> layer1 (conv 128, maxpool, BN, ReLU + residual block) -> layer2 (conv 256, maxpool, BN, ReLU)
-> layer3 (conv 512, maxpool, BN, ReLU + residual block) -> maxpool 4 -> FC -> softmax (in the loss).
At width 1: 6,573,120 parameters (bias-free convolutions and FC, as in the recipe).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pipelines.config import ModelConfig

BASE_WIDTHS = (64, 128, 256, 512)  # prep, layer1, layer2, layer3 channels at width 1 (the recipe)
LOGIT_SCALE = 0.125  # Myrtle.ai part 4: scaling the final logits by 1/8 steadies training; adds no parameter


def conv_bn(c_in: int, c_out: int, *, pool: bool = False) -> nn.Sequential:
    """3x3 conv (no bias: BN follows) [-> maxpool 2] -> BN -> ReLU. Keeps H, W unless pooled (then halves)."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    layers += [nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class Residual(nn.Module):
    """x + block(x), block = two conv-BN-ReLU of the same width."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(conv_bn(channels, channels), conv_bn(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class ResNet9(nn.Module):
    """images: float (N, 3, H, W), normalised, H and W at least 8 (the recipe's 32x32) -> logits (N, num_classes);
    softmax is in the loss. Built from the whole model config: every model.* key shapes it here."""

    def __init__(self, config: ModelConfig, *, num_classes: int = 10) -> None:
        super().__init__()
        prep, c1, c2, c3 = (max(1, round(c * config.width)) for c in BASE_WIDTHS)
        self.prep = conv_bn(3, prep)
        self.layer1 = nn.Sequential(conv_bn(prep, c1, pool=True), Residual(c1))
        self.layer2 = conv_bn(c1, c2, pool=True)
        self.layer3 = nn.Sequential(conv_bn(c2, c3, pool=True), Residual(c3))
        # the recipe's maxpool 4 (4x4 maps -> 1x1 for 32x32 inputs), for any size: the max over the whole map
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c3, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


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
                parts.append("Residual(2x ConvBNReLU)")
            elif isinstance(child, nn.Sequential):
                parts.append("+".join(type(c).__name__ for c in child))
            else:
                parts.append(type(child).__name__)
        return " -> ".join(parts) if len(parts) > 1 else parts[0]
    if isinstance(module, nn.Linear):
        return f"Linear({module.in_features}->{module.out_features}, x{LOGIT_SCALE})"
    return type(module).__name__
