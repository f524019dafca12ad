"""A small CNN on scikit-learn's bundled digits: real images for the vision tools, no downloads.

``merged_digits`` relabels the ten digits into five classes of two digits each, so every output
unit of a CNN trained on them is, by construction, a unit with (at least) two facets whose truth is
the original digit.
"""

from __future__ import annotations

import torch
from torch import nn

#: Each merged class is two digits that look unlike each other.
MERGED = ((0, 6), (1, 7), (2, 5), (3, 8), (4, 9))


def merged_digits(size: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images [1797, 1, size, size] in [0, 1], merged labels, original digits)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16.0
    x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    digit = torch.tensor(data.target)
    merged = torch.empty_like(digit)
    for c, pair in enumerate(MERGED):
        for d in pair:
            merged[digit == d] = c
    return x, merged, digit


class SmallCNN(nn.Module):
    """conv(16) -> conv(32) -> pool -> fc 64 (the penultimate layer ``fc``) -> ``head``, on size x size images."""

    def __init__(self, classes: int = 5, size: int = 16):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(32 * (size // 2) ** 2, 64), nn.ReLU())
        self.head = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc(self.conv2(self.conv1(x))))


def train_cnn(x: torch.Tensor, y: torch.Tensor, epochs: int = 8, seed: int = 0) -> tuple[SmallCNN, float]:
    """A SmallCNN trained with Adam; returns it and its accuracy on the last fifth (held out)."""
    torch.manual_seed(seed)
    n_train = len(x) * 4 // 5
    model = SmallCNN(int(y.max()) + 1, x.shape[-1])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(n_train, generator=gen).split(64):
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(x[n_train:]).argmax(1) == y[n_train:]).float().mean())
    return model, acc

