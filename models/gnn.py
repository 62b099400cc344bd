"""Message-passing GNN for QM9 (Gilmer et al., 2017), as in the Nash-MTL / DB-MTL setup.

Plain torch, vectorized over a batch of graphs with ``index_add`` / ``scatter_reduce``:
no torch_geometric. The graph batch is a ``TensorDict(batch_size=[])`` with ``node_attr``
[N, F], ``edge_index`` [2, E] (row 0 source j, row 1 target i; both directions present),
``edge_attr`` [E, Fe], ``graph`` [N] (graph of each node, sorted) and ``num_atoms`` [B].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDict

from fmtl.heads import linear_heads

from ._core import Model, SeedLike, generator, linear, linear_init, no_batch_norm, td

__all__ = ["qm9_gnn", "QM9_TASKS"]

Tensor = torch.Tensor

#: The 11 QM9 targets in the order of Table 3 (and of Nash-MTL's ``y`` columns).
QM9_TASKS: tuple[str, ...] = (
    "mu", "alpha", "homo", "lumo", "r2", "zpve", "U0", "U", "H", "G", "cv",
)  # fmt: skip


def _gru_init(g: torch.Generator, d_in: int, d: int, dtype: torch.dtype) -> TensorDict:
    """``nn.GRUCell`` / ``nn.LSTMCell`` style init, U(±1/√d), gates stacked on dim 0."""
    bound = 1.0 / d**0.5

    def u(*shape: int) -> Tensor:
        return (torch.rand(*shape, generator=g, dtype=dtype) * 2 - 1) * bound

    return td({"ih": td({"weight": u(3 * d, d_in), "bias": u(3 * d)}),
               "hh": td({"weight": u(3 * d, d), "bias": u(3 * d)})})  # fmt: skip


def _lstm_init(g: torch.Generator, d_in: int, d: int, dtype: torch.dtype) -> TensorDict:
    bound = 1.0 / d**0.5

    def u(*shape: int) -> Tensor:
        return (torch.rand(*shape, generator=g, dtype=dtype) * 2 - 1) * bound

    return td({"ih": td({"weight": u(4 * d, d_in), "bias": u(4 * d)}),
               "hh": td({"weight": u(4 * d, d), "bias": u(4 * d)})})  # fmt: skip


def gru_cell(p: TensorDict, x: Tensor, h: Tensor) -> Tensor:
    """One ``nn.GRUCell`` step (gates r, z, n in PyTorch's order).

    .. math::
        r = σ(W_{ir}x + b_{ir} + W_{hr}h + b_{hr}),\\;
        z = σ(W_{iz}x + b_{iz} + W_{hz}h + b_{hz}),\\;
        n = \\tanh(W_{in}x + b_{in} + r ⊙ (W_{hn}h + b_{hn})),\\;
        h' = (1 − z) ⊙ n + z ⊙ h
    """
    gi = linear(p["ih"], x).chunk(3, dim=-1)
    gh = linear(p["hh"], h).chunk(3, dim=-1)
    r = torch.sigmoid(gi[0] + gh[0])
    z = torch.sigmoid(gi[1] + gh[1])
    n = torch.tanh(gi[2] + r * gh[2])
    return (1 - z) * n + z * h


def lstm_cell(p: TensorDict, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """One ``nn.LSTMCell`` step (gates i, f, g, o in PyTorch's order)."""
    i, f, gg, o = (linear(p["ih"], x) + linear(p["hh"], h)).chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(gg)
    return torch.sigmoid(o) * torch.tanh(c), c


def segment_softmax(e: Tensor, seg: Tensor, num_segments: int) -> Tensor:
    """Softmax of ``e`` [N] within each segment given by ``seg`` [N] (values in 0..S-1).

    .. math:: a_i = \\exp(e_i − m_{s(i)}) / Σ_{j: s(j)=s(i)} \\exp(e_j − m_{s(i)})

    The shift m_s = max over the segment is detached: it cancels mathematically, so the
    gradient is exact and no ``amax`` backward is needed under ``vmap``.

    Example:
        >>> import torch
        >>> segment_softmax(torch.tensor([0.0, 0.0, 1.0]), torch.tensor([0, 0, 1]), 2)
        tensor([0.5000, 0.5000, 1.0000])
    """
    with torch.no_grad():
        m = e.new_full((num_segments,), float("-inf")).scatter_reduce(
            0, seg, e.detach(), reduce="amax", include_self=True
        )
    ex = torch.exp(e - m[seg])
    den = ex.new_zeros(num_segments).index_add(0, seg, ex)
    return ex / den[seg]


def qm9_gnn(
    node_dim: int,
    edge_dim: int,
    hidden: int = 64,
    steps: int = 3,
    tasks: Sequence[str] = QM9_TASKS,
    *,
    set2set_steps: int = 3,
    edge_hidden: int = 128,
    seed: SeedLike = 0,
    dtype: torch.dtype = torch.float32,
) -> Model:
    """Gilmer et al.'s MPNN (NNConv + GRU + Set2Set), shared θ, one linear head ψ_t per task.

    .. math::
        h^0_i = \\mathrm{ReLU}(W_0 x_i), \\quad
        m^{k}_i = \\mathrm{ReLU}\\Big(W_r h^{k}_i + b +
            \\frac{1}{|N(i)|}\\sum_{j ∈ N(i)} h^{k}_j\\, Θ(e_{ji})\\Big), \\quad
        h^{k+1} = \\mathrm{GRU}(m^k, h^k),

    with the edge network Θ(e) = reshape(MLP(e)) ∈ R^{d×d} (NNConv, mean aggregation), then
    q = Set2Set(h^K) ∈ R^{2d} per graph, z = ReLU(W_1 q), \\hat y_t = a_tᵀ z + c_t.
    This is Nash-MTL's QM9 ``Net`` (``lin2`` split into the per-task heads).

    Args:
        node_dim: node feature size F (``batch["node_attr"].shape[1]``).
        edge_dim: edge feature size Fe (``batch["edge_attr"].shape[1]``).
        hidden: d. steps: message-passing steps K.
        tasks: task names (default :data:`QM9_TASKS`); head t predicts column t of ``y``.
        set2set_steps: Set2Set processing steps. edge_hidden: edge network width.

    Returns:
        A :class:`~fmtl.models.Model`; ``apply(params, batch)`` takes the whole graph batch
        and returns ``{t: Tensor[B, 1]}``, B = ``batch["num_atoms"].shape[0]``.

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from fmtl.models import qm9_gnn
        >>> batch = TensorDict({"node_attr": torch.randn(5, 11), "edge_attr": torch.randn(4, 4),
        ...     "edge_index": torch.tensor([[0, 1, 3, 4], [1, 0, 4, 3]]),
        ...     "graph": torch.tensor([0, 0, 0, 1, 1]), "num_atoms": torch.tensor([3, 2])}, [])
        >>> m = qm9_gnn(11, 4, hidden=8, seed=0)
        >>> out = m.apply(m.params, batch)
        >>> len(out), out["mu"].shape
        (11, torch.Size([2, 1]))
    """
    names = list(tasks)
    g = generator(seed)
    d = hidden
    shared = td({
        "lin0": linear_init(g, node_dim, d, dtype),
        "edge_nn": td({"0": linear_init(g, edge_dim, edge_hidden, dtype),
                       "1": linear_init(g, edge_hidden, d * d, dtype)}),
        "conv_root": linear_init(g, d, d, dtype),
        "gru": _gru_init(g, d, d, dtype),
        "set2set": _lstm_init(g, 2 * d, d, dtype),
        "lin1": linear_init(g, 2 * d, d, dtype),
    })  # fmt: skip
    heads = td({t: linear_init(g, d, 1, dtype) for t in names})
    params = td({"shared": shared, "tasks": heads})

    def forward(params: TensorDict, batch: TensorDict) -> dict[str, Tensor]:
        p = params["shared"]
        x, ea = batch["node_attr"].to(dtype), batch["edge_attr"].to(dtype)
        src, dst = batch["edge_index"][0], batch["edge_index"][1]
        seg = batch["graph"]
        n, b = x.shape[0], batch["num_atoms"].shape[0]
        # NNConv: one d×d matrix per edge, the same at every step.
        theta = linear(p["edge_nn", "1"], torch.relu(linear(p["edge_nn", "0"], ea)))
        theta = theta.view(-1, d, d)
        deg = x.new_zeros(n).index_add(0, dst, torch.ones_like(dst, dtype=x.dtype))
        inv_deg = (1.0 / deg.clamp_min(1.0)).unsqueeze(-1)
        h = torch.relu(linear(p["lin0"], x))
        for _ in range(steps):
            msg = torch.einsum("ei,eio->eo", h[src], theta)  # [E, d]
            agg = h.new_zeros(n, d).index_add(0, dst, msg) * inv_deg
            m = torch.relu(agg + linear(p["conv_root"], h))
            h = gru_cell(p["gru"], m, h)
        # Set2Set readout.
        q_star = h.new_zeros(b, 2 * d)
        hs, cs = h.new_zeros(b, d), h.new_zeros(b, d)
        for _ in range(set2set_steps):
            hs, cs = lstm_cell(p["set2set"], q_star, hs, cs)
            e = (h * hs[seg]).sum(-1)
            a = segment_softmax(e, seg, b)
            r = h.new_zeros(b, d).index_add(0, seg, a.unsqueeze(-1) * h)
            q_star = torch.cat([hs, r], dim=-1)
        z = torch.relu(linear(p["lin1"], q_star))
        return linear_heads(params["tasks"], z, names)

    return no_batch_norm(forward, params)
