"""The training application on top of the engine: ``fmtl train``, ``fmtl compare`` and their pieces.

The engine (``fmtl``: task gradients, balancers, the pure step, optimizers, distributed reduce)
never imports this package. Here live the command line (:mod:`fmtl.train.cli`), run
configurations (:mod:`fmtl.train.config`), the problems a run can train (:mod:`fmtl.train.problems`),
the training loop (:mod:`fmtl.train.loop`), run directories (:mod:`fmtl.train.runs`),
checkpoints, evaluation, model selection, the STL ensemble, comparison tables and plots.
"""

from .loop import TrainingDiverged, train

__all__ = ["TrainingDiverged", "train"]
