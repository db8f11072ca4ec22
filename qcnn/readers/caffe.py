"""Caffe .caffemodel and .binaryproto files, read with a minimal protobuf wire-format decoder.

Field numbers follow BVLC caffe.proto (see ../shared/REFERENCE.md). Three generations of layer
messages are understood: current ``NetParameter.layer`` (field 100, ``LayerParameter`` with a string
type), ``NetParameter.layers`` (field 2, ``V1LayerParameter`` with an enum type, as in the 2014
models) and the ``V0LayerParameter`` nested in field 1 of the latter (2013 files).

Blobs become tensors named ``"<layer>.weight"`` (blob 0), ``"<layer>.bias"`` (blob 1) and
``"<layer>.blob<i>"`` (any further blob); InnerProduct weights are returned as (out, in),
convolution weights as (out, in / group, kh, kw). The file is memory-mapped while it is decoded and
each tensor is copied out once (aligned, writable), so reading takes about one file's worth of
memory.
"""

from __future__ import annotations

import math
import mmap
import os

import numpy as np

from . import _SUPPORTED, Weights

__all__ = ["read", "read_mean", "check_architecture"]

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_RUN = -1  # a run of unpacked fixed-size values with the same one-byte tag: (start, count, stride)


class _Corrupt(Exception):
    """Raised inside the decoder; `read` turns it into a ValueError naming the file."""


# ---------------------------------------------------------------- protobuf wire format
def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise _Corrupt(f"varint runs past the end of its message at byte {pos}")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise _Corrupt(f"varint longer than 10 bytes at byte {pos}")


def _parse(buf, start: int, end: int) -> dict[int, list]:
    """One message: field number -> list of (wire type, value[, ...]) in file order.

    varint: (0, int); fixed64/fixed32: (1 or 5, byte offset); length-delimited: (2, start, end);
    a run of unpacked fixed-size values with one one-byte tag: (_RUN, start, count, stride, wire).
    """
    msg: dict[int, list] = {}
    pos = start
    while pos < end:
        tag_pos = pos
        tag, pos = _varint(buf, pos, end)
        num, wire = tag >> 3, tag & 7
        if num == 0:
            raise _Corrupt(f"field number 0 at byte {tag_pos}")
        if wire == _VARINT:
            v, pos = _varint(buf, pos, end)
            entry = (wire, v)
        elif wire == _LEN:
            n, pos = _varint(buf, pos, end)
            if pos + n > end:
                raise _Corrupt(f"field {num} at byte {tag_pos} claims {n} bytes, only {end - pos} "
                               "remain")
            entry = (wire, pos, pos + n)
            pos += n
        elif wire in (_I32, _I64):
            size = 4 if wire == _I32 else 8
            if pos + size > end:
                raise _Corrupt(f"fixed-size field {num} at byte {tag_pos} runs past the end")
            rec = size + (pos - tag_pos)
            if pos - tag_pos == 1 and pos + size < end and buf[pos + size] == buf[tag_pos]:
                # Unpacked repeated floats (old writers): find the whole run at once.
                count = (end - tag_pos) // rec
                tags = np.frombuffer(buf, np.uint8, count * rec, tag_pos).reshape(count, rec)[:, 0]
                bad = np.flatnonzero(tags != buf[tag_pos])
                count = int(bad[0]) if bad.size else count
                entry = (_RUN, pos, count, rec, wire)
                pos = tag_pos + count * rec
            else:
                entry = (wire, pos)
                pos += size
        else:
            raise _Corrupt(f"unsupported wire type {wire} (field {num}) at byte {tag_pos}")
        msg.setdefault(num, []).append(entry)
    if pos != end:
        raise _Corrupt(f"message overruns its end at byte {end}")
    return msg


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _uints(buf, msg, num) -> list[int]:
    """All values of a repeated integer field, packed or not (int64 read as signed)."""
    out = []
    for e in msg.get(num, ()):
        if e[0] == _VARINT:
            out.append(_signed(e[1]))
        elif e[0] == _LEN:
            pos, end = e[1], e[2]
            while pos < end:
                v, pos = _varint(buf, pos, end)
                out.append(_signed(v))
        else:
            raise _Corrupt(f"field {num} should hold integers, has wire type {e[0]}")
    return out


def _int(buf, msg, num, default=None):
    vals = _uints(buf, msg, num)
    return vals[-1] if vals else default


def _float(buf, msg, num, default=None):
    entries = msg.get(num)
    if not entries:
        return default
    vals = _reals(buf, msg, num, "<f4")
    if vals.size == 0:
        return default
    # A float32 proto value, shown as the decimal the file's author typed (1e-4, not 9.99e-05).
    return float(str(np.float32(vals[-1])))


def _reals(buf, msg, num, dtype) -> np.ndarray:
    """All values of a repeated float (``<f4``) or double (``<f8``) field, packed or not."""
    size = np.dtype(dtype).itemsize
    wire = _I32 if size == 4 else _I64
    parts = []
    for e in msg.get(num, ()):
        if e[0] == _LEN:
            n = e[2] - e[1]
            if n % size:
                raise _Corrupt(f"packed field {num} holds {n} bytes, not a multiple of {size}")
            parts.append(np.frombuffer(buf, dtype, n // size, e[1]))
        elif e[0] == wire:
            parts.append(np.frombuffer(buf, dtype, 1, e[1]))
        elif e[0] == _RUN and e[4] == wire:
            _, start, count, stride, _ = e
            raw = np.frombuffer(buf, np.uint8, count * stride, start - (stride - size))
            parts.append(raw.reshape(count, stride)[:, stride - size:].copy().view(dtype).ravel())
        else:
            raise _Corrupt(f"field {num} should hold {dtype} reals, has wire type {e[0]}")
    if not parts:
        return np.empty(0, dtype)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _strs(buf, msg, num) -> list[str]:
    out = []
    for e in msg.get(num, ()):
        if e[0] != _LEN:
            raise _Corrupt(f"field {num} should be a string, has wire type {e[0]}")
        try:
            out.append(bytes(buf[e[1]:e[2]]).decode("utf-8"))
        except UnicodeDecodeError:
            raise _Corrupt(f"field {num} is not valid UTF-8") from None
    return out


def _str(buf, msg, num, default=None):
    vals = _strs(buf, msg, num)
    return vals[-1] if vals else default


def _msgs(buf, msg, num) -> list[dict]:
    out = []
    for e in msg.get(num, ()):
        if e[0] != _LEN:
            raise _Corrupt(f"field {num} should be a message, has wire type {e[0]}")
        out.append(_parse(buf, e[1], e[2]))
    return out


def _msg(buf, msg, num) -> dict | None:
    subs = _msgs(buf, msg, num)
    if not subs:
        return None
    merged: dict[int, list] = {}  # protobuf merges repeated occurrences of a message field
    for s in subs:
        for k, v in s.items():
            merged.setdefault(k, []).extend(v)
    return merged


# ---------------------------------------------------------------- Caffe messages
_V1_TYPES = {
    0: "None", 1: "Accuracy", 2: "BNLL", 3: "Concat", 4: "Convolution", 5: "Data", 6: "Dropout",
    7: "EuclideanLoss", 8: "Flatten", 9: "HDF5Data", 10: "HDF5Output", 11: "Im2col",
    12: "ImageData", 13: "InfogainLoss", 14: "InnerProduct", 15: "LRN",
    16: "MultinomialLogisticLoss", 17: "Pooling", 18: "ReLU", 19: "Sigmoid", 20: "Softmax",
    21: "SoftmaxWithLoss", 22: "Split", 23: "TanH", 24: "WindowData", 25: "Eltwise", 26: "Power",
    27: "SigmoidCrossEntropyLoss", 28: "HingeLoss", 29: "MemoryData", 30: "ArgMax",
    31: "Threshold", 32: "DummyData", 33: "Slice", 34: "MVN", 35: "AbsVal", 36: "Silence",
    37: "ContrastiveLoss", 38: "Exp", 39: "Deconvolution",
}
_V0_TYPES = {
    "conv": "Convolution", "innerproduct": "InnerProduct", "pool": "Pooling", "lrn": "LRN",
    "relu": "ReLU", "dropout": "Dropout", "softmax": "Softmax", "softmax_loss": "SoftmaxWithLoss",
    "concat": "Concat", "data": "Data", "flatten": "Flatten", "padding": "Padding",
    "split": "Split", "sigmoid": "Sigmoid", "tanh": "TanH", "accuracy": "Accuracy",
}
_POOL_METHODS = {0: "MAX", 1: "AVE", 2: "STOCHASTIC"}


def _pair(values: list[int], h, w, default) -> list[int] | None:
    """kernel/stride/pad: explicit _h/_w, else one value for both, else one per dimension."""
    if h is not None or w is not None:
        return [h if h is not None else default, w if w is not None else default]
    if not values:
        return None if default is None else [default, default]
    return [values[0], values[0]] if len(values) == 1 else list(values)


def _conv_info(buf, p) -> dict:
    p = p or {}
    return {
        "num_output": _int(buf, p, 1),
        "bias_term": bool(_int(buf, p, 2, 1)),
        "kernel": _pair(_uints(buf, p, 4), _int(buf, p, 11), _int(buf, p, 12), None),
        "stride": _pair(_uints(buf, p, 6), _int(buf, p, 13), _int(buf, p, 14), 1),
        "pad": _pair(_uints(buf, p, 3), _int(buf, p, 9), _int(buf, p, 10), 0),
        "group": _int(buf, p, 5, 1),
        "dilation": _pair(_uints(buf, p, 18), None, None, 1),
    }


def _pool_info(buf, p) -> dict:
    p = p or {}
    return {
        "pool": _POOL_METHODS.get(_int(buf, p, 1, 0), str(_int(buf, p, 1))),
        "kernel": _pair(_uints(buf, p, 2), _int(buf, p, 5), _int(buf, p, 6), None),
        "stride": _pair(_uints(buf, p, 3), _int(buf, p, 7), _int(buf, p, 8), 1),
        "pad": _pair(_uints(buf, p, 4), _int(buf, p, 9), _int(buf, p, 10), 0),
        "global_pooling": bool(_int(buf, p, 12, 0)),
        "round_mode": {0: "CEIL", 1: "FLOOR"}.get(_int(buf, p, 13, 0), "?"),
    }


def _lrn_info(buf, p) -> dict:
    p = p or {}
    return {
        "local_size": _int(buf, p, 1, 5),
        "alpha": _float(buf, p, 2, 1.0),
        "beta": _float(buf, p, 3, 0.75),
        "norm_region": {0: "ACROSS_CHANNELS", 1: "WITHIN_CHANNEL"}.get(_int(buf, p, 4, 0), "?"),
        "k": _float(buf, p, 5, 1.0),
    }


def _ip_info(buf, p) -> dict:
    p = p or {}
    return {"num_output": _int(buf, p, 1), "bias_term": bool(_int(buf, p, 2, 1)),
            "axis": _int(buf, p, 5, 1), "transpose": bool(_int(buf, p, 6, 0))}


def _params(buf, layer, ltype, fields) -> dict:
    """Type-specific settings; `fields` gives the sub-message field numbers of this generation."""
    conv_f, ip_f, lrn_f, pool_f, drop_f = fields
    if ltype in ("Convolution", "Deconvolution"):
        return _conv_info(buf, _msg(buf, layer, conv_f))
    if ltype == "InnerProduct":
        return _ip_info(buf, _msg(buf, layer, ip_f))
    if ltype == "LRN":
        return _lrn_info(buf, _msg(buf, layer, lrn_f))
    if ltype == "Pooling":
        return _pool_info(buf, _msg(buf, layer, pool_f))
    if ltype == "Dropout":
        return {"dropout_ratio": _float(buf, _msg(buf, layer, drop_f) or {}, 1, 0.5)}
    return {}


def _v0_params(buf, v0, ltype) -> dict:
    if ltype == "Convolution":
        k, s, p = _int(buf, v0, 8), _int(buf, v0, 10, 1), _int(buf, v0, 7, 0)
        return {"num_output": _int(buf, v0, 3), "bias_term": bool(_int(buf, v0, 4, 1)),
                "kernel": None if k is None else [k, k], "stride": [s, s], "pad": [p, p],
                "group": _int(buf, v0, 9, 1), "dilation": [1, 1]}
    if ltype == "InnerProduct":
        return {"num_output": _int(buf, v0, 3), "bias_term": bool(_int(buf, v0, 4, 1)),
                "axis": 1, "transpose": False}
    if ltype == "Pooling":
        k, s, p = _int(buf, v0, 8), _int(buf, v0, 10, 1), _int(buf, v0, 7, 0)
        return {"pool": _POOL_METHODS.get(_int(buf, v0, 11, 0), "?"),
                "kernel": None if k is None else [k, k], "stride": [s, s], "pad": [p, p],
                "global_pooling": False, "round_mode": "CEIL"}
    if ltype == "LRN":
        return {"local_size": _int(buf, v0, 13, 5), "alpha": _float(buf, v0, 14, 1.0),
                "beta": _float(buf, v0, 15, 0.75), "norm_region": "ACROSS_CHANNELS",
                "k": _float(buf, v0, 22, 1.0)}
    if ltype == "Dropout":
        return {"dropout_ratio": _float(buf, v0, 12, 0.5)}
    if ltype == "Padding":
        p = _int(buf, v0, 7, 0)
        return {"pad": [p, p]}
    return {}


def _blob(buf, b, where: str) -> tuple[np.ndarray, bool]:
    """A BlobProto's data in its declared shape, and whether the shape was the legacy 4-D one."""
    shape_msg = _msg(buf, b, 7)
    legacy = shape_msg is None
    if not legacy:
        shape = _uints(buf, shape_msg, 1)
    else:
        shape = [_int(buf, b, f, 0) for f in (1, 2, 3, 4)]
    data = _reals(buf, b, 5, "<f4")
    if data.size == 0:
        data = _reals(buf, b, 8, "<f8").astype(np.float32)
    if legacy and not any(f in b for f in (1, 2, 3, 4)):
        shape = [data.size]  # no shape at all: a flat blob
    if any(d < 0 for d in shape):
        raise _Corrupt(f"{where} has negative dimensions {shape}")
    count = math.prod(shape)
    if data.size != count:
        raise _Corrupt(f"{where} holds {data.size} values but its shape {tuple(shape)} needs "
                       f"{count}")
    return data.reshape(shape), legacy


def _layer_tensors(name, info, blobs) -> dict[str, np.ndarray]:
    out = {}
    for i, (a, legacy) in enumerate(blobs):
        key = f"{name}.{('weight', 'bias')[i] if i < 2 else f'blob{i}'}"
        if i == 1 and sum(d != 1 for d in a.shape) <= 1:
            a = a.reshape(-1)  # legacy biases are stored 1x1x1xN
        elif i == 0 and info["type"] == "InnerProduct":
            rows = info.get("num_output")
            if info.get("transpose") or not rows or a.size % rows:
                rows = a.shape[-2] if legacy and a.ndim == 4 else a.shape[0] if a.ndim else 1
            a = a.reshape(rows, -1)
            if info.get("transpose"):
                a = np.ascontiguousarray(a.T)
        out[key] = np.array(a, np.float32)  # own, aligned memory; the file is unmapped after
    return out


def _read_net(buf) -> tuple[dict, dict, dict]:
    net = _parse(buf, 0, len(buf))
    tensors: dict[str, np.ndarray] = {}
    layers: dict[str, dict] = {}
    meta = {}
    if (name := _str(buf, net, 1)) is not None:
        meta["name"] = name
    if dims := _uints(buf, net, 4):
        meta["input_dim"] = dims

    records = []  # (name, info, blob messages)
    for layer in _msgs(buf, net, 100):  # current LayerParameter
        ltype = _str(buf, layer, 2, "")
        info = {"type": ltype, "bottom": _strs(buf, layer, 3), "top": _strs(buf, layer, 4),
                **_params(buf, layer, ltype, (106, 117, 118, 121, 108))}
        records.append((_str(buf, layer, 1, ""), info, _msgs(buf, layer, 7)))
    pending_pad = None
    for layer in _msgs(buf, net, 2):  # V1LayerParameter, or a V0 layer wrapped in one
        bottom, top = _strs(buf, layer, 2), _strs(buf, layer, 3)
        v0 = _msg(buf, layer, 1)
        if v0 is not None:
            raw = _str(buf, v0, 2, "")
            ltype = _V0_TYPES.get(raw, raw)
            info = {"type": ltype, "bottom": bottom, "top": top, **_v0_params(buf, v0, ltype)}
            if ltype == "Padding":  # Caffe's V0 upgrade folds a padding layer into the next conv
                pending_pad = info["pad"]
            elif ltype == "Convolution" and pending_pad is not None:
                info["pad"], pending_pad = pending_pad, None
            records.append((_str(buf, v0, 1, ""), info, _msgs(buf, v0, 50)))
            continue
        code = _int(buf, layer, 5, 0)
        ltype = _V1_TYPES.get(code, f"V1_TYPE_{code}")
        info = {"type": ltype, "bottom": bottom, "top": top,
                **_params(buf, layer, ltype, (10, 17, 18, 19, 12))}
        records.append((_str(buf, layer, 4, ""), info, _msgs(buf, layer, 6)))

    for name, info, blob_msgs in records:
        if name in layers:
            if blob_msgs and any(k.startswith(f"{name}.") for k in tensors):
                raise _Corrupt(f"two layers named {name!r} both carry weights")
            if not blob_msgs:
                continue
        blobs = [_blob(buf, b, f"blob {i} of layer {name!r}") for i, b in enumerate(blob_msgs)]
        info["blob_shapes"] = [list(a.shape) for a, _ in blobs]
        layers[name] = info
        tensors.update(_layer_tensors(name, info, blobs))
    return tensors, layers, meta


def _load(path):
    """The file's bytes, memory-mapped (page cache, not process memory) unless empty."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return b""
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def read(path) -> Weights:
    """Read a Caffe ``.caffemodel`` (a serialized ``NetParameter``).

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    Weights
        ``tensors``: ``"<layer>.weight"`` / ``"<layer>.bias"`` as float32; ``layers``: per layer
        (file order) its ``type`` ("Convolution", "InnerProduct", "LRN", "Pooling", ...),
        ``bottom``/``top``, ``blob_shapes`` and settings: ``num_output``, ``kernel``, ``stride``,
        ``pad``, ``group``, ``bias_term`` (conv); ``local_size``, ``alpha``, ``beta``, ``k``
        (LRN); ``pool``, ``kernel``, ``stride``, ``pad``, ``global_pooling``, ``round_mode``
        (pooling).

    Raises
    ------
    ValueError
        Truncated or corrupt file, or a protobuf holding no layers (the message names the file).

    Examples
    --------
    >>> w = read("bvlc_alexnet.caffemodel")  # doctest: +SKIP
    >>> w.tensors["conv2.weight"].shape, w.layers["conv2"]["group"]  # doctest: +SKIP
    ((256, 48, 5, 5), 2)
    """
    path = os.fspath(path)
    buf = _load(path)
    try:
        tensors, layers, meta = _read_net(buf)
    except _Corrupt as e:
        raise ValueError(f"{path} is not a zip (.pth, .npz) nor safetensors, and does not parse "
                         f"as a Caffe protobuf ({e}): it is truncated or corrupt (download it "
                         f"again) or not a weights file. Supported formats: {_SUPPORTED}") from None
    if not layers:
        raise ValueError(f"{path} parses as a protobuf but holds no Caffe layers: not a "
                         ".caffemodel (for a mean .binaryproto use read_mean). Supported "
                         f"formats: {_SUPPORTED}")
    return Weights(tensors=tensors, format="caffe", path=path, layers=layers, metadata=meta)


def read_mean(path) -> np.ndarray:
    """The mean image of a Caffe ``.binaryproto`` file (a serialized ``BlobProto``).

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    np.ndarray
        (C, H, W) float32, channels in the file's order (BGR for the Caffe ImageNet models).

    Examples
    --------
    >>> m = read_mean("ilsvrc_2012_mean.binaryproto")  # doctest: +SKIP
    >>> m.shape, m.mean(axis=(1, 2)).round(1)  # doctest: +SKIP
    ((3, 256, 256), array([104. , 116.7, 122.7], dtype=float32))
    """
    path = os.fspath(path)
    buf = _load(path)
    try:
        a, _ = _blob(buf, _parse(buf, 0, len(buf)), "the mean blob")
        a = np.array(a, np.float32)
    except _Corrupt as e:
        raise ValueError(f"{path} is not a valid Caffe .binaryproto mean file ({e})") from None
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 3 or a.size == 0:
        raise ValueError(f"{path}: expected a (1, C, H, W) or (C, H, W) mean image, found shape "
                         f"{a.shape}")
    return a


# ---------------------------------------------------------------- architecture check
def _leaves(spec):
    for s in spec:
        if s["type"] == "concat":
            for b in s["branches"]:
                yield from _leaves(b)
        else:
            yield s


def _expected(s: dict) -> dict | None:
    t = s["type"]
    if t == "conv":
        return {"type": "Convolution", "num_output": s["out"], "kernel": list(s["kernel"]),
                "stride": list(s["stride"]), "pad": list(s["pad"]), "dilation": [1, 1],
                "group": s.get("groups", 1), "bias_term": s.get("bias", True)}
    if t == "linear":
        return {"type": "InnerProduct", "num_output": s["out"], "bias_term": s.get("bias", True)}
    if t in ("maxpool", "avgpool"):
        return {"type": "Pooling", "pool": "MAX" if t == "maxpool" else "AVE",
                "kernel": list(s["kernel"]), "stride": list(s["stride"]), "pad": list(s["pad"]),
                "global_pooling": False, "round_mode": "CEIL" if s.get("ceil", True) else "FLOOR"}
    if t == "gap":
        return {"type": "Pooling", "pool": "AVE", "global_pooling": True}
    if t == "lrn":
        return {"type": "LRN", "local_size": s["size"], "alpha": s["alpha"], "beta": s["beta"],
                "k": s["k"], "norm_region": "ACROSS_CHANNELS"}
    return None


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=0.0)
        except (TypeError, ValueError):
            return False
    return a == b


def check_architecture(weights: Weights, spec: list[dict]) -> None:
    """Check a Caffe file's own layer settings against a qcnn spec.

    Compares, for every conv, linear, pooling and LRN layer of the spec (descending into concat
    branches), the file's declared type, ``num_output``, ``kernel``, ``stride``, ``pad``, ``group``,
    ``bias_term``, pooling method and rounding, and LRN ``local_size``/``alpha``/``beta``/``k``;
    layers with weights in the file but not in the spec; and the order of the layers both have.
    Tensor shapes are checked separately, by ``Net.from_spec``.

    Parameters
    ----------
    weights : Weights
        From `read` on a .caffemodel (``weights.layers`` must be filled).
    spec : list of dict
        Layer specs, e.g. ``qcnn.architectures.get("alexnet-caffe")``.

    Raises
    ------
    ValueError
        Listing every mismatch as ``layer: field: file value != spec value``.

    Examples
    --------
    >>> from qcnn import architectures
    >>> w = read("bvlc_alexnet.caffemodel")  # doctest: +SKIP
    >>> check_architecture(w, architectures.get("alexnet-caffe"))  # doctest: +SKIP
    """
    if not weights.layers:
        raise ValueError(f"{weights.path}: no per-layer settings to check (only Caffe files carry "
                         f"them; this is a {weights.format} file)")
    problems = []
    spec_names = []
    for s in _leaves(spec):
        want = _expected(s)
        if want is None:
            continue
        name = s["name"]
        info = weights.layers.get(name)
        if info is None:
            problems.append(f"{name}: layer: missing from the file (spec has a {s['type']} layer)")
            continue
        spec_names.append(name)
        for key, v in want.items():
            got = info.get(key)
            if not _same(got, v):
                problems.append(f"{name}: {key}: file {got!r} != spec {v!r}")
    spec_set = {s["name"] for s in _leaves(spec)}
    for name, info in weights.layers.items():
        if info.get("blob_shapes") and name not in spec_set:
            problems.append(f"{name}: layer: the file's {info['type']} layer with weights is not "
                            "in the spec")
    file_order = [n for n in weights.layers if n in set(spec_names)]
    if file_order != spec_names:
        problems.append(f"(layer order): file {file_order} != spec {spec_names}")
    if problems:
        raise ValueError(f"{weights.path} does not match the architecture ({len(problems)} "
                         "mismatches):\n  " + "\n  ".join(problems))

