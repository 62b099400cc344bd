"""The ``Model`` type, functional layers, their initializers, and pure BatchNorm.

Every layer is a pure function ``layer(p, x)`` of a parameter TensorDict ``p``; every
initializer ``*_init(gen, ...)`` draws fresh parameters from a ``torch.Generator`` with
PyTorch's default schemes (``nn.Linear`` / ``nn.Conv2d``: U(-1/√fan_in, 1/√fan_in)).

BatchNorm is split in two so that ``apply`` stays pure under ``torch.func``:

* ``apply(params, x)`` (``train=True``) normalizes with the batch statistics
  μ_B = mean(x), σ²_B = var(x) (biased) and writes nothing;
* ``update_buffers(model, params, buffers, x, momentum)`` runs one no-grad forward and
  returns new running statistics r ← (1 − m) r + m s, with the *unbiased* batch variance,
  exactly as ``nn.BatchNorm2d`` does in train mode — call it once per step, outside the
  vectorized gradient pass;
* ``apply(params, x, buffers=buffers, train=False)`` normalizes with the running statistics.

Dropout is pure too: ``apply(params, x, key=seeds)`` with ``seeds`` an int64 ``[B]`` tensor of
per-sample seeds draws each sample's mask as a counter-based hash of (its seed, the layer's
path, the element index) (:func:`fmtl.balancers._random.uniform`), so every ``torch.func``
strategy sees the same masks (no random op runs under ``vmap``), the masks of a sample do not
depend on which batch or rank it lands in, and a resumed run redraws them exactly. Without
``key`` (and in eval mode) dropout is the identity. ``nn.Dropout`` draws from the global RNG
instead (LibMTL): the masks differ, their distribution does not.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple, Union

import torch
import torch.nn.functional as F
from tensordict import TensorDict

from fmtl.balancers._random import uniform

__all__ = ["Model", "update_buffers", "update_buffers_per_task", "generator"]

Tensor = torch.Tensor
Path = tuple[str, ...]
SeedLike = Union[int, torch.Generator]  # noqa: UP007 (runtime alias, py3.10 safe either way)


class Model(NamedTuple):
    """A multi-task model as data plus pure functions.

    Attributes:
        params: TensorDict with ``"shared"`` (θ) and ``"tasks"`` (one ψ_t per task, in
            task order).
        apply: ``apply(params, x, buffers=None, train=True, key=None) -> {task: prediction}``;
            pure. ``x`` is a Tensor or, for graph models, the whole batch TensorDict (a
            multi-input problem calls it once per task's sub-batch); ``key`` the per-sample
            dropout seeds (module docstring).
        buffers: BatchNorm running statistics (same tree layout as the BatchNorm
            parameters, leaves ``mean`` and ``var``), or ``None`` for models without
            BatchNorm.
        stats: ``stats(params, x) -> TensorDict`` of the batch statistics of every
            BatchNorm layer (``mean`` and unbiased ``var``), laid out like ``buffers``;
            ``None`` for models without BatchNorm. Used by :func:`update_buffers`.
        encoders: where the model's backbone trees sit in ``params`` (e.g. ``("shared",)``
            for HPS, one path per cross-stitch column or MMoE expert): what
            :func:`fmtl.models.load_torchvision_weights` fills from a state dict.

    Example:
        >>> from fmtl.models import mlp_hps
        >>> m = mlp_hps(4, hidden=(8,), tasks={"a": 1, "b": 2}, seed=0)
        >>> list(m.params["tasks"].keys()), m.buffers is None
        (['a', 'b'], True)
    """

    params: TensorDict
    apply: Callable[..., dict[str, Tensor]]
    buffers: TensorDict | None = None
    stats: Callable[[TensorDict, Tensor], TensorDict] | None = None
    encoders: tuple[Path, ...] = ()


def generator(seed: SeedLike) -> torch.Generator:
    """Returns ``seed`` if it is a ``torch.Generator``, else a CPU generator seeded with it.

    Example:
        >>> generator(0).initial_seed()
        0
    """
    if isinstance(seed, torch.Generator):
        return seed
    return torch.Generator().manual_seed(int(seed))


def update_buffers(
    model: Model,
    params: TensorDict,
    buffers: TensorDict,
    x: Tensor | TensorDict,
    momentum: float = 0.1,
    key: Tensor | None = None,
) -> TensorDict:
    """New BatchNorm running statistics after one train-mode forward on ``x`` (pure).

    .. math::
        r_{μ} ← (1 − m)\\, r_{μ} + m\\, μ_B, \\qquad
        r_{σ²} ← (1 − m)\\, r_{σ²} + m\\, \\frac{n}{n − 1} σ²_B

    with n the number of values per channel, as ``nn.BatchNorm2d(momentum=m)``. Pass the
    step's dropout ``key`` so that layers after a dropout see the masks of the gradient pass.

    Example:
        >>> import torch
        >>> from fmtl.models import resnet, update_buffers
        >>> m = resnet({"a": 3}, layers=(1,), widths=(4,), stem="cifar", seed=0)
        >>> x = torch.randn(2, 3, 8, 8)
        >>> new = update_buffers(m, m.params, m.buffers, x)
        >>> bool((new["shared", "bn1", "mean"] != 0).any())
        True
    """
    if model.stats is None:
        raise ValueError("this model has no BatchNorm buffers")
    with torch.no_grad():
        s = model.stats(params.detach(), x) if key is None else model.stats(params.detach(), x, key=key)
    new = buffers.clone()
    for key, b in s.items(include_nested=True, leaves_only=True):
        new[key] = torch.lerp(buffers[key], b.to(buffers[key].dtype), momentum)
    return new


def update_buffers_per_task(
    model: Model,
    params: TensorDict,
    buffers: TensorDict,
    batch: TensorDict,
    momentum: float = 0.1,
    input_key: str = "x",
    key: str | None = None,
) -> TensorDict:
    """Running statistics of a multi-input step: :func:`update_buffers` on each task's sub-batch in turn.

    LibMTL's multi-input forwards run the encoder once per task, so its BatchNorm layers update
    their running statistics T times per step, in task order; this does the same (pure).
    ``key``: the sub-batches' key of per-sample dropout seeds.

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from fmtl.models import resnet
        >>> m = resnet({"a": 2, "b": 2}, layers=(1,), widths=(3,), stem="cifar", seed=0)
        >>> batch = TensorDict({t: {"x": torch.randn(2, 3, 4, 4)} for t in ("a", "b")}, [])
        >>> new = update_buffers_per_task(m, m.params, m.buffers, batch)
        >>> bool((new["shared", "bn1", "mean"] != 0).all())
        True
    """
    for t in params["tasks"].keys():
        sub = batch[t]
        seeds = sub.get(key, None) if key is not None else None
        buffers = update_buffers(model, params, buffers, sub[input_key], momentum, key=seeds)
    return buffers


# ---------------------------------------------------------------------------- initializers


def linear_init(gen: torch.Generator, d_in: int, d_out: int, dtype: torch.dtype) -> TensorDict:
    """``nn.Linear``'s default initialization: weight [d_out, d_in] and bias, U(±1/√d_in)."""
    bound = 1.0 / math.sqrt(d_in)
    w = (torch.rand(d_out, d_in, generator=gen, dtype=dtype) * 2 - 1) * bound
    b = (torch.rand(d_out, generator=gen, dtype=dtype) * 2 - 1) * bound
    return TensorDict({"weight": w, "bias": b}, [])


def conv_init(gen: torch.Generator, c_in: int, c_out: int, k: int, dtype: torch.dtype, bias: bool = True) -> TensorDict:
    """``nn.Conv2d``'s default initialization: weight [c_out, c_in, k, k], U(±1/√fan_in)."""
    bound = 1.0 / math.sqrt(c_in * k * k)
    out = {"weight": (torch.rand(c_out, c_in, k, k, generator=gen, dtype=dtype) * 2 - 1) * bound}
    if bias:
        out["bias"] = (torch.rand(c_out, generator=gen, dtype=dtype) * 2 - 1) * bound
    return TensorDict(out, [])


def kaiming_conv_init(gen: torch.Generator, c_in: int, c_out: int, k: int, dtype: torch.dtype) -> TensorDict:
    """torchvision ResNet's conv init: bias-free, N(0, 2 / (c_out k²)) (Kaiming, fan_out)."""
    std = math.sqrt(2.0 / (c_out * k * k))
    return TensorDict({"weight": torch.randn(c_out, c_in, k, k, generator=gen, dtype=dtype) * std}, [])


def bn_init(c: int, dtype: torch.dtype) -> tuple[TensorDict, TensorDict]:
    """BatchNorm affine parameters (γ = 1, β = 0) and running statistics (μ = 0, σ² = 1)."""
    p = TensorDict({"weight": torch.ones(c, dtype=dtype), "bias": torch.zeros(c, dtype=dtype)}, [])
    b = TensorDict({"mean": torch.zeros(c, dtype=dtype), "var": torch.ones(c, dtype=dtype)}, [])
    return p, b


# ---------------------------------------------------------------------------- layers


def linear(p: TensorDict, x: Tensor) -> Tensor:
    """y = x Wᵀ + b."""
    return F.linear(x, p["weight"], p.get("bias", None))


def conv(p: TensorDict, x: Tensor, stride: int = 1, padding: int | None = None, dilation: int = 1) -> Tensor:
    """2-D convolution with 'same'-style padding ``dilation · (k // 2)`` unless given."""
    w = p["weight"]
    pad = dilation * (w.shape[-1] // 2) if padding is None else padding
    return F.conv2d(x, w, p.get("bias", None), stride=stride, padding=pad, dilation=dilation)


def _path_id(path: Path) -> int:
    """A stable 31-bit id of a layer path (FNV-1a; plain Python, so torch.compile folds it).

    Example:
        >>> _path_id(("shared", "drop")) == _path_id(("shared", "drop")) != _path_id(("tasks", "drop"))
        True
    """
    h = 2166136261
    for ch in "/".join(path):
        h = ((h ^ ord(ch)) * 16777619) & 0xFFFFFFFF
    return h & 0x7FFFFFFF


class Norm:
    """The context of one forward pass: BatchNorm ``norm(path, x)`` and ``norm.dropout(path, x, p)``.

    ``path`` names the layer's parameters in ``params`` (and its statistics in
    ``buffers``). Modes: ``"train"`` (batch statistics), ``"eval"`` (running statistics)
    and ``"stats"`` (batch statistics, also recorded into ``self.record``). The recording
    only happens in ``stats`` mode, which runs outside any ``torch.func`` transform.
    ``key`` holds the per-sample dropout seeds (module docstring); ``memo`` lets a block
    hand a tensor to a later block of the same forward (SegNet's pooling indices).
    """

    def __init__(
        self,
        params: TensorDict,
        mode: str,
        buffers: TensorDict | None = None,
        eps: float = 1e-5,
        key: Tensor | None = None,
    ):
        self.params, self.mode, self.buffers, self.eps, self.key = params, mode, buffers, eps, key
        self.record: dict[Path, Tensor] = {}
        self.memo: dict[Path, object] = {}

    def dropout(self, path: Path, x: Tensor, p: float) -> Tensor:
        """Inverted dropout with the counter-based mask of each sample (identity without ``key``).

        .. math:: y = x ⊙ m / (1 − p), \\qquad m_{b,i} = [u(s_b, h(\\text{path}), i) ≥ p]

        Example:
            >>> import torch
            >>> from tensordict import TensorDict
            >>> n = Norm(TensorDict({}, []), "train", key=torch.tensor([0, 1]))
            >>> y = n.dropout(("drop",), torch.ones(2, 1000), 0.5)
            >>> sorted(set(y.flatten().tolist())), torch.equal(y, n.dropout(("drop",), torch.ones(2, 1000), 0.5))
            ([0.0, 2.0], True)
        """
        if self.key is None or self.mode == "eval" or p == 0.0:
            return x
        if self.key.shape != x.shape[:1]:
            raise ValueError(f"dropout key must hold one seed per sample: shape {tuple(self.key.shape)}, "
                             f"batch of {x.shape[0]}")  # fmt: skip
        u = uniform(self.key[:, None], _path_id(path), x[0].numel(), dtype=x.dtype)
        keep = (u >= p).to(x.dtype).view(x.shape)
        return x * keep / (1.0 - p)

    def __call__(self, path: Path, x: Tensor) -> Tensor:
        p = self.params[path]
        shape = (1, -1) + (1,) * (x.dim() - 2)
        dims = [0] + list(range(2, x.dim()))
        if self.mode == "eval":
            mean, var = self.buffers[path]["mean"], self.buffers[path]["var"]
        else:
            mean = x.mean(dim=dims)
            var = (x - mean.view(shape)).square().mean(dim=dims)
            if self.mode == "stats":
                n = x.numel() // x.shape[1]
                self.record[path + ("mean",)] = mean
                self.record[path + ("var",)] = var * (n / max(n - 1, 1))
        inv = torch.rsqrt(var + self.eps) * p["weight"]
        return (x - mean.view(shape)) * inv.view(shape) + p["bias"].view(shape)


def with_batch_norm(
    forward: Callable[[TensorDict, Tensor, Norm], dict[str, Tensor]],
    params: TensorDict,
    buffers: TensorDict,
    encoders: tuple[Path, ...] = (),
) -> Model:
    """Builds a :class:`Model` from ``forward(params, x, norm)`` that calls ``norm(path, h)``."""

    def apply(
        params: TensorDict,
        x: Tensor,
        buffers: TensorDict | None = None,
        train: bool = True,
        key: Tensor | None = None,
        **options,
    ) -> dict[str, Tensor]:
        if not train and buffers is None:
            raise ValueError("eval mode (train=False) needs the running statistics: buffers=")
        return forward(params, x, Norm(params, "train" if train else "eval", buffers, key=key), **options)

    def stats(params: TensorDict, x: Tensor, key: Tensor | None = None, **options) -> TensorDict:
        norm = Norm(params, "stats", key=key)
        forward(params, x, norm, **options)
        out = TensorDict({}, [])
        for k, v in norm.record.items():
            out[k] = v
        return out

    return Model(params, apply, buffers, stats, encoders)


def no_batch_norm(forward: Callable[[TensorDict, Tensor], dict[str, Tensor]], params: TensorDict) -> Model:
    """Builds a :class:`Model` whose ``apply`` accepts and ignores ``buffers`` / ``train`` / ``key``."""
    return build(lambda p, x, norm: forward(p, x), params, td({}))


def build(
    forward: Callable[[TensorDict, Tensor, Norm], dict[str, Tensor]],
    params: TensorDict,
    buffers: TensorDict,
    encoders: tuple[Path, ...] = (),
) -> Model:
    """:func:`with_batch_norm` when ``buffers`` has leaves, else a BatchNorm-free :class:`Model`
    (``buffers=None``) whose forward still gets a :class:`Norm` (for dropout). Extra keyword
    arguments of ``apply`` (e.g. LTB's ``tau``) go to ``forward``.

    Example:
        >>> import torch
        >>> m = build(lambda p, x, norm: {"a": x * p["shared", "w"]}, td({"shared": td({"w": torch.ones(1)}),
        ...           "tasks": td({"a": td({})})}), td({}))
        >>> m.buffers is None, m.apply(m.params, torch.ones(2), train=False)["a"].tolist()
        (True, [1.0, 1.0])
    """
    if any(True for _ in buffers.keys(include_nested=True, leaves_only=True)):
        return with_batch_norm(forward, params, buffers, encoders)

    def apply(
        params: TensorDict,
        x: Tensor | TensorDict,
        buffers: TensorDict | None = None,
        train: bool = True,
        key: Tensor | None = None,
        **options,
    ) -> dict[str, Tensor]:
        return forward(params, x, Norm(params, "train" if train else "eval", key=key), **options)

    return Model(params, apply, None, None, encoders)


def td(d: dict) -> TensorDict:
    """Nested dict of tensors / TensorDicts -> TensorDict with ``batch_size=[]``."""
    return TensorDict(d, [])
