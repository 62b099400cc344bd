"""Every task-gradient strategy (and ``"auto"``) equals a plain loop of ``torch.autograd.grad``."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tensordict import TensorDict

import fmtl
import fmtl.memory
from fmtl import strategy as auto

CONCRETE = ("jacrev", "vmap_grad", "loop")


def _problem(num_tasks: int, width: int, batch: int, dtype: torch.dtype, seed: int = 0, conv: bool = False):
    """Heads of different output sizes and losses of different kinds, so tasks really differ."""
    torch.manual_seed(seed)
    if conv:
        encoder = torch.nn.Sequential(
            torch.nn.Conv2d(2, width, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(width, width, 3, stride=2),
            torch.nn.Tanh(), torch.nn.Flatten(),
        )
        x = torch.randn(batch, 2, 6, 6, dtype=dtype)
        features = width * 2 * 2
    else:
        encoder = torch.nn.Sequential(torch.nn.Linear(3, width), torch.nn.Tanh(), torch.nn.Linear(width, width))
        x = torch.randn(batch, 3, dtype=dtype)
        features = width
    heads = {f"t{t}": torch.nn.Linear(features, 1 + t % 2) for t in range(num_tasks)}
    params, apply = fmtl.functionalize(encoder.to(dtype), {k: h.to(dtype) for k, h in heads.items()})
    y = torch.randn(batch, num_tasks, 2, dtype=dtype)

    def loss_fn(p: TensorDict, b: TensorDict) -> torch.Tensor:
        out = apply(p, b["x"])
        losses = []
        for t, k in enumerate(out):
            err = out[k] - b["y"][:, t, : out[k].shape[-1]]
            losses.append(err.pow(2).mean() if t % 3 else err.abs().mean() + err.pow(4).mean())
        return torch.stack(losses)

    return params, loss_fn, TensorDict({"x": x, "y": y}, [batch])


def _reference(loss_fn, params: TensorDict, batch: TensorDict):
    """Losses and gradients from one forward and T ``autograd.grad`` calls."""
    leaves = params.apply(lambda v: v.detach().clone().requires_grad_())
    losses = loss_fn(leaves, batch)
    shared_keys = list(leaves["shared"].keys(True, True))
    rows, heads = [], {}
    for t, name in enumerate(leaves["tasks"].keys()):
        head_keys = list(leaves["tasks", name].keys(True, True))
        inputs = [leaves["shared", k] for k in shared_keys] + [leaves["tasks", name, k] for k in head_keys]
        grads = torch.autograd.grad(losses[t], inputs, retain_graph=True, allow_unused=True)
        grads = [torch.zeros_like(i) if g is None else g for g, i in zip(grads, inputs, strict=True)]
        rows.append(dict(zip(shared_keys, grads[: len(shared_keys)], strict=True)))
        heads[name] = TensorDict(dict(zip(head_keys, grads[len(shared_keys) :], strict=True)), [])
    shared = {k: torch.stack([r[k] for r in rows]) for k in shared_keys}
    return losses.detach(), shared, heads


def _assert_matches(g: fmtl.TaskGradients, ref, dtype: torch.dtype) -> None:
    tol = {"atol": 1e-5, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 1e-10, "rtol": 1e-9}
    losses, shared, heads = ref
    torch.testing.assert_close(g.losses, losses, **tol)
    assert g.shared.batch_size == torch.Size([losses.shape[0]])
    assert set(g.shared.keys(True, True)) == set(shared)
    for k, v in shared.items():
        torch.testing.assert_close(g.shared[k], v, **tol)
    assert list(g.tasks.keys()) == list(heads)
    for name, head in heads.items():
        for k in head.keys(True, True):
            torch.testing.assert_close(g.tasks[name][k], head[k], **tol)


@settings(max_examples=25, deadline=None)
@given(
    num_tasks=st.integers(1, 12),
    width=st.integers(1, 16),
    batch=st.integers(1, 9),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
)
def test_every_strategy_equals_the_autograd_loop(num_tasks, width, batch, dtype, seed):
    params, loss_fn, b = _problem(num_tasks, width, batch, dtype, seed)
    ref = _reference(loss_fn, params, b)
    for s in (*CONCRETE, "auto"):
        _assert_matches(fmtl.task_gradients(loss_fn, params, b, strategy=s), ref, dtype)


@settings(max_examples=10, deadline=None)
@given(
    num_tasks=st.integers(1, 12),
    chunk_size=st.integers(1, 13),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    strategy=st.sampled_from(CONCRETE),
)
def test_chunk_size_does_not_change_the_result(num_tasks, chunk_size, dtype, strategy):
    params, loss_fn, b = _problem(num_tasks, 5, 4, dtype)
    ref = _reference(loss_fn, params, b)
    _assert_matches(fmtl.task_gradients(loss_fn, params, b, strategy=strategy, chunk_size=chunk_size), ref, dtype)


@pytest.mark.parametrize("strategy", (*CONCRETE, "auto"))
def test_conv_encoder_matches_the_loop(strategy):
    params, loss_fn, b = _problem(4, 3, 5, torch.float64, conv=True)
    _assert_matches(fmtl.task_gradients(loss_fn, params, b, strategy=strategy), _reference(loss_fn, params, b),
                    torch.float64)


def test_inputs_are_not_mutated():
    params, loss_fn, b = _problem(3, 4, 5, torch.float64)
    before = params.clone()
    for s in CONCRETE:
        fmtl.task_gradients(loss_fn, params, b, strategy=s)
    assert (params == before).all()


def test_auto_measures_once_then_reuses_its_decision(monkeypatch):
    auto.clear()
    params, loss_fn, b = _problem(3, 4, 5, torch.float32)
    calls = []
    measure = auto._measure
    monkeypatch.setattr(auto, "_measure", lambda run: calls.append(1) or measure(run))
    first = auto.choose_strategy(loss_fn, params, b)
    assert first in auto.CANDIDATES
    assert auto.choose_strategy(loss_fn, params, b) == first
    fmtl.task_gradients(loss_fn, params, b)
    assert len(calls) == 1
    # another shape is another problem: measured again
    params2, loss_fn2, b2 = _problem(3, 4, 6, torch.float32)
    auto.choose_strategy(loss_fn2, params2, b2)
    assert len(calls) == 2
    assert len(auto.decisions()) == 2


def test_measurement_picks_the_fastest_candidate():
    delays = {"jacrev": 0.004, "vmap_grad": 0.0, "loop": 0.05}

    def run(s):
        import time

        time.sleep(delays[s])

    assert auto._measure(run) == "vmap_grad"


def test_unknown_strategy_is_rejected():
    params, loss_fn, b = _problem(2, 3, 4, torch.float32)
    with pytest.raises(ValueError, match="unknown strategy"):
        fmtl.task_gradients(loss_fn, params, b, strategy="fastest")


def test_compiled_step_with_auto_matches_eager_and_measures_nothing():
    auto.clear()
    params, loss_fn, b = _problem(3, 4, 5, torch.float32)
    step = fmtl.make_step(loss_fn, fmtl.balancers.get("dbmtl"), fmtl.optim.sgd(0.1))
    state = step.init(params)
    eager_params, _, eager_info = step(params, state, b)  # measures and caches an eager decision
    chosen = list(auto.decisions().values())
    compiled = torch.compile(lambda p, s, batch: step(p, s, batch), fullgraph=True)
    new_params, _, info = compiled(params, state, b)
    torch.testing.assert_close(info["weights"], eager_info["weights"], rtol=1e-4, atol=1e-6)
    for k in params.keys(True, True):
        torch.testing.assert_close(new_params[k], eager_params[k], rtol=1e-4, atol=1e-6)
    # compiling never measures: the decision table is unchanged
    assert list(auto.decisions().values()) == chosen


def test_allocator_tuning_reports_whether_it_applied(monkeypatch):
    from fmtl import allocator

    monkeypatch.setenv("FMTL_DEFAULT_MALLOC", "1")
    assert allocator.tune() is False  # the opt-out is honoured
    monkeypatch.delenv("FMTL_DEFAULT_MALLOC")
    applied = allocator.tune()
    assert applied == (allocator._libc() is not None)
    if applied:
        assert allocator.is_tuned()


def test_cache_key_tells_models_of_the_same_shapes_apart():
    p = TensorDict({"shared": {"w": torch.zeros(3)}, "tasks": {"a": {"b": torch.zeros(1)}}}, [])
    x = torch.zeros(2)

    def factory(apply):
        def loss_fn(params, batch):
            return apply(params, batch)

        return loss_fn

    def apply_a(params, batch): ...
    def apply_b(params, batch): ...

    class Problem:
        def loss_fn(self, params, batch): ...

    one, two = Problem(), Problem()
    key = auto.cache_key
    assert key(factory(apply_a), p, x) == key(factory(apply_a), p, x)  # re-made around the same model
    assert key(factory(apply_a), p, x) != key(factory(apply_b), p, x)  # same code, another model
    assert key(one.loss_fn, p, x) == key(one.loss_fn, p, x)
    assert key(one.loss_fn, p, x) != key(two.loss_fn, p, x)


@settings(max_examples=40, deadline=None)
@given(T=st.integers(1, 64), base=st.integers(0, 10_000), per_task=st.integers(1, 1_000), budget=st.integers(0, 80_000))
def test_the_chunk_for_max_memory_is_the_largest_that_fits(T, base, per_task, budget):
    """A peak of base + per_task·chunk (the shape of a chunked vmapped backward): the largest fitting chunk."""

    def peak(plan):
        return base + per_task * (T if plan.chunk_size is None else plan.chunk_size)

    plan, measured = auto._fit_chunk(peak, "jacrev", T, budget)
    assert measured == peak(plan)
    fits = [c for c in range(1, T + 1) if base + per_task * c <= budget]
    chunk = T if plan.chunk_size is None else plan.chunk_size
    assert chunk == (max(fits) if fits else 1)  # nothing fits: the smallest working set
    assert (plan.chunk_size is None) == (chunk == T) or T == 1


def test_max_memory_chooses_a_chunk_that_fits_and_the_same_gradients():
    auto.clear()
    params, loss_fn, b = _problem(8, 4, 16, torch.float64, conv=True)
    ref = _reference(loss_fn, params, b)
    full = fmtl.memory.peak_bytes(lambda: fmtl.task_gradients(loss_fn, params, b, strategy="jacrev"))
    one = fmtl.memory.peak_bytes(lambda: fmtl.task_gradients(loss_fn, params, b, strategy="jacrev", chunk_size=1))
    budget = (full + one) // 2
    plan = auto.choose(loss_fn, params, b, max_memory=budget, strategy="jacrev")
    assert plan.strategy == "jacrev" and plan.chunk_size is not None and plan.chunk_size < 8
    run = lambda: fmtl.task_gradients(loss_fn, params, b, strategy="jacrev", max_memory=budget)  # noqa: E731
    assert fmtl.memory.peak_bytes(run) <= budget
    _assert_matches(run(), ref, torch.float64)
    # "auto" under the same bound times only what fits
    chosen = auto.choose(loss_fn, params, b, max_memory=budget)
    measured = fmtl.memory.peak_bytes(
        lambda: fmtl.task_gradients(loss_fn, params, b, strategy=chosen.strategy, chunk_size=chosen.chunk_size)
    )
    assert measured <= budget
    _assert_matches(fmtl.task_gradients(loss_fn, params, b, max_memory=budget), ref, torch.float64)


@pytest.mark.parametrize("strategy, chunk_size", [("loop", None), ("jacrev", 1)])
def test_the_loop_and_a_chunk_of_one_hold_J_once(strategy, chunk_size):
    """A wide shared layer on a batch of 2: J dwarfs the forward's graph, and the eager loop (which a
    chunk of one task is) holds it once: each backward adds into its row, no list of rows is stacked."""
    T = 16
    params, loss_fn, b = _problem(T, 64, 2, torch.float32)
    J_bytes = T * sum(v.numel() * v.element_size() for v in params["shared"].values(True, True))
    run = lambda: fmtl.task_gradients(loss_fn, params, b, strategy=strategy, chunk_size=chunk_size)  # noqa: E731
    peak = fmtl.memory.peak_bytes(run)
    assert J_bytes <= peak < 1.6 * J_bytes  # 1.42 J; a list of rows stacked at the end: 2.35 J
    _assert_matches(run(), _reference(loss_fn, params, b), torch.float32)


def test_max_memory_under_compile_uses_the_loop():
    params, loss_fn, b = _problem(3, 4, 5, torch.float32)

    @torch.compile(fullgraph=True)
    def plan(p, batch):
        chosen = auto.choose(loss_fn, p, batch, max_memory=1)
        return torch.tensor(CONCRETE.index(chosen.strategy))

    assert int(plan(params, b)) == CONCRETE.index("loop")


def test_all_tasks_at_once_is_kept_when_it_fits_though_large_chunks_do_not():
    """Chunks copy their rows into place: all T at once can peak below a large chunk (the MLP at T = 40)."""
    T, budget = 40, 175

    def peak(plan):
        return 104 if plan.chunk_size is None else 89 + 2.5 * plan.chunk_size + 0.8 * plan.chunk_size

    plan, measured = auto._fit_chunk(peak, "jacrev", T, budget)
    assert plan.chunk_size is None and measured == 104


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_loop_inside_a_transform_equals_the_autograd_loop(dtype):
    """Under torch.compile or a torch.func transform the loop is one vjp and T pullbacks, not
    autograd.grad: ``functionalize`` (a transform that changes no value) runs that path eagerly."""
    import sys

    params, loss_fn, b = _problem(4, 5, 6, dtype)
    assert torch.func.functionalize(lambda x: torch.tensor(sys.modules["fmtl.jacobian"]._in_transform()))(
        torch.zeros(1))  # fmt: skip
    g = torch.func.functionalize(lambda p: fmtl.task_gradients(loss_fn, p, b, strategy="loop"))(params)
    _assert_matches(g, _reference(loss_fn, params, b), dtype)


@pytest.mark.parametrize("chunk_size", [1, 2])
def test_chunked_vmap_grad_draws_the_dropout_masks_of_one_forward(chunk_size):
    """Every chunk replays the first chunk's random draws: the same J as one forward (jacrev) under
    the same seed, and the generator left where one forward leaves it."""
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Dropout(0.5))
    heads = {t: torch.nn.Linear(8, 1) for t in "abc"}
    params, apply = fmtl.functionalize(encoder, heads)
    x = torch.randn(16, 3)

    def loss_fn(p, b):
        out = apply(p, b)
        return torch.stack([out[t].pow(2).mean() for t in "abc"])

    def run(strategy, chunk):
        torch.manual_seed(1)
        g = fmtl.task_gradients(loss_fn, params, x, strategy=strategy, chunk_size=chunk)
        return g, torch.rand(1)  # the generator's position after the call

    (ref, after_ref), (got, after) = run("jacrev", None), run("vmap_grad", chunk_size)
    assert torch.equal(after, after_ref)
    torch.testing.assert_close(got.losses, ref.losses)
    for k in ref.shared.keys(True, True):
        torch.testing.assert_close(got.shared[k], ref.shared[k])
