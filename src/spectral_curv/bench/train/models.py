"""The benchmark's classifiers: ``mlp``, ``cnn`` and ``vit``; the last layer is ``head``.

``mlp``: 784-256-256-10, ReLU. ``cnn``: 3×3 convolutions of 16, 32 and 64 channels, 2×2
max-pool after the first two, global average pooling, a 128-unit hidden layer. ``vit``:
7×7 patches → 16 tokens on 28×28 images (2×2 on 8×8 digits), width 64, 2 pre-norm blocks
with 4 heads and a 4× GELU MLP, learned position embedding, mean pooling.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["MODELS", "build_model"]

MODELS = ("mlp", "cnn", "vit")


def build_model(name: str, image_shape: Sequence[int], n_classes: int = 10) -> Any:
    """``mlp``, ``cnn`` or ``vit`` for ``(C, H, W)`` images; the last layer is ``head``."""
    import torch
    from torch import nn

    c, h, w = image_shape

    class MLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Flatten(), nn.Linear(c * h * w, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU()
            )
            self.head = nn.Linear(256, n_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.body(x))

    class CNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            # all-convolutional with global average pooling: no wide flatten → dense layer
            # (a 1568 → 64 one would give every Kronecker method a 1568-sided factor)
            self.body = nn.Sequential(
                nn.Conv2d(c, 16, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Conv2d(16, 32, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Conv2d(32, 64, 3, padding=1),
                nn.ReLU(),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
                nn.Linear(64, 128),  # a hidden matrix for Muon (2-D weights only)
                nn.ReLU(),
            )
            self.head = nn.Linear(128, n_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.body(x))

    class ViT(nn.Module):
        def __init__(self, width: int = 64, depth: int = 2, heads: int = 4) -> None:
            super().__init__()
            self.patch = 7 if h % 7 == 0 and w % 7 == 0 else 2
            if h % self.patch or w % self.patch:
                raise ValueError(f"ViT: image {h}×{w} is not divisible into patches")
            tokens = (h // self.patch) * (w // self.patch)
            self.embed = nn.Linear(c * self.patch * self.patch, width)
            self.pos = nn.Parameter(torch.randn(1, tokens, width) * 0.02)
            self.blocks = nn.ModuleList(
                [
                    nn.TransformerEncoderLayer(
                        width,
                        heads,
                        4 * width,
                        dropout=0.0,
                        activation="gelu",
                        batch_first=True,
                        norm_first=True,
                    )
                    for _ in range(depth)
                ]
            )
            self.norm = nn.LayerNorm(width)
            self.head = nn.Linear(width, n_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, p = x.shape[0], self.patch
            x = x.unfold(2, p, p).unfold(3, p, p)  # B C h w p p
            x = x.permute(0, 2, 3, 1, 4, 5).reshape(b, -1, c * p * p)
            x = self.embed(x) + self.pos
            for blk in self.blocks:
                x = blk(x)
            return self.head(self.norm(x).mean(1))

    classes = {"mlp": MLP, "cnn": CNN, "vit": ViT}
    if name not in classes:
        raise ValueError(f"unknown model {name!r} (known: {', '.join(MODELS)})")
    return classes[name]()
