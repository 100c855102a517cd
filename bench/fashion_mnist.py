"""The Fashion-MNIST setup bench/accuracy.py and bench/target_sparsity.py share: the two models, the training
settings, the batch order (the same for every method at a seed), test accuracy, and the data."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from sparse_rda.datasets import DatasetNotFoundError, load_fashion_mnist

# Hyper-parameters. The starting lam / c only matter until the target-sparsity controller takes over.
SGD_KW = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)
RDA_KW = dict(lr=1.0, lam=3.5e-6, momentum_time=9.5, weight_decay=5e-4)
GRDA_KW = dict(lr=0.1, c=0.005, mu=0.55)
BATCH_SIZE = 128


# Both models take the flat, standardized 784-pixel images the dataset loader returns.
def lenet_300_100() -> nn.Module:
    return nn.Sequential(
        nn.Linear(784, 300), nn.ReLU(),
        nn.Linear(300, 100), nn.ReLU(),
        nn.Linear(100, 10),
    )  # fmt: skip


def small_cnn() -> nn.Module:
    """LeNet-5 on 28 x 28 inputs: conv5x5(1->6) - pool - conv5x5(6->16) - pool - fc(256->120) - fc(120->84) - fc(10),
    44k parameters. The classic small CNN of the pruning papers (with LeNet-300-100 in Han et al. 2015); wider
    ones (16-32 channels and up) cost 2-6x the time per epoch on a CPU."""
    return nn.Sequential(
        nn.Unflatten(1, (1, 28, 28)),
        nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2),    # 6 x 12 x 12
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),   # 16 x 4 x 4
        nn.Flatten(),
        nn.Linear(256, 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, 10),
    )  # fmt: skip


# name -> (builder, title, default epochs). Epochs: chosen so each default table fits its time budget.
MODELS = {
    "lenet": (lenet_300_100, "LeNet-300-100", 20),
    "cnn": (small_cnn, "LeNet-5 CNN (conv6-conv16-fc120-fc84)", 10),
}


def epoch_batches(n: int, epoch: int, seed: int) -> list[torch.Tensor]:
    """The shuffled batch indices of one epoch: a function of (seed, epoch) only, the same for every method."""
    gen = torch.Generator().manual_seed(seed * 1000 + epoch)
    return list(torch.randperm(n, generator=gen).split(BATCH_SIZE))


@torch.no_grad()
def test_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2000) -> float:
    model.eval()
    correct = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in zip(x.split(batch_size), y.split(batch_size)))
    return correct / len(x)


def load(data_dir: Path):
    """(train_x, train_y, test_x, test_y), or exit with the loader's message (where it looked, what to install)."""
    try:
        return load_fashion_mnist(data_dir)
    except DatasetNotFoundError as err:
        sys.exit(f"error: {err}")
