r"""A fixed-size molecular descriptor for QM9: Coulomb-matrix spectrum + composition + RDF.

For a molecule with atomic numbers Z_i and positions R_i (Å) the descriptor concatenates

* the 29 eigenvalues of the Coulomb matrix, sorted descending and zero-padded,

  .. math:: C_{ii} = \tfrac12 Z_i^{2.4}, \qquad C_{ij} = \frac{Z_i Z_j}{\lVert R_i - R_j\rVert};

* the 5 element counts (H, C, N, O, F);
* a Gaussian-smeared radial distribution per unordered element pair (15 pairs × 9 centres
  μ_k = 0.9, 1.4, …, 4.9 Å, σ = 0.25 Å):

  .. math:: h_{ab,k} = \sum_{i<j,\ \{e_i,e_j\}=\{a,b\}} \exp\!\big(-(d_{ij}-μ_k)^2/2σ^2\big).

D = 29 + 5 + 135 = 169 features. It is invariant to rotation, translation and atom order.

Scaling (:func:`fit_scaling`, statistics from training molecules only): ``"standard"`` (the
default) z = (x − μ)/σ; ``"asinh"`` z = asinh((x − μ)/σ), which is ≈ z near 0 and ≈ sign(z)·log 2|z|
in the tails; ``clip=c`` then clamps z to [−c, c]. Many features are sparse (a radial-distribution
bin of a rare element pair, e.g. F–F, is 0 for almost every molecule), so their σ is tiny and the
few molecules that have them sit hundreds to thousands of σ out (up to 3,826σ on the train split);
the last two options bound those inputs. Median/IQR ("robust") scaling is not offered: 69 of the
169 features have an interquartile range of 0 and others of ~10⁻⁶ on the statistics rows, so it
makes the tails far larger, not smaller.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .graphs import segment_arange

__all__ = ["DESCRIPTOR_DIM", "SCALINGS", "DescriptorScaling", "check_scaling", "descriptor",
           "fit_scaling"]

MAX_ATOMS = 29
_CENTRES = torch.linspace(0.9, 4.9, 9)
_SIGMA = 0.25
_ELEMENT_INDEX = torch.full((10,), -1, dtype=torch.long)
_ELEMENT_INDEX[torch.tensor([1, 6, 7, 8, 9])] = torch.arange(5)
_PAIR = torch.zeros(5, 5, dtype=torch.long)
_iu = torch.triu_indices(5, 5)
_PAIR[_iu[0], _iu[1]] = torch.arange(15)
_PAIR[_iu[1], _iu[0]] = torch.arange(15)
DESCRIPTOR_DIM = MAX_ATOMS + 5 + 15 * len(_CENTRES)


def _chunk(z: torch.Tensor, pos: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    m = len(counts)
    mol = torch.repeat_interleave(torch.arange(m), counts)
    slot = segment_arange(counts)
    zp = torch.zeros(m, MAX_ATOMS, dtype=torch.float32)
    zp[mol, slot] = z.float()
    rp = torch.zeros(m, MAX_ATOMS, 3, dtype=torch.float32)
    rp[mol, slot] = pos.float()
    real = zp > 0
    d = torch.cdist(rp, rp)
    pair = real[:, :, None] & real[:, None, :]
    eye = torch.eye(MAX_ATOMS, dtype=torch.bool)
    cm = torch.where(pair & ~eye, zp[:, :, None] * zp[:, None, :] / d.clamp_min(1e-8), 0.0)
    cm = cm + torch.diag_embed(0.5 * zp.pow(2.4))
    eig = torch.linalg.eigvalsh(cm).flip(-1)  # descending; padding rows/cols give zeros
    elem = _ELEMENT_INDEX[zp.long()]
    counts5 = torch.nn.functional.one_hot(elem.clamp_min(0), 5).float()
    counts5 = (counts5 * real[..., None]).sum(1)
    upper = pair & torch.triu(torch.ones(MAX_ATOMS, MAX_ATOMS, dtype=torch.bool), 1)
    b, i, j = upper.nonzero(as_tuple=True)
    g = torch.exp(-((d[b, i, j, None] - _CENTRES) ** 2) / (2 * _SIGMA**2))
    kind = _PAIR[elem[b, i], elem[b, j]]
    rdf = torch.zeros(m * 15, len(_CENTRES), dtype=torch.float32)
    rdf.index_add_(0, b * 15 + kind, g)
    return torch.cat([eig, counts5, rdf.view(m, -1)], 1).float()


def descriptor(
    z: torch.Tensor, pos: torch.Tensor, ptr: torch.Tensor, chunk: int = 4096
) -> torch.Tensor:
    """The ``[M, 169]`` float32 descriptor of every molecule of a CSR record.

    Computed in chunks of ``chunk`` molecules (padded to 29 atoms) to bound memory.

    Example:
        >>> z = torch.tensor([6, 1, 1, 1, 1])
        >>> pos = torch.tensor([[0., 0, 0], [.63, .63, .63], [-.63, -.63, .63],
        ...                     [-.63, .63, -.63], [.63, -.63, -.63]])
        >>> x = descriptor(z, pos, torch.tensor([0, 5]))
        >>> x.shape, x[0, 29:34].tolist()
        (torch.Size([1, 169]), [4.0, 1.0, 0.0, 0.0, 0.0])
    """
    counts = ptr[1:] - ptr[:-1]
    if int(counts.max()) > MAX_ATOMS:
        raise ValueError(f"descriptor supports molecules of at most {MAX_ATOMS} atoms")
    out = []
    for s in range(0, len(counts), chunk):
        e = min(s + chunk, len(counts))
        a0, a1 = int(ptr[s]), int(ptr[e])
        out.append(_chunk(z[a0:a1].long(), pos[a0:a1], counts[s:e]))
    return torch.cat(out)


SCALINGS = ("standard", "asinh")


class DescriptorScaling(NamedTuple):
    """A fitted input scaling: ``mean``/``std`` [169] of the statistics rows, the kind, the clip level."""

    mean: torch.Tensor
    std: torch.Tensor
    kind: str = "standard"
    clip: float | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The scaled float32 ``[M, 169]`` table of raw descriptors ``x``."""
        z = (x - self.mean) / self.std
        if self.kind == "asinh":
            z = torch.asinh(z)
        if self.clip is not None:
            z = z.clamp(-self.clip, self.clip)
        return z.float()


def check_scaling(kind: str, clip: float | None) -> None:
    """Raises ValueError naming the problem unless ``kind``/``clip`` are a valid scaling.

    Example:
        >>> check_scaling("robust", None)
        Traceback (most recent call last):
        ...
        ValueError: descriptor scaling must be one of ('standard', 'asinh'); got 'robust'
    """
    if kind not in SCALINGS:
        raise ValueError(f"descriptor scaling must be one of {SCALINGS}; got {kind!r}")
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, int | float)
                             or not math.isfinite(clip) or clip <= 0):  # fmt: skip
        raise ValueError(f"descriptor clip must be a positive number of standard deviations; got {clip!r}")


def fit_scaling(stats: torch.Tensor, kind: str = "standard", clip: float | None = None) -> DescriptorScaling:
    """Fits the input scaling on the raw descriptors ``stats`` [N, 169] (training molecules only).

    .. math:: z = (x − μ)/σ \\;\\text{(standard)}, \\quad z = \\operatorname{asinh}((x − μ)/σ)
        \\;\\text{(asinh)}, \\quad z ← \\min(\\max(z, −c), c) \\;\\text{(clip}=c)

    μ, σ are the column mean and standard deviation of ``stats``; a constant column (σ ≤ 10⁻⁶)
    gets σ = 1.

    Example:
        >>> stats = torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [1000.0, 1.0]])
        >>> fit_scaling(stats)(stats)[:, 0].round(decimals=2).tolist()  # one outlier at 1.5σ of 4 rows
        [-0.5, -0.5, -0.5, 1.5]
        >>> fit_scaling(stats, clip=1.0)(torch.tensor([[1e6, 1.0]])).tolist()
        [[1.0, 0.0]]
        >>> round(float(fit_scaling(stats, "asinh")(torch.tensor([[1e6, 1.0]]))[0, 0]), 2)  # asinh(2000)
        8.29
    """
    check_scaling(kind, clip)
    std = stats.std(0)
    return DescriptorScaling(stats.mean(0), torch.where(std > 1e-6, std, torch.ones_like(std)), kind,
                             None if clip is None else float(clip))  # fmt: skip
