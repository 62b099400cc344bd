"""The ``cityscapes`` benchmark: Cityscapes' 7-class segmentation and depth (paper §4.1, Table 2).

2,975 training / 500 test images at 128×256 in the MTAN/LibMTL ``.npy`` layout
(``--data root=DIR``); DeepLab-ResNet-50 HPS, Adam 10⁻⁴, batch 64, 200 epochs. Everything
shared with NYUv2 is in :mod:`fmtl.train.problems.dense`.
"""

from .dense import register_dense

register_dense("cityscapes", batch_size=64)
