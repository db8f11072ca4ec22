"""NumPy .npz archives, loaded without pickle (``np.load(allow_pickle=False)``)."""

from __future__ import annotations

import os
import zipfile
import zlib

import numpy as np

from . import Weights

__all__ = ["read"]


def read(path) -> Weights:
    """Read a ``.npz`` archive; names are kept as they are in the file.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    Weights
        Floating-point arrays as float32 in ``tensors``; integer and bool arrays in ``other``.

    Raises
    ------
    ValueError
        Not a readable .npz, an object (pickled) or complex array inside (the message names the
        file and the array).

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "w.npz")
    >>> np.savez(p, **{"conv1/weight": np.zeros((2, 3, 1, 1), np.float64)})
    >>> read(p).tensors["conv1/weight"].dtype
    dtype('float32')
    """
    path = os.fspath(path)
    tensors, other = {}, {}
    try:
        with np.load(path, allow_pickle=False) as z:
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise ValueError("a single .npy array, not an .npz archive")
            for key in z.files:
                a = z[key]
                if not isinstance(a, np.ndarray):
                    continue  # a non-.npy member of the zip
                if a.dtype.kind == "f":
                    tensors[key] = a.astype(np.float32, copy=False)
                elif a.dtype.kind in "iub":
                    other[key] = a
                else:
                    raise ValueError(f"array {key!r} has dtype {a.dtype}, not a number type")
    except (zipfile.BadZipFile, zlib.error, ValueError, OSError, EOFError, KeyError) as e:
        raise ValueError(f"{path} is not a readable .npz weights file ({e}); it may be truncated "
                         "or corrupt: download it again") from None
    if not tensors:
        raise ValueError(f"{path} holds no floating-point arrays")
    return Weights(tensors=tensors, format="npz", path=path, other=other)
