"""fmtl: functional multi-task learning for PyTorch.

Models are pure functions ``loss_fn(params, batch) -> Tensor[T]`` over TensorDict parameters
(``params["shared"]`` = θ, ``params["tasks"][name]`` = ψ_t); :func:`task_gradients` computes
all T task gradients in one vectorized pass; a :class:`Balancer` (DB-MTL or a baseline) turns
them into one update; :func:`make_step` composes everything into a pure, compile-able step.
:mod:`fmtl.accumulate` (gradient accumulation before the balancer), :mod:`fmtl.amp` (autocast of
a loss function) and :func:`fmtl.optim.get` (an optimizer by name) are the pieces a training loop
adds. The training application built on them is :mod:`fmtl.train`, which this package never imports.
"""

from . import accumulate, amp, atomic, balancers, optim, plateau, rng, schedules, transforms
from .base import Balancer, EmptyState, TaskGradients
from .params import Functional, functionalize, task_names
from .step import Step, StepState, make_step
from .task_gradients import STRATEGIES, task_gradients
from .torch_optim import TorchOptimizer

__version__ = "0.1.0"

__all__ = [
    "Balancer",
    "EmptyState",
    "Functional",
    "STRATEGIES",
    "Step",
    "StepState",
    "TaskGradients",
    "TorchOptimizer",
    "accumulate",
    "amp",
    "atomic",
    "balancers",
    "functionalize",
    "make_step",
    "optim",
    "plateau",
    "rng",
    "schedules",
    "task_gradients",
    "task_names",
    "transforms",
]
