"""Quantized layers: Q-CNN convolution and linear layers on the look-up-table kernels.

The input channels of one group, ``C_g = in / groups``, are split into ``M = ceil(C_g / subdim)``
subspaces (the last zero-padded). Subspace m has one codebook of K codewords, shared by all outputs,
kernel positions and groups; ``codes[o, i, j, m]`` picks the codeword standing for the weights
``W[o, m*subdim:(m+1)*subdim, i, j]``. Inference builds a table of inner products between input
subvectors and codewords, then sums the entries the codes select (see :mod:`qcnn.kernels`).
"""

from __future__ import annotations

import math
import time
from typing import NamedTuple

import numpy as np

from . import kernels
from .layers import Conv2d, Linear, check_tensor, pair

__all__ = ["QConv2d", "QLinear", "OpCounts", "op_counts", "TABLE_BUDGET_BYTES", "choose_dense",
           "release_settings"]

#: Largest conv look-up table built at once; bigger ones are built for bands of output rows.
#: Strided quantized convs build their table in bands of at most this many bytes (stride 1 runs
#: ``kernels.conv_fused``, whose bands are much smaller). 16 MiB keeps a band's table in the
#: last-level cache: VGG-16 conv1_2 53 -> 41 ms, conv2_2
#: 28 -> 26 ms against 64 MiB; smaller bands cost small maps more in overlapping rows (CNN-S conv4,
#: 13 MiB of table at 18x18: 6.5 ms whole, 7.7 ms in 8 MiB bands; AlexNet conv2-5: +25% at 4 MiB).
TABLE_BUDGET_BYTES = 16 << 20
#: QLinear sums pairs of subspaces with one look-up (a K*K table per pair) when K is at most this
#: and the layer has at least 2*K*K outputs (so building the pair tables costs little).
PAIR_MAX_K = 32
#: A QConv2d keeps its table and padded-input buffers for the next call when they are at most this
#: big together (larger ones are allocated per call, so big layers do not pin memory).
KEEP_BUFFER_BYTES = 16 << 20


class OpCounts(NamedTuple):
    """Arithmetic and storage of one layer, float versus quantized (REFERENCE.md's formulas)."""

    float_macs: int  #: multiply-adds of the float layer
    table_macs: int  #: multiply-adds building the look-up table (real input channels, unpadded)
    accumulate_adds: int  #: additions of the accumulate step
    float_bytes: int  #: float32 weights + bias
    #: codebooks (in their stored dtype) + codes packed at ceil(log2 K) bits + bias
    quantized_bytes: int

    @property
    def speedup(self) -> float:
        """Theoretical speed-up: float multiply-adds over table multiply-adds plus additions."""
        return self.float_macs / (self.table_macs + self.accumulate_adds)

    @property
    def compression(self) -> float:
        """Storage ratio, float over quantized."""
        return self.float_bytes / self.quantized_bytes


def op_counts(in_channels: int, out_channels: int, kernel, in_size, out_size, groups: int,
              subdim: int, n_code: int, codebook_itemsize: int = 4, bias: bool = True) -> OpCounts:
    """Op counts and storage of a conv layer (a linear layer is a 1x1 conv on a 1x1 input).

    With input ``d_s x d_s``, output ``d_t x d_t``, kernel ``d_k x d_k``, C_s inputs, C_t outputs:
    float ``d_t^2 C_t d_k^2 C_s/groups`` multiply-adds; table ``d_s^2 C_s K`` multiply-adds;
    accumulate ``d_t^2 C_t d_k^2 M`` additions. These reproduce the official "4.15x" for AlexNet.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel, in_size, out_size : int or (int, int)
        Kernel size, input (unpadded) and output spatial sizes.
    groups, subdim, n_code : int
        Groups, subspace dimension C_s' and codewords per codebook K.
    codebook_itemsize : int
        Bytes per stored codebook entry (4 for float32, 2 for float16).
    bias : bool

    Returns
    -------
    OpCounts

    Examples
    --------
    >>> c = op_counts(4096, 1000, 1, 1, 1, 1, subdim=1, n_code=16)
    >>> c.float_macs, c.table_macs, c.accumulate_adds, round(c.compression, 2)
    (4096000, 65536, 4096000, 7.08)
    """
    (kh, kw), (h, w), (ho, wo) = pair(kernel), pair(in_size), pair(out_size)
    cg = in_channels // groups
    n_sub = -(-cg // subdim)
    bits = max(1, math.ceil(math.log2(n_code)))
    n_codes = out_channels * kh * kw * n_sub
    bias_bytes = 4 * out_channels if bias else 0
    return OpCounts(
        float_macs=ho * wo * out_channels * kh * kw * cg,
        table_macs=h * w * in_channels * n_code,
        accumulate_adds=ho * wo * n_codes,
        float_bytes=4 * out_channels * cg * kh * kw + bias_bytes,
        quantized_bytes=(n_sub * n_code * subdim * codebook_itemsize + -(-n_codes * bits // 8)
                         + bias_bytes),
    )


def _codebooks(codebooks, name: str) -> tuple[np.ndarray, str]:
    cb = np.asarray(codebooks)
    if cb.ndim != 3:
        raise ValueError(f"{name}: codebooks must be (M, K, subdim), got shape {cb.shape}")
    if cb.dtype not in (np.float32, np.float16):
        raise ValueError(f"{name}: codebooks must be float32 or float16, got {cb.dtype}")
    n_code = cb.shape[1]
    if not 2 <= n_code <= 256:
        raise ValueError(f"{name}: K = {n_code} codewords per codebook; K must be in 2..256 "
                         "(codes are uint8)")
    if not np.isfinite(cb).all():
        raise ValueError(f"{name}: codebooks hold NaN or infinite values")
    return np.ascontiguousarray(cb, dtype=np.float32), cb.dtype.name


def _codes(codes, shape: tuple, n_code: int, name: str, layout: str) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.shape != shape:
        raise ValueError(f"{name}: codes must be {layout} = {shape}, got shape {codes.shape}")
    if codes.dtype.kind not in "ui":
        raise ValueError(f"{name}: codes must be integers (uint8), got {codes.dtype}")
    if codes.size and (int(codes.min()) < 0 or int(codes.max()) >= n_code):
        raise ValueError(f"{name}: codes range over {int(codes.min())}..{int(codes.max())}, but "
                         f"each codebook has K = {n_code} codewords (codes must be in "
                         f"0..{n_code - 1})")
    return np.ascontiguousarray(codes, dtype=np.uint8)


def _bias(bias, n_out: int, name: str):
    if bias is None:
        return None
    b = np.asarray(bias, dtype=np.float32)
    if b.shape != (n_out,):
        raise ValueError(f"{name}: bias must have shape ({n_out},), got {b.shape}")
    return np.ascontiguousarray(b)


def _input(x, ndim: int, channels: int, name: str, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-d input, got shape {x.shape}")
    if x.shape[1] != channels:
        raise ValueError(f"{name}: expected {channels} input {what}, got {x.shape[1]}")
    return np.ascontiguousarray(x, dtype=np.float32)


def _decode(codebooks: np.ndarray, codes: np.ndarray, n_in: int) -> np.ndarray:
    """The float weight (out, n_in) of linear codes (out, M): ``codebooks[m, codes[o, m]]``.

    ``np.take`` on blocks of outputs: 2-4x faster than fancy indexing, small index temporaries.
    """
    n_sub, n_code, d = codebooks.shape
    n_out = codes.shape[0]
    w = np.empty((n_out, n_sub, d), np.float32)
    words = codebooks.reshape(n_sub * n_code, d)
    first = np.arange(n_sub, dtype=np.intp) * n_code  # row of codeword 0 of each subspace
    for o0 in range(0, n_out, _CODE_BLOCK // 8):
        block = slice(o0, o0 + _CODE_BLOCK // 8)
        np.take(words, codes[block] + first, axis=0, out=w[block])
    w = w.reshape(n_out, n_sub * d)
    return w if n_sub * d == n_in else np.ascontiguousarray(w[:, :n_in])


#: Outputs converted per step to the kernel's code layout: no full-size temporaries.
_CODE_BLOCK = 512
#: Pair-code rows unpaired per step: the transposes stay in cache (3x faster than one transpose).
_UNPAIR_ROWS = 16


def _kernel_codes(codes: np.ndarray, n_code: int, pairs: bool) -> np.ndarray:
    """Linear codes (out, M) uint8 in the accumulate kernel's layout: transposed (M, out) uint8,
    or the pair codes (ceil(M/2), out) uint16 of :func:`qcnn.kernels.pair_codes`."""
    if not pairs:
        return np.ascontiguousarray(codes.T)
    n_out, n_sub = codes.shape
    out = np.empty((-(-n_sub // 2), n_out), np.uint16)
    for o0 in range(0, n_out, _CODE_BLOCK):
        block = np.ascontiguousarray(codes[o0 : o0 + _CODE_BLOCK].T)
        out[:, o0 : o0 + _CODE_BLOCK] = kernels.pair_codes(block, n_code)
    return out


def _unpair_codes(pair_codes: np.ndarray, n_code: int, n_sub: int) -> np.ndarray:
    """Invert :func:`qcnn.kernels.pair_codes`: (ceil(M/2), out) uint16 -> codes (out, M) uint8."""
    n_pair, n_out = pair_codes.shape
    codes = np.empty((n_out, 2 * n_pair), np.uint8)
    words = codes.view("<u2")  # (out, n_pair): low byte the first code of a pair, high the second
    k = np.uint16(n_code)
    for q0 in range(0, n_pair, _UNPAIR_ROWS):
        pc = pair_codes[q0 : q0 + _UNPAIR_ROWS]
        w = pc % k
        w <<= np.uint16(8)
        w |= pc // k
        words[:, q0 : q0 + _UNPAIR_ROWS] = w.T
    return codes if n_sub == 2 * n_pair else np.ascontiguousarray(codes[:, :n_sub])


class _Quantized:
    """What QConv2d and QLinear share: sizes read off codebooks and codes, and the stored tensors."""

    @property
    def subdim(self) -> int:
        return self.codebooks.shape[2]

    @property
    def K(self) -> int:
        return self.codebooks.shape[1]

    @property
    def M(self) -> int:
        return self.codebooks.shape[0]

    @property
    def in_channels(self) -> int:
        return self._in

    @property
    def out_channels(self) -> int:
        return self.codes.shape[0]

    def tensors(self) -> dict:
        """Codebooks in their stored dtype, codes uint8, bias."""
        t = {f"{self.name}.codebooks": self.codebooks.astype(self.codebook_dtype, copy=False),
             f"{self.name}.codes": self.codes}
        if self.bias is not None:
            t[f"{self.name}.bias"] = self.bias
        return t


class QConv2d(_Quantized):
    """Q-CNN convolution: product-quantized weights, look-up-table inference.

    Parameters
    ----------
    codebooks : ndarray, (M, K, subdim) float32 or float16
        Computed in float32; the dtype is remembered for the file (``codebook_dtype``).
    codes : ndarray, (out, kh, kw, M) uint8
    bias : ndarray, (out,), or None
    in_channels : int
        ``M`` must equal ``ceil((in_channels / groups) / subdim)``.
    stride, padding : int or (int, int)
    groups : int
    name : str

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> cb = rng.standard_normal((2, 16, 4), np.float32)
    >>> codes = rng.integers(0, 16, (8, 3, 3, 2), dtype=np.uint8)
    >>> layer = QConv2d(cb, codes, None, in_channels=6, padding=1, name="conv1")
    >>> layer(np.ones((1, 6, 5, 5), np.float32)).shape, layer.weight().shape
    ((1, 8, 5, 5), (8, 6, 3, 3))
    """

    def __init__(self, codebooks, codes, bias, in_channels: int, stride=1, padding=0, groups=1,
                 name="qconv", run="lut"):
        self.name, self.run = name, _run_mode(run, name)
        self._float = None
        self.codebooks, self.codebook_dtype = _codebooks(codebooks, name)
        self.stride, self.padding, self.groups = pair(stride), pair(padding), int(groups)
        self._in = int(in_channels)
        n_sub, n_code, d = self.codebooks.shape
        codes_shape = np.shape(codes)
        if len(codes_shape) != 4:
            raise ValueError(f"{name}: codes must be (out, kh, kw, M), got shape {codes_shape}")
        n_out = codes_shape[0]
        if self.groups < 1 or self._in % self.groups or n_out % self.groups:
            raise ValueError(f"{name}: {self._in} input and {n_out} output channels do not both "
                             f"split into {self.groups} groups")
        cg = self._in // self.groups
        if n_sub != -(-cg // d):
            raise ValueError(f"{name}: {n_sub} codebooks of subdim {d}, but {cg} input channels "
                             f"per group need M = ceil({cg} / {d}) = {-(-cg // d)}")
        if min(self.stride) < 1 or min(self.padding) < 0:
            raise ValueError(f"{name}: stride must be >= 1 and padding >= 0, got stride "
                             f"{self.stride}, padding {self.padding}")
        self.codes = _codes(codes, (n_out, *codes_shape[1:3], n_sub), n_code, name,
                            "(out, kh, kw, M)")
        self.bias = _bias(bias, n_out, name)
        self._buffers = {}  # input shape -> (phase-split input, table): reused by the next call

    @property
    def kernel(self) -> tuple[int, int]:
        return self.codes.shape[1], self.codes.shape[2]

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1

    fuses_relu = True  # see Conv2d.fuses_relu

    def __call__(self, x, relu: bool = False):
        if self.run == "float":
            if self._float is None:
                self._float = Conv2d(self.weight(), self.bias, self.stride, self.padding, self.groups,
                                     self.name)
            return self._float(x, relu)
        x = _input(x, 4, self._in, self.name, "channels")
        n, _, h, w = x.shape
        try:
            geo = kernels.conv_geometry(h, w, self.kernel, self.stride, self.padding)
        except ValueError as e:
            raise ValueError(f"{self.name}: {e}") from None
        row_bytes = 4 * self.groups * self.M * self.K * geo.positions / geo.out_h
        if self.stride != (1, 1) and row_bytes * geo.out_h > TABLE_BUDGET_BYTES:
            out = self._forward_bands(x, geo, row_bytes)
            return np.maximum(out, np.float32(0), out=out) if relu else out
        if n == 1:
            return self._forward(x, geo, relu)
        # one image at a time: its table (strided) or padded input (stride 1) is a buffer kept for
        # the next image; 8 images' tables were 2x slower, and 8 images' padded input (105 MB for
        # VGG-16 conv1_2) was allocated and page-faulted on every call
        out = np.empty((n, self.out_channels, geo.out_h, geo.out_w), np.float32)
        for i in range(n):
            out[i : i + 1] = self._forward(x[i : i + 1], geo, relu)
        return out

    def _scratch(self, x_shape, geo, table: bool = True):
        """The phase-split input and table buffers for this input shape (kept for the last one)."""
        key = (x_shape, geo.positions, table)
        if key in self._buffers:
            return self._buffers[key]
        n, c = x_shape[:2]
        bufs = (np.empty((n, c, geo.positions), np.float32),
                np.empty((n, self.groups, self.M, self.K, geo.positions) if table else 0, np.float32))
        if bufs[0].nbytes + bufs[1].nbytes <= KEEP_BUFFER_BYTES:
            self._buffers = {key: bufs}
        return bufs

    def _forward(self, x, geo, relu: bool):
        if self.stride == (1, 1):  # table tiles built and used while in cache
            scratch, _ = self._scratch(x.shape, geo, table=False)
            return kernels.conv_fused(x, self.codebooks, self.codes, self.bias, self.kernel,
                                      self.padding, self.groups, check=False, scratch=scratch,
                                      relu=relu)
        scratch, table = self._scratch(x.shape, geo)
        kernels.conv_table(x, self.codebooks, self.kernel, self.stride, self.padding, self.groups,
                           out=table, scratch=scratch)
        # codes were checked when the layer was built
        out = kernels.conv_accumulate(table, self.codes, self.bias, geo, check=False)
        return np.maximum(out, np.float32(0), out=out) if relu else out

    def _forward_bands(self, x, geo, row_bytes):
        """The same result; the table is built for a band of output rows of some images at once."""
        n = x.shape[0]
        (kh, _), (sh, _), (ph, pw) = self.kernel, self.stride, self.padding
        imgs = max(1, min(n, int(TABLE_BUDGET_BYTES // (row_bytes * geo.out_h))))
        rows = max(1, min(geo.out_h, int(TABLE_BUDGET_BYTES // (row_bytes * imgs))))
        xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (0, 0)))  # bands slice the padded rows
        out = np.empty((n, self.out_channels, geo.out_h, geo.out_w), np.float32)
        for i0 in range(0, n, imgs):
            for r0 in range(0, geo.out_h, rows):
                r1 = min(r0 + rows, geo.out_h)
                band = xp[i0 : i0 + imgs, :, r0 * sh : (r1 - 1) * sh + kh]
                band_geo = kernels.conv_geometry(band.shape[2], band.shape[3], self.kernel,
                                                 self.stride, (0, pw))
                scratch, table = self._scratch(band.shape, band_geo)
                kernels.conv_table(band, self.codebooks, self.kernel, self.stride, (0, pw),
                                   self.groups, out=table, scratch=scratch)
                out[i0 : i0 + imgs, :, r0:r1] = kernels.conv_accumulate(
                    table, self.codes, self.bias, band_geo, check=False)
        return out

    def weight(self) -> np.ndarray:
        """The float weight the codes stand for, (out, in/groups, kh, kw) float32."""
        n_out, kh, kw, n_sub = self.codes.shape
        # codebooks[m, codes[o, i, j, m], :] -> (out, kh, kw, M, subdim)
        w = self.codebooks[np.arange(n_sub), self.codes]
        w = w.reshape(n_out, kh, kw, n_sub * self.subdim)[..., : self._in // self.groups]
        return np.ascontiguousarray(w.transpose(0, 3, 1, 2))

    def op_counts(self, h: int, w: int) -> OpCounts:
        """Op counts and storage for an ``h x w`` input (see :func:`op_counts`)."""
        return op_counts(self._in, self.out_channels, self.kernel, (h, w), self.output_size(h, w),
                         self.groups, self.subdim, self.K,
                         np.dtype(self.codebook_dtype).itemsize, self.bias is not None)

    def spec(self) -> dict:
        return {"type": "qconv", "name": self.name, "in": self._in, "out": self.out_channels,
                "kernel": list(self.kernel), "stride": list(self.stride),
                "pad": list(self.padding), "groups": self.groups, "bias": self.bias is not None,
                "subdim": self.subdim, "K": self.K, "codebook_dtype": self.codebook_dtype,
                "run": self.run}

    @classmethod
    def from_spec(cls, s: dict, tensors: dict) -> QConv2d:
        name, g, d, n_code = s["name"], int(s.get("groups", 1)), int(s["subdim"]), int(s["K"])
        kh, kw = pair(s["kernel"])
        if s["in"] % g:
            raise ValueError(f"{name}: {s['in']} input channels do not split into {g} groups")
        n_sub = -(-(s["in"] // g) // d)
        cb = check_tensor(tensors, f"{name}.codebooks", (n_sub, n_code, d), dtype=None)
        codes = check_tensor(tensors, f"{name}.codes", (s["out"], kh, kw, n_sub), dtype=None)
        b = check_tensor(tensors, f"{name}.bias", (s["out"],)) if s.get("bias", True) else None
        cb = _stored_codebooks(cb, s, name)
        return cls(cb, codes, b, s["in"], s.get("stride", 1), s.get("pad", 0), g, name,
                   s.get("run", "lut"))


RUN_MODES = ("lut", "float")


def _run_mode(run: str, name: str) -> str:
    """How a quantized layer computes: "lut" (look-up tables) or "float" (its weights decoded once,
    then im2col + BLAS: for layers where the table costs more than it saves; the file stays small)."""
    if run not in RUN_MODES:
        raise ValueError(f"{name}: run must be one of {RUN_MODES}, got {run!r}")
    return run


def _stored_codebooks(cb: np.ndarray, s: dict, name: str) -> np.ndarray:
    dtype = s.get("codebook_dtype", cb.dtype.name)
    if dtype not in ("float32", "float16"):
        raise ValueError(f"{name}: codebook_dtype must be 'float32' or 'float16', got {dtype!r}")
    if cb.dtype.kind != "f":
        raise ValueError(f"tensor {name + '.codebooks'!r} must be floating point, got {cb.dtype}")
    return cb.astype(dtype, copy=False)


class QLinear(_Quantized):
    """Q-CNN fully connected layer: ``y[n, o] = b[o] + sum_m <x subvector m, codes[o, m]'s word>``.

    The layer keeps its codes in the one form its run mode reads: ``"lut"`` layers the kernel's
    layout (transposed, or the pair codes of :func:`qcnn.kernels.pair_codes`), ``"float"`` layers
    the decoded float weight plus the uint8 codes (for :meth:`tensors`). ``layer.codes`` rebuilds
    the (out, M) codes from the kernel layout when asked. Setting ``layer.run`` converts.

    Parameters
    ----------
    codebooks : ndarray, (M, K, subdim) float32 or float16
    codes : ndarray, (out, M) uint8
    bias : ndarray, (out,), or None
    in_features : int
        ``M`` must equal ``ceil(in_features / subdim)``.
    name : str
    run : {"lut", "float"}
        Look-up tables, or the decoded weight with BLAS (decoded here, once).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> layer = QLinear(rng.standard_normal((3, 32, 4), np.float32),
    ...                 rng.integers(0, 32, (10, 3), dtype=np.uint8), None, 12, name="fc8")
    >>> x = rng.standard_normal((2, 12), np.float32)
    >>> bool(np.allclose(layer(x), x @ layer.weight().T, atol=1e-5))
    True
    """

    def __init__(self, codebooks, codes, bias, in_features: int, name="qfc", run="lut"):
        self.name = name
        self.codebooks, self.codebook_dtype = _codebooks(codebooks, name)
        self._in = int(in_features)
        n_sub, n_code, d = self.codebooks.shape
        if n_sub != -(-self._in // d):
            raise ValueError(f"{name}: {n_sub} codebooks of subdim {d}, but {self._in} input "
                             f"features need M = ceil({self._in} / {d}) = {-(-self._in // d)}")
        codes_shape = np.shape(codes)
        if len(codes_shape) != 2:
            raise ValueError(f"{name}: codes must be (out, M), got shape {codes_shape}")
        self._out = codes_shape[0]
        codes = _codes(codes, (self._out, n_sub), n_code, name, "(out, M)")
        #: whether a look-up sums a pair of subspaces (see PAIR_MAX_K)
        self.pairs = n_code <= PAIR_MAX_K and self._out >= 2 * n_code * n_code and n_sub > 1
        self.bias = _bias(bias, self._out, name)
        self._keep(codes, _run_mode(run, name))

    in_features = _Quantized.in_channels

    @property
    def out_channels(self) -> int:
        return self._out

    out_features = out_channels

    @property
    def run(self) -> str:
        """``"lut"`` or ``"float"``; assigning converts the layer (the codes are kept)."""
        return self._run

    @run.setter
    def run(self, mode: str) -> None:
        mode = _run_mode(mode, self.name)
        if mode != self._run:
            self._keep(self.codes, mode)

    def _keep(self, codes: np.ndarray, run: str) -> None:
        """Hold `codes` (out, M) uint8 in the form `run` reads, and nothing else."""
        self._run = run
        if run == "float":
            self._codes, self._codes_t = codes, None
            self._float = Linear(_decode(self.codebooks, codes, self._in), self.bias, self.name)
            return
        self._codes, self._float = None, None
        self._codes_t = _kernel_codes(codes, self.K, self.pairs)

    @property
    def codes(self) -> np.ndarray:
        """The codes, (out, M) uint8: held by "float" layers, rebuilt from the kernel's layout
        (a view, or unpaired: about 10 ms for AlexNet fc6) by "lut" layers."""
        if self._codes is not None:
            return self._codes
        if not self.pairs:
            return self._codes_t.T
        return _unpair_codes(self._codes_t, self.K, self.M)

    def __call__(self, x):
        if self._float is not None:
            return self._float(x)
        x = _input(x, 2, self._in, self.name, "features")
        if x.shape[0] > 1:  # one image at a time: its pair tables stay in cache
            return np.concatenate([self(x[i : i + 1]) for i in range(x.shape[0])])
        table = kernels.linear_table(x, self.codebooks)
        if self.pairs:
            table = kernels.linear_pair_table(table)
        # codes were checked when the layer was built
        return kernels.linear_accumulate(table, self._codes_t, self.bias, check=False)

    def weight(self) -> np.ndarray:
        """The float weight the codes stand for, (out, in) float32 (a new array)."""
        if self._float is not None:
            return self._float.weight.copy()
        return _decode(self.codebooks, self.codes, self._in)

    def op_counts(self) -> OpCounts:
        """Op counts and storage for one input vector (see :func:`op_counts`)."""
        return op_counts(self._in, self.out_channels, 1, 1, 1, 1, self.subdim, self.K,
                         np.dtype(self.codebook_dtype).itemsize, self.bias is not None)

    def spec(self) -> dict:
        return {"type": "qlinear", "name": self.name, "in": self._in, "out": self.out_channels,
                "bias": self.bias is not None, "subdim": self.subdim, "K": self.K,
                "codebook_dtype": self.codebook_dtype, "run": self.run}

    @classmethod
    def from_spec(cls, s: dict, tensors: dict) -> QLinear:
        name, d, n_code = s["name"], int(s["subdim"]), int(s["K"])
        n_sub = -(-s["in"] // d)
        cb = check_tensor(tensors, f"{name}.codebooks", (n_sub, n_code, d), dtype=None)
        codes = check_tensor(tensors, f"{name}.codes", (s["out"], n_sub), dtype=None)
        b = check_tensor(tensors, f"{name}.bias", (s["out"],)) if s.get("bias", True) else None
        return cls(_stored_codebooks(cb, s, name), codes, b, s["in"], name, s.get("run", "lut"))


# per-op costs in ns, one thread, measured on the x86-64 development machine (docs/speed.md): im2col
# + BLAS conv per multiply-add; BLAS GEMV per multiply-add with the weights cached (the fastest
# case, so a linear layer stays quantized only when it wins even then); conv table per multiply-add
# at d >= 4 (d < 4 channels per pass wastes lanes: cost x 4/d); conv accumulate per addition; one
# linear look-up (a pair of subspaces or one). Stride-1 convs run kernels.conv_fused: its table
# tiles cost 0.015 ns per multiply-add at d = 8 (the old rate otherwise), its accumulate 0.042.
_NS_FLOAT_CONV, _NS_FLOAT_GEMV = 0.025, 0.05
_NS_TABLE, _NS_ACCUMULATE, _NS_LOOKUP = 0.05, 0.06, 0.22
_NS_FUSED_TABLE_D8, _NS_FUSED_ACCUMULATE = 0.015, 0.042


def release_settings(net_spec: list[dict]) -> dict[str, tuple[int, int]]:
    """(subdim, K) per weight layer, as in the official Q-CNN AlexNet release.

    First conv: subdim 3, K 128; other convs: subdim 8, K 128; linear layers: subdim 4, K 32;
    the last linear layer: subdim 1, K 16. Subdim never exceeds the input channels per group.

    Parameters
    ----------
    net_spec : list of dict
        A net spec (``qcnn.architectures.get(...)``); concat branches are searched too.

    Returns
    -------
    dict
        Layer name -> (subdim, K).

    Examples
    --------
    >>> from qcnn import architectures
    >>> s = release_settings(architectures.get("alexnet-caffe"))
    >>> s["conv1"], s["conv2"], s["fc6"], s["fc8"]
    ((3, 128), (8, 128), (4, 32), (1, 16))
    """
    from .architectures import weight_layers

    layers = weight_layers(net_spec)
    last_linear = [s["name"] for s in layers if s["type"] == "linear"][-1:] or [None]
    out, first = {}, True
    for s in layers:
        if s["type"] == "conv":
            d = 3 if first else 8
            out[s["name"]] = (min(d, s["in"] // s.get("groups", 1)), 128)
            first = False
        else:
            out[s["name"]] = (1, 16) if s["name"] == last_linear[0] else (4, 32)
    return out


def _input_sizes(net_spec: list[dict], size) -> dict[str, tuple[int, int]]:
    """Spatial input size of every conv layer (walking convs, pools and concat branches)."""
    from .layers import pool_output_size

    sizes = {}

    def walk(specs, hw):
        for s in specs:
            if s["type"] == "conv":
                sizes[s["name"]] = hw
                (kh, kw), (sh, sw), (ph, pw) = pair(s["kernel"]), pair(s.get("stride", 1)), \
                    pair(s.get("pad", 0))
                hw = ((hw[0] + 2 * ph - kh) // sh + 1, (hw[1] + 2 * pw - kw) // sw + 1)
            elif s["type"] in ("maxpool", "avgpool"):
                (kh, kw), (sh, sw), (ph, pw) = pair(s["kernel"]), pair(s["stride"]), \
                    pair(s.get("pad", 0))
                ceil = s.get("ceil", True)
                hw = (pool_output_size(hw[0], kh, sh, ph, ceil),
                      pool_output_size(hw[1], kw, sw, pw, ceil))
            elif s["type"] == "gap":
                hw = (1, 1)
            elif s["type"] == "concat":
                outs = [walk(b, hw) for b in s["branches"]]
                hw = outs[0]
        return hw

    walk(net_spec, pair(size))
    return sizes


def _measure_ms(layer, x, repeat: int) -> float:
    layer(x)  # warm-up (and the kernels' first compile or cache load)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        layer(x)
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def _measured_pair(s: dict, hw, d: int, n_code: int, repeat: int) -> tuple[float, float]:
    """(quantized ms, float ms) of one layer at its true shape, random weights and codes."""
    rng = np.random.default_rng(0)
    bias = np.zeros(s["out"], np.float32) if s.get("bias", True) else None
    if s["type"] == "conv":
        g = int(s.get("groups", 1))
        kh, kw = pair(s["kernel"])
        n_sub = -(-(s["in"] // g) // d)
        q = QConv2d(rng.standard_normal((n_sub, n_code, d), np.float32),
                    rng.integers(0, n_code, (s["out"], kh, kw, n_sub), dtype=np.uint8), bias,
                    s["in"], s.get("stride", 1), s.get("pad", 0), g)
        f = Conv2d(rng.standard_normal((s["out"], s["in"] // g, kh, kw), np.float32), bias,
                   s.get("stride", 1), s.get("pad", 0), g)
        x = rng.standard_normal((1, s["in"], *hw), np.float32)
    else:
        n_sub = -(-s["in"] // d)
        q = QLinear(rng.standard_normal((n_sub, n_code, d), np.float32),
                    rng.integers(0, n_code, (s["out"], n_sub), dtype=np.uint8), bias, s["in"])
        f = Linear(rng.standard_normal((s["out"], s["in"]), np.float32), bias)
        x = rng.standard_normal((1, s["in"]), np.float32)
    return _measure_ms(q, x, repeat), _measure_ms(f, x, repeat)


def choose_dense(net_spec: list[dict], input_size, settings: dict | None = None,
                 measure: bool = False, repeat: int = 3) -> set[str]:
    """The weight layers that run faster as plain float layers than quantized.

    By default a cost model from op counts (:func:`op_counts`) with per-op costs measured on the
    development machine: a conv layer stays dense when ``table + accumulate`` costs more than
    im2col + BLAS (AlexNet conv1 and VGG-16 conv1_1: 3 input channels, so the table is built for
    every input position with few multiply-adds saved); a linear layer when its look-ups cost more
    than a cached GEMV (fc8 with subdim 1: one look-up per weight). The model is deterministic but
    blind to cache effects: our im2col conv is 3-7x slower per multiply-add on CNN-S conv1 and
    VGG-16 conv1_1 than on AlexNet conv1, where quantized is then faster after all (6.8 vs 15.9 ms,
    7.7 vs 15.9 ms). ``measure=True`` times both versions of every weight layer on this machine
    (random weights at the true shape, least of ``repeat`` runs, the current thread count; a few
    seconds per network) and keeps a layer dense when its float version is faster. The quantizer
    keeps the chosen layers as plain ``conv`` / ``linear`` layers in the model file.

    Parameters
    ----------
    net_spec : list of dict
        A float net spec (``conv`` / ``linear`` layers).
    input_size : int or (int, int)
        Input height and width.
    settings : dict, optional
        Layer name -> (subdim, K); default :func:`release_settings`.
    measure : bool
        Time the layers instead of using the cost model.
    repeat : int
        Timed runs per layer and version when measuring.

    Returns
    -------
    set of str
        Names of the layers to keep dense.

    Examples
    --------
    >>> from qcnn import architectures
    >>> sorted(choose_dense(architectures.get("alexnet-caffe"), 227))
    ['conv1', 'fc8']
    """
    from .architectures import weight_layers

    settings = release_settings(net_spec) if settings is None else settings
    sizes = _input_sizes(net_spec, input_size)
    dense = set()
    for s in weight_layers(net_spec):
        name = s["name"]
        if name not in settings:
            continue
        d, n_code = settings[name]
        if measure:
            q_ms, f_ms = _measured_pair(s, sizes.get(name), d, n_code, repeat)
            if q_ms >= f_ms:
                dense.add(name)
            continue
        if s["type"] == "conv":
            g = int(s.get("groups", 1))
            (h, w), (kh, kw) = sizes[name], pair(s["kernel"])
            (sh, sw), (ph, pw) = pair(s.get("stride", 1)), pair(s.get("pad", 0))
            ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
            c = op_counts(s["in"], s["out"], (kh, kw), (h, w), (ho, wo), g, d, n_code)
            fused = (sh, sw) == (1, 1)
            table = _NS_FUSED_TABLE_D8 if fused and d % 8 == 0 else _NS_TABLE * 4 / min(d, 4)
            add = _NS_FUSED_ACCUMULATE if fused else _NS_ACCUMULATE
            q_ns = table * c.table_macs + add * c.accumulate_adds
            f_ns = _NS_FLOAT_CONV * c.float_macs
        else:
            c = op_counts(s["in"], s["out"], 1, 1, 1, 1, d, n_code)
            n_sub = -(-s["in"] // d)
            pairs = n_code <= PAIR_MAX_K and s["out"] >= 2 * n_code * n_code and n_sub > 1
            q_ns = _NS_LOOKUP * s["out"] * (-(-n_sub // 2) if pairs else n_sub)
            f_ns = _NS_FLOAT_GEMV * c.float_macs
        if q_ns >= f_ns:
            dense.add(name)
    return dense
