"""Numba, imported the first time a kernel runs; without it, one warning and the NumPy fallbacks.

``@njit(...)`` here wraps a kernel in a :class:`_Lazy` stand-in. The first call of any kernel
imports Numba and puts real dispatchers (and ``numba.prange``) in place of every stand-in in the
qcnn modules, so the kernels then call each other as Numba functions and later calls go straight
to Numba. A process that never runs a kernel (a network of float layers only, ``qcnn models``)
never imports Numba: ~64 MB and ~0.15 s less, plus ~40 MB and ~0.1 s for Numba's compiler set-up.

:func:`have_numba` says which path the kernel wrappers take (it triggers the import). If Numba
cannot be imported (not installed, or a broken install), it warns once (``NumbaMissingWarning``)
and the wrappers call the NumPy twins; a stand-in called directly then runs its Python body.
``HAVE_NUMBA`` is :func:`have_numba` as a module attribute.

Thread counts requested before Numba is imported (:mod:`qcnn.threads`) are applied when it is.
Nothing here changes Numba's configuration; its environment variables (``NUMBA_NUM_THREADS``,
``NUMBA_DISABLE_JIT``, ``NUMBA_CACHE_DIR``) apply as usual.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
import threading
import warnings

__all__ = ["NumbaMissingWarning", "have_numba", "numba_installed", "njit", "prange"]


class NumbaMissingWarning(RuntimeWarning):
    """Numba could not be imported, so qcnn runs its slower NumPy fallbacks."""


prange = range  # replaced by numba.prange in every qcnn module when Numba is imported
_numba = None  # the module, once imported
_tried = False
_lock = threading.Lock()  # two threads' first kernel calls import and bind once
_pending_threads: int | None = None  # a thread count asked for before the import


def numba_installed() -> bool:
    """Whether Numba can be found, without importing it (a broken install still says True)."""
    if "numba" in sys.modules:
        return sys.modules["numba"] is not None
    try:
        return importlib.util.find_spec("numba") is not None
    except (ImportError, ValueError):
        return False


def have_numba() -> bool:
    """Import Numba if not yet tried; whether the kernels run as Numba code.

    Examples
    --------
    >>> isinstance(have_numba(), bool)
    True
    """
    global _numba, _tried
    if not _tried:
        with _lock:
            if not _tried:
                try:
                    import numba
                except Exception as exc:  # ImportError, or a broken install (llvmlite / NumPy)
                    warnings.warn(
                        f"numba could not be imported ({type(exc).__name__}: {exc}); qcnn uses its "
                        "slower NumPy fallbacks. Install numba (pip install numba) for the fast "
                        "look-up-table kernels.", NumbaMissingWarning, stacklevel=4)
                else:
                    _bind(numba)
                    _numba = numba
                _tried = True
    return _numba is not None


def _bind(numba) -> None:
    """Put Numba dispatchers in place of the stand-ins, and ``numba.prange``, in qcnn's modules."""
    if _pending_threads is not None:
        numba.set_num_threads(min(_pending_threads, int(numba.config.NUMBA_NUM_THREADS)))
    made = {}
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "qcnn" or name.startswith("qcnn.")):
            continue
        g = vars(module)
        for attr, value in list(g.items()):
            if isinstance(value, _Lazy):
                if id(value) not in made:
                    made[id(value)] = numba.njit(**value.options)(value.py_func)
                g[attr] = made[id(value)]
        if g.get("prange") is range:
            g["prange"] = numba.prange
    for value in _Lazy.instances:
        value.dispatcher = made.get(id(value))


def set_pending_threads(n: int) -> None:
    """Remember a thread count for when Numba is imported (used by :mod:`qcnn.threads`)."""
    global _pending_threads
    _pending_threads = int(n)


def loaded_numba():
    """The Numba module if it is imported (by a kernel or by anyone), else None (never imports it)."""
    return _numba if _numba is not None else sys.modules.get("numba")


def pending_threads() -> int | None:
    """The thread count :func:`set_pending_threads` stored, if Numba is not imported yet."""
    return _pending_threads


class _Lazy:
    """A kernel before Numba is imported: calling it imports Numba and runs the dispatcher."""

    instances: list = []  # every stand-in, to hand each its dispatcher when Numba is imported

    def __init__(self, py_func, options):
        functools.update_wrapper(self, py_func)
        self.py_func, self.options, self.dispatcher = py_func, options, None
        _Lazy.instances.append(self)

    def __call__(self, *args):
        if not have_numba():
            return self.py_func(*args)
        if self.dispatcher is None:  # defined after the import: make its dispatcher now
            self.dispatcher = _numba.njit(**self.options)(self.py_func)
        return self.dispatcher(*args)

    def __repr__(self):
        return f"<qcnn kernel {self.__name__} (Numba not imported yet)>"


def njit(*args, **options):
    """``numba.njit`` on first use: ``@njit`` or ``@njit(cache=True, parallel=True, ...)``."""
    if _numba is not None:
        return _numba.njit(*args, **options)
    if len(args) == 1 and callable(args[0]) and not options:
        return _Lazy(args[0], {})
    return lambda f: _Lazy(f, options)


def __getattr__(name):
    if name == "HAVE_NUMBA":
        return have_numba()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
