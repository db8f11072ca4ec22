"""Product k-means: one k-means per subspace, k-means++ start, Lloyd iterations (Numba kernels).

This is Q-CNN's starting point: plain product quantization of the weight subvectors. Given the same
inputs and seed, the result is bit-identical whatever the thread count (subspaces run in parallel,
each on one thread, and the random numbers come from a NumPy generator handed in by the wrapper).
"""

from __future__ import annotations

import numpy as np

from ._jit import njit, prange

__all__ = ["product_kmeans"]


@njit(cache=True)
def _sqdist(x, c):
    """Squared distance of two float32 vectors, accumulated in float64."""
    s = 0.0
    for i in range(x.shape[0]):
        t = float(x[i]) - float(c[i])
        s += t * t
    return s


@njit(cache=True)
def _kmeans_one(x, u, iterations, tol, cb, codes):
    """k-means of x (N, d) float32 into cb (K, d) float32 and codes (N,) int64.

    u (K,) holds uniforms in [0, 1). k-means++ seeding (one candidate per step, drawn with chance
    proportional to D^2; once every point coincides with a centre the remaining centres are
    duplicates), then Lloyd iterations until at most tol * N assignments change. An emptied cluster
    keeps its centre. Ends with an assignment step, so every point holds its nearest codeword.
    """
    n, d = x.shape
    k_count = cb.shape[0]
    d2 = np.empty(n)
    first = min(int(u[0] * n), n - 1)
    cb[0] = x[first]
    for i in range(n):
        d2[i] = _sqdist(x[i], cb[0])
    for k in range(1, k_count):
        total = d2.sum()
        pick = min(int(u[k] * n), n - 1)
        if total > 0.0:
            # the first point whose cumulative D^2 passes r; the last point with D^2 > 0 when
            # rounding leaves r unreached
            r = u[k] * total
            acc = 0.0
            pick = -1
            last = 0
            for i in range(n):
                if d2[i] > 0.0:
                    last = i
                    acc += d2[i]
                    if acc > r:
                        pick = i
                        break
            if pick < 0:
                pick = last
        cb[k] = x[pick]
        for i in range(n):
            t = _sqdist(x[i], cb[k])
            if t < d2[i]:
                d2[i] = t
    sums = np.zeros((k_count, d))
    counts = np.zeros(k_count, np.int64)
    # assignment by ||c||^2 - 2 x.c with the codebook transposed (d, K), so the inner loop runs over
    # contiguous codewords and vectorises
    cbt = np.empty((d, k_count), np.float32)
    cn = np.empty(k_count, np.float32)
    tile = 16  # points per distance tile: the argmin runs over a finished row, off the FMA loop
    dist = np.empty((tile, k_count), np.float32)
    for it in range(iterations + 1):
        for k in range(k_count):
            s = 0.0
            for j in range(d):
                cbt[j, k] = cb[k, j]
                s += float(cb[k, j]) * float(cb[k, j])
            cn[k] = s
        changed = 0
        for i0 in range(0, n, tile):
            t_count = min(tile, n - i0)
            for t in range(t_count):
                for k in range(k_count):
                    dist[t, k] = cn[k]
                for j in range(d):
                    xj = np.float32(-2.0) * x[i0 + t, j]
                    for k in range(k_count):
                        dist[t, k] += xj * cbt[j, k]
            for t in range(t_count):
                best, best_k = dist[t, 0], 0
                for k in range(1, k_count):
                    if dist[t, k] < best:
                        best, best_k = dist[t, k], k
                if it == 0 or codes[i0 + t] != best_k:
                    changed += 1
                codes[i0 + t] = best_k
        if it == iterations or changed <= tol * n:
            break
        sums[:] = 0.0
        counts[:] = 0
        for i in range(n):
            k = codes[i]
            counts[k] += 1
            for j in range(d):
                sums[k, j] += x[i, j]
        for k in range(k_count):
            if counts[k] > 0:
                for j in range(d):
                    cb[k, j] = sums[k, j] / counts[k]


@njit(cache=True, parallel=True)
def _product_kmeans(x, u, iterations, tol, cb, codes):
    """x (M, N, d) float32, u (M, K) -> cb (M, K, d) float32, codes (M, N) int64, in place.

    Subspaces run in parallel; each is independent, so the result does not depend on the thread
    count.
    """
    for m in prange(x.shape[0]):
        _kmeans_one(x[m], u[m], iterations, tol, cb[m], codes[m])


def product_kmeans(
    x, k: int, seed=0, iterations: int = 20, tol: float = 1e-3
) -> tuple[np.ndarray, np.ndarray]:
    """Run an independent k-means in each subspace.

    Parameters
    ----------
    x : ndarray, shape (M, N, d)
        N vectors of dimension d in each of M subspaces (converted to float32).
    k : int
        Codewords per subspace (1..256). With ``k`` at least the number of distinct vectors of a
        subspace, every vector is reproduced exactly.
    seed : int or sequence of int
        Seed of the k-means++ draws (``numpy.random.default_rng(seed)``); same inputs and seed give
        bit-identical outputs.
    iterations : int
        Maximum number of Lloyd iterations.
    tol : float
        Stop once at most this fraction of the vectors changed codeword in an iteration (0: run
        until no assignment changes).

    Returns
    -------
    codebooks : ndarray, shape (M, k, d), float32
    codes : ndarray, shape (M, N), uint8
        ``codebooks[m, codes[m, n]]`` is the codeword nearest to ``x[m, n]``.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).standard_normal((2, 100, 4)).astype(np.float32)
    >>> cb, codes = product_kmeans(x, 16, seed=0)
    >>> cb.shape, codes.shape, codes.dtype
    ((2, 16, 4), (2, 100), dtype('uint8'))
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 3 or min(x.shape) < 1:
        raise ValueError(f"product_kmeans: x must be a non-empty (M, N, d) array, got {x.shape}")
    if not 1 <= int(k) <= 256:
        raise ValueError(f"product_kmeans: k must be in 1..256 (codes are uint8), got {k}")
    if int(iterations) < 0:
        raise ValueError(f"product_kmeans: iterations must be >= 0, got {iterations}")
    m, n, d = x.shape
    u = np.random.default_rng(seed).random((m, int(k)))
    cb = np.zeros((m, int(k), d), np.float32)
    codes = np.zeros((m, n), np.int64)
    _product_kmeans(x, u, int(iterations), float(tol), cb, codes)
    return cb, codes.astype(np.uint8)
