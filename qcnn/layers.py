"""Float layers: the reference semantics and the speed baseline (im2col + BLAS).

Tensors are float32 NCHW (Linear: (N, C)). Every layer holds its parameters, is called on an array
and describes itself with ``spec()`` / ``tensors()`` so a :class:`qcnn.net.Net` can save and rebuild it.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "Conv2d", "Linear", "ReLU", "MaxPool2d", "AvgPool2d", "GlobalAvgPool", "LRN",
    "Dropout", "Flatten", "Softmax", "pair", "pool_output_size", "check_tensor",
]


def pair(v) -> tuple[int, int]:
    """``3 -> (3, 3)``; ``(3, 1) -> (3, 1)``."""
    if isinstance(v, (tuple, list)):
        a, b = v
        return int(a), int(b)
    return int(v), int(v)


def check_tensor(tensors: dict, key: str, shape: tuple, dtype=np.float32) -> np.ndarray:
    """Fetch ``tensors[key]`` and insist on its shape; the error names the tensor and both shapes."""
    if key not in tensors:
        raise ValueError(f"missing tensor {key!r} (expected shape {tuple(shape)})")
    a = np.asarray(tensors[key])
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"tensor {key!r} has shape {tuple(a.shape)}, expected {tuple(shape)}")
    if dtype is not None and a.dtype != dtype:
        a = a.astype(dtype)
    return a


def _as_input(x: np.ndarray, ndim: int, who: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != ndim:
        raise ValueError(f"{who}: expected a {ndim}-d input, got shape {x.shape}")
    if x.dtype != np.float32:
        x = x.astype(np.float32)
    return x


def pool_output_size(size: int, kernel: int, stride: int, pad: int, ceil: bool) -> int:
    """Caffe's pooled size (``ceil=True``) or the floor mode; a window may not start in the padding."""
    span = size + 2 * pad - kernel
    out = (-(-span // stride) if ceil else span // stride) + 1
    if pad > 0 and (out - 1) * stride >= size + pad:
        out -= 1
    return max(out, 1)


class Conv2d:
    """2-D convolution (cross-correlation) with stride, zero padding, groups and bias."""

    def __init__(self, weight, bias=None, stride=1, padding=0, groups=1, name="conv"):
        self.weight = np.ascontiguousarray(weight, dtype=np.float32)
        if self.weight.ndim != 4:
            raise ValueError(f"{name}: weight must be (out, in/groups, kh, kw), got {self.weight.shape}")
        out = self.weight.shape[0]
        self.bias = None if bias is None else np.ascontiguousarray(bias, dtype=np.float32).reshape(out)
        self.stride, self.padding, self.groups, self.name = pair(stride), pair(padding), int(groups), name
        if out % self.groups:
            raise ValueError(f"{name}: {out} output channels do not split into {groups} groups")

    @property
    def in_channels(self) -> int:
        return self.weight.shape[1] * self.groups

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    @property
    def kernel(self) -> tuple[int, int]:
        return self.weight.shape[2], self.weight.shape[3]

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1

    #: ``Net`` may call ``layer(x, relu=True)`` in place of this layer and a following ReLU.
    fuses_relu = True

    def __call__(self, x, relu: bool = False):
        x = _as_input(x, 4, self.name)
        n, c, h, w = x.shape
        if c != self.in_channels:
            raise ValueError(f"{self.name}: expected {self.in_channels} input channels, got {c}")
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        ho, wo = self.output_size(h, w)
        if ph or pw:
            x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
        g, cg, og = self.groups, c // self.groups, self.out_channels // self.groups
        out = np.empty((n, self.out_channels, ho * wo), np.float32)
        for b in range(n):
            # cols[c, i, j, oh, ow]: one im2col matrix (C*kh*kw, Ho*Wo) per image, then one GEMM per group
            win = np.lib.stride_tricks.sliding_window_view(x[b], (kh, kw), axis=(1, 2))
            win = win[:, : (ho - 1) * sh + 1 : sh, : (wo - 1) * sw + 1 : sw]
            cols = np.ascontiguousarray(win.transpose(0, 3, 4, 1, 2)).reshape(g, cg * kh * kw, ho * wo)
            wmat = self.weight.reshape(g, og, cg * kh * kw)
            for gi in range(g):
                np.matmul(wmat[gi], cols[gi], out=out[b, gi * og : (gi + 1) * og])
        if self.bias is not None:
            out += self.bias[None, :, None]
        if relu:
            np.maximum(out, np.float32(0), out=out)
        return out.reshape(n, self.out_channels, ho, wo)

    def spec(self) -> dict:
        return {"type": "conv", "name": self.name, "in": self.in_channels, "out": self.out_channels,
                "kernel": list(self.kernel), "stride": list(self.stride), "pad": list(self.padding),
                "groups": self.groups, "bias": self.bias is not None}

    def tensors(self) -> dict:
        t = {f"{self.name}.weight": self.weight}
        if self.bias is not None:
            t[f"{self.name}.bias"] = self.bias
        return t

    @classmethod
    def from_spec(cls, s: dict, tensors: dict) -> Conv2d:
        name, g = s["name"], int(s.get("groups", 1))
        kh, kw = pair(s["kernel"])
        if s["in"] % g:
            raise ValueError(f"{name}: {s['in']} input channels do not split into {g} groups")
        w = check_tensor(tensors, f"{name}.weight", (s["out"], s["in"] // g, kh, kw))
        b = check_tensor(tensors, f"{name}.bias", (s["out"],)) if s.get("bias", True) else None
        return cls(w, b, s.get("stride", 1), s.get("pad", 0), g, name)


class Linear:
    """Fully connected layer: ``y = x @ W.T + b`` on (N, C) inputs."""

    def __init__(self, weight, bias=None, name="fc"):
        self.weight = np.ascontiguousarray(weight, dtype=np.float32)
        if self.weight.ndim != 2:
            raise ValueError(f"{name}: weight must be (out, in), got {self.weight.shape}")
        out = self.weight.shape[0]
        self.bias = None if bias is None else np.ascontiguousarray(bias, dtype=np.float32).reshape(out)
        self.name = name

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def __call__(self, x):
        x = _as_input(x, 2, self.name)
        if x.shape[1] != self.in_features:
            raise ValueError(f"{self.name}: expected {self.in_features} input features, got {x.shape[1]}")
        y = x @ self.weight.T
        if self.bias is not None:
            y += self.bias
        return y

    def spec(self) -> dict:
        return {"type": "linear", "name": self.name, "in": self.in_features, "out": self.out_features,
                "bias": self.bias is not None}

    def tensors(self) -> dict:
        t = {f"{self.name}.weight": self.weight}
        if self.bias is not None:
            t[f"{self.name}.bias"] = self.bias
        return t

    @classmethod
    def from_spec(cls, s: dict, tensors: dict) -> Linear:
        name = s["name"]
        w = check_tensor(tensors, f"{name}.weight", (s["out"], s["in"]))
        b = check_tensor(tensors, f"{name}.bias", (s["out"],)) if s.get("bias", True) else None
        return cls(w, b, name)


class _Stateless:
    """A layer without parameters whose spec is its type, its name and its settings."""

    type = ""
    fields: tuple[str, ...] = ()

    def spec(self) -> dict:
        s = {"type": self.type, "name": self.name}
        s.update({f: getattr(self, f) for f in self.fields})
        return s

    def tensors(self) -> dict:
        return {}

    @classmethod
    def from_spec(cls, s: dict, tensors: dict):
        return cls(**{f: s[f] for f in cls.fields if f in s}, name=s["name"])


class ReLU(_Stateless):
    type = "relu"

    def __init__(self, name="relu"):
        self.name = name

    def __call__(self, x):
        return np.maximum(_as_input(x, np.ndim(x), self.name), np.float32(0))


class Dropout(_Stateless):
    """Identity at test time."""

    type = "dropout"

    def __init__(self, name="dropout"):
        self.name = name

    def __call__(self, x):
        return x


class Flatten(_Stateless):
    """(N, C, H, W) -> (N, C*H*W) in C, H, W order (as Caffe and PyTorch)."""

    type = "flatten"

    def __init__(self, name="flatten"):
        self.name = name

    def __call__(self, x):
        x = np.asarray(x)
        return x.reshape(x.shape[0], -1)


class Softmax(_Stateless):
    """Softmax over axis 1."""

    type = "softmax"

    def __init__(self, name="prob"):
        self.name = name

    def __call__(self, x):
        x = _as_input(x, np.ndim(x), self.name)
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)


class GlobalAvgPool(_Stateless):
    """(N, C, H, W) -> (N, C, 1, 1)."""

    type = "gap"

    def __init__(self, name="pool"):
        self.name = name

    def __call__(self, x):
        return _as_input(x, 4, self.name).mean(axis=(2, 3), keepdims=True, dtype=np.float32)


class _Pool2d(_Stateless):
    fields = ("kernel", "stride", "pad", "ceil")

    def __init__(self, kernel, stride=None, pad=0, ceil=True, name="pool"):
        self.kernel = list(pair(kernel))
        self.stride = list(pair(stride if stride is not None else kernel))
        self.pad, self.ceil, self.name = list(pair(pad)), bool(ceil), name

    def _windows(self, x):
        """Yield (view of the padded input for one kernel offset) and the output size."""
        x = _as_input(x, 4, self.name)
        n, c, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.pad
        ho = pool_output_size(h, kh, sh, ph, self.ceil)
        wo = pool_output_size(w, kw, sw, pw, self.ceil)
        # pad so that every window of the ceil-mode grid lies inside the array
        hp, wp = (ho - 1) * sh + kh, (wo - 1) * sw + kw
        return x, (ho, wo), (hp, wp)


class MaxPool2d(_Pool2d):
    """Max pooling; ``ceil=True`` gives Caffe's (and torch's ceil_mode) output size."""

    type = "maxpool"

    def __call__(self, x):
        x, out_size, _ = self._windows(x)
        from . import kernels  # here, not at import: specs and `qcnn models` need no Numba

        return kernels.maxpool(x, self.kernel, self.stride, self.pad, out_size)


class AvgPool2d(_Pool2d):
    """Average pooling with Caffe's divisor: the window clipped to the padded input, pad included."""

    type = "avgpool"

    def __call__(self, x):
        x, (ho, wo), (hp, wp) = self._windows(x)
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.pad
        n, c, h, w = x.shape
        xp = np.zeros((n, c, max(hp, h + 2 * ph), max(wp, w + 2 * pw)), np.float32)
        xp[:, :, ph : ph + h, pw : pw + w] = x
        out = np.zeros((n, c, ho, wo), np.float32)
        for i in range(kh):
            for j in range(kw):
                out += xp[:, :, i : i + (ho - 1) * sh + 1 : sh, j : j + (wo - 1) * sw + 1 : sw]
        hs = np.arange(ho) * sh
        ws = np.arange(wo) * sw
        dh = np.minimum(hs + kh, h + 2 * ph) - hs
        dw = np.minimum(ws + kw, w + 2 * pw) - ws
        return out / (dh[:, None] * dw[None, :]).astype(np.float32)


class LRN(_Stateless):
    """Caffe's across-channel LRN: ``x / (k + alpha/size * sum of x^2 over size channels)^beta``.

    The window of channel c is ``[c - (size-1)//2, c - (size-1)//2 + size)`` clipped to the input;
    computed by one kernel pass (:func:`qcnn.kernels.lrn`).
    """

    type = "lrn"
    fields = ("size", "alpha", "beta", "k")

    def __init__(self, size=5, alpha=1e-4, beta=0.75, k=1.0, name="norm"):
        self.size, self.alpha, self.beta, self.k = int(size), float(alpha), float(beta), float(k)
        self.name = name

    def __call__(self, x):
        from . import kernels

        return kernels.lrn(_as_input(x, 4, self.name), self.size, self.alpha, self.beta, self.k)
