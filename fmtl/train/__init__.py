"""The training application on top of the engine: ``fmtl train``, ``fmtl compare`` and their pieces.

The engine (``fmtl``: task gradients, balancers, the pure step, optimizers, distributed reduce)
never imports this package. Here live a :class:`Problem` (datasets, model, per-task losses and
metrics; :meth:`Problem.from_modules` builds one from your own ``nn.Module`` encoder, heads and
``torch.utils.data`` datasets), :func:`fit` (train one method on a problem, with the STL
baseline and Δp), the registry of named problems (:mod:`fmtl.train.problems`), the command line
(:mod:`fmtl.train.cli`) and the pieces of a run, each in its own module: configuration, run
directories, assembly, checkpoints and resume, the loop, logging, evaluation, model selection,
the STL ensemble, comparison tables and plots.
"""

from . import problems
from .evaluate import Metric, accuracy, regression
from .fit import fit, train
from .loop import TrainingDiverged
from .problem import Problem

__all__ = ["Metric", "Problem", "TrainingDiverged", "accuracy", "fit", "problems", "regression", "train"]
