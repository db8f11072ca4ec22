"""A small protobuf encoder for Caffe messages, for tests: builds .caffemodel / .binaryproto bytes.

Written from BVLC caffe.proto's field numbers (../shared/REFERENCE.md), independently of the
decoder in qcnn/readers/caffe.py. `net_from_spec` turns a qcnn spec and its tensors into a
NetParameter with either current ``layer`` messages (field 100) or V1 ``layers`` (field 2).

Messages are built as lists of byte chunks (``Parts``) and joined once, so that a 233 MB AlexNet
is not copied at every level of nesting.
"""

from __future__ import annotations

import struct

import numpy as np

VARINT, I64, LEN, I32 = 0, 1, 2, 5
Parts = list  # of bytes chunks


def flat(x) -> Parts:
    """bytes, or (nested) iterables of bytes -> one flat list of chunks."""
    if isinstance(x, (bytes, bytearray, memoryview)):
        return [bytes(x) if isinstance(x, memoryview) else x]
    return [c for p in x for c in flat(p)]


def join(x) -> bytes:
    return b"".join(flat(x))


def varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # int64 two's complement, as protobuf writes negative int64
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def key(field: int, wire: int) -> bytes:
    return varint(field << 3 | wire)


def f_varint(field: int, v: int) -> bytes:
    return key(field, VARINT) + varint(int(v))


def f_bytes(field: int, payload) -> Parts:
    chunks = flat(payload)
    return [key(field, LEN) + varint(sum(len(c) for c in chunks))] + chunks


def f_str(field: int, s: str) -> bytes:
    return join(f_bytes(field, s.encode("utf-8")))


def f_float(field: int, v: float) -> bytes:
    return key(field, I32) + struct.pack("<f", v)


def packed_varints(field: int, values) -> bytes:
    return join(f_bytes(field, b"".join(varint(int(v)) for v in values)))


def unpacked_reals(field: int, a: np.ndarray, double=False) -> bytes:
    """Each value with its own tag (what pre-packed writers produced); vectorised."""
    dt, wire = ("<f8", I64) if double else ("<f4", I32)
    tag = key(field, wire)
    vals = np.ascontiguousarray(a, dt).ravel().view(np.uint8).reshape(-1, np.dtype(dt).itemsize)
    rec = np.empty((vals.shape[0], len(tag) + vals.shape[1]), np.uint8)
    rec[:, : len(tag)] = np.frombuffer(tag, np.uint8)
    rec[:, len(tag):] = vals
    return rec.tobytes()


def blob(a: np.ndarray, legacy=False, double=False, packed=True, legacy_dims=None) -> Parts:
    """BlobProto: shape (7) or legacy num/channels/height/width (1..4), data (5) or double (8)."""
    a = np.asarray(a)
    if legacy:
        dims = legacy_dims or [1] * (4 - a.ndim) + list(a.shape)
        out = [f_varint(f, d) for f, d in zip((1, 2, 3, 4), dims, strict=True)]
    else:
        out = f_bytes(7, packed_varints(1, a.shape))
    field = 8 if double else 5
    if packed:
        out += f_bytes(field, np.ascontiguousarray(a, "<f8" if double else "<f4").tobytes())
    else:
        out.append(unpacked_reals(field, a, double))
    return out


def conv_param(s: dict, hw=False) -> bytes:
    """ConvolutionParameter of a qcnn conv spec; `hw` writes kernel_h/_w etc. (fields 9..14)."""
    (kh, kw), (sh, sw), (ph, pw) = s["kernel"], s["stride"], s["pad"]
    out = f_varint(1, s["out"])
    if not s.get("bias", True):
        out += f_varint(2, 0)
    if hw:
        out += f_varint(9, ph) + f_varint(10, pw) + f_varint(11, kh) + f_varint(12, kw)
        out += f_varint(13, sh) + f_varint(14, sw)
    else:
        if ph:
            out += f_varint(3, ph)
        out += f_varint(4, kh)
        if sh != 1:
            out += f_varint(6, sh)
    if s.get("groups", 1) != 1:
        out += f_varint(5, s["groups"])
    return out


def pool_param(s: dict) -> bytes:
    if s["type"] == "gap":
        return f_varint(1, 1) + f_varint(12, 1)
    out = f_varint(1, 0 if s["type"] == "maxpool" else 1) + f_varint(2, s["kernel"][0])
    out += f_varint(3, s["stride"][0])
    if s["pad"][0]:
        out += f_varint(4, s["pad"][0])
    if not s.get("ceil", True):
        out += f_varint(13, 1)
    return out


def lrn_param(s: dict) -> bytes:
    return (f_varint(1, s["size"]) + f_float(2, s["alpha"]) + f_float(3, s["beta"])
            + f_float(5, s["k"]))


# current LayerParameter: type string, blobs 7, params 106/117/118/121/108
# V1LayerParameter: type enum 5, name 4, blobs 6, params 10/17/18/19/12
_V1_ENUM = {"Convolution": 4, "InnerProduct": 14, "LRN": 15, "Pooling": 17, "ReLU": 18,
            "Dropout": 6, "Softmax": 20, "Concat": 3, "Data": 5}
_PARAM_FIELD = {  # type -> (current field, V1 field)
    "Convolution": (106, 10), "InnerProduct": (117, 17), "LRN": (118, 18), "Pooling": (121, 19),
    "Dropout": (108, 12),
}


def layer(name: str, ltype: str, blobs=(), param: bytes | None = None, v1=False,
          bottom=(), top=()) -> Parts:
    """One LayerParameter (or V1LayerParameter when `v1`): the chunks of its message."""
    if v1:
        out = [f_str(2, b) for b in bottom] + [f_str(3, t) for t in top]
        out += [f_str(4, name), f_varint(5, _V1_ENUM[ltype])]
        out += flat(f_bytes(6, b) for b in blobs)
    else:
        out = [f_str(1, name), f_str(2, ltype)]
        out += [f_str(3, b) for b in bottom] + [f_str(4, t) for t in top]
        out += flat(f_bytes(7, b) for b in blobs)
    if param is not None:
        out += f_bytes(_PARAM_FIELD[ltype][1 if v1 else 0], param)
    return out


def _layers(spec, tensors, v1, legacy_blobs, hw, bottom):
    out = []
    for s in spec:
        t, name = s["type"], s["name"]
        if t == "flatten":
            continue  # Caffe's InnerProduct flattens its input itself
        if t == "concat":
            tops = []
            for branch in s["branches"]:
                sub, last = _layers(branch, tensors, v1, legacy_blobs, hw, bottom)
                out += sub
                tops.append(last)
            out.append(layer(name, "Concat", v1=v1, bottom=tops, top=[name]))
            bottom = name
            continue
        blobs, param, ltype = [], None, None
        if t in ("conv", "linear"):
            ltype = "Convolution" if t == "conv" else "InnerProduct"
            param = conv_param(s, hw) if t == "conv" else f_varint(1, s["out"])
            w = tensors[f"{name}.weight"]
            blobs.append(blob(w, legacy=legacy_blobs))
            if s.get("bias", True):
                blobs.append(blob(tensors[f"{name}.bias"], legacy=legacy_blobs))
        elif t in ("maxpool", "avgpool", "gap"):
            ltype, param = "Pooling", pool_param(s)
        elif t == "lrn":
            ltype, param = "LRN", lrn_param(s)
        elif t == "relu":
            ltype = "ReLU"
        elif t == "dropout":
            ltype, param = "Dropout", f_float(1, 0.5)
        elif t == "softmax":
            ltype = "Softmax"
        else:
            raise ValueError(f"no Caffe layer for spec type {t!r}")
        in_place = t in ("relu", "dropout")
        top = bottom if in_place else name
        out.append(layer(name, ltype, blobs, param, v1, bottom=[bottom], top=[top]))
        bottom = top
    return out, bottom


def net_from_spec(spec: list[dict], tensors: dict, v1=False, legacy_blobs=None, hw=False,
                  name="net", input_dim=None) -> bytes:
    """A NetParameter (.caffemodel bytes) for a qcnn spec and its tensors.

    `v1` writes V1 ``layers`` (field 2) with legacy 4-D blobs by default; otherwise current
    ``layer`` (field 100) with BlobShape. `hw` writes kernel_h/kernel_w/... fields for convs.
    """
    legacy_blobs = v1 if legacy_blobs is None else legacy_blobs
    out = f_str(1, name)
    if input_dim:
        out += b"".join(f_varint(4, d) for d in input_dim)
    layers, _ = _layers(spec, tensors, v1, legacy_blobs, hw, "data")
    field = 2 if v1 else 100
    return join([out, *(f_bytes(field, m) for m in layers)])


def mean_binaryproto(mean: np.ndarray, legacy=True) -> bytes:
    """A BlobProto holding a (C, H, W) mean image as (1, C, H, W)."""
    return join(blob(np.asarray(mean)[None], legacy=legacy))
