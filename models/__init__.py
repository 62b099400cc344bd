"""fmtl.models: multi-task models as pure ``(params, apply, buffers)`` triples.

Architectures (each over any encoder factory of :mod:`fmtl.models.blocks` and a head factory):
:func:`hps`, :func:`mtan`, :func:`cross_stitch`, :func:`mmoe`, :func:`cgc`, :func:`ple`,
:func:`dselect_k`, :func:`ltb`. The paper's models: :func:`deeplab` (NYUv2, Cityscapes:
dilated ResNet-50 + ASPP), :func:`segnet` (Table 6), :func:`office_resnet18` (Office-31/Home),
:func:`qm9_gnn`; ImageNet weights from a local torchvision file with :func:`with_weights`.

Every constructor takes sizes and a seed (int or ``torch.Generator``) and returns a
:class:`Model`. ``params`` is a TensorDict with ``"shared"`` (θ, the encoder) and
``"tasks"`` (ψ_t, one head per task, in task order); ``apply(params, x)`` is pure and
returns ``{task: prediction}``, so it runs under ``torch.func.vjp`` / ``vmap`` / ``grad``
and ``torch.compile(fullgraph=True)``.

BatchNorm (``resnet``, ``encoder_decoder``, ``mtan``, ``cross_stitch``) never mutates
state inside ``apply``:

* training: ``apply(params, x)`` normalizes with the batch statistics (pure);
* once per step, outside the vectorized gradients:
  ``buffers = update_buffers(model, params, buffers, x, momentum=0.1)`` returns new running
  statistics, equal to those of ``nn.BatchNorm2d`` after one train-mode forward;
* evaluation: ``apply(params, x, buffers=buffers, train=False)`` uses the running statistics.

Models without BatchNorm have ``buffers=None`` and ignore ``buffers`` / ``train``.
"""

from ._core import Model, generator, update_buffers, update_buffers_per_task
from .cgc import cgc
from .cross_stitch import cross_stitch
from .deeplab import aspp_head, deeplab
from .dense import NYUV2_TASKS, encoder_decoder
from .dselect_k import dselect_k
from .gnn import QM9_TASKS, qm9_gnn
from .hps import hps
from .ltb import ltb, ltb_temperature
from .mlp import mlp_encode, mlp_hps
from .mmoe import mmoe
from .mtan import mtan
from .office import office_resnet18
from .ple import ple
from .resnet import load_torchvision_weights, resnet, resnet18, resnet50, resnet_encoder, with_weights
from .segnet import segnet, segnet_encoder

__all__ = [
    "Model",
    "update_buffers",
    "update_buffers_per_task",
    "generator",
    "mlp_hps",
    "mlp_encode",
    "qm9_gnn",
    "QM9_TASKS",
    "resnet",
    "resnet18",
    "load_torchvision_weights",
    "with_weights",
    "resnet50",
    "resnet_encoder",
    "hps",
    "deeplab",
    "aspp_head",
    "office_resnet18",
    "segnet",
    "segnet_encoder",
    "mmoe",
    "cgc",
    "ple",
    "dselect_k",
    "ltb",
    "ltb_temperature",
    "encoder_decoder",
    "mtan",
    "cross_stitch",
    "NYUV2_TASKS",
]
