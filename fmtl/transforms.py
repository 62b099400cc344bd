"""Gradient transformations that compose with any fmtl optimizer: ``chain``, ``clip_norm``, ``lr_scale``.

Each is an :class:`fmtl.optim.Optimizer` pair of pure functions, ``init(params) -> state`` and
``update(updates, state, params) -> (updates, state)``, so they compose the way optax's
``chain`` does: ``chain(clip_norm(1.0), fmtl.optim.adam(1e-3), lr_scale())`` clips the balanced
gradient g̃ to global norm 1, hands it to Adam, and scales Adam's update by a factor kept in the
state (for a ReduceLROnPlateau-style controller, :mod:`fmtl.plateau`, that sets it between steps).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from tensordict import TensorDict

from .base import EmptyState
from .optim import Optimizer, require_functional
from .tree import leaves, with_leaves

__all__ = ["chain", "clip_norm", "lr_scale", "LRScaleState", "set_lr_scale", "get_lr_scale"]


def chain(*transforms: Optimizer) -> Optimizer:
    """Applies ``transforms`` in order; the state is the tuple of their states.

    Example:
        >>> import torch, fmtl
        >>> from tensordict import TensorDict
        >>> p = TensorDict({"w": torch.zeros(2)}, [])
        >>> opt = chain(clip_norm(1.0), fmtl.optim.sgd(1.0))
        >>> u, state = opt.update(TensorDict({"w": torch.tensor([3.0, 4.0])}, []), opt.init(p), p)
        >>> u["w"]  # clipped to norm 1 (×1/(5+1e-6)), then −lr·g
        tensor([-0.6000, -0.8000])
    """
    transforms = tuple(require_functional(t) for t in transforms)

    def init(params: TensorDict) -> tuple:
        return tuple(t.init(params) for t in transforms)

    def update(updates: TensorDict, state: tuple, params: TensorDict) -> tuple[TensorDict, tuple]:
        new = []
        for t, s in zip(transforms, state, strict=True):
            updates, s = t.update(updates, s, params)
            new.append(s)
        return updates, tuple(new)

    return Optimizer(init, update)


def clip_norm(max_norm: float) -> Optimizer:
    """Rescales the whole gradient tree to global L2 norm at most ``max_norm``, as
    ``torch.nn.utils.clip_grad_norm_``.

    .. math::
        g \\leftarrow g \\cdot \\min\\Big(1, \\frac{c}{\\lVert g \\rVert_2 + 10^{-6}}\\Big),
        \\qquad \\lVert g \\rVert_2^2 = \\sum_{\\text{leaves}} \\lVert g_\\ell \\rVert_2^2

    In ``make_step`` the tree is the balanced gradient of every parameter (θ and all ψ_t), so
    this is clipping ``model.parameters()``. A non-finite norm makes the update non-finite, which
    the step reports (``info["ok"]``, or an error in eager mode) instead of applying it.

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> g = TensorDict({"a": torch.tensor([30.0]), "b": torch.tensor([40.0])}, [])
        >>> clip = clip_norm(5.0)
        >>> u, _ = clip.update(g, clip.init(g), g)
        >>> torch.cat([u["a"], u["b"]])
        tensor([3.0000, 4.0000])
    """
    if not max_norm > 0:
        raise ValueError(f"clip_norm needs max_norm > 0; got {max_norm}")

    def init(params: TensorDict) -> EmptyState:
        return EmptyState()

    def update(updates: TensorDict, state: EmptyState, params: TensorDict) -> tuple[TensorDict, EmptyState]:
        g = leaves(updates)
        if not g:
            return updates, state
        # the same two reductions as torch.nn.utils.clip_grad_norm_ (per-leaf norms, then their norm)
        total = torch.linalg.vector_norm(torch.stack([n.to(g[0].dtype) for n in torch._foreach_norm(g)]))
        coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        return with_leaves(updates, torch._foreach_mul(g, coef)), state

    return Optimizer(init, update)


class LRScaleState(NamedTuple):
    """The factor (0-d float64 tensor) that :func:`lr_scale` multiplies the updates by."""

    scale: torch.Tensor


def lr_scale() -> Optimizer:
    """Multiplies the updates by a factor held in the state (initially 1), set with :func:`set_lr_scale`.

    Chained after an optimizer, ``chain(adam(η), lr_scale())`` steps with the learning rate
    s·η: for SGD (with momentum), Adam and AdamW every update is linear in η, so this is exactly
    torch's ``param_group["lr"] = s·η``. The factor is a tensor *in the state*, an input of the
    step, so a compiled step does not recompile when a controller (``fmtl.plateau``) lowers it.

    Example:
        >>> import torch, fmtl
        >>> from tensordict import TensorDict
        >>> p = TensorDict({"w": torch.zeros(1)}, [])
        >>> opt = chain(fmtl.optim.sgd(0.1), lr_scale())
        >>> state = set_lr_scale(opt.init(p), 0.5)
        >>> opt.update(TensorDict({"w": torch.ones(1)}, []), state, p)[0]["w"]
        tensor([-0.0500])
    """

    def init(params: TensorDict) -> LRScaleState:
        device = next(iter(leaves(params))).device if leaves(params) else None
        return LRScaleState(torch.ones((), dtype=torch.float64, device=device))

    def update(updates: TensorDict, state: LRScaleState, params: TensorDict) -> tuple[TensorDict, LRScaleState]:
        return with_leaves(updates, torch._foreach_mul(leaves(updates), state.scale)), state

    return Optimizer(init, update)


def _map_scales(state: Any, fn) -> Any:
    if isinstance(state, LRScaleState):
        return fn(state)
    if isinstance(state, tuple) and hasattr(state, "_fields"):
        return type(state)(*(_map_scales(x, fn) for x in state))
    if isinstance(state, tuple | list):
        return type(state)(_map_scales(x, fn) for x in state)
    return state


def _scales(state: Any) -> list[LRScaleState]:
    found: list[LRScaleState] = []
    _map_scales(state, lambda s: found.append(s) or s)
    if not found:
        raise ValueError("the state holds no lr_scale(): build the optimizer as "
                         "fmtl.transforms.chain(optimizer, fmtl.transforms.lr_scale())")  # fmt: skip
    return found


def set_lr_scale(state: Any, scale: float | torch.Tensor) -> Any:
    """A copy of ``state`` (a step's or an optimizer's) whose :func:`lr_scale` factor is ``scale``.

    Pure: the old state is unchanged. The new factor keeps the old one's dtype and device, so
    a compiled step sees an input of the same kind and does not recompile.

    Example:
        >>> import torch, fmtl
        >>> from tensordict import TensorDict
        >>> opt = chain(fmtl.optim.adam(1e-3), lr_scale())
        >>> state = opt.init(TensorDict({"w": torch.zeros(1)}, []))
        >>> get_lr_scale(set_lr_scale(state, 0.1)), get_lr_scale(state)
        (0.1, 1.0)
    """
    if not float(scale) >= 0:
        raise ValueError(f"the learning-rate scale must be >= 0; got {float(scale)}")
    _scales(state)
    return _map_scales(state, lambda s: LRScaleState(torch.full_like(s.scale, float(scale))))


def get_lr_scale(state: Any) -> float:
    """The :func:`lr_scale` factor held in ``state`` (see :func:`set_lr_scale`)."""
    return float(_scales(state)[0].scale)
