"""Numba when it imports; otherwise one warning and the kernels' NumPy fallbacks.

``HAVE_NUMBA`` tells :mod:`qcnn.kernels` which code path to call. ``njit`` and ``prange`` are
Numba's when it is importable, and harmless stand-ins (the decorated function unchanged, ``range``)
when it is not, so the kernel module still imports and its kernels stay readable as plain Python.

Nothing here changes global state: no ``numba.config`` writes and no threading layer choice.
Numba's own environment variables (``NUMBA_NUM_THREADS``, ``NUMBA_DISABLE_JIT``,
``NUMBA_CACHE_DIR``) apply as usual.
"""

from __future__ import annotations

import warnings

__all__ = ["HAVE_NUMBA", "NumbaMissingWarning", "njit", "prange"]


class NumbaMissingWarning(RuntimeWarning):
    """Numba could not be imported, so qcnn runs its slower NumPy fallbacks."""


try:
    import numba
except Exception as exc:  # ImportError, or a broken install (llvmlite / NumPy version mismatch)
    HAVE_NUMBA = False
    warnings.warn(
        f"numba could not be imported ({type(exc).__name__}: {exc}); qcnn uses its slower NumPy "
        "fallbacks. Install numba (pip install numba) for the fast look-up-table kernels.",
        NumbaMissingWarning,
        stacklevel=2,
    )

    def njit(*args, **kwargs):
        """Stand-in for ``numba.njit``: the function unchanged (``@njit`` or ``@njit(...)``)."""
        if len(args) == 1 and callable(args[0]) and not kwargs:
            return args[0]
        return lambda f: f

    prange = range
else:
    HAVE_NUMBA = True
    njit = numba.njit
    prange = numba.prange
