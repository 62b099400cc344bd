"""The ``office31`` benchmark: Office-31's amazon, dslr and webcam domains, 31 classes (paper §4.3, Table 4).

4,110 images; multi-input ResNet-18, Adam 10⁻⁴, batch 64, 100 epochs. Everything shared with
Office-Home is in :mod:`fmtl.train.problems.office`.
"""

from .office import register_office

register_office("office31")
