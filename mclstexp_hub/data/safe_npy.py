"""Read `.npy` files without executing pickles.

The authors' gene panels (`her_hvg_cut_1000.npy`, `skin_hvg_cut_1000.npy`) are object arrays,
which `np.load(allow_pickle=True)` would rebuild with `pickle` — able to run arbitrary code.
Here object arrays go through an unpickler that only knows numpy's array constructors.
"""

from __future__ import annotations

import os
import pickle
from typing import ClassVar

import numpy as np


class _NumpyArrayUnpickler(pickle.Unpickler):
    """Rebuilds object-dtype numpy arrays of plain values; any other global is refused."""

    _ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in this file")
        if name == "_reconstruct":
            from numpy._core.multiarray import _reconstruct

            return _reconstruct
        return getattr(np, name)


def load_npy_safely(path: str | os.PathLike) -> np.ndarray:
    """`.npy` contents; object arrays go through the restricted unpickler, never `pickle.load`.

    Raises ValueError naming the file when it is not a `.npy` or holds anything but plain data.
    """
    with open(path, "rb") as handle:
        try:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_1_0(handle)
            else:
                shape, _fortran, dtype = np.lib.format.read_array_header_2_0(handle)
        except ValueError as exc:
            raise ValueError(f"{path}: not a .npy file ({exc})") from exc
        if not dtype.hasobject:
            handle.seek(0)
            return np.load(handle, allow_pickle=False)
        try:
            array = _NumpyArrayUnpickler(handle).load()
        except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(
                f"{path}: refused to read this object array ({exc}). It must hold plain "
                "strings/numbers only; save a gene panel as text (one gene per line) instead."
            ) from exc
    if not isinstance(array, np.ndarray) or tuple(array.shape) != tuple(shape):
        raise ValueError(f"{path}: the pickled payload does not match its .npy header")
    return array
