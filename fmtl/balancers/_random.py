"""Counter-based randomness: pure functions of (seed, count, index), identical eager and compiled.

``torch.Generator`` objects are stateful and do not trace under ``torch.compile``; instead each
random number is a 32-bit integer hash of the seed, the step count and the element index, so a
balancer's state ``(seed, count)`` fully determines its draws: same state, same output.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["RandomState", "random_init", "bits", "uniform", "normal"]

_MASK = 0xFFFFFFFF
# An odd multiplier below 2**31: products with 32-bit values stay inside int64.
_MUL = 0x45D9F3B
_GOLDEN = 0x9E3779B9


def _mix(x: torch.Tensor) -> torch.Tensor:
    # A bijection of [0, 2**32): add the golden-ratio constant (SplitMix's Weyl step, so that 0
    # does not map to 0 — without it seed 0, step 0 drew exactly 0 and a uniform of 2⁻³³), then
    # xor-shift and multiply by an odd constant, twice.
    x = (x + _GOLDEN) & _MASK
    x = (((x >> 16) ^ x) * _MUL) & _MASK
    x = (((x >> 16) ^ x) * _MUL) & _MASK
    return (x >> 16) ^ x


def bits(seed: torch.Tensor, count: torch.Tensor, n: int, stream: int = 0) -> torch.Tensor:
    """``n`` hashed 32-bit integers (int64 in [0, 2³²)) for ``(seed, count, stream)``.

    Example:
        >>> s, c = torch.tensor(0), torch.tensor(3)
        >>> torch.equal(bits(s, c, 4), bits(s, c, 4)), torch.equal(bits(s, c, 4), bits(s, c + 1, 4))
        (True, False)
    """
    key = _mix(torch.as_tensor(seed, dtype=torch.int64) & _MASK)
    key = _mix(key ^ ((stream * _GOLDEN) & _MASK))
    key = _mix(key ^ (torch.as_tensor(count, dtype=torch.int64).to(key.device) & _MASK))
    index = torch.arange(n, dtype=torch.int64, device=key.device)
    return _mix(_mix(key ^ index) ^ key)


def uniform(
    seed: torch.Tensor, count: torch.Tensor, n: int, stream: int = 0, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``n`` uniform draws in (0, 1) for ``(seed, count, stream)``.

    Example:
        >>> u = uniform(torch.tensor(1), torch.tensor(0), 1000, dtype=torch.float64)
        >>> bool((u > 0).all() and (u < 1).all()), round(u.mean().item(), 1)
        (True, 0.5)
    """
    return ((bits(seed, count, n, stream).to(torch.float64) + 0.5) / 2.0**32).to(dtype)


def normal(
    seed: torch.Tensor, count: torch.Tensor, n: int, stream: int = 0, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``n`` standard normal draws (Box–Muller on two uniform streams).

    Example:
        >>> z = normal(torch.tensor(1), torch.tensor(0), 4000, dtype=torch.float64)
        >>> round(z.mean().item(), 1), round(z.std().item(), 1)
        (0.0, 1.0)
    """
    u1 = uniform(seed, count, n, 2 * stream, torch.float64)
    u2 = uniform(seed, count, n, 2 * stream + 1, torch.float64)
    return (torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * torch.pi * u2)).to(dtype)


class RandomState(NamedTuple):
    """The seed and step count (0-d int64) that determine a step's random draws."""

    seed: torch.Tensor
    count: torch.Tensor


def random_init(seed: int):
    """``init(params, num_tasks)`` of a balancer whose only state is ``RandomState(seed, 0)``.

    Example:
        >>> random_init(3)(None, 2)
        RandomState(seed=tensor(3), count=tensor(0))
    """

    def init(params, num_tasks: int) -> RandomState:
        leaves = [] if params is None else list(params.values(True, True))
        device = leaves[0].device if leaves else torch.device("cpu")
        zero = torch.zeros((), dtype=torch.int64, device=device)
        return RandomState(zero + seed, zero)

    return init
