"""A restricted unpickler that can only rebuild numpy arrays.

``pickle.load`` executes whatever callables a file names (``os.system`` included), so a pickle
from a package's data directory is read with :class:`NumpyUnpickler`, whose ``find_class``
resolves only numpy's array-reconstruction names (plus ``_codecs.encode``, which
protocol-2 pickles use for raw bytes) and raises ``pickle.UnpicklingError`` for
anything else.
"""

from __future__ import annotations

import codecs
import io
import pickle
from typing import Any

import numpy as np

__all__ = ["NumpyUnpickler", "load_numpy_pickle"]


def _reconstruct() -> Any:
    try:
        from numpy._core.multiarray import _reconstruct as fn  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct as fn
    return fn


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    # Python 3 protocol-2 pickles store an array's raw bytes as codecs.encode(str, "latin1").
    ("_codecs", "encode"): lambda: codecs.encode,
}


class NumpyUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` allows only numpy array reconstruction.

    Example:
        >>> import pickle, numpy as np
        >>> NumpyUnpickler(io.BytesIO(pickle.dumps(np.arange(3)))).load().tolist()
        [0, 1, 2]
        >>> NumpyUnpickler(io.BytesIO(pickle.dumps(print))).load()
        Traceback (most recent call last):
        ...
        _pickle.UnpicklingError: refusing to unpickle builtins.print
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[module, name]()
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def load_numpy_pickle(data: bytes, encoding: str = "latin1") -> Any:
    """Unpickle ``data`` with :class:`NumpyUnpickler` (``latin1`` reads Python 2 pickles).

    Example:
        >>> import pickle, numpy as np
        >>> load_numpy_pickle(pickle.dumps((np.zeros(2), np.ones(1))))[1].tolist()
        [1.0]
    """
    return NumpyUnpickler(io.BytesIO(data), encoding=encoding).load()
