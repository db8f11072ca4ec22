"""Slow, obvious NumPy reference implementations for the tests: loops that follow the definitions.

A flat file of functions; append new references at the end.
"""

import math

import numpy as np


def _pair(v):
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def conv2d(x, weight, bias=None, stride=1, padding=0, groups=1):
    """Cross-correlation by definition: out[n, o, y, x] = b[o] + sum over its group's window."""
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    n, c, h, w = x.shape
    o_all, cg, kh, kw = weight.shape
    og = o_all // groups
    xp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), np.float64)
    xp[:, :, ph : ph + h, pw : pw + w] = x
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    out = np.zeros((n, o_all, ho, wo), np.float64)
    for b in range(n):
        for o in range(o_all):
            g = o // og
            for i in range(ho):
                for j in range(wo):
                    win = xp[b, g * cg : (g + 1) * cg, i * sh : i * sh + kh, j * sw : j * sw + kw]
                    out[b, o, i, j] = np.sum(win * weight[o])
            if bias is not None:
                out[b, o] += bias[o]
    return out


def lut_conv2d(x, codebooks, codes, bias=None, stride=1, padding=0, groups=1):
    """Q-CNN conv, literally: a table of <input subvector, codeword> per padded input position,
    then out[n, o, y, x] = b[o] + sum over kernel positions and subspaces of selected entries."""
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    n, c, h, w = x.shape
    m_all, k_all, d = codebooks.shape
    o_all, kh, kw, _ = codes.shape
    cg, og = c // groups, o_all // groups
    xp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), np.float64)
    xp[:, :, ph : ph + h, pw : pw + w] = x
    hp, wp = xp.shape[2:]
    table = np.zeros((n, groups, m_all, k_all, hp, wp), np.float64)
    for b in range(n):
        for g in range(groups):
            for m in range(m_all):
                for k in range(k_all):
                    for y in range(hp):
                        for z in range(wp):
                            s = 0.0
                            for j in range(d):
                                ch = m * d + j
                                if ch < cg:
                                    s += float(xp[b, g * cg + ch, y, z]) * float(codebooks[m, k, j])
                            table[b, g, m, k, y, z] = s
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    out = np.zeros((n, o_all, ho, wo), np.float64)
    for b in range(n):
        for o in range(o_all):
            g = o // og
            for y in range(ho):
                for z in range(wo):
                    s = 0.0 if bias is None else float(bias[o])
                    for i in range(kh):
                        for j in range(kw):
                            for m in range(m_all):
                                s += table[b, g, m, codes[o, i, j, m], y * sh + i, z * sw + j]
                    out[b, o, y, z] = s
    return out


def lut_linear(x, codebooks, codes, bias=None):
    """Q-CNN linear, literally: table[n, m, k] = <x subvector m, codeword k>; sum selected ones."""
    n, c = x.shape
    m_all, k_all, d = codebooks.shape
    o_all = codes.shape[0]
    table = np.zeros((n, m_all, k_all), np.float64)
    for b in range(n):
        for m in range(m_all):
            for k in range(k_all):
                for j in range(d):
                    if m * d + j < c:
                        table[b, m, k] += float(x[b, m * d + j]) * float(codebooks[m, k, j])
    out = np.zeros((n, o_all), np.float64)
    for b in range(n):
        for o in range(o_all):
            out[b, o] = 0.0 if bias is None else float(bias[o])
            for m in range(m_all):
                out[b, o] += table[b, m, codes[o, m]]
    return out


def quantized_weight(codebooks, codes, in_channels_per_group):
    """W[o, c, i, j] = codebooks[m, codes[o, i, j, m], c - m*d] with m = c // d (conv codes)."""
    o_all, kh, kw, _ = codes.shape
    d = codebooks.shape[2]
    w = np.zeros((o_all, in_channels_per_group, kh, kw), np.float32)
    for o in range(o_all):
        for c in range(in_channels_per_group):
            for i in range(kh):
                for j in range(kw):
                    m = c // d
                    w[o, c, i, j] = codebooks[m, codes[o, i, j, m], c - m * d]
    return w


def _caffe_pooled_size(size, kernel, stride, pad):
    # caffe/src/caffe/layers/pooling_layer.cpp: ceil, then clip a window starting in the padding
    out = int(math.ceil((size + 2 * pad - kernel) / stride)) + 1
    if pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def caffe_max_pool(x, kernel, stride, pad=0):
    """Caffe's MAX pooling (ceil mode), window by window as in pooling_layer.cpp."""
    n, c, h, w = x.shape
    ho, wo = _caffe_pooled_size(h, kernel, stride, pad), _caffe_pooled_size(w, kernel, stride, pad)
    out = np.zeros((n, c, ho, wo), np.float32)
    for y in range(ho):
        for z in range(wo):
            hs, ws = y * stride - pad, z * stride - pad
            he, we = min(hs + kernel, h), min(ws + kernel, w)
            hs, ws = max(hs, 0), max(ws, 0)
            out[:, :, y, z] = x[:, :, hs:he, ws:we].max(axis=(2, 3))
    return out


def caffe_ave_pool(x, kernel, stride, pad=0):
    """Caffe's AVE pooling (ceil mode): the divisor is the window clipped to the padded input."""
    n, c, h, w = x.shape
    ho, wo = _caffe_pooled_size(h, kernel, stride, pad), _caffe_pooled_size(w, kernel, stride, pad)
    out = np.zeros((n, c, ho, wo), np.float64)
    for y in range(ho):
        for z in range(wo):
            hs, ws = y * stride - pad, z * stride - pad
            he, we = min(hs + kernel, h + pad), min(ws + kernel, w + pad)
            size = (he - hs) * (we - ws)
            hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
            out[:, :, y, z] = x[:, :, hs:he, ws:we].sum(axis=(2, 3)) / size
    return out


def caffe_lrn(x, size=5, alpha=1e-4, beta=0.75, k=1.0):
    """Caffe's ACROSS_CHANNELS LRN: x / (k + alpha/size * sum of x^2 over channels
    c - (size-1)/2 .. c + size - 1 - (size-1)/2)^beta."""
    c = x.shape[1]
    pre = (size - 1) // 2
    out = np.zeros(x.shape, np.float64)
    for ch in range(c):
        lo, hi = max(0, ch - pre), min(c, ch - pre + size)
        s = np.sum(np.square(x[:, lo:hi].astype(np.float64)), axis=1)
        out[:, ch] = x[:, ch] / (k + alpha / size * s) ** beta
    return out
