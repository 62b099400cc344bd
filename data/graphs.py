"""Vectorized batching of molecules stored in CSR form (concatenated atoms + offsets).

Molecule m owns atoms ``ptr[m]:ptr[m+1]``. Batching B molecules is a gather of their atom
ranges (``repeat_interleave`` arithmetic, no Python loop over molecules), and the
within-molecule pair list is built the same way: node i of a molecule with n atoms starting at
batch position s is paired with s, s+1, …, s+n-1.
"""

from __future__ import annotations

import torch

__all__ = ["segment_arange", "csr_gather", "complete_pairs"]


def segment_arange(counts: torch.Tensor) -> torch.Tensor:
    r"""``cat([arange(c) for c in counts])`` without a loop.

    .. math:: \mathrm{out}_k = k - \mathrm{start}(\mathrm{seg}(k))

    Example:
        >>> segment_arange(torch.tensor([2, 0, 3])).tolist()
        [0, 1, 0, 1, 2]
    """
    total = int(counts.sum())
    starts = torch.cumsum(counts, 0) - counts
    return torch.arange(total) - torch.repeat_interleave(starts, counts, output_size=total)


def csr_gather(ptr: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Atom indices of the molecules ``rows`` (in order) and their atom counts.

    Returns ``(atom_index [N], counts [B])`` with ``atom_index`` the concatenation of
    ``arange(ptr[m], ptr[m+1])`` over ``m in rows``.

    Example:
        >>> ptr = torch.tensor([0, 2, 5, 6])
        >>> idx, n = csr_gather(ptr, torch.tensor([2, 0]))
        >>> idx.tolist(), n.tolist()
        ([5, 0, 1], [1, 2])
    """
    starts = ptr[rows]
    counts = ptr[rows + 1] - starts
    total = int(counts.sum())
    return torch.repeat_interleave(starts, counts, output_size=total) + segment_arange(
        counts
    ), counts


def complete_pairs(counts: torch.Tensor) -> torch.Tensor:
    """All ordered pairs (i, j), i ≠ j, of atoms in the same molecule of a batch.

    Atoms are numbered 0..N-1 in batch order (molecule after molecule, ``counts`` atoms each).
    Returns ``edge_index`` long ``[2, Σ n_m(n_m - 1)]``, sorted by source then target.

    Example:
        >>> complete_pairs(torch.tensor([2, 1, 2])).tolist()
        [[0, 1, 3, 4], [1, 0, 4, 3]]
    """
    n_nodes = int(counts.sum())
    graph = torch.repeat_interleave(torch.arange(len(counts)), counts, output_size=n_nodes)
    node_counts = counts[graph]
    first = (torch.cumsum(counts, 0) - counts)[graph]
    src = torch.repeat_interleave(torch.arange(n_nodes), node_counts)
    dst = first[src] + segment_arange(node_counts)
    keep = src != dst
    return torch.stack([src[keep], dst[keep]])
