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

from ._jit import have_numba, loaded_numba, njit, prange

__all__ = ["ConvGeometry", "conv_geometry", "conv_table", "AccumulatePlan", "accumulate_plan",
           "conv_accumulate", "fused_plan", "conv_fused", "linear_table", "linear_pair_table", "pair_codes",
           "linear_accumulate", "lrn", "maxpool", "CACHE_BYTES"]

#: Per-core cache the conv accumulate step tiles for (L2 of one big core; 1 MiB on the x86-64
#: development machine, 256-512 KiB on phone cores: smaller tiles cost little on bigger caches).
CACHE_BYTES = 512 << 10
_P_TILE = 512  # table positions per job: d input rows of a tile stay in L1
_FUSED_POSITIONS = 2048  # table positions per band of conv_fused (fused_plan)
_O_BLOCK = 4096  # at most this many linear outputs per job: 16 KiB of accumulators in L1


# --------------------------------------------------------------------------------------------------
# kernels


@njit(cache=True, parallel=True)
def _conv_table(x, codebooks, groups, table):
    """Conv look-up table.

    x (N, C, P) float32 C-contiguous: the input, zero-padded and split by stride phase.
    codebooks (M, K, d) float32. table (N, G, M, K, P) float32, written:
    ``table[n, g, m, k, p] = sum_j codebooks[m, k, j] * x[n, g*C_g + m*d + j, p]`` over the
    ``j < min(d, C_g - m*d)`` real channels (the rest of the last subspace is zero padding).
    A job is one tile of positions of one (n, g, m): its d input rows stay in L1 while four
    codewords at a time take four input channels per pass (16 multiply-adds per 4 loads of x).
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
        # loops run from 0 over contiguous slices: no negative-index checks, so they vectorise
        for k0 in range(0, n_code, 4):
            nk = min(4, n_code - k0)
            if nk < 4:  # the last 1-3 codewords: one codeword, one channel per pass
                for k in range(k0, n_code):
                    row = table[n, g, m, k, p0:p1]
                    for j in range(dj):
                        w0 = codebooks[m, k, j]
                        x0 = x[n, c0 + j, p0:p1]
                        if j == 0:
                            for p in range(length):
                                row[p] = w0 * x0[p]
                        else:
                            for p in range(length):
                                row[p] += w0 * x0[p]
                continue
            r0, r1 = table[n, g, m, k0, p0:p1], table[n, g, m, k0 + 1, p0:p1]
            r2, r3 = table[n, g, m, k0 + 2, p0:p1], table[n, g, m, k0 + 3, p0:p1]
            a, b = codebooks[m, k0], codebooks[m, k0 + 1]
            e, f = codebooks[m, k0 + 2], codebooks[m, k0 + 3]
            j = 0
            while j + 4 <= dj:
                x0, x1 = x[n, c0 + j, p0:p1], x[n, c0 + j + 1, p0:p1]
                x2, x3 = x[n, c0 + j + 2, p0:p1], x[n, c0 + j + 3, p0:p1]
                a0, a1, a2, a3 = a[j], a[j + 1], a[j + 2], a[j + 3]
                b0, b1, b2, b3 = b[j], b[j + 1], b[j + 2], b[j + 3]
                e0, e1, e2, e3 = e[j], e[j + 1], e[j + 2], e[j + 3]
                f0, f1, f2, f3 = f[j], f[j + 1], f[j + 2], f[j + 3]
                if j == 0:
                    for p in range(length):
                        v0, v1, v2, v3 = x0[p], x1[p], x2[p], x3[p]
                        r0[p] = (a0 * v0 + a1 * v1) + (a2 * v2 + a3 * v3)
                        r1[p] = (b0 * v0 + b1 * v1) + (b2 * v2 + b3 * v3)
                        r2[p] = (e0 * v0 + e1 * v1) + (e2 * v2 + e3 * v3)
                        r3[p] = (f0 * v0 + f1 * v1) + (f2 * v2 + f3 * v3)
                else:
                    for p in range(length):
                        v0, v1, v2, v3 = x0[p], x1[p], x2[p], x3[p]
                        r0[p] += (a0 * v0 + a1 * v1) + (a2 * v2 + a3 * v3)
                        r1[p] += (b0 * v0 + b1 * v1) + (b2 * v2 + b3 * v3)
                        r2[p] += (e0 * v0 + e1 * v1) + (e2 * v2 + e3 * v3)
                        r3[p] += (f0 * v0 + f1 * v1) + (f2 * v2 + f3 * v3)
                j += 4
            while j < dj:
                x0 = x[n, c0 + j, p0:p1]
                a0, b0, e0, f0 = a[j], b[j], e[j], f[j]
                if j == 0:
                    for p in range(length):
                        v0 = x0[p]
                        r0[p] = a0 * v0
                        r1[p] = b0 * v0
                        r2[p] = e0 * v0
                        r3[p] = f0 * v0
                else:
                    for p in range(length):
                        v0 = x0[p]
                        r0[p] += a0 * v0
                        r1[p] += b0 * v0
                        r2[p] += e0 * v0
                        r3[p] += f0 * v0
                j += 1


@njit(cache=True, parallel=True)
def _conv_accumulate(table, codes, offsets, bias, wq, out, n_chunk, seg_rows, m_block):
    """Conv accumulate step.

    table (N, G, M, K, P) float32 C-contiguous; codes (O, T, M) uint8 with T = kh*kw, every
    code < K; offsets (T,) int64: the shift of kernel offset t into a table row; bias (O,) float32;
    wq: the row width of a phase; out (N, O, Ho, Wo) float32, written:
    ``out[n, o, oh, ow] = bias[o] + sum_{t, m} table[n, o // (O/G), m, codes[o, t, m],
    offsets[t] + oh*wq + ow]``.

    A job is one chunk of the outputs of one (n, g) (``n_chunk`` chunks per group). It keeps one
    accumulator row per output for a segment of ``seg_rows`` output rows, and walks the subspaces
    ``m_block`` at a time: the ``m_block x K`` table rows of a segment are read by every output of
    the chunk while they sit in L2. Rows are summed four per pass over the accumulator, whole rows
    of ``seg_rows*wq`` entries (the ``wq - Wo`` extra columns per row are computed and dropped).
    """
    n_img, groups, n_sub, n_code, n_pos = table.shape
    n_out, n_t, _ = codes.shape
    _, _, ho, wo = out.shape
    og = n_out // groups
    seg = seg_rows * wq
    flat = table.reshape(n_img * groups * n_sub * n_code * n_pos)
    for job in prange(n_img * groups * n_chunk):
        ch = job % n_chunk
        r = job // n_chunk
        g = r % groups
        n = r // groups
        o0 = g * og + (ch * og) // n_chunk
        o1 = g * og + ((ch + 1) * og) // n_chunk
        acc = np.empty((o1 - o0) * seg, np.float32)
        starts = np.empty(n_t * m_block, np.int64)
        base = (n * groups + g) * n_sub
        for oh0 in range(0, ho, seg_rows):
            rows = min(seg_rows, ho - oh0)
            length = rows * wq
            shift = oh0 * wq
            acc[:] = 0.0
            for m0 in range(0, n_sub, m_block):
                m1 = min(m0 + m_block, n_sub)
                n_rows = n_t * (m1 - m0)
                n_four = n_rows - n_rows % 4
                for o in range(o0, o1):
                    j = 0
                    for t in range(n_t):
                        for m in range(m0, m1):
                            starts[j] = (((base + m) * n_code + int(codes[o, t, m])) * n_pos
                                         + offsets[t] + shift)
                            j += 1
                    a = acc[(o - o0) * seg : (o - o0) * seg + length]
                    n_eight = n_rows - n_rows % 8
                    for j0 in range(0, n_eight, 8):
                        s0, s1, s2, s3 = starts[j0], starts[j0 + 1], starts[j0 + 2], starts[j0 + 3]
                        s4, s5, s6, s7 = (starts[j0 + 4], starts[j0 + 5], starts[j0 + 6],
                                          starts[j0 + 7])
                        q0, q1 = flat[s0 : s0 + length], flat[s1 : s1 + length]
                        q2, q3 = flat[s2 : s2 + length], flat[s3 : s3 + length]
                        q4, q5 = flat[s4 : s4 + length], flat[s5 : s5 + length]
                        q6, q7 = flat[s6 : s6 + length], flat[s7 : s7 + length]
                        for i in range(length):
                            a[i] += (((q0[i] + q1[i]) + (q2[i] + q3[i]))
                                     + ((q4[i] + q5[i]) + (q6[i] + q7[i])))
                    for j0 in range(n_eight, n_four, 4):
                        s0, s1, s2, s3 = starts[j0], starts[j0 + 1], starts[j0 + 2], starts[j0 + 3]
                        q0, q1 = flat[s0 : s0 + length], flat[s1 : s1 + length]
                        q2, q3 = flat[s2 : s2 + length], flat[s3 : s3 + length]
                        for i in range(length):
                            a[i] += (q0[i] + q1[i]) + (q2[i] + q3[i])
                    for j1 in range(n_four, n_rows):
                        s0 = starts[j1]
                        q0 = flat[s0 : s0 + length]
                        for i in range(length):
                            a[i] += q0[i]
            for o in range(o0, o1):
                b = bias[o]
                for rr in range(rows):
                    a = acc[(o - o0) * seg + rr * wq : (o - o0) * seg + rr * wq + wo]
                    y = out[n, o, oh0 + rr]
                    for ow in range(wo):
                        y[ow] = a[ow] + b


@njit(cache=True, fastmath={"contract"}, inline="always")
def _tile_table(x, n, c0, dj, p0, tlen, cb, tab, zero):
    """One subspace's table tile: ``tab[k*tlen + q] = sum_j cb[k, j] * x[n, c0 + j, p0 + q]``.

    d <= 8: four codewords per pass over the positions from all d channels (zero weights on a zero
    row for the channels past d): 32 multiply-adds per 8 loads and 4 stores, 1.5x faster than two
    codewords per pass at d = 8 (VGG-16), 1.3x at d = 4. Larger d: two codewords per pass, eight
    input channels at a time.
    """
    n_code = cb.shape[0]
    k0 = 0
    if dj <= 8:
        # channels past dj read `zero` (a zero row) with zero weights: one pass at any dj <= 8
        x0, x1, x2, x3 = x[n, c0, p0 : p0 + tlen], zero[:tlen], zero[:tlen], zero[:tlen]
        x4, x5, x6, x7 = zero[:tlen], zero[:tlen], zero[:tlen], zero[:tlen]
        w = np.zeros((4, 8), np.float32)
        if dj > 1:
            x1 = x[n, c0 + 1, p0 : p0 + tlen]
        if dj > 2:
            x2 = x[n, c0 + 2, p0 : p0 + tlen]
        if dj > 3:
            x3 = x[n, c0 + 3, p0 : p0 + tlen]
        if dj > 4:
            x4 = x[n, c0 + 4, p0 : p0 + tlen]
        if dj > 5:
            x5 = x[n, c0 + 5, p0 : p0 + tlen]
        if dj > 6:
            x6 = x[n, c0 + 6, p0 : p0 + tlen]
        if dj > 7:
            x7 = x[n, c0 + 7, p0 : p0 + tlen]
        while k0 + 4 <= n_code:
            r0 = tab[k0 * tlen : k0 * tlen + tlen]
            r1 = tab[(k0 + 1) * tlen : (k0 + 1) * tlen + tlen]
            r2 = tab[(k0 + 2) * tlen : (k0 + 2) * tlen + tlen]
            r3 = tab[(k0 + 3) * tlen : (k0 + 3) * tlen + tlen]
            for i in range(4):
                for j in range(dj):
                    w[i, j] = cb[k0 + i, j]
            a0, a1, a2, a3 = w[0, 0], w[0, 1], w[0, 2], w[0, 3]
            a4, a5, a6, a7 = w[0, 4], w[0, 5], w[0, 6], w[0, 7]
            b0, b1, b2, b3 = w[1, 0], w[1, 1], w[1, 2], w[1, 3]
            b4, b5, b6, b7 = w[1, 4], w[1, 5], w[1, 6], w[1, 7]
            e0, e1, e2, e3 = w[2, 0], w[2, 1], w[2, 2], w[2, 3]
            e4, e5, e6, e7 = w[2, 4], w[2, 5], w[2, 6], w[2, 7]
            f0, f1, f2, f3 = w[3, 0], w[3, 1], w[3, 2], w[3, 3]
            f4, f5, f6, f7 = w[3, 4], w[3, 5], w[3, 6], w[3, 7]
            for q in range(tlen):
                v0, v1, v2, v3 = x0[q], x1[q], x2[q], x3[q]
                v4, v5, v6, v7 = x4[q], x5[q], x6[q], x7[q]
                s0 = a0 * v0
                s1 = b0 * v0
                s2 = e0 * v0
                s3 = f0 * v0
                s0 += a1 * v1
                s1 += b1 * v1
                s2 += e1 * v1
                s3 += f1 * v1
                s0 += a2 * v2
                s1 += b2 * v2
                s2 += e2 * v2
                s3 += f2 * v2
                s0 += a3 * v3
                s1 += b3 * v3
                s2 += e3 * v3
                s3 += f3 * v3
                s0 += a4 * v4
                s1 += b4 * v4
                s2 += e4 * v4
                s3 += f4 * v4
                s0 += a5 * v5
                s1 += b5 * v5
                s2 += e5 * v5
                s3 += f5 * v5
                s0 += a6 * v6
                s1 += b6 * v6
                s2 += e6 * v6
                s3 += f6 * v6
                r0[q] = s0 + a7 * v7
                r1[q] = s1 + b7 * v7
                r2[q] = s2 + e7 * v7
                r3[q] = s3 + f7 * v7
            k0 += 4
    first = k0
    for k0 in range(first, n_code, 2):
        if k0 + 2 > n_code:
            r0 = tab[k0 * tlen : k0 * tlen + tlen]
            for q in range(tlen):
                r0[q] = 0.0
            for j in range(dj):
                w0 = cb[k0, j]
                x0 = x[n, c0 + j, p0 : p0 + tlen]
                for q in range(tlen):
                    r0[q] += w0 * x0[q]
            continue
        r0 = tab[k0 * tlen : k0 * tlen + tlen]
        r1 = tab[(k0 + 1) * tlen : (k0 + 1) * tlen + tlen]
        a, b = cb[k0], cb[k0 + 1]
        j = 0
        while j < dj:
            if j + 8 <= dj:
                x0, x1 = x[n, c0 + j, p0 : p0 + tlen], x[n, c0 + j + 1, p0 : p0 + tlen]
                x2, x3 = x[n, c0 + j + 2, p0 : p0 + tlen], x[n, c0 + j + 3, p0 : p0 + tlen]
                x4, x5 = x[n, c0 + j + 4, p0 : p0 + tlen], x[n, c0 + j + 5, p0 : p0 + tlen]
                x6, x7 = x[n, c0 + j + 6, p0 : p0 + tlen], x[n, c0 + j + 7, p0 : p0 + tlen]
                a0, a1, a2, a3 = a[j], a[j + 1], a[j + 2], a[j + 3]
                a4, a5, a6, a7 = a[j + 4], a[j + 5], a[j + 6], a[j + 7]
                b0, b1, b2, b3 = b[j], b[j + 1], b[j + 2], b[j + 3]
                b4, b5, b6, b7 = b[j + 4], b[j + 5], b[j + 6], b[j + 7]
                if j == 0:
                    for q in range(tlen):
                        v0, v1, v2, v3 = x0[q], x1[q], x2[q], x3[q]
                        v4, v5, v6, v7 = x4[q], x5[q], x6[q], x7[q]
                        r0[q] = ((a0 * v0 + a1 * v1) + (a2 * v2 + a3 * v3)) + (
                            (a4 * v4 + a5 * v5) + (a6 * v6 + a7 * v7))
                        r1[q] = ((b0 * v0 + b1 * v1) + (b2 * v2 + b3 * v3)) + (
                            (b4 * v4 + b5 * v5) + (b6 * v6 + b7 * v7))
                else:
                    for q in range(tlen):
                        v0, v1, v2, v3 = x0[q], x1[q], x2[q], x3[q]
                        v4, v5, v6, v7 = x4[q], x5[q], x6[q], x7[q]
                        r0[q] += ((a0 * v0 + a1 * v1) + (a2 * v2 + a3 * v3)) + (
                            (a4 * v4 + a5 * v5) + (a6 * v6 + a7 * v7))
                        r1[q] += ((b0 * v0 + b1 * v1) + (b2 * v2 + b3 * v3)) + (
                            (b4 * v4 + b5 * v5) + (b6 * v6 + b7 * v7))
                j += 8
            else:
                x0 = x[n, c0 + j, p0 : p0 + tlen]
                a0, b0 = a[j], b[j]
                if j == 0:
                    for q in range(tlen):
                        r0[q] = a0 * x0[q]
                        r1[q] = b0 * x0[q]
                else:
                    for q in range(tlen):
                        r0[q] += a0 * x0[q]
                        r1[q] += b0 * x0[q]
                j += 1


@njit(cache=True, inline="always")
def _tile_accumulate(tab, tlen, codes, m, offsets, o, acc, length):
    """``acc[:length] += sum_t tab[codes[o, t, m]*tlen + offsets[t] :][:length]``: nine rows per pass
    (a 3x3 kernel in one pass over the accumulator), then four, then one."""
    n_t = offsets.shape[0]
    t = 0
    while t < n_t:
        if t + 9 <= n_t:
            s0 = int(codes[o, t, m]) * tlen + offsets[t]
            s1 = int(codes[o, t + 1, m]) * tlen + offsets[t + 1]
            s2 = int(codes[o, t + 2, m]) * tlen + offsets[t + 2]
            s3 = int(codes[o, t + 3, m]) * tlen + offsets[t + 3]
            s4 = int(codes[o, t + 4, m]) * tlen + offsets[t + 4]
            s5 = int(codes[o, t + 5, m]) * tlen + offsets[t + 5]
            s6 = int(codes[o, t + 6, m]) * tlen + offsets[t + 6]
            s7 = int(codes[o, t + 7, m]) * tlen + offsets[t + 7]
            s8 = int(codes[o, t + 8, m]) * tlen + offsets[t + 8]
            q0, q1, q2 = tab[s0 : s0 + length], tab[s1 : s1 + length], tab[s2 : s2 + length]
            q3, q4, q5 = tab[s3 : s3 + length], tab[s4 : s4 + length], tab[s5 : s5 + length]
            q6, q7, q8 = tab[s6 : s6 + length], tab[s7 : s7 + length], tab[s8 : s8 + length]
            for i in range(length):
                acc[i] += (((q0[i] + q1[i]) + (q2[i] + q3[i])) + ((q4[i] + q5[i]) + (q6[i] + q7[i]))
                           + q8[i])
            t += 9
        elif t + 4 <= n_t:
            s0 = int(codes[o, t, m]) * tlen + offsets[t]
            s1 = int(codes[o, t + 1, m]) * tlen + offsets[t + 1]
            s2 = int(codes[o, t + 2, m]) * tlen + offsets[t + 2]
            s3 = int(codes[o, t + 3, m]) * tlen + offsets[t + 3]
            q0, q1, q2 = tab[s0 : s0 + length], tab[s1 : s1 + length], tab[s2 : s2 + length]
            q3 = tab[s3 : s3 + length]
            for i in range(length):
                acc[i] += (q0[i] + q1[i]) + (q2[i] + q3[i])
            t += 4
        else:
            s0 = int(codes[o, t, m]) * tlen + offsets[t]
            q0 = tab[s0 : s0 + length]
            for i in range(length):
                acc[i] += q0[i]
            t += 1


@njit(cache=True, parallel=True, fastmath={"contract"})
def _conv_fused(x, codebooks, codes, offsets, bias, groups, wq, out, rows, n_chunk, relu):
    """Stride-1 conv in one step: each subspace's table is built for a band of output rows and
    accumulated while it is in cache, so the whole table is never written to memory.

    x (N, C, P) float32: the zero-padded input (``conv_geometry`` layout with stride 1: one phase,
    rows of ``wq``); codebooks (M, K, d); codes (O, T, M) uint8, every code < K; offsets (T,) int64
    (``conv_geometry(...).offsets``, the last one the largest); bias (O,) float32; out (N, O, Ho, Wo)
    float32, written as :func:`_conv_accumulate` writes it, then ``max(., 0)`` when ``relu``.

    A job is one band of ``rows`` output rows of one chunk of the outputs of one (n, g). For each
    subspace it builds the ``K x (rows*wq + offsets[-1])`` table tile of the band (the input rows
    the band reads), then adds the tile rows its codes select into one accumulator row per output.
    Bands overlap by ``kh - 1`` input rows, whose table entries are computed twice.
    """
    n_img, c, n_pos = x.shape
    n_sub, n_code, d = codebooks.shape
    n_out, n_t, _ = codes.shape
    _, _, ho, wo = out.shape
    og = n_out // groups
    cg = c // groups
    span = offsets[n_t - 1]
    n_band = (ho + rows - 1) // rows
    for job in prange(n_img * groups * n_band * n_chunk):
        ch = job % n_chunk
        r = job // n_chunk
        band = r % n_band
        r //= n_band
        g = r % groups
        n = r // groups
        o0 = g * og + (ch * og) // n_chunk
        o1 = g * og + ((ch + 1) * og) // n_chunk
        oh0 = band * rows
        nrows = min(rows, ho - oh0)
        length = nrows * wq
        tlen = length + span
        p0 = oh0 * wq
        tab = np.empty(n_code * tlen, np.float32)
        zero = np.zeros(tlen, np.float32)
        seg = rows * wq
        acc = np.zeros((o1 - o0) * seg, np.float32)
        for m in range(n_sub):
            c0 = g * cg + m * d
            dj = min(d, cg - m * d)
            _tile_table(x, n, c0, dj, p0, tlen, codebooks[m], tab, zero)
            for o in range(o0, o1):
                _tile_accumulate(tab, tlen, codes, m, offsets, o,
                                 acc[(o - o0) * seg : (o - o0) * seg + length], length)
        for o in range(o0, o1):
            b = bias[o]
            for rr in range(nrows):
                a = acc[(o - o0) * seg + rr * wq : (o - o0) * seg + rr * wq + wo]
                y = out[n, o, oh0 + rr]
                if relu:
                    for ow in range(wo):
                        y[ow] = max(a[ow] + b, np.float32(0.0))
                else:
                    for ow in range(wo):
                        y[ow] = a[ow] + b


@njit(cache=True, parallel=True)
def _maxpool(x, kh, kw, sh, sw, ph, pw, out):
    """Max pooling: ``out[n, c, i, j]`` = max of ``x[n, c]`` over the window at ``(i*sh - ph,
    j*sw - pw)`` clipped to the input (windows start inside it). Separable: a max over each
    window's columns for every input row, then over its rows, contiguous along the output row."""
    n_img, c, h, w = x.shape
    _, _, ho, wo = out.shape
    for job in prange(n_img * c):
        n = job // c
        ch = job % c
        src = x[n, ch]
        dst = out[n, ch]
        hmax = np.empty((h, wo), np.float32)
        # windows [j*sw - pw, +kw) inside the row for j in [j0, j1): unclipped, and for the usual
        # 2x2 and 3x3 stride-2 pools a constant stride that the compiler vectorises
        j0 = min(wo, -(-pw // sw))
        j1 = max(j0, min(wo, (w - kw + pw) // sw + 1))
        for r in range(h):
            row = src[r]
            hr = hmax[r]
            if sw == 2 and kw == 2:
                for j in range(j0, j1):
                    b = 2 * j - pw
                    hr[j] = max(row[b], row[b + 1])
            elif sw == 2 and kw == 3:
                for j in range(j0, j1):
                    b = 2 * j - pw
                    hr[j] = max(max(row[b], row[b + 1]), row[b + 2])
            else:
                for j in range(j0, j1):
                    b = j * sw - pw
                    v = row[b]
                    for q in range(1, kw):
                        v = max(v, row[b + q])
                    hr[j] = v
            for e in range(j0 + wo - j1):  # the clipped windows at both ends
                j = e if e < j0 else j1 + e - j0
                c0 = max(j * sw - pw, 0)
                c1 = min(j * sw - pw + kw, w)
                v = row[c0]
                for q in range(c0 + 1, c1):
                    v = max(v, row[q])
                hr[j] = v
        for i in range(ho):
            r0 = max(i * sh - ph, 0)
            r1 = min(i * sh - ph + kh, h)
            d = dst[i]
            first = hmax[r0]
            for j in range(wo):
                d[j] = first[j]
            for r in range(r0 + 1, r1):
                hr = hmax[r]
                for j in range(wo):
                    d[j] = max(d[j], hr[j])


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
def _linear_pair_table(table, pairs):
    """Tables of subspace pairs.

    table (N, M, K) float32; pairs (N, ceil(M/2), K*K) float32, written:
    ``pairs[n, q, a*K + b] = table[n, 2q, a] + table[n, 2q + 1, b]`` (the second term is 0 for
    the last pair when M is odd).
    """
    n_img, n_sub, n_code = table.shape
    n_pair = pairs.shape[1]
    for job in prange(n_img * n_pair):
        n = job // n_pair
        q = job - n * n_pair
        first = table[n, 2 * q]
        for a in range(n_code):
            row = pairs[n, q, a * n_code : (a + 1) * n_code]
            va = first[a]
            if 2 * q + 1 < n_sub:
                second = table[n, 2 * q + 1]
                for b in range(n_code):
                    row[b] = va + second[b]
            else:
                for b in range(n_code):
                    row[b] = va


@njit(cache=True, parallel=True)
def _linear_accumulate(table, codes_t, bias, out, n_chunk):
    """Linear accumulate step.

    table (N, R, E) float32; codes_t (R, O) uint8 or uint16, every code < E; bias (O,) float32;
    out (N, O) float32, written: ``out[n, o] = bias[o] + sum_r table[n, r, codes_t[r, o]]``.
    A job is one chunk of outputs of one image; it walks the table rows four at a time (four code
    rows streamed, four table rows in L1) and keeps its accumulators in L1.
    """
    n_img, n_rows, _ = table.shape
    n_out = codes_t.shape[1]
    n_four = n_rows - n_rows % 4
    for job in prange(n_img * n_chunk):
        n = job // n_chunk
        ch = job - n * n_chunk
        o0 = (ch * n_out) // n_chunk
        o1 = ((ch + 1) * n_out) // n_chunk
        length = o1 - o0
        acc = bias[o0:o1].copy()
        for r in range(0, n_four, 4):
            t0, t1, t2, t3 = table[n, r], table[n, r + 1], table[n, r + 2], table[n, r + 3]
            c0, c1 = codes_t[r, o0:o1], codes_t[r + 1, o0:o1]
            c2, c3 = codes_t[r + 2, o0:o1], codes_t[r + 3, o0:o1]
            for i in range(length):
                acc[i] += (t0[c0[i]] + t1[c1[i]]) + (t2[c2[i]] + t3[c3[i]])
        for r in range(n_four, n_rows):
            t0 = table[n, r]
            c0 = codes_t[r, o0:o1]
            for i in range(length):
                acc[i] += t0[c0[i]]
        out[n, o0:o1] = acc


@njit(cache=True, parallel=True)
def _lrn(x, size, alpha, beta, k, out):
    """Caffe's across-channel local response normalisation.

    x (N, C, S) float32; out (N, C, S) float32, written: ``out[n, c, s] = x[n, c, s] /
    (k + alpha/size * sum_{c'} x[n, c', s]**2)**beta`` over ``c' in [c - (size-1)//2,
    c - (size-1)//2 + size)`` clipped to ``[0, C)``. A job is a tile of positions of one image.
    """
    n_img, c, n_pos = x.shape
    pre = (size - 1) // 2
    n_tile = (n_pos + _P_TILE - 1) // _P_TILE
    scale = np.float32(alpha / size)
    k32 = np.float32(k)
    nbeta = np.float32(-beta)
    for job in prange(n_img * n_tile):
        n = job // n_tile
        p0 = (job - n * n_tile) * _P_TILE
        p1 = min(p0 + _P_TILE, n_pos)
        length = p1 - p0
        acc = np.empty(length, np.float32)
        for ch in range(c):
            lo, hi = max(0, ch - pre), min(c, ch - pre + size)
            acc[:] = 0.0
            for cc in range(lo, hi):
                xr = x[n, cc, p0:p1]
                for p in range(length):
                    acc[p] += xr[p] * xr[p]
            xr = x[n, ch, p0:p1]
            y = out[n, ch, p0:p1]
            if beta == 0.75:
                for p in range(length):
                    s = k32 + scale * acc[p]
                    y[p] = xr[p] / (np.sqrt(s) * np.sqrt(np.sqrt(s)))
            else:
                for p in range(length):
                    y[p] = xr[p] * (k32 + scale * acc[p]) ** nbeta


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


def _conv_accumulate_np(table, codes, offsets, bias, wq, out, n_chunk, seg_rows, m_block):
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


def _conv_fused_np(x, codebooks, codes, offsets, bias, groups, wq, out, rows, n_chunk, relu):
    n_img, _, n_pos = x.shape
    n_sub, n_code, _ = codebooks.shape
    table = np.empty((n_img, groups, n_sub, n_code, n_pos), np.float32)
    _conv_table_np(x, codebooks, groups, table)
    _conv_accumulate_np(table, codes, offsets, bias, wq, out, 1, out.shape[2], 1)
    if relu:
        np.maximum(out, 0, out=out)


def _maxpool_np(x, kh, kw, sh, sw, ph, pw, out):
    n, c, h, w = x.shape
    _, _, ho, wo = out.shape
    xp = np.full((n, c, max((ho - 1) * sh + kh, h + ph), max((wo - 1) * sw + kw, w + pw)), -np.inf,
                 np.float32)
    xp[:, :, ph : ph + h, pw : pw + w] = x
    out[...] = -np.inf
    for i in range(kh):
        for j in range(kw):
            np.maximum(out, xp[:, :, i : i + (ho - 1) * sh + 1 : sh, j : j + (wo - 1) * sw + 1 : sw],
                       out=out)

def _linear_table_np(x, codebooks, table):
    n_img, c = x.shape
    n_sub, _, d = codebooks.shape
    xs = np.zeros((n_img, n_sub * d), np.float32)
    xs[:, :c] = x
    np.einsum("nmd,mkd->nmk", xs.reshape(n_img, n_sub, d), codebooks, out=table)


def _linear_pair_table_np(table, pairs):
    n_img, n_sub, n_code = table.shape
    padded = np.zeros((n_img, 2 * pairs.shape[1], n_code), np.float32)
    padded[:, :n_sub] = table
    sums = padded[:, 0::2, :, None] + padded[:, 1::2, None, :]
    pairs[...] = sums.reshape(pairs.shape)


def _linear_accumulate_np(table, codes_t, bias, out, n_chunk):
    n_rows = table.shape[1]
    out[...] = bias
    for r0 in range(0, n_rows, 256):  # bounds the (N, 256, O) gather
        r1 = min(r0 + 256, n_rows)
        out += table[:, np.arange(r0, r1)[:, None], codes_t[r0:r1]].sum(axis=1)


def _lrn_np(x, size, alpha, beta, k, out):
    c = x.shape[1]
    pre = (size - 1) // 2
    sq = np.zeros((x.shape[0], c + size - 1, x.shape[2]), np.float32)
    sq[:, pre : pre + c] = np.square(x)
    s = sq[:, :c].copy()
    for i in range(1, size):
        s += sq[:, i : i + c]
    s *= np.float32(alpha / size)
    s += np.float32(k)
    if beta == 0.75:
        np.divide(x, np.sqrt(s) * np.sqrt(np.sqrt(s)), out=out)
    else:
        np.multiply(x, s ** np.float32(-beta), out=out)


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


def _threads() -> int:
    """Threads a parallel kernel will use (1 for the NumPy fallbacks)."""
    return int(loaded_numba().get_num_threads()) if have_numba() else 1


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


def _phase_split(x: np.ndarray, geo: ConvGeometry, out: np.ndarray | None = None) -> np.ndarray:
    """(N, C, H, W) -> (N, C, P): zero-pad, keep the rows and columns read, split by phase; into
    `out` (checked: the ``scratch`` argument of the wrappers) when given."""
    n, c, h, w = x.shape
    (sh, sw), (ph, pw), hq, wq = geo.stride, geo.padding, geo.phase_h, geo.phase_w
    if out is None:
        xr = np.zeros((n, c, geo.positions), np.float32)
    else:
        xr = _check_out(out, (n, c, geo.positions), "scratch")
        xr[...] = 0.0
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


def _check_conv_input(x, codebooks, groups) -> tuple[np.ndarray, np.ndarray, int]:
    """x (N, C, H, W) and codebooks (M, K, d) float32 with ``M = ceil(C / groups / d)``."""
    x = _check_array(x, "x", 4, np.float32)
    codebooks = _check_array(codebooks, "codebooks", 3, np.float32)
    c = x.shape[1]
    n_sub, _, d = codebooks.shape
    groups = int(groups)
    if groups < 1 or c % groups:
        raise ValueError(f"{c} input channels do not split into {groups} groups")
    if n_sub != -(-(c // groups) // d):
        raise ValueError(f"codebooks have {n_sub} subspaces of {d} channels, but {c // groups} "
                         f"channels per group need ceil({c // groups} / {d}) = "
                         f"{-(-(c // groups) // d)}")
    return x, codebooks, groups


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


def _check_out(out, shape: tuple, name: str) -> np.ndarray:
    if out is None:
        return np.empty(shape, np.float32)
    if (not isinstance(out, np.ndarray) or out.shape != shape or out.dtype != np.float32
            or not out.flags.c_contiguous):
        raise ValueError(f"{name} must be a C-contiguous float32 array of shape {shape}, got "
                         f"{getattr(out, 'shape', None)} {getattr(out, 'dtype', type(out))}")
    return out


def conv_table(x, codebooks, kernel, stride=1, padding=0, groups: int = 1, out=None,
               scratch=None) -> np.ndarray:
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
    out : ndarray, (N, groups, M, K, P) float32, optional
        Written and returned instead of a new array (a layer reuses one buffer per input shape).
    scratch : ndarray, (N, C, P) float32, optional
        Buffer for the padded, phase-split input.

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
    x, codebooks, groups = _check_conv_input(x, codebooks, groups)
    n, c, h, w = x.shape
    n_sub, n_code, _ = codebooks.shape
    geo = conv_geometry(h, w, kernel, stride, padding)
    xr = _phase_split(x, geo, scratch)
    table = _check_out(out, (n, groups, n_sub, n_code, geo.positions), "out")
    (_conv_table if have_numba() else _conv_table_np)(xr, codebooks, groups, table)
    return table


class AccumulatePlan(NamedTuple):
    """How :func:`conv_accumulate` tiles its work (see :func:`accumulate_plan`)."""

    n_chunk: int  #: chunks of the outputs of one (image, group): parallel jobs
    seg_rows: int  #: output rows per segment
    m_block: int  #: subspaces per block


def accumulate_plan(geometry: ConvGeometry, n_img: int, groups: int, n_sub: int, n_code: int,
                    n_out: int, threads: int = 1, cache_bytes: int | None = None) -> AccumulatePlan:
    """Tiles of the conv accumulate step.

    Whole output planes (``seg_rows = out_h``: measured here, segments of fewer rows were always
    slower, as their shorter rows cost more loop overhead than the smaller working set saves);
    ``m_block`` subspaces whose table rows fill at most half of ``cache_bytes`` (at most 4);
    enough chunks of outputs that every thread has a job.

    Parameters
    ----------
    geometry : ConvGeometry
    n_img, groups, n_sub, n_code, n_out : int
        Images, groups, subspaces M, codewords K and output channels.
    threads : int
        At least this many parallel jobs when there are fewer images x groups.
    cache_bytes : int, optional
        The per-core cache to fit (default ``CACHE_BYTES``).

    Returns
    -------
    AccumulatePlan

    Examples
    --------
    >>> geo = conv_geometry(13, 13, 3, 1, 1)
    >>> accumulate_plan(geo, 1, 1, 32, 128, 384, threads=2, cache_bytes=1 << 20)
    AccumulatePlan(n_chunk=2, seg_rows=13, m_block=4)
    """
    cache = CACHE_BYTES if cache_bytes is None else int(cache_bytes)
    row_bytes = 4 * geometry.positions
    m_block = int(max(1, min(n_sub, 4, (cache // 2) // (n_code * row_bytes))))
    n_chunk = int(min(n_out // groups, max(1, -(-threads // (n_img * groups)))))
    return AccumulatePlan(n_chunk, int(geometry.out_h), m_block)


def conv_accumulate(table, codes, bias, geometry: ConvGeometry, check: bool = True,
                    plan: AccumulatePlan | None = None) -> np.ndarray:
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
    check : bool
        Verify that every code is < K (a larger one would read outside the table). A layer that
        checked its codes once when it was built passes False.
    plan : AccumulatePlan, optional
        Tiling; default :func:`accumulate_plan` for the current thread count.

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
    if check:
        _check_codes(codes, n_code, "codes")
    bias = _check_bias(bias, n_out)
    if plan is None:
        plan = accumulate_plan(geo, n, groups, n_sub, n_code, n_out, _threads())
    n_chunk, seg_rows, m_block = (int(v) for v in plan)
    if not (1 <= n_chunk <= n_out // groups and seg_rows >= 1 and m_block >= 1):
        raise ValueError(f"invalid plan {plan} for {n_out // groups} outputs per group")
    out = np.empty((n, n_out, geo.out_h, geo.out_w), np.float32)
    (_conv_accumulate if have_numba() else _conv_accumulate_np)(
        table, codes.reshape(n_out, kh * kw, n_sub), geo.offsets, bias, geo.phase_w, out,
        n_chunk, seg_rows, m_block)
    return out


def fused_plan(geometry: ConvGeometry, n_img: int, groups: int, n_out: int,
               threads: int = 1) -> tuple[int, int]:
    """Bands of :func:`conv_fused`: ``(rows, n_chunk)``.

    Bands of at least ``_FUSED_POSITIONS`` (2048) table positions: measured on VGG-16's layers,
    1024-2048 positions were best (2048 against 4096: 112 wide 11.4 against 12.9 ms, 56 wide 9.3
    against 10.5 ms, the same at 224, 28 and 14), 2-row bands 1.5-2.5x slower (short rows cost
    loop overhead and the ``kh - 1`` recomputed rows a larger share). Output chunks only when
    there are fewer bands x images x groups than threads.

    Examples
    --------
    >>> fused_plan(conv_geometry(224, 224, 3, 1, 1), 1, 1, 64)
    (10, 1)
    >>> fused_plan(conv_geometry(13, 13, 3, 1, 1), 1, 2, 384, threads=8)
    (13, 4)
    """
    rows = int(min(geometry.out_h, max(1, -(-_FUSED_POSITIONS // geometry.phase_w))))
    jobs = n_img * groups * -(-geometry.out_h // rows)
    n_chunk = int(min(n_out // groups, max(1, -(-threads // jobs))))
    return rows, n_chunk


def conv_fused(x, codebooks, codes, bias, kernel, padding=0, groups: int = 1, check: bool = True,
               plan: tuple[int, int] | None = None, scratch=None, relu: bool = False) -> np.ndarray:
    """A stride-1 quantized convolution in one step (table tiles built and used while in cache).

    The same result as ``conv_accumulate(conv_table(x, ...), ...)`` with stride 1, without writing
    the whole ``(N, G, M, K, P)`` table (209 MB for VGG-16's conv1_2) to memory.

    Parameters
    ----------
    x : ndarray, (N, C, H, W) float32
    codebooks : ndarray, (M, K, d) float32
    codes : ndarray, (out, kh, kw, M) uint8
    bias : ndarray, (out,) float32, or None
    kernel, padding : int or (int, int)
    groups : int
    check : bool
        Verify that every code is < K (see :func:`conv_accumulate`).
    plan : (rows, n_chunk), optional
        Default :func:`fused_plan` for the current thread count.
    scratch : ndarray, (N, C, P) float32, optional
        Buffer for the padded input.
    relu : bool
        Return ``max(conv, 0)`` (a following ReLU at no cost).

    Returns
    -------
    ndarray, (N, out, out_h, out_w) float32

    Examples
    --------
    >>> x = np.ones((1, 3, 5, 5), np.float32)
    >>> cb = np.ones((1, 4, 3), np.float32)
    >>> y = conv_fused(x, cb, np.zeros((2, 3, 3, 1), np.uint8), None, 3, 1)
    >>> y.shape, float(y[0, 0, 2, 2]), float(y[0, 0, 0, 0])
    ((1, 2, 5, 5), 27.0, 12.0)
    """
    x, codebooks, groups = _check_conv_input(x, codebooks, groups)
    codes = _check_array(codes, "codes", 4, np.uint8)
    n, c, h, w = x.shape
    n_sub, n_code, _ = codebooks.shape
    n_out, kh, kw, m_codes = codes.shape
    if n_out % groups:
        raise ValueError(f"{n_out} output channels do not split into {groups} groups")
    if m_codes != n_sub:
        raise ValueError(f"codes have {m_codes} subspaces, the codebooks {n_sub}")
    geo = conv_geometry(h, w, (kh, kw), 1, padding)
    if check:
        _check_codes(codes, n_code, "codes")
    bias = _check_bias(bias, n_out)
    if plan is None:
        plan = fused_plan(geo, n, groups, n_out, _threads())
    rows, n_chunk = (int(v) for v in plan)
    if not (1 <= n_chunk <= n_out // groups and rows >= 1):
        raise ValueError(f"invalid plan {plan} for {n_out // groups} outputs per group")
    xr = _phase_split(x, geo, scratch)
    out = np.empty((n, n_out, geo.out_h, geo.out_w), np.float32)
    (_conv_fused if have_numba() else _conv_fused_np)(
        xr, codebooks, codes.reshape(n_out, kh * kw, n_sub), geo.offsets, bias, groups,
        geo.phase_w, out, rows, n_chunk, bool(relu))
    return out


def maxpool(x, kernel, stride, padding, out_size) -> np.ndarray:
    """Max pooling over windows clipped to the input (Caffe's and PyTorch's ceil-mode semantics).

    The Numba kernel runs once Numba is imported (by a look-up-table kernel), the NumPy version
    before: a network of float layers only never imports Numba.

    Parameters
    ----------
    x : ndarray, (N, C, H, W) float32
    kernel, stride, padding : int or (int, int)
    out_size : (int, int)
        Output height and width (``qcnn.layers.pool_output_size`` gives Caffe's); every window
        must start inside the padded input.

    Returns
    -------
    ndarray, (N, C, out_h, out_w) float32

    Examples
    --------
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    >>> maxpool(x, 3, 2, 0, (2, 2))[0, 0].tolist()
    [[10.0, 11.0], [14.0, 15.0]]
    """
    x = _check_array(x, "x", 4, np.float32)
    (kh, kw), (sh, sw), (ph, pw) = (_pair(kernel, "kernel"), _pair(stride, "stride"),
                                    _pair(padding, "padding"))
    ho, wo = _pair(out_size, "out_size")
    n, c, h, w = x.shape
    if min(kh, kw, sh, sw, ho, wo) < 1 or min(ph, pw) < 0 or ph >= kh or pw >= kw:
        raise ValueError(f"invalid pooling: kernel {(kh, kw)}, stride {(sh, sw)}, padding "
                         f"{(ph, pw)} (must be < kernel), output {(ho, wo)}")
    if (ho - 1) * sh - ph >= h or (wo - 1) * sw - pw >= w:
        raise ValueError(f"output {(ho, wo)} has windows starting outside the {h}x{w} input")
    out = np.empty((n, c, ho, wo), np.float32)
    # pooling alone is not worth importing Numba (~100 MB, ~0.25 s): the Numba kernel runs once a
    # quantized layer has loaded it, NumPy before (a net of float layers never loads Numba)
    (_maxpool if loaded_numba() is not None and have_numba() else _maxpool_np)(
        x, kh, kw, sh, sw, ph, pw, out)
    return out

def linear_table(x, codebooks, out=None) -> np.ndarray:
    """The look-up table of a quantized linear layer.

    Parameters
    ----------
    x : ndarray, (N, C) float32
    codebooks : ndarray, (M, K, d) float32
        ``M = ceil(C / d)``; the last subspace is zero-padded.
    out : ndarray, (N, M, K) float32, optional
        Written and returned instead of a new array.

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
    table = _check_out(out, (n, n_sub, n_code), "out")
    (_linear_table if have_numba() else _linear_table_np)(x, codebooks, table)
    return table


def linear_pair_table(table, out=None) -> np.ndarray:
    """Look-up tables of subspace pairs: one gather then adds two subspaces.

    Parameters
    ----------
    table : ndarray, (N, M, K) float32
        From :func:`linear_table`.
    out : ndarray, (N, ceil(M/2), K*K) float32, optional

    Returns
    -------
    ndarray, (N, ceil(M/2), K*K) float32
        ``pairs[n, q, a*K + b] = table[n, 2q, a] + table[n, 2q+1, b]`` (0 for a missing 2q+1);
        use with the codes of :func:`pair_codes`.

    Examples
    --------
    >>> t = np.arange(6, dtype=np.float32).reshape(1, 3, 2)
    >>> linear_pair_table(t)[0].tolist()
    [[2.0, 3.0, 3.0, 4.0], [4.0, 4.0, 5.0, 5.0]]
    """
    table = _check_array(table, "table", 3, np.float32)
    n, n_sub, n_code = table.shape
    pairs = _check_out(out, (n, -(-n_sub // 2), n_code * n_code), "out")
    (_linear_pair_table if have_numba() else _linear_pair_table_np)(table, pairs)
    return pairs


def pair_codes(codes_t, n_code: int) -> np.ndarray:
    """Codes of subspace pairs ``codes_t[2q] * K + codes_t[2q + 1]``, for pair tables.

    Parameters
    ----------
    codes_t : ndarray, (M, out) uint8
        The transposed codes of a linear layer.
    n_code : int
        K, the codewords per codebook (K*K <= 65536).

    Returns
    -------
    ndarray, (ceil(M/2), out) uint16

    Examples
    --------
    >>> pair_codes(np.array([[1, 0], [2, 3], [3, 1]], np.uint8), 4).tolist()
    [[6, 3], [12, 4]]
    """
    codes_t = _check_array(codes_t, "codes_t", 2, np.uint8)
    if not 1 <= n_code <= 256:
        raise ValueError(f"K = {n_code}: pair codes need 1 <= K <= 256")
    _check_codes(codes_t, n_code, "codes_t")
    n_sub, n_out = codes_t.shape
    padded = np.zeros((2 * -(-n_sub // 2), n_out), np.uint16)
    padded[:n_sub] = codes_t
    return np.ascontiguousarray(padded[0::2] * np.uint16(n_code) + padded[1::2])


def linear_accumulate(table, codes_t, bias, check: bool = True) -> np.ndarray:
    """The output of a quantized linear layer: ``bias[o] + sum_r table[n, r, codes_t[r, o]]``.

    Parameters
    ----------
    table : ndarray, (N, R, E) float32
        From :func:`linear_table` (R = M subspaces, E = K) or :func:`linear_pair_table`
        (R = ceil(M/2) pairs, E = K*K).
    codes_t : ndarray, (R, out) uint8 or uint16
        The codes transposed (the file layout is (out, M)), or :func:`pair_codes`.
    bias : ndarray, (out,) float32, or None
    check : bool
        Verify that every code is < E; a layer that checked its codes once passes False.

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
    codes_t = np.asarray(codes_t)
    if codes_t.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"codes_t must be uint8 (or uint16 pair codes), got {codes_t.dtype}")
    codes_t = _check_array(codes_t, "codes_t", 2, codes_t.dtype)
    n, n_rows, n_code = table.shape
    if codes_t.shape[0] != n_rows:
        raise ValueError(f"codes_t has {codes_t.shape[0]} rows, expected one per subspace "
                         f"({n_rows}); codes_t is (M, out), the transpose of the file's codes")
    if check:
        _check_codes(codes_t, n_code, "codes_t")
    n_out = codes_t.shape[1]
    bias = _check_bias(bias, n_out)
    out = np.empty((n, n_out), np.float32)
    n_chunk = max(1, min(n_out, max(-(-_threads() // n), -(-n_out // _O_BLOCK))))
    (_linear_accumulate if have_numba() else _linear_accumulate_np)(table, codes_t, bias, out,
                                                                  n_chunk)
    return out


def lrn(x, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> np.ndarray:
    """Caffe's across-channel local response normalisation (the kernel of :class:`qcnn.layers.LRN`).

    Parameters
    ----------
    x : ndarray, (N, C, H, W) float32
    size : int
        Channels in the window ``[c - (size-1)//2, c - (size-1)//2 + size)``, clipped to the input.
    alpha, beta, k : float

    Returns
    -------
    ndarray, (N, C, H, W) float32
        ``x / (k + alpha/size * sum of x**2 over the window)**beta``.

    Examples
    --------
    >>> float(lrn(np.full((1, 1, 1, 1), 2.0, np.float32), 1, 1.0, 1.0, 0.0)[0, 0, 0, 0])
    0.5
    """
    x = _check_array(x, "x", 4, np.float32)
    if int(size) < 1:
        raise ValueError(f"LRN size must be >= 1, got {size}")
    n, c, h, w = x.shape
    out = np.empty(x.shape, np.float32)
    (_lrn if have_numba() else _lrn_np)(x.reshape(n, c, h * w), int(size), float(alpha),
                                      float(beta), float(k), out.reshape(n, c, h * w))
    return out
