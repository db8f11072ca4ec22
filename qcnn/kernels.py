"""Look-up-table kernels of Q-CNN inference: private ``@njit`` kernels and thin public wrappers.

A quantized layer computes, for every input position, the inner products of each input subvector
with the K codewords of its subspace (the *table*), then sums the table entries its codes select
(the *accumulate* step). Layouts (see ``docs/kernels.md`` for why):

- conv table ``(N, G, M, K, P)`` float32: for image n, group g, subspace m and codeword k, one
  row over the P positions of the zero-padded input, stored by stride phase: position (h, w) of
  the padded input lives in phase ``(h % sh) * sw + w % sw`` at ``(h // sh) * Wq + w // sw``; a
  short zero tail follows the last phase. For every kernel offset (i, j), the inputs that output
  rows read are then one contiguous run of the table row, shifted by
  ``conv_geometry(...).offsets[i * kw + j]``.
- conv codes ``(out, kh, kw, M)`` uint8, the file layout, used as is.
- linear table ``(N, M, K)`` float32; linear codes transposed to ``(M, out)`` uint8, so the inner
  loop walks the outputs contiguously.

Each public wrapper validates its inputs, allocates the output and calls exactly one kernel: the
``@njit`` one (``_name``), or its vectorised NumPy fallback (``_name_np``) when Numba is missing.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ._jit import HAVE_NUMBA, njit, prange

__all__ = ["ConvGeometry", "conv_geometry", "conv_table", "conv_accumulate", "linear_table",
           "linear_accumulate"]

_P_TILE = 512  # table positions per job: d input rows of a tile stay in L1
_O_BLOCK = 512  # linear outputs per parallel job


# --------------------------------------------------------------------------------------------------
# kernels


@njit(cache=True, parallel=True)
def _conv_table(x, codebooks, groups, table):
    """Conv look-up table.

    x (N, C, P) float32 C-contiguous: the input, zero-padded and split by stride phase.
    codebooks (M, K, d) float32. table (N, G, M, K, P) float32, written:
    ``table[n, g, m, k, p] = sum_j codebooks[m, k, j] * x[n, g*C_g + m*d + j, p]`` over the
    ``j < min(d, C_g - m*d)`` real channels (the rest of the last subspace is zero padding).
    A job is one tile of positions of one (n, g, m): its d input rows stay in L1 for all K
    codewords.
    """
    n_img, c, n_pos = x.shape
    n_sub, n_code, d = codebooks.shape
    cg = c // groups
    n_tile = (n_pos + _P_TILE - 1) // _P_TILE
    for job in prange(n_img * groups * n_sub * n_tile):
        p0 = (job % n_tile) * _P_TILE
        p1 = min(p0 + _P_TILE, n_pos)
        r = job // n_tile
        m = r % n_sub
        r //= n_sub
        g = r % groups
        n = r // groups
        c0 = g * cg + m * d
        dj = min(d, cg - m * d)
        length = p1 - p0
        for k in range(n_code):
            row = table[n, g, m, k, p0:p1]
            cw = codebooks[m, k]
            # loops run from 0 over contiguous slices (no negative-index checks, so they vectorise),
            # 2 channels per pass over the row
            if dj == 1:
                w0 = cw[0]
                x0 = x[n, c0, p0:p1]
                for p in range(length):
                    row[p] = w0 * x0[p]
                continue
            w0, w1 = cw[0], cw[1]
            x0, x1 = x[n, c0, p0:p1], x[n, c0 + 1, p0:p1]
            for p in range(length):
                row[p] = w0 * x0[p] + w1 * x1[p]
            for j in range(2, dj - 1, 2):
                w0, w1 = cw[j], cw[j + 1]
                x0, x1 = x[n, c0 + j, p0:p1], x[n, c0 + j + 1, p0:p1]
                for p in range(length):
                    row[p] += w0 * x0[p] + w1 * x1[p]
            if dj % 2:
                w0 = cw[dj - 1]
                x0 = x[n, c0 + dj - 1, p0:p1]
                for p in range(length):
                    row[p] += w0 * x0[p]


@njit(cache=True, parallel=True)
def _conv_accumulate(table, codes, offsets, bias, wq, out):
    """Conv accumulate step.

    table (N, G, M, K, P) float32 C-contiguous; codes (O, T, M) uint8 with T = kh*kw, every
    code < K; offsets (T,) int64: the shift of kernel offset t into a table row; bias (O,) float32;
    wq: the row width of a phase; out (N, O, Ho, Wo) float32, written:
    ``out[n, o, oh, ow] = bias[o] + sum_{t, m} table[n, o // (O/G), m, codes[o, t, m],
    offsets[t] + oh*wq + ow]``. Each job sums whole rows of Ho*wq entries (the wq - Wo extra columns
    per row are computed and dropped) into a buffer, then writes the Wo valid columns.
    """
    n_img, groups, n_sub, n_code, n_pos = table.shape
    n_out, n_t, _ = codes.shape
    _, _, ho, wo = out.shape
    og = n_out // groups
    length = ho * wq
    flat = table.reshape(n_img * groups * n_sub * n_code * n_pos)
    for job in prange(n_img * n_out):
        n = job // n_out
        o = job - n * n_out
        g = o // og
        base = (n * groups + g) * n_sub
        buf = np.zeros(length, np.float32)
        # table rows j = t*M + m, four per pass: one load/store of the buffer per four rows
        n_rows = n_t * n_sub
        n_four = n_rows - n_rows % 4
        for j0 in range(0, n_four, 4):
            t0, t1 = j0 // n_sub, (j0 + 1) // n_sub
            t2, t3 = (j0 + 2) // n_sub, (j0 + 3) // n_sub
            m0, m1 = j0 - t0 * n_sub, j0 + 1 - t1 * n_sub
            m2, m3 = j0 + 2 - t2 * n_sub, j0 + 3 - t3 * n_sub
            s0 = ((base + m0) * n_code + int(codes[o, t0, m0])) * n_pos + offsets[t0]
            s1 = ((base + m1) * n_code + int(codes[o, t1, m1])) * n_pos + offsets[t1]
            s2 = ((base + m2) * n_code + int(codes[o, t2, m2])) * n_pos + offsets[t2]
            s3 = ((base + m3) * n_code + int(codes[o, t3, m3])) * n_pos + offsets[t3]
            r0, r1 = flat[s0 : s0 + length], flat[s1 : s1 + length]
            r2, r3 = flat[s2 : s2 + length], flat[s3 : s3 + length]
            for i in range(length):
                buf[i] += (r0[i] + r1[i]) + (r2[i] + r3[i])
        for j in range(n_four, n_rows):
            t = j // n_sub
            m = j - t * n_sub
            s0 = ((base + m) * n_code + int(codes[o, t, m])) * n_pos + offsets[t]
            r0 = flat[s0 : s0 + length]
            for i in range(length):
                buf[i] += r0[i]
        b = bias[o]
        for oh in range(ho):
            for ow in range(wo):
                out[n, o, oh, ow] = buf[oh * wq + ow] + b


@njit(cache=True, parallel=True)
def _linear_table(x, codebooks, table):
    """Linear look-up table.

    x (N, C) float32; codebooks (M, K, d) float32; table (N, M, K) float32, written:
    ``table[n, m, k] = sum_{j < min(d, C - m*d)} x[n, m*d + j] * codebooks[m, k, j]``.
    """
    n_img, c = x.shape
    n_sub, n_code, d = codebooks.shape
    for job in prange(n_img * n_sub):
        n = job // n_sub
        m = job - n * n_sub
        dj = min(d, c - m * d)
        for k in range(n_code):
            s = np.float32(0.0)
            for j in range(dj):
                s += x[n, m * d + j] * codebooks[m, k, j]
            table[n, m, k] = s


@njit(cache=True, parallel=True)
def _linear_accumulate(table, codes_t, bias, out):
    """Linear accumulate step.

    table (N, M, K) float32; codes_t (M, O) uint8, every code < K; bias (O,) float32;
    out (N, O) float32, written: ``out[n, o] = bias[o] + sum_m table[n, m, codes_t[m, o]]``.
    Jobs are blocks of outputs, so a job's accumulators stay in L1 while it walks the subspaces.
    """
    n_img, n_sub, _ = table.shape
    n_out = codes_t.shape[1]
    n_blk = (n_out + _O_BLOCK - 1) // _O_BLOCK
    for job in prange(n_img * n_blk):
        n = job // n_blk
        o0 = (job - n * n_blk) * _O_BLOCK
        o1 = min(o0 + _O_BLOCK, n_out)
        acc = bias[o0:o1].copy()
        for m in range(n_sub):
            trow = table[n, m]
            crow = codes_t[m, o0:o1]
            for i in range(o1 - o0):
                acc[i] += trow[crow[i]]
        out[n, o0:o1] = acc


# --------------------------------------------------------------------------------------------------
# NumPy fallbacks (same arguments and results as the kernels above)


def _conv_table_np(x, codebooks, groups, table):
    n_img, c, n_pos = x.shape
    n_sub, _, d = codebooks.shape
    cg = c // groups
    xs = np.zeros((n_img, groups, n_sub * d, n_pos), np.float32)
    xs[:, :, :cg] = x.reshape(n_img, groups, cg, n_pos)
    # (M, K, d) @ (N, G, M, d, P) -> (N, G, M, K, P)
    np.matmul(codebooks, xs.reshape(n_img, groups, n_sub, d, n_pos), out=table)


def _conv_accumulate_np(table, codes, offsets, bias, wq, out):
    n_img, groups, n_sub, _, _ = table.shape
    n_out, n_t, _ = codes.shape
    _, _, ho, wo = out.shape
    length = ho * wq
    g_of_o = np.arange(n_out) // (n_out // groups)
    buf = np.zeros((n_img, n_out, length), np.float32)
    for t in range(n_t):
        off = int(offsets[t])
        rows = table[..., off : off + length]
        for m in range(n_sub):
            buf += rows[:, g_of_o, m, codes[:, t, m]]
    out[...] = buf.reshape(n_img, n_out, ho, wq)[..., :wo] + bias[:, None, None]


def _linear_table_np(x, codebooks, table):
    n_img, c = x.shape
    n_sub, _, d = codebooks.shape
    xs = np.zeros((n_img, n_sub * d), np.float32)
    xs[:, :c] = x
    np.einsum("nmd,mkd->nmk", xs.reshape(n_img, n_sub, d), codebooks, out=table)


def _linear_accumulate_np(table, codes_t, bias, out):
    n_sub = table.shape[1]
    out[...] = bias
    for m0 in range(0, n_sub, 256):  # bounds the (N, 256, O) gather
        m1 = min(m0 + 256, n_sub)
        out += table[:, np.arange(m0, m1)[:, None], codes_t[m0:m1]].sum(axis=1)


# --------------------------------------------------------------------------------------------------
# public wrappers


class ConvGeometry(NamedTuple):
    """Where a convolution reads its look-up table (see :func:`conv_geometry`)."""

    out_h: int  #: output height
    out_w: int  #: output width
    phase_h: int  #: rows of one stride phase (Hq)
    phase_w: int  #: columns of one stride phase (Wq): the row pitch of the accumulate step
    positions: int  #: length P of a table row: sh*sw phases of Hq*Wq, then a zero tail
    offsets: np.ndarray  #: (kh*kw,) int64: where kernel offset (i, j) starts in a table row
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]


def _pair(v, what: str) -> tuple[int, int]:
    a, b = (v, v) if np.ndim(v) == 0 else v
    if int(a) != a or int(b) != b:
        raise ValueError(f"{what} must be integers, got {v!r}")
    return int(a), int(b)


def conv_geometry(h: int, w: int, kernel, stride=1, padding=0) -> ConvGeometry:
    """The table geometry of a convolution over an ``h x w`` input.

    Only the padded rows and columns that some output reads are kept:
    ``(out_h - 1) * sh + kh`` rows. Stride phases make every strided read contiguous.

    Parameters
    ----------
    h, w : int
        Input height and width (before padding).
    kernel, stride, padding : int or (int, int)
        As in :class:`qcnn.layers.Conv2d`.

    Returns
    -------
    ConvGeometry

    Examples
    --------
    >>> g = conv_geometry(227, 227, 11, 4)
    >>> g.out_h, g.phase_w, g.positions, int(g.offsets[-1])
    (55, 57, 51986, 32606)
    """
    (kh, kw), (sh, sw), (ph, pw) = (_pair(kernel, "kernel"), _pair(stride, "stride"),
                                    _pair(padding, "padding"))
    if min(kh, kw, sh, sw) < 1 or min(ph, pw) < 0:
        raise ValueError(f"kernel and stride must be >= 1 and padding >= 0, got kernel {(kh, kw)}, "
                         f"stride {(sh, sw)}, padding {(ph, pw)}")
    out_h, out_w = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    if h < 1 or w < 1 or out_h < 1 or out_w < 1:
        raise ValueError(f"a {h}x{w} input padded by {(ph, pw)} is smaller than the {kh}x{kw} "
                         "kernel")
    hq = out_h - 1 + -(-kh // sh)  # = ceil(((out_h - 1) * sh + kh) / sh)
    wq = out_w - 1 + -(-kw // sw)
    i, j = np.divmod(np.arange(kh), sh), np.divmod(np.arange(kw), sw)
    phase = i[1][:, None] * sw + j[1][None, :]
    offsets = (phase * hq * wq + i[0][:, None] * wq + j[0][None, :]).astype(np.int64).ravel()
    return ConvGeometry(out_h, out_w, hq, wq, sh * sw * hq * wq + (kw - 1) // sw, offsets,
                        (kh, kw), (sh, sw), (ph, pw))


def _phase_split(x: np.ndarray, geo: ConvGeometry) -> np.ndarray:
    """(N, C, H, W) -> (N, C, P): zero-pad, keep the rows and columns read, split by phase."""
    n, c, h, w = x.shape
    (sh, sw), (ph, pw), hq, wq = geo.stride, geo.padding, geo.phase_h, geo.phase_w
    xr = np.zeros((n, c, geo.positions), np.float32)
    grid = xr[:, :, : sh * sw * hq * wq].reshape(n, c, sh, sw, hq, wq)
    for a in range(sh):
        # padded row a + sh*i is input row a + sh*i - ph, which must lie in [0, h)
        i0, i1 = max(0, -(-(ph - a) // sh)), min(hq, -(-(ph + h - a) // sh))
        for b in range(sw):
            j0, j1 = max(0, -(-(pw - b) // sw)), min(wq, -(-(pw + w - b) // sw))
            if i1 > i0 and j1 > j0:
                r0, c0 = a + sh * i0 - ph, b + sw * j0 - pw
                grid[:, :, a, b, i0:i1, j0:j1] = x[:, :, r0 : r0 + (i1 - i0 - 1) * sh + 1 : sh,
                                                   c0 : c0 + (j1 - j0 - 1) * sw + 1 : sw]
    return xr


def _check_array(a, name: str, ndim: int, dtype) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-d array, got shape {a.shape}")
    if a.dtype != dtype:
        raise ValueError(f"{name} must be {np.dtype(dtype).name}, got {a.dtype} (convert it with "
                         f".astype(np.{np.dtype(dtype).name}))")
    return np.ascontiguousarray(a)


def _check_codes(codes: np.ndarray, n_code: int, name: str) -> None:
    if codes.size and int(codes.max()) >= n_code:
        raise ValueError(f"{name} holds code {int(codes.max())}, but the codebooks have only "
                         f"{n_code} codewords (codes must be < {n_code})")


def _check_bias(bias, n_out: int) -> np.ndarray:
    if bias is None:
        return np.zeros(n_out, np.float32)
    bias = _check_array(bias, "bias", 1, np.float32)
    if bias.shape[0] != n_out:
        raise ValueError(f"bias has {bias.shape[0]} entries, expected one per output ({n_out})")
    return bias


def conv_table(x, codebooks, kernel, stride=1, padding=0, groups: int = 1) -> np.ndarray:
    """The look-up table of a quantized convolution.

    Parameters
    ----------
    x : ndarray, (N, C, H, W) float32
        The input (unpadded: padding is applied here).
    codebooks : ndarray, (M, K, d) float32
        One codebook of K codewords per subspace, shared by all groups; ``M = ceil(C_g / d)`` with
        ``C_g = C / groups`` (the last subspace is zero-padded).
    kernel, stride, padding : int or (int, int)
    groups : int

    Returns
    -------
    ndarray, (N, groups, M, K, P) float32
        ``P = conv_geometry(H, W, kernel, stride, padding).positions``; see the module docstring.

    Examples
    --------
    >>> x = np.ones((1, 3, 5, 5), np.float32)
    >>> cb = np.ones((1, 4, 3), np.float32)
    >>> t = conv_table(x, cb, 3, padding=1)
    >>> t.shape, float(t.max()), float(t.min())
    ((1, 1, 1, 4, 51), 3.0, 0.0)
    """
    x = _check_array(x, "x", 4, np.float32)
    codebooks = _check_array(codebooks, "codebooks", 3, np.float32)
    n, c, h, w = x.shape
    n_sub, n_code, d = codebooks.shape
    groups = int(groups)
    if groups < 1 or c % groups:
        raise ValueError(f"{c} input channels do not split into {groups} groups")
    if n_sub != -(-(c // groups) // d):
        raise ValueError(f"codebooks have {n_sub} subspaces of {d} channels, but {c // groups} "
                         f"channels per group need ceil({c // groups} / {d}) = "
                         f"{-(-(c // groups) // d)}")
    geo = conv_geometry(h, w, kernel, stride, padding)
    xr = _phase_split(x, geo)
    table = np.empty((n, groups, n_sub, n_code, geo.positions), np.float32)
    (_conv_table if HAVE_NUMBA else _conv_table_np)(xr, codebooks, groups, table)
    return table


def conv_accumulate(table, codes, bias, geometry: ConvGeometry) -> np.ndarray:
    """The output of a quantized convolution: bias plus the table entries its codes select.

    Parameters
    ----------
    table : ndarray, (N, G, M, K, P) float32
        From :func:`conv_table`.
    codes : ndarray, (out, kh, kw, M) uint8
        ``codes[o, i, j, m]``: the codeword of subspace m for output o at kernel offset (i, j);
        output o belongs to group ``o // (out / G)``.
    bias : ndarray, (out,) float32, or None
    geometry : ConvGeometry
        ``conv_geometry(H, W, kernel, stride, padding)`` of the input the table was built from.

    Returns
    -------
    ndarray, (N, out, out_h, out_w) float32

    Examples
    --------
    >>> x = np.ones((1, 3, 5, 5), np.float32)
    >>> cb = np.ones((1, 4, 3), np.float32)
    >>> geo = conv_geometry(5, 5, 3, 1, 1)
    >>> y = conv_accumulate(conv_table(x, cb, 3, 1, 1), np.zeros((2, 3, 3, 1), np.uint8), None, geo)
    >>> y.shape, float(y[0, 0, 2, 2]), float(y[0, 0, 0, 0])
    ((1, 2, 5, 5), 27.0, 12.0)
    """
    table = _check_array(table, "table", 5, np.float32)
    codes = _check_array(codes, "codes", 4, np.uint8)
    n, groups, n_sub, n_code, n_pos = table.shape
    n_out, kh, kw, m_codes = codes.shape
    geo = geometry
    if n_pos != geo.positions:
        raise ValueError(f"table rows have {n_pos} positions, but the geometry needs "
                         f"{geo.positions}: build the table and the geometry from the same input")
    if (kh, kw) != tuple(geo.kernel) or m_codes != n_sub:
        raise ValueError(f"codes of shape {codes.shape} do not match a {geo.kernel} kernel over "
                         f"{n_sub} subspaces (expected (out, {geo.kernel[0]}, {geo.kernel[1]}, "
                         f"{n_sub}))")
    if n_out % groups:
        raise ValueError(f"{n_out} outputs do not split into the table's {groups} groups")
    _check_codes(codes, n_code, "codes")
    bias = _check_bias(bias, n_out)
    out = np.empty((n, n_out, geo.out_h, geo.out_w), np.float32)
    (_conv_accumulate if HAVE_NUMBA else _conv_accumulate_np)(
        table, codes.reshape(n_out, kh * kw, n_sub), geo.offsets, bias, geo.phase_w, out)
    return out


def linear_table(x, codebooks) -> np.ndarray:
    """The look-up table of a quantized linear layer.

    Parameters
    ----------
    x : ndarray, (N, C) float32
    codebooks : ndarray, (M, K, d) float32
        ``M = ceil(C / d)``; the last subspace is zero-padded.

    Returns
    -------
    ndarray, (N, M, K) float32
        ``table[n, m, k] = <x[n, m*d:(m+1)*d], codebooks[m, k]>``.

    Examples
    --------
    >>> linear_table(np.arange(5, dtype=np.float32)[None], np.ones((3, 2, 2), np.float32))[0, :, 0]
    array([1., 5., 4.], dtype=float32)
    """
    x = _check_array(x, "x", 2, np.float32)
    codebooks = _check_array(codebooks, "codebooks", 3, np.float32)
    n, c = x.shape
    n_sub, n_code, d = codebooks.shape
    if n_sub != -(-c // d):
        raise ValueError(f"codebooks have {n_sub} subspaces of {d} features, but {c} input "
                         f"features need ceil({c} / {d}) = {-(-c // d)}")
    table = np.empty((n, n_sub, n_code), np.float32)
    (_linear_table if HAVE_NUMBA else _linear_table_np)(x, codebooks, table)
    return table


def linear_accumulate(table, codes_t, bias) -> np.ndarray:
    """The output of a quantized linear layer: ``bias[o] + sum_m table[n, m, codes_t[m, o]]``.

    Parameters
    ----------
    table : ndarray, (N, M, K) float32
        From :func:`linear_table`.
    codes_t : ndarray, (M, out) uint8
        The codes transposed (the file layout is (out, M)).
    bias : ndarray, (out,) float32, or None

    Returns
    -------
    ndarray, (N, out) float32

    Examples
    --------
    >>> t = linear_table(np.ones((1, 4), np.float32), np.ones((2, 3, 2), np.float32))
    >>> linear_accumulate(t, np.zeros((2, 5), np.uint8), np.arange(5, dtype=np.float32))
    array([[4., 5., 6., 7., 8.]], dtype=float32)
    """
    table = _check_array(table, "table", 3, np.float32)
    codes_t = _check_array(codes_t, "codes_t", 2, np.uint8)
    n, n_sub, n_code = table.shape
    if codes_t.shape[0] != n_sub:
        raise ValueError(f"codes_t has {codes_t.shape[0]} rows, expected one per subspace "
                         f"({n_sub}); codes_t is (M, out), the transpose of the file's codes")
    _check_codes(codes_t, n_code, "codes_t")
    bias = _check_bias(bias, codes_t.shape[1])
    out = np.empty((n, codes_t.shape[1]), np.float32)
    (_linear_accumulate if HAVE_NUMBA else _linear_accumulate_np)(table, codes_t, bias, out)
    return out
