"""Learning Q-CNN's codebooks: product k-means, then error correction on the layer responses.

Layers are processed bottom-up. For each conv / linear layer:

1. k-means (:func:`qcnn.kmeans.product_kmeans`) per subspace on the weight subvectors
   ``W[o, m*d:(m+1)*d, i, j]``; one codebook per subspace, shared by all outputs, kernel
   positions and groups.
2. Error correction (Wu et al., CVPR 2016, section 3.2): minimise ``sum ||T - b - W_hat S||^2``,
   where T is the FLOAT network's response of the layer and S the layer's input as produced by the
   ALREADY QUANTIZED layers below, so that upstream error is compensated. Block coordinate descent
   over the subspaces m: the codebook of m by least squares with the assignments fixed, then every
   output channel and kernel position re-picks its codeword exhaustively; a few sweeps; an update
   that increases the error is never kept.

Samples. A conv layer's S and T are taken at ``samples`` output positions drawn at random over the
calibration images (the rows of S are im2col patches); a linear layer uses every calibration image.

Gram space and data space. The error of a layer's weights W (one row per output) is
``tr(T'T'^T) - 2 tr(W P) + tr(W G W^T)`` with ``G = S^T S``, ``P = S^T T'`` and ``T' = T - b``, so
an update needs only G and P. A problem of n samples of dimension D (D = C_g * kh * kw, channels
padded to a multiple of d) is kept in Gram space (G, P in float64: 8 D^2 bytes) when n >= D, and
otherwise in data space (S and the residual ``T' - S W^T`` in float32: 4 n D bytes), where the
same terms are computed on the fly for one chunk of subspaces at a time. G is never formed for a
layer with fewer samples than inputs, so the 25088-input FC6 of VGG-16 with, say, 1000 calibration
images holds 100 MB of S rather than a 5 GB Gram matrix; the memory is ``min(n, D) * D`` in every
case. Updates are applied chunk by chunk (about 512 rows of D at a time) so that the coupling to
the other subspaces is refreshed with one matrix product per chunk, not one per subspace.

Codebook update of a conv layer. A codeword is shared by the kernel positions of a subvector, so
the least-squares problem couples positions: it is solved exactly, as one (K*d) x (K*d) linear
system per subspace built from the Gram blocks of the subspace. A small ridge toward the previous
codebook keeps unused codewords (and the padded channels) where they were.

Re-assignment of a conv layer. The positions of one output in one subspace are coupled too, so
they are visited in turn (Gauss-Seidel): each position takes the exact best of the K codewords
given the others. For a linear layer (one position) this is the exhaustive search of the paper.

The layers below the current one run as float layers holding the reconstructed weights (the same
arithmetic as QConv2d / QLinear up to rounding, and faster on a batch); the returned net holds
QConv2d / QLinear layers.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from . import layers as L
from ._jit import njit
from .kmeans import product_kmeans
from .net import Concat, Net, StopForward
from .qlayers import QConv2d, QLinear

__all__ = [
    "LayerSettings", "LayerReport", "QuantizeReport", "PRESETS", "default_settings", "quantize",
]

CODEBOOK_DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class LayerSettings:
    """How one conv / linear layer is quantized.

    Parameters
    ----------
    subdim : int
        d, the input channels per subspace (C_s' in the paper); M = ceil(C_g / d) subspaces, the
        last zero-padded.
    K : int
        Codewords per subspace, 1..256 (codes are uint8).
    error_correction : bool
        Run error correction after k-means (``quantize(error_correction=False)`` turns it off for
        every layer).
    iterations : int
        Error-correction sweeps over all subspaces.
    dense : bool
        Keep the layer float (not quantized).
    codebook_dtype : str
        ``"float32"`` or ``"float16"`` (codebooks are rounded after learning).

    Examples
    --------
    >>> s = LayerSettings(subdim=4, K=32)
    >>> s.subdim, s.K, s.error_correction, s.dense
    (4, 32, True, False)
    """

    subdim: int = 8
    K: int = 128
    error_correction: bool = True
    iterations: int = 4
    dense: bool = False
    codebook_dtype: str = "float32"

    def __post_init__(self):
        if int(self.subdim) < 1:
            raise ValueError(f"LayerSettings: subdim must be >= 1, got {self.subdim}")
        if not 1 <= int(self.K) <= 256:
            raise ValueError(f"LayerSettings: K must be in 1..256 (codes are uint8), got {self.K}")
        if int(self.iterations) < 0:
            raise ValueError(f"LayerSettings: iterations must be >= 0, got {self.iterations}")
        if self.codebook_dtype not in CODEBOOK_DTYPES:
            raise ValueError(f"LayerSettings: codebook_dtype must be one of {CODEBOOK_DTYPES}, "
                             f"got {self.codebook_dtype!r}")


# (conv d, conv K, linear d, linear K, last linear d, last linear K), see default_settings
PRESETS = {
    # the official release (CAS-CLab/quantized-cnn): AlexNet 4.15x faster and 18.76x smaller
    "official": (8, 128, 4, 32, 1, 16),
    "paper-18.8x": (8, 128, 4, 32, 1, 16),
    # the paper's other AlexNet row (4.05x, 15.40x): the op-count and storage formulas of
    # REFERENCE.md give 4.05x / 15.2x for FC d=3 (convs unchanged), and 4.16x / 18.5x for the
    # official release (the paper's storage count is 1.5% above these formulas in both rows)
    "paper-15.4x": (8, 128, 3, 32, 1, 16),
}


def _weight_layers(net: Net) -> list[tuple[str, object]]:
    return [(n, lay) for n, lay in net.named_layers() if isinstance(lay, (L.Conv2d, L.Linear))]


def default_settings(net: Net, preset: str = "official") -> dict[str, LayerSettings]:
    """Per-layer settings of a preset for every conv / linear layer of `net`.

    ``"official"`` (the released quantized AlexNet, also ``"paper-18.8x"``): conv d=8 K=128,
    except a conv with fewer than 8 input channels per group (AlexNet conv1) whose d is that
    number; linear d=4 K=32; the last layer, when linear, d=1 K=16. ``"paper-15.4x"``: the same
    with linear d=3.

    Parameters
    ----------
    net : Net
    preset : str
        A key of :data:`PRESETS`.

    Returns
    -------
    dict
        Layer name -> :class:`LayerSettings`.

    Examples
    --------
    >>> from qcnn import architectures
    >>> spec = architectures.get("alexnet-caffe")
    >>> net = Net.from_spec(spec, architectures.random_tensors(spec))
    >>> s = default_settings(net)
    >>> s["conv1"].subdim, s["conv2"].K, s["fc7"].subdim, s["fc8"].K
    (3, 128, 4, 16)
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown quantization preset {preset!r}; known: {sorted(PRESETS)}")
    cd, ck, fd, fk, ld, lk = PRESETS[preset]
    wl = _weight_layers(net)
    out = {}
    for i, (name, lay) in enumerate(wl):
        if isinstance(lay, L.Conv2d):
            cg = lay.in_channels // lay.groups
            out[name] = LayerSettings(subdim=cg if cg < cd else cd, K=ck)
        elif i == len(wl) - 1:
            out[name] = LayerSettings(subdim=min(ld, lay.in_features), K=lk)
        else:
            out[name] = LayerSettings(subdim=min(fd, lay.in_features), K=fk)
    return out


@dataclass
class LayerReport:
    """What quantizing one layer did; errors are ``||T - T_hat|| / ||T||`` on the samples."""

    name: str
    settings: LayerSettings
    samples: int = 0  # rows of S: sampled output positions (conv) or calibration images (linear)
    space: str = ""  # "gram" or "data", see the module docstring
    error_kmeans: float = float("nan")
    error_final: float = float("nan")
    sweeps: int = 0  # error-correction sweeps run
    seconds: float = 0.0


@dataclass
class QuantizeReport:
    """Per-layer reports in forward order, and the total time."""

    layers: list[LayerReport] = field(default_factory=list)
    seconds: float = 0.0

    def __getitem__(self, name: str) -> LayerReport:
        for r in self.layers:
            if r.name == name:
                return r
        raise KeyError(f"no layer named {name!r} in the report")

    def __str__(self) -> str:
        rows = [f"{'layer':<24} {'d':>3} {'K':>4} {'samples':>8} {'space':>5} {'kmeans':>8} "
                f"{'final':>8} {'sweeps':>6} {'seconds':>8}"]
        for r in self.layers:
            s = r.settings
            if s.dense:
                rows.append(f"{r.name:<24} dense")
                continue
            rows.append(f"{r.name:<24} {s.subdim:>3} {s.K:>4} {r.samples:>8} {r.space:>5} "
                        f"{r.error_kmeans:>8.4f} {r.error_final:>8.4f} {r.sweeps:>6} "
                        f"{r.seconds:>8.2f}")
        rows.append(f"total {self.seconds:.1f} s")
        return "\n".join(rows)


# --------------------------------------------------------------------------------------------------
# geometry: a conv layer as groups x (outputs, D), D laid out as (subspace m, position p, dim)


@dataclass
class _Geometry:
    name: str
    groups: int
    out_g: int
    cg: int  # real input channels per group
    d: int
    m: int  # subspaces
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    linear: bool

    @property
    def p(self) -> int:
        return self.kernel[0] * self.kernel[1]

    @property
    def block(self) -> int:  # rows of one subspace in D
        return self.p * self.d

    @property
    def dim(self) -> int:
        return self.m * self.block

    @classmethod
    def of(cls, name, layer, d):
        if isinstance(layer, L.Linear):
            cg = layer.in_features
            return cls(name, 1, layer.out_features, cg, d, -(-cg // d), (1, 1), (1, 1), (0, 0),
                       True)
        g = layer.groups
        cg = layer.in_channels // g
        return cls(name, g, layer.out_channels // g, cg, d, -(-cg // d), layer.kernel, layer.stride,
                   layer.padding, False)

    def padded_weight(self, layer) -> np.ndarray:
        """(out, M*d, P) float32, channels zero-padded."""
        w = layer.weight.reshape(self.groups * self.out_g, self.cg, self.p)
        wp = np.zeros((w.shape[0], self.m * self.d, self.p), np.float32)
        wp[:, : self.cg] = w
        return wp

    def subvectors(self, layer) -> np.ndarray:
        """(M, out*P, d): the k-means input of every subspace."""
        wp = self.padded_weight(layer).reshape(-1, self.m, self.d, self.p)
        return np.ascontiguousarray(wp.transpose(1, 0, 3, 2).reshape(self.m, -1, self.d))

    def w_rows(self, cb, codes) -> np.ndarray:
        """(groups, out_g, D) float64 weights from codebooks (M, K, d) and codes (out, P, M)."""
        sel = cb[np.arange(self.m)[None, None, :], codes.astype(np.intp)]  # (out, P, M, d)
        w = sel.transpose(0, 2, 1, 3).reshape(self.groups, self.out_g, self.dim)
        return w.astype(np.float64)

    def float_weight(self, cb, codes) -> np.ndarray:
        """The float layer weight (out, C_g, kh, kw) (or (out, C)) that codebooks + codes encode."""
        sel = cb[np.arange(self.m)[None, None, :], codes.astype(np.intp)]  # (out, P, M, d)
        w = sel.transpose(0, 2, 3, 1).reshape(-1, self.m * self.d, *self.kernel)[:, : self.cg]
        w = np.ascontiguousarray(w, dtype=np.float32)
        return w.reshape(w.shape[0], self.cg) if self.linear else w

    def patches(self, x, bi, oh, ow) -> np.ndarray:
        """(groups, n, D) float32 rows of S for the input x at output positions (bi, oh, ow)."""
        if self.linear:
            out = np.zeros((1, len(bi), self.m * self.d), np.float32)
            out[0, :, : self.cg] = x[bi]
            return out
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        if ph or pw:
            x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
        win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
        pat = win[bi, :, oh, ow]  # (n, C, kh, kw)
        n = len(bi)
        out = np.zeros((self.groups, n, self.m, self.p, self.d), np.float32)
        for g in range(self.groups):
            pg = pat[:, g * self.cg : (g + 1) * self.cg].reshape(n, self.cg, self.p)
            full, rest = divmod(self.cg, self.d)
            if full:
                out[g, :, :full] = pg[:, : full * self.d].reshape(n, full, self.d, self.p) \
                    .transpose(0, 1, 3, 2)
            if rest:
                out[g, :, full, :, :rest] = pg[:, full * self.d :].transpose(0, 2, 1)
        return out.reshape(self.groups, n, self.dim)

    def responses(self, y, bi, oh, ow) -> np.ndarray:
        """(groups, n, out_g) float32 responses at the sampled positions."""
        t = y[bi] if self.linear else y[bi, :, oh, ow]
        return np.ascontiguousarray(t.reshape(len(bi), self.groups, self.out_g).transpose(1, 0, 2),
                                    dtype=np.float32)


# --------------------------------------------------------------------------------------------------
# the two representations of one layer's least-squares problem (see the module docstring)


class _GramProblem:
    """G = S^T S and P = S^T T' per group, in float64, plus GW = G W^T kept in step with W."""

    space = "gram"

    def __init__(self, geo: _Geometry):
        g, dim, og = geo.groups, geo.dim, geo.out_g
        self.G = np.zeros((g, dim, dim))
        self.P = np.zeros((g, dim, og))
        self.tt = 0.0
        self.n = 0

    def add(self, s, t):
        for g in range(s.shape[0]):
            self.G[g] += s[g].T @ s[g]
            self.P[g] += s[g].T @ t[g]
        self.tt += float(np.sum(np.square(t, dtype=np.float64)))
        self.n += s.shape[1]

    def start(self, w):
        self.GW = self.G @ w.transpose(0, 2, 1)

    def error(self, w) -> float:
        return self.tt - 2.0 * float(np.sum(w.transpose(0, 2, 1) * self.P)) \
            + float(np.sum(w.transpose(0, 2, 1) * self.GW))

    def chunk(self, r0, r1):
        """(L_R, G_RR): L_R = P[R] - (G W^T)[R] (groups, |R|, out_g), G_RR (groups, |R|, |R|)."""
        return self.P[:, r0:r1] - self.GW[:, r0:r1], np.ascontiguousarray(self.G[:, r0:r1, r0:r1])

    def apply(self, r0, r1, dw):
        """W[:, :, R] changed by dw (groups, out_g, |R|)."""
        self.GW += self.G[:, :, r0:r1] @ dw.transpose(0, 2, 1)


class _DataProblem:
    """S (float32, groups x n x D) and the residual T' - S W^T; G and P are never formed."""

    space = "data"

    def __init__(self, geo: _Geometry):
        self.s, self.t = [], []
        self.tt = 0.0
        self.n = 0

    def add(self, s, t):
        self.s.append(s)
        self.t.append(t)
        self.tt += float(np.sum(np.square(t, dtype=np.float64)))
        self.n += s.shape[1]

    def start(self, w):
        if self.s:
            self.S, self.T = np.concatenate(self.s, axis=1), np.concatenate(self.t, axis=1)
            self.s, self.t = [], []
        self.res = self.T - self.S @ w.transpose(0, 2, 1).astype(np.float32)

    def error(self, w) -> float:
        return float(np.sum(np.square(self.res, dtype=np.float64)))

    def chunk(self, r0, r1):
        sr = np.ascontiguousarray(self.S[:, :, r0:r1])
        lr = (sr.transpose(0, 2, 1) @ self.res).astype(np.float64)
        grr = (sr.transpose(0, 2, 1) @ sr).astype(np.float64)
        return lr, grr

    def apply(self, r0, r1, dw):
        self.res -= self.S[:, :, r0:r1] @ dw.transpose(0, 2, 1).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# kernels of one block (one subspace m): G (groups, P*d, P*d), Q (groups, out_g, P*d) float64,
# codes (groups, out_g, P) int64, cb (K, d) float64. The block objective is
# f = sum_{g,o} w^T G[g] w - 2 w^T Q[g, o], w = the codewords cb[codes[g, o, p]] stacked over p.


@njit(cache=True)
def _normal_equations(G, Q, codes, k_count):
    """H (K*d, K*d), b (K*d) with f = c^T H c - 2 b^T c over the stacked codebook c."""
    ng, og, p_count = codes.shape
    d = G.shape[1] // p_count
    H = np.zeros((k_count * d, k_count * d))
    b = np.zeros(k_count * d)
    for g in range(ng):
        for o in range(og):
            for p in range(p_count):
                k = codes[g, o, p]
                for i in range(d):
                    b[k * d + i] += Q[g, o, p * d + i]
                for p2 in range(p_count):
                    k2 = codes[g, o, p2]
                    for i in range(d):
                        for j in range(d):
                            H[k * d + i, k2 * d + j] += G[g, p * d + i, p2 * d + j]
    return H, b


@njit(cache=True)
def _reassign(G, Q, cb, codes):
    """Each (g, o, p) in turn takes the codeword minimising f given the others (codes in place)."""
    ng, og, p_count = codes.shape
    k_count, d = cb.shape
    a = np.zeros((p_count, k_count))
    w = np.empty((p_count, d))
    h = np.empty(d)
    for g in range(ng):
        for p in range(p_count):
            for k in range(k_count):
                s = 0.0
                for i in range(d):
                    for j in range(d):
                        s += cb[k, i] * G[g, p * d + i, p * d + j] * cb[k, j]
                a[p, k] = s
        for o in range(og):
            for p in range(p_count):
                w[p] = cb[codes[g, o, p]]
            for p in range(p_count):
                for i in range(d):
                    h[i] = Q[g, o, p * d + i]
                for p2 in range(p_count):
                    if p2 != p:
                        for i in range(d):
                            s = 0.0
                            for j in range(d):
                                s += G[g, p * d + i, p2 * d + j] * w[p2, j]
                            h[i] -= s
                best, best_k = np.inf, codes[g, o, p]
                for k in range(k_count):
                    s = a[p, k]
                    for i in range(d):
                        s -= 2.0 * cb[k, i] * h[i]
                    if s < best:
                        best, best_k = s, k
                codes[g, o, p] = best_k
                w[p] = cb[best_k]


def _block_objective(G, Q, w) -> float:
    """f for block weights w (groups, out_g, P*d)."""
    return float(np.sum((w @ G) * w) - 2.0 * np.sum(w * Q))


def _block_weights(cb, codes) -> np.ndarray:
    """(groups, out_g, P*d) from cb (K, d) and codes (groups, out_g, P)."""
    g, og, p = codes.shape
    return cb[codes].reshape(g, og, p * cb.shape[1])


@njit(cache=True)
def _block_gauss_seidel(H, b, c, inv, sweeps):
    """Block Gauss-Seidel on (H + lam I) c = b + lam c0 over the K codewords (c (K, d) in place).

    inv (K, d, d) holds the inverses of the ridged diagonal blocks; b already includes lam * c0.
    Every block step is the exact minimiser over one codeword, so the objective never increases.
    """
    k_count, d = c.shape
    r = np.empty(d)
    for _ in range(sweeps):
        for k in range(k_count):
            for i in range(d):
                s = b[k * d + i]
                for k2 in range(k_count):
                    if k2 != k:
                        for j in range(d):
                            s -= H[k * d + i, k2 * d + j] * c[k2, j]
                r[i] = s
            for i in range(d):
                s = 0.0
                for j in range(d):
                    s += inv[k, i, j] * r[j]
                c[k, i] = s


def _update_codebook(G, Q, cb, codes, real, sweeps) -> np.ndarray:
    """Least-squares codebook for fixed codes, with a small ridge toward the current one.

    A linear layer's system is block diagonal (one codeword per output), so one Gauss-Seidel sweep
    solves it exactly; a conv layer's couples the codewords that share an output across kernel
    positions, and `sweeps` warm-started sweeps approach the exact solution monotonically.
    """
    k, d = cb.shape
    H, b = _normal_equations(G, Q, codes, k)
    diag = np.diag(H)
    lam = 1e-9 * (diag.sum() / max(np.count_nonzero(diag), 1)) + 1e-30
    blocks = H.reshape(k, d, k, d)[np.arange(k), :, np.arange(k), :] + lam * np.eye(d)
    try:
        inv = np.linalg.inv(blocks)
    except np.linalg.LinAlgError:
        return cb
    c = cb.copy()
    _block_gauss_seidel(H, b + lam * cb.reshape(-1), c, inv, sweeps if G.shape[1] > d else 1)
    c[:, real:] = 0.0
    return c if np.all(np.isfinite(c)) else cb


# --------------------------------------------------------------------------------------------------
# running the working (partly quantized) net on the calibration batch


class _Runner:
    """Feeds the calibration batch through the working net in mini-batches.

    It keeps the inputs of one top-level layer for the whole batch (when they fit in
    `cache_bytes`), so the pass that collects the input of the next layer starts there instead of
    at the image.
    """

    def __init__(self, calibration, batch_size, cache_bytes):
        self.x = calibration
        self.bs = batch_size
        self.cache_bytes = cache_bytes
        self.cache_index, self.cache = 0, calibration

    def inputs(self, net: Net, top: int, name: str):
        """Yield (start, input of leaf `name`) per mini-batch; `top` is its top-level index."""
        i0, src = (self.cache_index, self.cache) if self.cache_index <= top else (0, self.x)
        prefix = Net(net.layers[i0:top]) if top > i0 else None
        outer_name, outer = net.layers[top]
        n = src.shape[0]
        keep = None
        for s in range(0, n, self.bs):
            a = src[s : s + self.bs]
            if prefix is not None:
                a = prefix(a)
                if s == 0 and a.nbytes * (-(-n // self.bs)) <= self.cache_bytes:
                    keep = np.empty((n, *a.shape[1:]), np.float32)
                if keep is not None:
                    keep[s : s + a.shape[0]] = a
            if outer_name == name and not isinstance(outer, Concat):
                yield s, a
                continue
            got = []

            def hook(n_, layer, x_in, x_out, got=got):
                if n_ == name:
                    got.append(x_in)
                    raise StopForward

            try:
                outer(a, hook)
            except StopForward:
                pass
            if not got:
                raise RuntimeError(f"layer {name!r} was not reached inside {outer_name!r}")
            yield s, got[0]
        if keep is not None:
            self.cache_index, self.cache = top, keep


def _top_index(net: Net) -> dict[str, int]:
    out = {}
    for i, (name, layer) in enumerate(net.layers):
        if isinstance(layer, Concat):
            for b in layer.branches:
                for n, _ in b.named_layers():
                    out[n] = i
        else:
            out[name] = i
    return out


# --------------------------------------------------------------------------------------------------
# progress


class _Progress:
    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total = enabled, total
        self.tty = enabled and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
        self.prefix = ""

    def layer(self, i: int, name: str):
        self.prefix = f"[{i + 1}/{self.total}] {name}"
        self.t0 = time.perf_counter()
        self.step("start")

    def step(self, what: str, frac: float | None = None):
        if not self.tty:
            return
        eta = ""
        el = time.perf_counter() - self.t0
        if frac is not None and frac > 0:
            eta = f"  ETA {el * (1 - frac) / frac:5.1f}s"
        sys.stderr.write(f"\r\x1b[K{self.prefix}: {what}{eta}")
        sys.stderr.flush()

    def done(self, r: LayerReport):
        if not self.enabled:
            return
        if r.settings.dense:
            line = f"{self.prefix}: kept dense"
        else:
            line = (f"{self.prefix}: d={r.settings.subdim} K={r.settings.K} n={r.samples} "
                    f"error k-means {r.error_kmeans:.4f} -> {r.error_final:.4f} "
                    f"({r.sweeps} sweeps, {r.seconds:.1f}s)")
        sys.stderr.write(("\r\x1b[K" if self.tty else "") + line + "\n")
        sys.stderr.flush()


# --------------------------------------------------------------------------------------------------


def _error_correct(geo, prob, cb, codes, iterations, progress, chunk_rows=32, gs_sweeps=4):
    """Block coordinate descent from (cb, codes); returns (cb, codes, error before, error, sweeps).

    cb (M, K, d) float64, codes (out, P, M); errors are squared response errors on the samples.
    """
    g, og, p, nm = geo.groups, geo.out_g, geo.p, geo.m
    blk = geo.block
    real = [min(geo.d, geo.cg - m * geo.d) for m in range(nm)]
    codes_g = codes.reshape(g, og, p, nm).transpose(3, 0, 1, 2).astype(np.int64)  # (M, g, og, P)
    wb = np.stack([_block_weights(cb[m], codes_g[m]) for m in range(nm)])  # (M, g, og, P*d)

    def rows(blocks):  # (mm, g, og, P*d) -> (g, og, mm*P*d)
        return blocks.transpose(1, 2, 0, 3).reshape(g, og, -1)

    prob.start(rows(wb))
    best_err = err0 = prob.error(rows(wb))
    best = (cb.copy(), codes_g.copy())
    per_chunk = max(1, chunk_rows // blk)
    sweeps = 0
    # a response already exact to float32 rounding (relative error < 1e-5) has nothing to correct
    for it in range(iterations if best_err > 1e-10 * prob.tt else 0):
        for m0 in range(0, nm, per_chunk):
            m1 = min(nm, m0 + per_chunk)
            lr, grr = prob.chunk(m0 * blk, m1 * blk)
            w_old = wb[m0:m1].copy()
            for m in range(m0, m1):
                a, b = (m - m0) * blk, (m - m0 + 1) * blk
                gmm = np.ascontiguousarray(grr[:, a:b, a:b])
                wm = wb[m]
                q = lr[:, a:b].transpose(0, 2, 1) + wm @ gmm
                f0 = _block_objective(gmm, q, wm)
                c_new = _update_codebook(gmm, q, cb[m], codes_g[m], real[m], gs_sweeps)
                w1 = _block_weights(c_new, codes_g[m])
                f1 = _block_objective(gmm, q, w1)
                if f1 <= f0:
                    cb[m], f0, wm_new = c_new, f1, w1
                else:
                    wm_new = wm
                k_new = codes_g[m].copy()
                _reassign(gmm, q, cb[m], k_new)
                w2 = _block_weights(cb[m], k_new)
                f2 = _block_objective(gmm, q, w2)
                if f2 <= f0:
                    codes_g[m], wm_new = k_new, w2
                if b < lr.shape[1]:
                    lr[:, b:] -= grr[:, b:, a:b] @ (wm_new - wm).transpose(0, 2, 1)
                wb[m] = wm_new
                progress.step(f"sweep {it + 1}/{iterations} subspace {m + 1}/{nm}",
                              (it * nm + m + 1) / (iterations * nm))
            prob.apply(m0 * blk, m1 * blk, rows(wb[m0:m1] - w_old))
        sweeps += 1
        err = prob.error(rows(wb))
        if err < best_err:
            improved = err < best_err * (1 - 1e-6)
            best_err, best = err, (cb.copy(), codes_g.copy())
            if not improved:
                break
        else:
            break
    cb, codes_g = best
    codes = codes_g.transpose(1, 2, 3, 0).reshape(g * og, p, nm)
    return cb, codes, err0, best_err, sweeps


def _settings_for(net, settings):
    wl = _weight_layers(net)
    resolved = default_settings(net)
    if settings is not None:
        unknown = sorted(set(settings) - set(resolved))
        if unknown:
            raise ValueError(f"settings name layers that are not conv/linear layers of the net: "
                             f"{unknown}; known: {sorted(resolved)}")
        for k, v in settings.items():
            if not isinstance(v, LayerSettings):
                raise TypeError(f"settings[{k!r}] must be a LayerSettings, got {type(v).__name__}")
            resolved[k] = v
    return wl, resolved


def quantize(net: Net, calibration, settings: dict | None = None, error_correction: bool = True,
             seed: int = 0, progress: bool = True, samples: int = 8192, kmeans_iterations: int = 20,
             batch_size: int = 32, cache_bytes: int = 512 << 20) -> tuple[Net, QuantizeReport]:
    """Quantize every conv / linear layer of `net` the Q-CNN way (k-means, then error correction).

    Parameters
    ----------
    net : Net
        The float network (left unchanged).
    calibration : ndarray
        A float32 batch already pre-processed for `net` (NCHW), e.g. a few hundred unlabelled
        images.
    settings : dict, optional
        Layer name -> :class:`LayerSettings`; layers not named get :func:`default_settings`.
    error_correction : bool
        False gives plain product k-means for all layers (the errors are still measured).
    seed : int
        Seeds k-means++ and the sampled positions: the same inputs give bit-identical outputs.
    progress : bool
        Report on stderr: a live line (layer, step, ETA) on a terminal, one line per layer
        otherwise.
    samples : int
        Output positions sampled per conv layer (spread evenly over the calibration images); a
        linear layer uses every image.
    kmeans_iterations : int
        Maximum Lloyd iterations of the k-means start.
    batch_size : int
        Images per forward pass.
    cache_bytes : int
        Memory allowed for keeping one layer's inputs of the whole batch between layers (this avoids
        re-running the layers below; past it they are re-run).

    Returns
    -------
    net : Net
        A new net whose conv / linear layers are QConv2d / QLinear (or the float layer when
        ``dense``).
    report : QuantizeReport
        Per layer: relative response errors ``||T - T_hat|| / ||T||`` after k-means and at the end,
        samples, time.

    Examples
    --------
    >>> import numpy as np
    >>> from qcnn.layers import Conv2d, ReLU
    >>> rng = np.random.default_rng(0)
    >>> net = Net([("conv", Conv2d(rng.standard_normal((8, 4, 3, 3)), name="conv")),
    ...            ("relu", ReLU("relu"))])
    >>> x = rng.standard_normal((4, 4, 8, 8)).astype(np.float32)
    >>> qnet, report = quantize(net, x, {"conv": LayerSettings(subdim=2, K=16)}, progress=False)
    >>> report["conv"].error_final <= report["conv"].error_kmeans
    True
    """
    t_start = time.perf_counter()
    calibration = np.ascontiguousarray(calibration, dtype=np.float32)
    if calibration.ndim < 2 or calibration.shape[0] < 1:
        raise ValueError(f"quantize: calibration must be a pre-processed batch (N, C, H, W) with "
                         f"N >= 1, got shape {calibration.shape}")
    wl, resolved = _settings_for(net, settings)
    n_img = calibration.shape[0]
    index = {name: i for i, (name, _) in enumerate(wl)}
    geos = {name: _Geometry.of(name, lay, resolved[name].subdim) for name, lay in wl}

    # 1. float pass: T at sampled positions for every layer
    pos, targets = {}, {name: [] for name, _ in wl}
    last = wl[-1][0] if wl else None

    def capture(name, layer, x_in, y, start):
        if name not in geos:
            return
        geo = geos[name]
        if name not in pos:
            rng = np.random.default_rng([seed, index[name], 1])
            if geo.linear:
                pos[name] = (np.arange(n_img), None, None)
            else:
                ho, wo = y.shape[2], y.shape[3]
                per = min(ho * wo, max(1, -(-samples // n_img)))
                flat = np.concatenate([np.sort(rng.choice(ho * wo, per, replace=False))
                                       for _ in range(n_img)])
                pos[name] = (np.repeat(np.arange(n_img), per), flat // wo, flat % wo)
        bi, oh, ow = _select(pos[name], start, y.shape[0])[:3]
        targets[name].append(geo.responses(y, bi - start, oh, ow))
        if name == last:
            raise StopForward

    for s in range(0, n_img, batch_size):
        try:
            net(calibration[s : s + batch_size], lambda *a, s=s: capture(*a, start=s))
        except StopForward:
            pass

    report = QuantizeReport()
    prog = _Progress(progress, len(wl))
    runner = _Runner(calibration, batch_size, cache_bytes)
    top = _top_index(net)
    work, quantized = net, {}
    for i, (name, layer) in enumerate(wl):
        st, geo = resolved[name], geos[name]
        prog.layer(i, name)
        t0 = time.perf_counter()
        r = LayerReport(name, st)
        if st.dense:
            r.seconds = time.perf_counter() - t0
            report.layers.append(r)
            prog.done(r)
            continue
        prog.step("k-means")
        cb, codes = product_kmeans(geo.subvectors(layer), st.K, seed=[seed, i, 0],
                                   iterations=kmeans_iterations)
        codes = codes.T.reshape(geo.groups * geo.out_g, geo.p, geo.m)
        cb = cb.astype(np.float64)

        prog.step("collecting inputs")
        t_all = np.concatenate(targets.pop(name), axis=1)
        bias = np.zeros(geo.groups * geo.out_g, np.float32) if layer.bias is None else layer.bias
        t_all -= bias.reshape(geo.groups, 1, geo.out_g)
        prob = _DataProblem(geo) if t_all.shape[1] < geo.dim else _GramProblem(geo)
        for s, x_in in runner.inputs(work, top[name], name):
            bi, oh, ow, rows = _select(pos[name], s, x_in.shape[0])
            prob.add(geo.patches(x_in, bi - s, oh, ow), t_all[:, rows])
        tt_full = _total_square(t_all, bias, geo)
        r.samples, r.space = prob.n, prob.space

        iters = st.iterations if (error_correction and st.error_correction) else 0
        cb, codes, err0, err, r.sweeps = _error_correct(geo, prob, cb, codes, iters, prog)
        if st.codebook_dtype == "float16":
            cb = cb.astype(np.float16).astype(np.float64)
            w16 = geo.w_rows(cb, codes)
            prob.start(w16)
            err = prob.error(w16)
        r.error_kmeans = math.sqrt(max(err0, 0.0) / tt_full) if tt_full > 0 else 0.0
        r.error_final = math.sqrt(max(err, 0.0) / tt_full) if tt_full > 0 else 0.0
        del prob

        cb32 = cb.astype(np.float32)
        if geo.linear:
            work = work.replace(name, L.Linear(geo.float_weight(cb32, codes), layer.bias, name))
        else:
            work = work.replace(name, L.Conv2d(geo.float_weight(cb32, codes), layer.bias,
                                               geo.stride, geo.padding, geo.groups, name))
        quantized[name] = _qlayer(geo, layer, cb.astype(st.codebook_dtype), codes)
        r.seconds = time.perf_counter() - t0
        report.layers.append(r)
        prog.done(r)
    out = net
    for name, lay in quantized.items():
        out = out.replace(name, lay)
    report.seconds = time.perf_counter() - t_start
    return out, report


def _select(p, start, count):
    """The sampled positions (bi, oh, ow) of images start..start+count, and their row slice."""
    bi, oh, ow = p
    lo, hi = np.searchsorted(bi, [start, start + count])
    rows = slice(lo, hi)
    return bi[rows], (None if oh is None else oh[rows]), (None if ow is None else ow[rows]), rows


def _total_square(t_prime, bias, geo) -> float:
    t = t_prime.astype(np.float64) + bias.reshape(geo.groups, 1, geo.out_g)
    return float(np.sum(t * t))


def _qlayer(geo, layer, cb, codes):
    codes8 = codes.reshape(-1, *geo.kernel, geo.m).astype(np.uint8)
    if geo.linear:
        return QLinear(cb, codes8.reshape(-1, geo.m), layer.bias, geo.cg, name=geo.name)
    return QConv2d(cb, codes8, layer.bias, geo.cg * geo.groups, stride=geo.stride,
                   padding=geo.padding, groups=geo.groups, name=geo.name)
