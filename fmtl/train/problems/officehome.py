"""The ``officehome`` benchmark: Office-Home's Art, Clipart, Product and Real World domains, 65 classes (§4.3, Table 5).

15,500 images; multi-input ResNet-18, Adam 10⁻⁴, batch 64, 100 epochs. Everything shared with
Office-31 is in :mod:`fmtl.train.problems.office`.
"""

from .office import register_office

register_office("officehome")
