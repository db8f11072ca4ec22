"""Thread counts of qcnn's two thread pools: Numba's (the look-up-table kernels) and BLAS's (the
float layers).

Both pools must never run more threads than there are cores between them: on 2 cores, both pools
spinning at once made layers 10-25x slower. Their idle threads spin: OpenBLAS's for up to ~0.1 s
after each call, GNU OpenMP's (Numba's default threading layer) for a while after each parallel
loop, so "one pool at a time" needs more than running one layer at a time:

- :func:`set_num_threads` gives Numba ``n`` threads and BLAS one thread when Numba runs the
  kernels (the BLAS layers left in a Q-CNN net are the small dense ones), ``n`` without Numba (then
  BLAS runs the NumPy fallbacks' matrix products); ``blas_threads`` overrides this.
- Before Numba's pool starts, it sets ``OMP_WAIT_POLICY=PASSIVE`` unless the user set it, so idle
  OpenMP threads sleep instead of spinning (measured on a busy 2-core machine, AlexNet with 2
  threads: 320 ms median with spinning, 19 ms passive, 20 ms on one thread).

Nothing happens at import. :func:`configure` applies the default (``QCNN_NUM_THREADS``, else the
performance cores of a big.LITTLE phone, else the usable CPUs capped at ``MAX_DEFAULT_THREADS``)
the first time it is called; the model loader calls it before the first forward pass. BLAS is
reached through ``threadpoolctl`` when it is installed, otherwise through OpenBLAS's own
``openblas_set_num_threads`` in the loaded library (NumPy's wheels bundle OpenBLAS).
"""

from __future__ import annotations

import ctypes
import os

__all__ = ["ENV_VAR", "MAX_DEFAULT_THREADS", "performance_cores", "default_num_threads",
           "set_num_threads", "get_num_threads", "configure", "configure_from_env"]

#: Environment variable with the thread count (an integer >= 1).
ENV_VAR = "QCNN_NUM_THREADS"
#: Without a better hint, at most this many threads by default.
MAX_DEFAULT_THREADS = 8

_configured = False
_OPENBLAS_SETTERS = ("openblas_set_num_threads", "openblas_set_num_threads64_",
                     "scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads")


def _usable_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def performance_cores(sysfs: str = "/sys/devices/system/cpu") -> int | None:
    """The number of usable CPUs clocked within 75% of the fastest (a phone's prime + big cores).

    A 1 prime + 3 big + 4 little phone (3.0 / 2.4 / 1.8 GHz) gives 4; the little cores would
    slow every parallel loop down to their pace.

    Parameters
    ----------
    sysfs : str
        The CPU directory of sysfs (a parameter for tests).

    Returns
    -------
    int or None
        None when ``cpu*/cpufreq/cpuinfo_max_freq`` cannot be read for every usable CPU (as in
        most virtual machines), or when all CPUs are equally fast (then it is no hint).

    Examples
    --------
    >>> n = performance_cores()
    >>> n is None or n >= 1
    True
    """
    freqs = {}
    for cpu in _usable_cpus():
        try:
            with open(os.path.join(sysfs, f"cpu{cpu}", "cpufreq", "cpuinfo_max_freq")) as f:
                freqs[cpu] = int(f.read().strip())
        except (OSError, ValueError):
            return None
    if not freqs or len(set(freqs.values())) == 1:
        return None
    top = max(freqs.values())
    return sum(1 for v in freqs.values() if v >= 0.75 * top)


def default_num_threads() -> int:
    """``QCNN_NUM_THREADS`` if set, else the performance cores, else the usable CPUs (capped).

    Returns
    -------
    int

    Raises
    ------
    ValueError
        If ``QCNN_NUM_THREADS`` is not an integer >= 1.

    Examples
    --------
    >>> default_num_threads() >= 1
    True
    """
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"{ENV_VAR}={env!r}: expected a whole number of threads >= 1 "
                             f"(unset it for the default)")
        return n
    fast = performance_cores()
    if fast:
        return fast
    return max(1, min(len(_usable_cpus()), MAX_DEFAULT_THREADS))


def _blas_set(n: int) -> str | None:
    """Set the BLAS thread count; return how (or None if no BLAS library could be reached)."""
    try:
        import threadpoolctl
    except ImportError:
        threadpoolctl = None
    if threadpoolctl is not None:
        threadpoolctl.threadpool_limits(limits=n, user_api="blas")
        return "threadpoolctl"
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f
                     if "openblas" in line.lower() and line.split()[-1].startswith("/")}
    except OSError:  # not Linux: no BLAS thread control without threadpoolctl
        paths = set()
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _OPENBLAS_SETTERS:
            setter = getattr(lib, name, None)
            if setter is not None:
                setter(ctypes.c_int(n))
                return name
    return None


def set_num_threads(n: int, blas_threads: int | None = None) -> int:
    """Use ``n`` threads for the kernels (Numba's pool) and set BLAS's pool to match.

    Numba cannot run more threads than it started with (``NUMBA_NUM_THREADS``, by default the
    CPU count), so ``n`` is capped there. The first call sets ``OMP_WAIT_POLICY=PASSIVE`` in the
    environment before Numba starts its pool, unless it is set already (see the module docstring).

    Parameters
    ----------
    n : int
        Threads, >= 1.
    blas_threads : int, optional
        BLAS threads; default 1 when Numba is importable (the kernels are Numba's, and spinning
        OpenBLAS threads would slow them down), else ``n``.

    Returns
    -------
    int
        The count applied.

    Examples
    --------
    >>> set_num_threads(1)
    1
    """
    for v in (n, blas_threads):
        if v is not None and (int(v) != v or v < 1):
            raise ValueError(f"the thread count must be a whole number >= 1, got {v!r}")
    n = int(n)
    global _configured
    from . import _jit

    installed = _jit.numba_installed()
    if installed:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when Numba's pool starts
        numba = _jit.loaded_numba()
        if numba is not None:
            n = min(n, int(numba.config.NUMBA_NUM_THREADS))
            numba.set_num_threads(n)
        else:  # applied when the first kernel imports Numba (never, for a net of float layers)
            n = min(n, _numba_pool_size())
            _jit.set_pending_threads(n)
    _blas_set(int(blas_threads) if blas_threads is not None else (1 if installed else n))
    _configured = True
    return n


def _numba_pool_size() -> int:
    """The pool Numba will start (``NUMBA_NUM_THREADS``, else the CPU count), without importing it."""
    try:
        return max(1, int(os.environ["NUMBA_NUM_THREADS"]))
    except (KeyError, ValueError):
        return max(1, len(_usable_cpus()))


def get_num_threads() -> int:
    """Threads the kernels use now (Numba's count, or what it will use once imported; 1 without
    Numba).

    Examples
    --------
    >>> get_num_threads() >= 1
    True
    """
    from . import _jit

    numba = _jit.loaded_numba()
    if numba is not None:
        return int(numba.get_num_threads())
    if not _jit.numba_installed():
        return 1
    pending = _jit.pending_threads()
    return pending if pending is not None else _numba_pool_size()


def configure(threads: int | None = None, blas_threads: int | None = None) -> int:
    """Apply a thread count once: ``threads`` if given, else :func:`default_num_threads` the
    first time (later calls without ``threads`` change nothing).

    The model loader calls this before the first forward pass.

    Parameters
    ----------
    threads : int, optional
    blas_threads : int, optional
        As in :func:`set_num_threads`.

    Returns
    -------
    int
        The thread count in effect.

    Examples
    --------
    >>> configure(1)
    1
    """
    if threads is not None:
        return set_num_threads(threads, blas_threads)
    if not _configured:
        return set_num_threads(default_num_threads(), blas_threads)
    return get_num_threads()


def configure_from_env() -> int:
    """:func:`configure` with no explicit count: ``QCNN_NUM_THREADS`` or the default, once.

    Examples
    --------
    >>> configure_from_env() >= 1
    True
    """
    return configure()
