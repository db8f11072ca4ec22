"""safetensors files, parsed by hand and memory-mapped (no dependency on the safetensors package).

Layout: 8-byte little-endian header length N, N bytes of JSON ``{name: {"dtype", "shape",
"data_offsets": [begin, end]}, "__metadata__": {str: str}}``, then the data buffer (offsets are
relative to its start). F32 tensors are returned as copy-on-write views of the mapped file; F16,
BF16 and F64 are converted to float32; integer and bool tensors go to ``Weights.other``.
"""

from __future__ import annotations

import json
import math
import os
import struct

import numpy as np

from . import Weights

__all__ = ["read"]

_FLOATS = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "BF16": "<u2"}
_OTHERS = {"I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1", "U64": "<u8", "U32": "<u4",
           "U16": "<u2", "U8": "u1", "BOOL": "?"}
_MAX_HEADER = 100 << 20  # the reference implementation's limit


def _bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    return (raw.astype(np.uint32) << 16).view(np.float32)


def read(path) -> Weights:
    """Read a ``.safetensors`` file.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    Weights
        ``tensors`` by the file's names (float32), ``metadata`` = the file's ``__metadata__``.

    Raises
    ------
    ValueError
        Bad header length or JSON, unsupported dtype, shape and byte range disagreeing, offsets
        outside the file or overlapping (the message names the file and the tensor).

    Examples
    --------
    >>> w = read("squeezenet1_1.safetensors")  # doctest: +SKIP
    >>> w.tensors["features.0.weight"].shape  # doctest: +SKIP
    (64, 3, 3, 3)
    """
    path = os.fspath(path)
    size = os.path.getsize(path)

    def bad(msg):
        return ValueError(f"{path} is not a valid safetensors file: {msg}; it may be truncated or "
                          "corrupt: download it again")

    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise bad(f"only {len(head)} bytes")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER or 8 + n > size:
            raise bad(f"header length {n} does not fit the file's {size} bytes")
        raw_header = f.read(n)
    try:
        header = json.loads(raw_header.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad(f"header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise bad("__metadata__ must map strings to strings")

    base, buf_len = 8 + n, size - 8 - n
    spans = []
    for name, info in header.items():
        if not isinstance(info, dict) or {"dtype", "shape", "data_offsets"} - set(info):
            raise bad(f"tensor {name!r} lacks dtype, shape or data_offsets")
        dtype, shape, offs = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in _FLOATS and dtype not in _OTHERS:
            raise bad(f"tensor {name!r} has dtype {dtype!r}; supported: "
                      f"{sorted(_FLOATS) + sorted(_OTHERS)}")
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            raise bad(f"tensor {name!r} has shape {shape!r}")
        if not (isinstance(offs, list) and len(offs) == 2 and all(type(o) is int for o in offs)
                and 0 <= offs[0] <= offs[1] <= buf_len):
            raise bad(f"tensor {name!r} has data_offsets {offs!r} outside the {buf_len}-byte "
                      "data buffer")
        itemsize = np.dtype(_FLOATS.get(dtype) or _OTHERS[dtype]).itemsize
        if offs[1] - offs[0] != math.prod(shape) * itemsize:
            raise bad(f"tensor {name!r}: {offs[1] - offs[0]} bytes for shape {shape} of {dtype}")
        spans.append((offs[0], offs[1], name))
    spans.sort()
    for (_, e0, n0), (b1, _, n1) in zip(spans, spans[1:], strict=False):
        if b1 < e0:
            raise bad(f"tensors {n0!r} and {n1!r} overlap")

    mm = np.memmap(path, np.uint8, mode="c", offset=base, shape=(buf_len,)) if buf_len else None
    tensors, other = {}, {}
    for name, info in header.items():
        dtype, shape = info["dtype"], tuple(info["shape"])
        b, e = info["data_offsets"]
        np_dtype = np.dtype(_FLOATS.get(dtype) or _OTHERS[dtype])
        raw = (np.asarray(mm[b:e]) if e > b else np.empty(0, np.uint8)).view(np_dtype)
        raw = raw.reshape(shape)
        if not raw.flags.aligned:  # offsets not a multiple of the item size: copy, once
            raw = raw.copy()
        if dtype == "BF16":
            tensors[name] = _bf16_to_f32(raw)
        elif dtype in _FLOATS:
            tensors[name] = raw if dtype == "F32" else raw.astype(np.float32)
        else:
            other[name] = raw
    return Weights(tensors=tensors, format="safetensors", path=path, other=other,
                   metadata=dict(metadata))
