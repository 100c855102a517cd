"""Fixtures the benchmark runners' tests share: a tiny fake Fashion-MNIST, and torch's thread count restored."""

from __future__ import annotations

import gzip
import struct

import pytest
import torch


def write_idx(path, data: torch.Tensor) -> None:
    """A gzipped unsigned-byte IDX file, the format of the Debian package's files."""
    header = struct.pack(">HBB", 0, 0x08, data.dim()) + struct.pack(f">{data.dim()}I", *data.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + data.to(torch.uint8).numpy().tobytes())


@pytest.fixture(scope="module")
def fake_data_dir(tmp_path_factory):
    """Random images with labels that depend on them (a learnable toy problem), as the four IDX files.
    Exactly bench/accuracy.py's quick mode's 2000 training / 1000 test examples."""
    root = tmp_path_factory.mktemp("fashion-mnist")
    gen = torch.Generator().manual_seed(0)
    for split, n in (("train", 2000), ("t10k", 1000)):
        images = torch.randint(0, 256, (n, 28, 28), generator=gen)
        labels = images[:, 10:18, 10:18].float().mean((1, 2)).mul(10 / 256).long().clamp(0, 9)
        write_idx(root / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels)
    return root


@pytest.fixture(autouse=True)
def _restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)
