"""Dataset cache files: atomic writes, a content checksum verified on load, rebuilt when it fails."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import pytest
import torch
from _corrupt import flip_tensor_byte

from fmtl.data.cache import load_tensors, save_tensors

KEYS = ("x", "y", "mask")


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"x": torch.randn(64, 5, generator=g), "y": torch.randint(0, 9, (64,), generator=g, dtype=torch.int8),
            "mask": torch.rand(64, generator=g) > 0.5}  # fmt: skip


def test_round_trip_is_exact_and_hides_the_checksum(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    assert save_tensors(path, _tensors())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = load_tensors(path, KEYS)
    assert set(data) == set(KEYS) and all(torch.equal(data[k], v) for k, v in _tensors().items())
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("which", [0, 1, 2])
@pytest.mark.parametrize("position", [0.0, 0.5, 1.0])
def test_a_flipped_byte_in_any_tensor_is_a_rebuild_naming_the_file(tmp_path: Path, which, position) -> None:
    path = tmp_path / "c.pt"
    save_tensors(path, _tensors())
    flip_tensor_byte(path, which, position)
    assert torch.load(path, weights_only=True) is not None  # torch itself reads it without complaint
    with pytest.warns(UserWarning, match=f"corrupt cache {path} \\(checksum mismatch\\); rebuilding"):
        assert load_tensors(path, KEYS) is None


def test_a_cache_without_checksum_is_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "old.pt"
    torch.save(_tensors(), path)  # as an fmtl without checksums wrote it
    with pytest.warns(UserWarning, match=f"cache {path} has no checksum .*; rebuilding"):
        assert load_tensors(path, KEYS) is None


def test_the_checksum_key_is_reserved(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="reserved"):
        save_tensors(tmp_path / "c.pt", {"__sha256__": torch.zeros(1)})


def _real_qm9_cache() -> Path | None:
    from fmtl.data.cache import cache_dir

    found = sorted(cache_dir().glob("qm9_qm9pack_v*[0-9].pt"))
    return found[-1] if found else None


@pytest.mark.skipif(importlib.util.find_spec("qm9pack") is None, reason="qm9pack is not installed")
@pytest.mark.skipif(_real_qm9_cache() is None, reason="no QM9 cache yet (fmtl train --benchmark qm9 builds it)")
def test_a_flipped_byte_in_the_real_qm9_cache_is_rebuilt(tmp_path: Path, monkeypatch) -> None:
    """The real QM9 record (48 MB) in a temporary $FMTL_CACHE: one flipped byte in its largest
    tensor → a warning naming the file, a rebuild from qm9pack, the original tensors again."""
    from fmtl.data import load

    path = tmp_path / _real_qm9_cache().name
    clean = torch.load(_real_qm9_cache(), weights_only=True)
    clean.pop("__sha256__", None)
    save_tensors(path, clean)
    flip_tensor_byte(path)
    monkeypatch.setenv("FMTL_CACHE", str(tmp_path))
    with pytest.warns(UserWarning, match=f"corrupt cache {path} \\(checksum mismatch\\); rebuilding"):
        load("qm9", "val", subset=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rebuilt = load_tensors(path, tuple(clean))
    assert all(torch.equal(rebuilt[k], v) for k, v in clean.items())
