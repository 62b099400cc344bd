"""Reading a benchmark's ``--data`` / ``--model`` options: the required root, unknown keys, missing weights.

Every failure is a one-line ``ValueError`` naming the option (``fmtl train`` exits 2 with it),
raised before any data is read.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["root_of", "check_options", "weights_note", "accepted"]


def root_of(name: str, data: Mapping[str, Any], layout: str) -> str:
    """``data["root"]``, or a one-line ``ValueError`` naming the option and the expected layout.

    Example:
        >>> root_of("nyuv2", {}, "root/train/image/<i>.npy")
        Traceback (most recent call last):
        ...
        ValueError: nyuv2 reads a local copy: pass --data root=DIR with root/train/image/<i>.npy
    """
    root = data.get("root")
    if not root:
        raise ValueError(f"{name} reads a local copy: pass --data root=DIR with {layout}")
    return str(root)


def check_options(name: str, given: Mapping[str, Any], valid: Iterable[str], flag: str = "--data") -> None:
    """Raises a one-line ``ValueError`` naming the keys of ``given`` that ``name`` does not take.

    Example:
        >>> check_options("office31", {"root": "d", "size": 8}, ("root", "image_size"))
        Traceback (most recent call last):
        ...
        ValueError: office31: unknown --data option(s) ['size']; valid: image_size, root
    """
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise ValueError(f"{name}: unknown {flag} option(s) {unknown}; valid: {', '.join(sorted(valid))}")


def weights_note(model_opts: Mapping[str, Any], what: str) -> None:
    """One line on stderr when a model that the paper initializes from ImageNet gets no ``weights``."""
    if not model_opts.get("weights"):
        print(f"fmtl: note: no --model weights=PATH (a local torchvision {what} state dict): the backbone is "
              "randomly initialized, unlike the paper's ImageNet-pretrained one", file=sys.stderr)  # fmt: skip


def accepted(data_keys: Iterable[str] | Mapping[str, Any]) -> dict[str, Any]:
    """A benchmark's ``options`` for :func:`fmtl.train.problems.register`: these ``--data`` keys (a
    ``{key: type}`` mapping: values checked by :mod:`fmtl.train.validate`; keys only: by its builder),
    and ``--model`` options checked by its builder.

    Example:
        >>> sorted(accepted(("root", "subset"))["data"]), accepted({"subset": int})["data"]
        (['root', 'subset'], {'subset': <class 'int'>})
    """
    from ..validate import OWN_CHECKS

    data = dict(data_keys) if isinstance(data_keys, Mapping) else dict.fromkeys(data_keys, Any)
    return {"data": data, "model": OWN_CHECKS}
