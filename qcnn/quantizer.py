"""Learning Q-CNN's codebooks: product k-means, then error correction on the layer responses.

Layers are processed bottom-up. For each conv / linear layer:

1. k-means (:func:`qcnn.kmeans.product_kmeans`) per subspace on the weight subvectors
   ``W[o, m*d:(m+1)*d, i, j]``; one codebook per subspace, shared by all outputs, kernel
   positions and groups.
2. Error correction (Wu et al., CVPR 2016, section 3.2): minimise ``sum ||T - b - W_hat S||^2``,
   where T is the FLOAT network's response of the layer and S the layer's input as produced by the
   ALREADY QUANTIZED layers below, so that upstream error is compensated. Block coordinate descent
   over the subspaces m: the codebook of m by least squares with the assignments fixed, then every
   output channel and kernel position re-picks its codeword exhaustively; a few sweeps.

Fit and held-out split. The calibration images are split (by image, with the seed) into a fit part
and a held-out part (``holdout``, 20% by default). Error correction runs on the fit part only;
after every sweep the response error on the held-out part is measured, and a sweep that makes it
worse is undone and ends the layer's error correction. A sweep is also never kept when its fit
error exceeds the k-means one. Both errors are reported per layer.

Regularisation. The objective is the fit error plus ``lambda ||W_hat - W||^2`` (a ridge toward the
float weights), ``lambda = ridge * tr(S^T S) / D``: the input covariance shrunk toward an isotropic
one, which is what keeps a layer with fewer samples than inputs (an FC layer on a few hundred
images) from fitting noise. The default ``ridge`` grows as D / n; see docs/quantizer.md.

Samples. A conv layer's S and T are taken at ``samples`` output positions drawn at random over the
calibration images (the rows of S are im2col patches); a linear layer uses every calibration image.
T is computed from the float net's input patches at those positions (``T - b = S_float W^T``), so
only the current layer's rows are ever held.

Gram space and data space. The error of a layer's weights W (one row per output) is
``tr(T'T'^T) - 2 tr(W P) + tr(W G W^T)`` with ``G = S^T S``, ``P = S^T T'`` and ``T' = T - b``, so
an update needs only G and P. A problem of n samples of dimension D (D = C_g * kh * kw, channels
padded to a multiple of d) is kept in Gram space (G, P in float64: 8 D^2 bytes) when n >= D, and
otherwise in data space (S and the residual ``T' - S W^T`` in float32: 4 n D bytes); the memory is
``min(n, D) * D`` in every case. Updates are applied chunk by chunk so that the coupling to the
other subspaces is refreshed with one matrix product per chunk, not one per subspace.

Layers with one kernel position (linear and 1x1 conv): a whole chunk of subspaces is processed by
one Numba kernel (:func:`_sweep_chunk_p1`): the codebook of a subspace is solved exactly (one
d x d system per codeword) and every output re-picks its codeword exhaustively.

Conv layers with kh * kw > 1: a codeword is shared by the kernel positions of a subvector, so the
codebook least-squares problem couples positions; it is solved by warm-started block Gauss-Seidel
over the codewords, and the positions of one output are re-assigned in turn (Gauss-Seidel). A
block update that increases the block objective is never kept.

Memory. The calibration batch is fed in mini-batches through two nets: the float net (for T) and
the working net (earlier layers quantized, for S). Each keeps one checkpoint: the whole batch's
activations at the latest top-level layer boundary that fits in ``cache_bytes / 2``, from which
the next pass starts. Nothing else of the batch's activations is held.

The layers below the current one run as float layers holding the reconstructed weights (the same
arithmetic as QConv2d / QLinear up to rounding, and faster on a batch); the returned net holds
QConv2d / QLinear layers.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from . import layers as L
from ._jit import njit
from .kmeans import product_kmeans
from .net import Concat, Net, StopForward
from .qlayers import QConv2d, QLinear

__all__ = [
    "LayerSettings", "LayerReport", "QuantizeReport", "PRESETS", "default_settings", "quantize",
    "FewSamplesWarning",
]

CODEBOOK_DTYPES = ("float32", "float16")


class FewSamplesWarning(UserWarning):
    """A layer has fewer fit samples than inputs: its error correction is under-determined."""


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
    ridge : float or None
        Shrinkage of the input covariance toward isotropic (a ridge toward the float weights, see
        the module docstring); None takes :func:`quantize`'s automatic value.

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
    ridge: float | None = None

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
        if self.ridge is not None and not float(self.ridge) >= 0.0:
            raise ValueError(f"LayerSettings: ridge must be >= 0 or None, got {self.ridge}")


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
    """What quantizing one layer did.

    Errors are relative response errors ``||T - T_hat|| / ||T||``: ``error_kmeans`` and
    ``error_final`` on the fit samples (the ones error correction minimises),
    ``error_heldout_kmeans`` and ``error_heldout`` on the held-out images' samples (NaN without a
    held-out part).
    """

    name: str
    settings: LayerSettings
    samples: int = 0  # fit rows of S: sampled output positions (conv) or calibration images (linear)
    space: str = ""  # "gram" or "data", see the module docstring
    error_kmeans: float = float("nan")
    error_final: float = float("nan")
    sweeps: int = 0  # error-correction sweeps kept
    seconds: float = 0.0
    inputs: int = 0  # D, the layer's inputs per output (C_g * kh * kw, channels padded to d)
    heldout: int = 0  # held-out rows
    error_heldout_kmeans: float = float("nan")
    error_heldout: float = float("nan")
    ridge: float = 0.0  # the ridge used (relative, see the module docstring)
    sweeps_run: int = 0  # sweeps run, including a last one undone because held-out got worse

    def to_dict(self) -> dict:
        """JSON-able dict (NaN becomes None)."""
        d = dataclasses.asdict(self)
        d["settings"] = dataclasses.asdict(self.settings)
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in d.items()}


@dataclass
class QuantizeReport:
    """Per-layer reports in forward order, and the total time."""

    layers: list[LayerReport] = field(default_factory=list)
    seconds: float = 0.0
    images: int = 0  # calibration images
    heldout_images: int = 0  # of which held out

    def __getitem__(self, name: str) -> LayerReport:
        for r in self.layers:
            if r.name == name:
                return r
        raise KeyError(f"no layer named {name!r} in the report")

    def to_dict(self) -> dict:
        """JSON-able summary, e.g. for the quantized file's metadata.

        Examples
        --------
        >>> import json
        >>> r = QuantizeReport([LayerReport("fc", LayerSettings(4, 32), samples=100)], 1.5)
        >>> d = r.to_dict()
        >>> d["layers"][0]["settings"]["K"], d["layers"][0]["error_final"]
        (32, None)
        >>> _ = json.dumps(d, allow_nan=False)
        """
        return {"seconds": round(self.seconds, 3), "images": self.images,
                "heldout_images": self.heldout_images,
                "layers": [r.to_dict() for r in self.layers]}

    def __str__(self) -> str:
        rows = [f"{'layer':<24} {'d':>3} {'K':>4} {'D':>6} {'samples':>8} {'space':>5} "
                f"{'ridge':>7} {'kmeans':>8} {'final':>8} {'ho-km':>8} {'ho-final':>8} "
                f"{'sweeps':>6} {'seconds':>8}"]
        for r in self.layers:
            s = r.settings
            if s.dense:
                rows.append(f"{r.name:<24} dense")
                continue
            rows.append(f"{r.name:<24} {s.subdim:>3} {s.K:>4} {r.inputs:>6} {r.samples:>8} "
                        f"{r.space:>5} {r.ridge:>7.3g} {r.error_kmeans:>8.4f} "
                        f"{r.error_final:>8.4f} {r.error_heldout_kmeans:>8.4f} "
                        f"{r.error_heldout:>8.4f} {r.sweeps:>6} {r.seconds:>8.2f}")
        rows.append(f"total {self.seconds:.1f} s; errors ||T - T_hat|| / ||T|| on the fit samples "
                    f"(kmeans, final) and on {self.heldout_images} held-out images (ho-*)")
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

    def float_rows(self, layer) -> np.ndarray:
        """(groups, out_g, D) float32 float weights in the layout of :meth:`patches`."""
        wp = self.padded_weight(layer).reshape(-1, self.m, self.d, self.p).transpose(0, 1, 3, 2)
        return np.ascontiguousarray(wp.reshape(self.groups, self.out_g, self.dim))

    def output_positions(self, layer, x) -> int:
        """Output positions per image of `layer` on the input batch `x`."""
        if self.linear:
            return 1
        ho, wo = layer.output_size(x.shape[2], x.shape[3])
        return ho * wo

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

    def __init__(self, geo: _Geometry, n: int):
        g, dim, og = geo.groups, geo.dim, geo.out_g
        self.G = np.zeros((g, dim, dim))
        self.P = np.zeros((g, dim, og))
        self.tt = 0.0
        self.n = 0

    def add(self, s, t):
        for g in range(s.shape[0]):
            # float64 products: sums over thousands of samples lose digits in float32, and
            # OpenBLAS's float32 SME kernels gave non-finite Gram entries on emulated Armv9 (docs/arm.md)
            sg = s[g].astype(np.float64)
            self.G[g] += sg.T @ sg
            self.P[g] += sg.T @ t[g].astype(np.float64)
        self.tt += float(np.sum(np.square(t, dtype=np.float64)))
        self.n += s.shape[1]

    def trace(self) -> float:
        return float(np.einsum("gii->", self.G))

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
    """S (float32, groups x n x D) and the residual T' - S W^T; G and P are never formed.

    Also the held-out part's representation (only :meth:`add` and :meth:`error` are used there).
    """

    space = "data"

    def __init__(self, geo: _Geometry, n: int):
        self.S = np.zeros((geo.groups, n, geo.dim), np.float32)
        self.T = np.zeros((geo.groups, n, geo.out_g), np.float32)
        self.tt = 0.0
        self.n = 0

    def add(self, s, t):
        k = s.shape[1]
        self.S[:, self.n : self.n + k] = s
        self.T[:, self.n : self.n + k] = t
        self.tt += float(np.sum(np.square(t, dtype=np.float64)))
        self.n += k

    def trace(self) -> float:
        return float(np.sum(np.square(self.S, dtype=np.float64)))

    def start(self, w):
        self.res = self.T - self.S @ w.transpose(0, 2, 1).astype(np.float32)

    def error(self, w) -> float:
        """Squared error of w: from the residual once :meth:`start` ran (w is then the current
        weights), else computed."""
        if hasattr(self, "res"):
            return float(np.sum(np.square(self.res, dtype=np.float64)))
        e = 0.0
        w32 = w.transpose(0, 2, 1).astype(np.float32)
        for r0 in range(0, self.n, 4096):  # bounded temporaries
            r = self.T[:, r0 : r0 + 4096] - self.S[:, r0 : r0 + 4096] @ w32
            e += float(np.sum(np.square(r, dtype=np.float64)))
        return e

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


@njit(cache=True)
def _solve_spd(A, b, x):
    """x = A^{-1} b for a small symmetric positive-definite A (Cholesky); False if not SPD."""
    n = A.shape[0]
    c = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1):
            s = A[i, j]
            for t in range(j):
                s -= c[i, t] * c[j, t]
            if i == j:
                if not s > 0.0:
                    return False
                c[i, i] = math.sqrt(s)
            else:
                c[i, j] = s / c[j, j]
    y = np.empty(n)
    for i in range(n):
        s = b[i]
        for t in range(i):
            s -= c[i, t] * y[t]
        y[i] = s / c[i, i]
    for i in range(n - 1, -1, -1):
        s = y[i]
        for t in range(i + 1, n):
            s -= c[t, i] * x[t]
        x[i] = s / c[i, i]
    return True


@njit(cache=True)
def _p1_objective(G, q, w, a):
    """Block objective sum_{g,o} w^T G_g w - 2 w^T q for one subspace at rows a..a+d of G."""
    ng, og, d = w.shape
    f = 0.0
    for g in range(ng):
        for o in range(og):
            for i in range(d):
                s = 0.0
                for j in range(d):
                    s += G[g, a + i, a + j] * w[g, o, j]
                f += w[g, o, i] * (s - 2.0 * q[g, o, i])
    return f


@njit(cache=True)
def _sweep_chunk_p1(lr, grr, cb, codes, wb, real):
    """One pass over a chunk of subspaces of a layer with one kernel position (linear, 1x1 conv).

    lr (groups, R, out_g) float64: L = P - G W^T over the chunk's R = mm * d rows (updated in place
    as the subspaces change); grr (groups, R, R) float64: the chunk's Gram block (ridge included);
    cb (mm, K, d) float64, codes (mm, groups, out_g) int64, wb (mm, groups, out_g, d) float64: the
    codebooks, codes and weights of the chunk's subspaces, updated in place; real (mm,) int64: the
    non-padded dims of each subspace. Per subspace: exact least-squares codebook (a small ridge
    toward the current codewords), then exhaustive re-assignment; a step that raises the block
    objective is not kept.
    """
    mm, k_count, d = cb.shape
    ng, og = codes.shape[1], codes.shape[2]
    rr = lr.shape[1]
    q = np.empty((ng, og, d))
    H = np.empty((k_count, d, d))
    bv = np.empty((k_count, d))
    counts = np.empty(k_count, np.int64)
    c_new = np.empty((k_count, d))
    w1 = np.empty((ng, og, d))
    k_new = np.empty((ng, og), np.int64)
    ak = np.empty(k_count)
    x = np.empty(d)
    rhs = np.empty(d)
    A = np.empty((d, d))
    dwt = np.empty((ng, d, og))
    for j in range(mm):
        a = j * d
        w0 = wb[j]
        for g in range(ng):
            for o in range(og):
                for i in range(d):
                    s = lr[g, a + i, o]
                    for t in range(d):
                        s += grr[g, a + i, a + t] * w0[g, o, t]
                    q[g, o, i] = s
        f0 = _p1_objective(grr, q, w0, a)
        # codebook: per codeword k, (sum of G_g over the outputs using k) c_k = sum of their q
        H[:] = 0.0
        bv[:] = 0.0
        counts[:] = 0
        for g in range(ng):
            for o in range(og):
                k = codes[j, g, o]
                counts[k] += 1
                for i in range(d):
                    bv[k, i] += q[g, o, i]
                    for t in range(d):
                        H[k, i, t] += grr[g, a + i, a + t]
        diag, nz = 0.0, 0
        for k in range(k_count):
            for i in range(d):
                if H[k, i, i] > 0.0:
                    diag += H[k, i, i]
                    nz += 1
        lam = 1e-9 * diag / max(nz, 1) + 1e-30
        ok = True
        for k in range(k_count):
            for i in range(d):
                c_new[k, i] = cb[j, k, i]
            if counts[k] == 0:
                continue
            for i in range(d):
                for t in range(d):
                    A[i, t] = H[k, i, t]
                A[i, i] += lam
                rhs[i] = bv[k, i] + lam * cb[j, k, i]
            if _solve_spd(A, rhs, x):
                for i in range(d):
                    c_new[k, i] = x[i] if i < real[j] else 0.0
        for k in range(k_count):
            for i in range(d):
                if not math.isfinite(c_new[k, i]):
                    ok = False
        best_w = w0
        if ok:
            for g in range(ng):
                for o in range(og):
                    w1[g, o] = c_new[codes[j, g, o]]
            f1 = _p1_objective(grr, q, w1, a)
            if f1 <= f0:
                cb[j] = c_new
                f0 = f1
        # re-assignment: every (g, o) takes the best of the K codewords
        for g in range(ng):
            for k in range(k_count):
                s = 0.0
                for i in range(d):
                    for t in range(d):
                        s += cb[j, k, i] * grr[g, a + i, a + t] * cb[j, k, t]
                ak[k] = s
            for o in range(og):
                best, best_k = np.inf, codes[j, g, o]
                for k in range(k_count):
                    s = ak[k]
                    for i in range(d):
                        s -= 2.0 * cb[j, k, i] * q[g, o, i]
                    if s < best:
                        best, best_k = s, k
                k_new[g, o] = best_k
                w1[g, o] = cb[j, best_k]
        f2 = _p1_objective(grr, q, w1, a)
        if f2 <= f0:
            codes[j] = k_new
            best_w = w1
        else:
            for g in range(ng):
                for o in range(og):
                    w1[g, o] = cb[j, codes[j, g, o]]
            best_w = w1
        # couple the change of this subspace into the later rows of the chunk
        for g in range(ng):
            for o in range(og):
                for t in range(d):
                    dwt[g, t, o] = best_w[g, o, t] - w0[g, o, t]
        for g in range(ng):
            for r in range(a + d, rr):
                for t in range(d):
                    gv = grr[g, r, a + t]
                    if gv != 0.0:
                        for o in range(og):
                            lr[g, r, o] -= gv * dwt[g, t, o]
        wb[j] = best_w


# --------------------------------------------------------------------------------------------------
# running a net on the calibration batch, one checkpoint at a time


class _Runner:
    """Feeds the calibration batch through a net in mini-batches, from one checkpoint.

    The checkpoint is the whole batch's input of one top-level layer (at first: the batch itself).
    A pass to the input of a leaf layer inside top-level layer `top` starts at the checkpoint and
    stores a new one at the latest top-level boundary up to `top` whose activations fit in
    `budget` bytes (`sizes[i]`: bytes per image of the input of top-level layer i), so that the
    next pass starts there. Peak: the old and the new checkpoint during a pass.
    """

    def __init__(self, calibration, batch_size: int, budget: int, sizes: list[int]):
        self.x, self.bs, self.budget, self.sizes = calibration, batch_size, budget, sizes
        self.at, self.src = 0, calibration

    def inputs(self, net: Net, top: int, name: str):
        """Yield (start, input of leaf `name`) per mini-batch; `top` is its top-level index."""
        if top < self.at:
            raise RuntimeError(f"layer {name!r} comes before the runner's checkpoint")
        n = self.x.shape[0]
        i0, src = self.at, self.src
        fits = [b for b in range(i0 + 1, top + 1) if self.sizes[b] * n <= self.budget]
        keep_at = fits[-1] if fits else None
        keep = None
        outer_name, outer = net.layers[top]
        branch = None
        if isinstance(outer, Concat):
            branch = next((b for b in outer.branches if any(nm == name for nm, _ in
                                                            b.named_layers())), None)
            if branch is None:
                raise RuntimeError(f"layer {name!r} was not found inside {outer_name!r}")
        for s in range(0, n, self.bs):
            a = src[s : s + self.bs]
            for i in range(i0, top + 1):
                if i == keep_at:
                    if keep is None:
                        keep = np.empty((n, *a.shape[1:]), np.float32)
                    keep[s : s + a.shape[0]] = a
                if i < top:
                    a = net.layers[i][1](a)
            if branch is None:
                yield s, a
                continue
            got = []

            def hook(n_, layer, x_in, x_out, got=got):
                if n_ == name:
                    got.append(x_in)
                    raise StopForward

            if branch.layers[0][0] == name:
                yield s, a
                continue
            try:
                branch(a, hook)
            except StopForward:
                pass
            yield s, got[0]
        if keep is not None:
            self.at, self.src = keep_at, keep


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


def _boundary_sizes(net: Net, x1) -> list[int]:
    """Bytes per image of the input of every top-level layer (one image through the float net)."""
    sizes = []
    a = x1
    for _, layer in net.layers:
        sizes.append(int(a[0].nbytes))
        a = layer(a)
    return sizes


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


# --------------------------------------------------------------------------------------------------


def _error_correct(geo, fit, ho, cb, codes, iterations, progress, lam=0.0, wf=None, gs_sweeps=4):
    """Block coordinate descent from (cb, codes) on the fit problem, guarded by the held-out one.

    cb (M, K, d) float64, codes (out, P, M); `lam` the absolute ridge toward the float weight rows
    `wf` (groups, out_g, D). Returns (cb, codes, errors, sweeps kept, sweeps run) with errors =
    (fit k-means, fit final, held-out k-means, held-out final) squared errors (held-out NaN when
    `ho` is None).
    """
    g, og, p, nm = geo.groups, geo.out_g, geo.p, geo.m
    blk = geo.block
    real = np.array([min(geo.d, geo.cg - m * geo.d) for m in range(nm)], np.int64)
    codes_g = np.ascontiguousarray(codes.reshape(g, og, p, nm).transpose(3, 0, 1, 2),
                                   dtype=np.int64)  # (M, g, og, P)
    # the weights as rows (g, og, D), and wb: the same memory seen per subspace (M, g, og, P*d)
    w_all = np.ascontiguousarray(geo.w_rows(cb, codes))
    wb = w_all.reshape(g, og, nm, blk).transpose(2, 0, 1, 3)

    def rows(blocks):  # (mm, g, og, P*d) -> (g, og, mm*P*d)
        return w_all if blocks is wb else blocks.transpose(1, 2, 0, 3).reshape(g, og, -1)

    fit.start(rows(wb))
    fit0 = best_fit = fit.error(rows(wb))
    ho0 = best_ho = ho.error(rows(wb)) if ho is not None else float("nan")
    best = (cb.copy(), codes_g.copy())
    p1 = p == 1
    # chunks: the coupling inside a chunk costs |R|^2 out per chunk, the refresh n |R| out
    per_chunk = max(1, (64 if p1 else 32) // blk)
    kept = run = 0
    # a response already exact to float32 rounding (relative error < 1e-5) has nothing to correct
    for it in range(iterations if best_fit > 1e-10 * fit.tt else 0):
        for m0 in range(0, nm, per_chunk):
            m1 = min(nm, m0 + per_chunk)
            r0, r1 = m0 * blk, m1 * blk
            lr, grr = fit.chunk(r0, r1)
            w_old = wb[m0:m1].copy()
            if lam > 0.0:
                lr += lam * (wf[:, :, r0:r1] - rows(w_old)).transpose(0, 2, 1)
                ix = np.arange(r1 - r0)
                grr[:, ix, ix] += lam
            if p1:
                _sweep_chunk_p1(lr, grr, cb[m0:m1], codes_g[m0:m1, :, :, 0], wb[m0:m1],
                                real[m0:m1])
            else:
                _sweep_subspaces(lr, grr, cb, codes_g, wb, real, m0, m1, blk, gs_sweeps)
            fit.apply(r0, r1, rows(wb[m0:m1] - w_old))
            progress.step(f"sweep {it + 1}/{iterations} subspace {m1}/{nm}",
                          (it * nm + m1) / (iterations * nm))
        run += 1
        e_fit = fit.error(rows(wb))
        if ho is None:
            better = e_fit < best_fit
            done = not e_fit < best_fit * (1 - 1e-6)
        else:
            e_ho = ho.error(rows(wb))
            better = e_ho < best_ho and e_fit <= fit0
            done = not e_ho < best_ho * (1 - 1e-6)
        if better:
            best_fit, best, kept = e_fit, (cb.copy(), codes_g.copy()), run
            if ho is not None:
                best_ho = e_ho
        if done:
            break
    cb, codes_g = best
    codes = codes_g.transpose(1, 2, 3, 0).reshape(g * og, p, nm)
    return cb, codes, (fit0, best_fit, ho0, best_ho), kept, run


def _sweep_subspaces(lr, grr, cb, codes_g, wb, real, m0, m1, blk, gs_sweeps):
    """One pass over subspaces m0..m1 of a conv layer with several kernel positions (in place)."""
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


#: The automatic ridge is ``RIDGE_PER_INPUT * D / n`` (D inputs, n fit samples), see
#: docs/quantizer.md for how it was chosen.
RIDGE_PER_INPUT = 0.1


def auto_ridge(inputs: int, samples: int) -> float:
    """The default ridge of a layer with `inputs` inputs (D) and `samples` fit samples (n).

    Examples
    --------
    >>> auto_ridge(9216, 100) > 1.0 > auto_ridge(576, 6400)
    True
    """
    return RIDGE_PER_INPUT * inputs / max(samples, 1)


def _split(n_img: int, holdout: float, seed) -> np.ndarray:
    """Boolean mask of the held-out images: round(holdout * n) of them (at least one when
    holdout > 0 and n >= 2, and never all), drawn with the seed."""
    if not 0.0 <= holdout < 1.0:
        raise ValueError(f"quantize: holdout must be in [0, 1), got {holdout}")
    k = min(n_img - 1, max(1 if holdout > 0 else 0, int(round(holdout * n_img))))
    mask = np.zeros(n_img, bool)
    if k > 0:
        mask[np.random.default_rng([seed, 7919]).choice(n_img, k, replace=False)] = True
    return mask


def quantize(net: Net, calibration, settings: dict | None = None, error_correction: bool = True,
             seed: int = 0, progress: bool = True, samples: int = 8192, kmeans_iterations: int = 20,
             batch_size: int = 16, cache_bytes: int = 128 << 20, holdout: float = 0.2,
             ridge: float | None = None) -> tuple[Net, QuantizeReport]:
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
        Seeds k-means++, the sampled positions and the held-out split: the same inputs give
        bit-identical outputs.
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
        Memory for the two checkpoints (float net and working net) of the batch's activations
        between layers; a pass starts from the checkpoint, so a larger budget re-runs fewer layers.
    holdout : float
        Fraction of the calibration images held out of error correction to measure (and guard)
        how it generalises; 0 fits on every image.
    ridge : float, optional
        Relative ridge toward the float weights for layers whose settings leave it None; None is
        :func:`auto_ridge` (0.1 D / n per layer).

    Returns
    -------
    net : Net
        A new net whose conv / linear layers are QConv2d / QLinear (or the float layer when
        ``dense``).
    report : QuantizeReport
        Per layer: relative response errors ``||T - T_hat|| / ||T||`` after k-means and at the end,
        on the fit and on the held-out samples, samples, time.

    Warns
    -----
    FewSamplesWarning
        When error correction runs on a layer with fewer fit samples than inputs (e.g. an FC layer
        on a few hundred images): the ridge and the held-out guard limit the damage, but more
        calibration images would help.

    Examples
    --------
    >>> import numpy as np
    >>> from qcnn.layers import Conv2d, ReLU
    >>> rng = np.random.default_rng(0)
    >>> net = Net([("conv", Conv2d(rng.standard_normal((8, 4, 3, 3)), name="conv")),
    ...            ("relu", ReLU("relu"))])
    >>> x = rng.standard_normal((5, 4, 8, 8)).astype(np.float32)
    >>> qnet, report = quantize(net, x, {"conv": LayerSettings(subdim=2, K=16)}, progress=False)
    >>> r = report["conv"]
    >>> r.error_final <= r.error_kmeans and r.error_heldout <= r.error_heldout_kmeans
    True
    """
    t_start = time.perf_counter()
    calibration = np.ascontiguousarray(calibration, dtype=np.float32)
    if calibration.ndim < 2 or calibration.shape[0] < 1:
        raise ValueError(f"quantize: calibration must be a pre-processed batch (N, C, H, W) with "
                         f"N >= 1, got shape {calibration.shape}")
    if ridge is not None and not float(ridge) >= 0.0:
        raise ValueError(f"quantize: ridge must be >= 0 or None, got {ridge}")
    wl, resolved = _settings_for(net, settings)
    n_img = calibration.shape[0]
    is_ho = _split(n_img, holdout, seed)
    report = QuantizeReport(images=n_img, heldout_images=int(is_ho.sum()))
    prog = _Progress(progress, len(wl))
    sizes = _boundary_sizes(net, calibration[:1])
    float_runner = _Runner(calibration, batch_size, cache_bytes // 2, sizes)
    work_runner = _Runner(calibration, batch_size, cache_bytes // 2, sizes)
    top = _top_index(net)
    work, quantized = net, {}
    for i, (name, layer) in enumerate(wl):
        st = resolved[name]
        geo = _Geometry.of(name, layer, st.subdim)
        prog.layer(i, name)
        t0 = time.perf_counter()
        r = LayerReport(name, st, inputs=geo.dim)
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
        wf = geo.float_rows(layer)
        bias = np.zeros(geo.groups * geo.out_g, np.float32) if layer.bias is None else layer.bias
        bias_g = bias.reshape(geo.groups, 1, geo.out_g).astype(np.float64)
        fit = ho = None
        tt_fit = tt_ho = 0.0
        rng = np.random.default_rng([seed, i, 1])
        pairs = zip(float_runner.inputs(net, top[name], name),
                    work_runner.inputs(work, top[name], name), strict=True)
        for (s, xf), (_, xw) in pairs:
            if fit is None:
                n_pos = geo.output_positions(layer, xf)
                per = min(n_pos, max(1, -(-samples // n_img)))
                n_ho = int(is_ho.sum()) * per
                n_fit = n_img * per - n_ho
                fit = (_DataProblem if n_fit < geo.dim else _GramProblem)(geo, n_fit)
                ho = _DataProblem(geo, n_ho) if n_ho else None
            bi = np.repeat(np.arange(s, s + xf.shape[0]), per)
            if geo.linear:
                oh = ow = None
            else:
                wo = layer.output_size(xf.shape[2], xf.shape[3])[1]
                flat = np.concatenate([np.sort(rng.choice(n_pos, per, replace=False))
                                       for _ in range(xf.shape[0])])
                oh, ow = flat // wo, flat % wo
            sf = geo.patches(xf, bi - s, oh, ow)
            t = sf @ wf.transpose(0, 2, 1)  # T - b, the float layer's response at the samples
            del sf
            sw = geo.patches(xw, bi - s, oh, ow)
            h = is_ho[bi]
            tt = np.square(t.astype(np.float64) + bias_g).sum(axis=(0, 2))
            tt_fit += float(tt[~h].sum())
            tt_ho += float(tt[h].sum())
            if np.any(~h):
                fit.add(sw[:, ~h], t[:, ~h])
            if np.any(h):
                ho.add(sw[:, h], t[:, h])
            del sw, t
        r.samples, r.space, r.heldout = fit.n, fit.space, (ho.n if ho is not None else 0)

        iters = st.iterations if (error_correction and st.error_correction) else 0
        lam = 0.0
        if iters:
            real_dim = geo.cg * geo.p
            r.ridge = auto_ridge(real_dim, fit.n) if st.ridge is None and ridge is None else \
                float(st.ridge if st.ridge is not None else ridge)
            lam = r.ridge * fit.trace() / (geo.groups * real_dim)
        cb, codes, errs, r.sweeps, r.sweeps_run = _error_correct(geo, fit, ho, cb, codes, iters,
                                                                 prog, lam, wf)
        e_fit0, e_fit, e_ho0, e_ho = errs
        if r.sweeps_run and fit.n < geo.cg * geo.p:
            warnings.warn(
                f"layer {name!r}: error correction on {fit.n} fit samples for {geo.cg * geo.p} "
                f"inputs can fit noise; the ridge ({r.ridge:.3g}) and the held-out check limit "
                f"it, but more calibration images would help (FC layers: thousands)",
                FewSamplesWarning, stacklevel=2)
        if st.codebook_dtype == "float16":
            cb = cb.astype(np.float16).astype(np.float64)
            w16 = geo.w_rows(cb, codes)
            fit.start(w16)
            e_fit = fit.error(w16)
            e_ho = ho.error(w16) if ho is not None else e_ho
        r.error_kmeans = _relative(e_fit0, tt_fit)
        r.error_final = _relative(e_fit, tt_fit)
        r.error_heldout_kmeans = _relative(e_ho0, tt_ho) if ho is not None else float("nan")
        r.error_heldout = _relative(e_ho, tt_ho) if ho is not None else float("nan")
        del fit, ho

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


def _relative(err: float, tt: float) -> float:
    return math.sqrt(max(err, 0.0) / tt) if tt > 0 else 0.0


def _qlayer(geo, layer, cb, codes):
    codes8 = codes.reshape(-1, *geo.kernel, geo.m).astype(np.uint8)
    if geo.linear:
        return QLinear(cb, codes8.reshape(-1, geo.m), layer.bias, geo.cg, name=geo.name)
    return QConv2d(cb, codes8, layer.bias, geo.cg * geo.groups, stride=geo.stride,
                   padding=geo.padding, groups=geo.groups, name=geo.name)
