"""Hard parameter sharing (HPS) with an MLP encoder θ and one linear head ψ_t per task."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from tensordict import TensorDict

from fmtl.heads import linear_heads

from ._core import Model, SeedLike, generator, linear, linear_init, no_batch_norm, td

__all__ = ["mlp_hps", "mlp_encode"]


def mlp_encode(
    shared: TensorDict, x: torch.Tensor, activation: Callable[[torch.Tensor], torch.Tensor] = torch.relu
) -> torch.Tensor:
    """The encoder of :func:`mlp_hps` alone: z = σ(W_L … σ(W_1 x + b_1) … + b_L) from ``params["shared"]``.

    The first stage of the model written in two stages (:class:`fmtl.TwoStageLoss`, representation
    gradients); the heads are :func:`fmtl.heads.linear_heads` on z.

    Example:
        >>> import torch
        >>> from fmtl.models import mlp_hps
        >>> m = mlp_hps(3, hidden=(8, 6), tasks={"a": 1}, seed=0)
        >>> mlp_encode(m.params["shared"], torch.randn(5, 3)).shape
        torch.Size([5, 6])
    """
    for i in range(len(shared["layers"].keys()) if "layers" in shared.keys() else 0):
        x = activation(linear(shared["layers", str(i)], x))
    return x


def mlp_hps(
    in_dim: int,
    hidden: Sequence[int] = (64, 64),
    tasks: Mapping[str, int] | None = None,
    *,
    activation: Callable[[torch.Tensor], torch.Tensor] = torch.relu,
    seed: SeedLike = 0,
    dtype: torch.dtype = torch.float32,
) -> Model:
    """HPS multi-layer perceptron: shared encoder, one linear head per task.

    .. math::
        z = σ(W_L … σ(W_1 x + b_1) … + b_L), \\qquad \\hat y_t = A_t z + c_t

    with θ = {W_l, b_l} in ``params["shared"]["layers"]`` and ψ_t = {A_t, c_t} in
    ``params["tasks"][t]``.

    Args:
        in_dim: input features.
        hidden: widths of the encoder's layers (each followed by ``activation``).
        tasks: ``{name: out_dim}`` in task order (default ``{"y": 1}``).
        activation: elementwise nonlinearity σ.
        seed: int or ``torch.Generator`` for the initialization.
        dtype: parameter dtype.

    Returns:
        A :class:`~fmtl.models.Model` whose ``apply(params, x)`` maps x [B, in_dim] to
        ``{t: Tensor[B, out_dim_t]}``.

    Example:
        >>> import torch
        >>> from fmtl.models import mlp_hps
        >>> m = mlp_hps(3, hidden=(8, 8), tasks={"a": 1, "b": 4}, seed=0)
        >>> {k: v.shape for k, v in m.apply(m.params, torch.randn(5, 3)).items()}
        {'a': torch.Size([5, 1]), 'b': torch.Size([5, 4])}
    """
    tasks = dict(tasks or {"y": 1})
    g = generator(seed)
    dims = [in_dim, *hidden]
    layers = {str(i): linear_init(g, dims[i], dims[i + 1], dtype) for i in range(len(hidden))}
    heads = {t: linear_init(g, dims[-1], d, dtype) for t, d in tasks.items()}
    params = td({"shared": td({"layers": td(layers)}), "tasks": td(heads)})
    names = list(tasks)

    def forward(params: TensorDict, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return linear_heads(params["tasks"], mlp_encode(params["shared"], x, activation), names)

    return no_batch_norm(forward, params)
