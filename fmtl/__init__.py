"""fmtl: functional multi-task learning for PyTorch.

Models are pure functions ``loss_fn(params, batch) -> Tensor[T]`` over TensorDict parameters
(``params["shared"]`` = θ, ``params["tasks"][name]`` = ψ_t); :func:`task_gradients` computes
all T task gradients in one vectorized pass; a :class:`Balancer` (DB-MTL or a baseline) turns
them into one update; :func:`make_step` composes everything into a pure, compile-able step.
"""

from . import balancers, optim
from .base import Balancer, EmptyState, TaskGradients
from .params import Functional, functionalize, task_names
from .representation import TwoStageLoss
from .step import Step, StepState, make_step
from .task_gradients import STRATEGIES, task_gradients

__version__ = "0.1.0"

__all__ = [
    "Balancer",
    "EmptyState",
    "Functional",
    "STRATEGIES",
    "Step",
    "StepState",
    "TaskGradients",
    "TwoStageLoss",
    "balancers",
    "functionalize",
    "make_step",
    "optim",
    "task_gradients",
    "task_names",
]
