"""The ``nyuv2`` benchmark: NYUv2's segmentation, depth and surface normals (paper §4.1, Table 1).

795 training / 654 test images at 288×384 in the MTAN/LibMTL ``.npy`` layout
(``--data root=DIR``); DeepLab-ResNet-50 HPS, Adam 10⁻⁴, batch 8, 200 epochs. Everything
shared with Cityscapes is in :mod:`fmtl.train.problems.dense`.
"""

from .dense import register_dense

register_dense("nyuv2", batch_size=8)
