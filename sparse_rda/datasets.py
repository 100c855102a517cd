"""Fashion-MNIST from its four IDX files, as the example and the accuracy benchmark read it.

    from sparse_rda.datasets import load_fashion_mnist
    train_x, train_y, test_x, test_y = load_fashion_mnist()       # $FASHION_MNIST_DIR, else the Debian directory

The files (``train-images-idx3-ubyte.gz`` ...) come with Debian's ``dataset-fashion-mnist`` package
(``apt-get install dataset-fashion-mnist``), which puts them in /usr/share/datasets/fashion-mnist, or from the
dataset's own download page. Only torch is needed to read them (no numpy, no torchvision).
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import torch

DEFAULT_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")  # where the Debian package puts the files
DEBIAN_PACKAGE = "dataset-fashion-mnist"
ENV_VAR = "FASHION_MNIST_DIR"
FILES = {
    "train_x": "train-images-idx3-ubyte.gz",
    "train_y": "train-labels-idx1-ubyte.gz",
    "test_x": "t10k-images-idx3-ubyte.gz",
    "test_y": "t10k-labels-idx1-ubyte.gz",
}


class DatasetNotFoundError(FileNotFoundError):
    """Some of the IDX files are not in the directory; the message says which and how to get them."""


def default_data_dir() -> Path:
    """``$FASHION_MNIST_DIR`` if set, else the Debian package's directory."""
    return Path(os.environ.get(ENV_VAR) or DEFAULT_DATA_DIR)


def missing_files(data_dir: str | os.PathLike) -> list[str]:
    """The names of the four IDX files that are not in ``data_dir`` (empty when all are there)."""
    return [name for name in FILES.values() if not (Path(data_dir) / name).is_file()]


def how_to_get(data_dir: str | os.PathLike) -> str:
    """What to do when the files are absent: one message for every caller."""
    missing = missing_files(data_dir)
    return (
        f"Fashion-MNIST not found in {data_dir} (missing: {', '.join(missing) or 'none'}). "
        f"Install Debian's {DEBIAN_PACKAGE} package (`sudo apt-get install {DEBIAN_PACKAGE}`, files in "
        f"{DEFAULT_DATA_DIR}), or download the four *-ubyte.gz files and point ${ENV_VAR} (or the script's "
        "--data option) at their directory."
    )


def read_idx(path: str | os.PathLike) -> torch.Tensor:
    """A gzipped unsigned-byte IDX file as a uint8 tensor: 2 zero bytes, a dtype byte, the rank, then the
    big-endian dimensions, then the data."""
    with gzip.open(path, "rb") as f:
        zero, dtype, ndim = struct.unpack(">HBB", f.read(4))
        if zero != 0 or dtype != 0x08:  # 0x08 = unsigned byte, the only type the MNIST family uses
            raise ValueError(f"{path}: not an unsigned-byte IDX file")
        shape = struct.unpack(f">{ndim}I", f.read(4 * ndim))
        data = bytearray(f.read())  # writable, so torch.frombuffer shares it without a warning
    expected = 1
    for n in shape:
        expected *= n
    if len(data) != expected:
        raise ValueError(f"{path}: {len(data)} data bytes for shape {shape} ({expected} expected)")
    return torch.frombuffer(data, dtype=torch.uint8).reshape(shape)


def load_fashion_mnist(data_dir: str | os.PathLike | None = None):
    """(train_x, train_y, test_x, test_y): images as float32 (N, 784) standardized with the training set's mean
    and std, labels as int64. ``data_dir`` defaults to :func:`default_data_dir`.

    Raises :class:`DatasetNotFoundError` (a ``FileNotFoundError``) naming the directory, the missing files and
    the Debian package when files are absent."""
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    if missing_files(data_dir):
        raise DatasetNotFoundError(how_to_get(data_dir))
    arrays = {key: read_idx(data_dir / name) for key, name in FILES.items()}
    train_x = arrays["train_x"].reshape(-1, 784).float() / 255.0
    test_x = arrays["test_x"].reshape(-1, 784).float() / 255.0
    mean, std = train_x.mean(), train_x.std()
    return (
        (train_x - mean) / std,
        arrays["train_y"].long(),
        (test_x - mean) / std,
        arrays["test_y"].long(),
    )
