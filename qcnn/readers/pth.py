"""PyTorch .pth files (the zip format of torch >= 1.6), read without torch and without running code.

A .pth is a zip: ``<archive>/data.pkl`` pickles the state dict, each tensor rebuilt by
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`` from a persistent id
``("storage", torch.FloatStorage, key, location, numel)`` whose bytes are ``<archive>/data/<key>``
(little-endian unless ``<archive>/byteorder`` says otherwise).

Unpickling runs whatever callables the pickle names, so this module unpickles with
``find_class`` restricted to an allow-list: ``collections.OrderedDict``, the ``torch._utils``
tensor/parameter rebuild functions and the ``torch.*Storage`` types and dtypes, each mapped to a
local stand-in. A pickle that names anything else (``os.system``, ``builtins.eval``, a model class)
is refused before that object is even looked up.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import struct
import zipfile
from collections import OrderedDict

import numpy as np

from . import Weights

__all__ = ["read"]


class _Corrupt(Exception):
    """Raised while unpickling; `read` turns it into a ValueError naming the file."""


class _Refused(Exception):
    """The pickle asked for a global outside the allow-list."""


class _StorageType:
    """Stands in for ``torch.FloatStorage`` & co.: only the element type matters here."""

    def __init__(self, name: str, dtype: str):
        self.name, self.dtype = name, dtype

    def __repr__(self):
        return f"torch.{self.name}"


class _DType:
    """Stands in for ``torch.float32`` & co. (an argument of ``_rebuild_tensor_v3``)."""

    def __init__(self, name: str, dtype: str):
        self.name, self.dtype = name, dtype


class _Storage:
    """One ``data/<key>`` record: a flat array of its element type (``bf16`` kept as uint16)."""

    def __init__(self, key: str, dtype: str, data: np.ndarray, byteorder: str):
        self.key, self.dtype, self.data, self.byteorder = key, dtype, data, byteorder


# element type tags: numpy dtype strings, plus "bf16" (stored as 16-bit patterns)
_STORAGE_DTYPES = {
    "FloatStorage": "f4", "HalfStorage": "f2", "DoubleStorage": "f8", "BFloat16Storage": "bf16",
    "LongStorage": "i8", "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "?", "UntypedStorage": "u1",
}
_TORCH_DTYPES = {
    "float32": "f4", "float": "f4", "float16": "f2", "half": "f2", "float64": "f8",
    "double": "f8", "bfloat16": "bf16", "int64": "i8", "long": "i8", "int32": "i4", "int": "i4",
    "int16": "i2", "short": "i2", "int8": "i1", "uint8": "u1", "bool": "?",
}


def _numpy_dtype(tag: str, byteorder: str) -> np.dtype:
    dt = np.dtype("u2" if tag == "bf16" else tag)
    return dt.newbyteorder("<" if byteorder == "little" else ">") if dt.itemsize > 1 else dt


def _check_ints(name, values, allow_empty=True):
    if not isinstance(values, (tuple, list)) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise _Corrupt(f"tensor {name} is not a tuple of non-negative integers: {values!r:.80}")
    if not allow_empty and not values:
        raise _Corrupt(f"tensor {name} is empty")


def _rebuild_tensor(storage, storage_offset, size, stride, dtype: str | None = None):
    """The tensor viewing `storage` from `storage_offset` with `size` and `stride` (in elements)."""
    if not isinstance(storage, _Storage):
        raise _Corrupt(f"a tensor is rebuilt from {type(storage).__name__}, not a storage record")
    _check_ints("size", size)
    _check_ints("stride", stride)
    if not isinstance(storage_offset, int) or storage_offset < 0:
        raise _Corrupt(f"storage offset {storage_offset!r:.40} of data/{storage.key}")
    if len(size) != len(stride):
        raise _Corrupt(f"size {size} and stride {stride} differ in length (data/{storage.key})")
    tag = dtype or storage.dtype
    data = storage.data
    if tag != storage.dtype:  # an untyped (byte) storage viewed as `tag`
        itemsize = _numpy_dtype(tag, "little").itemsize
        if data.size % itemsize:
            raise _Corrupt(f"data/{storage.key}: {data.size} bytes do not hold whole {tag} values")
        data = data.view(_numpy_dtype(tag, storage.byteorder))
    if math.prod(size) == 0:
        view = np.zeros(size, data.dtype)
    else:
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if last >= data.size:
            raise _Corrupt(f"tensor of size {tuple(size)}, stride {tuple(stride)} at offset "
                           f"{storage_offset} reaches element {last} of data/{storage.key}, "
                           f"which holds {data.size}")
        item = data.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(data[storage_offset:], shape=tuple(size),
                                               strides=tuple(s * item for s in stride),
                                               writeable=False)
    # np.asarray(order="C") copies only when needed and, unlike ascontiguousarray, keeps 0-d
    if tag == "bf16":
        return (np.asarray(view, np.uint32, order="C") << 16).view(np.float32)
    if view.dtype.kind == "f":
        return np.asarray(view, np.float32, order="C")
    return np.asarray(view, view.dtype.newbyteorder("="), order="C")


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       dtype, metadata=None):
    if not isinstance(dtype, _DType):
        raise _Corrupt(f"_rebuild_tensor_v3 got dtype {dtype!r:.40}")
    return _rebuild_tensor(storage, storage_offset, size, stride, dtype.dtype)


def _rebuild_parameter(data, requires_grad, backward_hooks):
    if not isinstance(data, np.ndarray):
        raise _Corrupt(f"a parameter wraps {type(data).__name__}, not a tensor")
    return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    return _rebuild_parameter(data, requires_grad, backward_hooks)


_ALLOWED = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    **{(mod, name): _StorageType(name, tag) for name, tag in _STORAGE_DTYPES.items()
       for mod in ("torch", "torch.cuda", "torch.storage")},
    **{("torch", name): _DType(name, tag) for name, tag in _TORCH_DTYPES.items()},
}


class _Unpickler(pickle.Unpickler):
    """Unpickles only what a state dict needs; see the module docstring."""

    def __init__(self, file, load_storage):
        super().__init__(file)
        self._load_storage = load_storage

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except (KeyError, TypeError):
            raise _Refused(f"{module}.{name}") from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise _Corrupt(f"unexpected persistent id {pid!r:.80}")
        _, stype, key, _location, numel = pid
        if not isinstance(stype, _StorageType):
            raise _Corrupt(f"persistent id names storage type {stype!r:.40}")
        if not (isinstance(key, str) and key.isalnum()) or not isinstance(numel, int) or numel < 0:
            raise _Corrupt(f"malformed persistent id {pid!r:.80}")
        return self._load_storage(key, stype.dtype, numel)


def _data_offset(path, info: zipfile.ZipInfo) -> int:
    """Byte offset of a stored (uncompressed) member's data: after its local header."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
    if len(local) < 30 or local[:4] != b"PK\x03\x04":
        raise _Corrupt(f"bad local header for {info.filename}")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    return info.header_offset + 30 + name_len + extra_len


def _state_dict(obj):
    """The dict of tensors: the object itself, or a checkpoint's "state_dict" / "model" entry."""
    if isinstance(obj, dict) and not any(isinstance(v, np.ndarray) for v in obj.values()):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                return _state_dict(obj[key])
    return obj


def read(path) -> Weights:
    """Read a PyTorch ``.pth`` state dict (zip format) without torch.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    Weights
        Float tensors (float16/bfloat16/float32/float64, any strides and storage offsets) as
        contiguous float32 by state-dict name; integer tensors in ``other``. A checkpoint dict
        holding a ``"state_dict"`` or ``"model"`` dict is read from that entry.

    Raises
    ------
    ValueError
        A legacy (pre-1.6) file, a corrupt or truncated archive, or a pickle that asks for
        anything outside the allow-list (e.g. ``os.system``): refused without running it.

    Examples
    --------
    >>> w = read("alexnet-owt-7be5be79.pth")  # doctest: +SKIP
    >>> w.tensors["features.0.weight"].shape  # doctest: +SKIP
    (64, 3, 11, 11)
    """
    from . import _legacy_torch_error

    path = os.fspath(path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        with open(path, "rb") as f:
            head = f.read(2)
        if head[:1] == b"\x80":
            raise _legacy_torch_error(path) from None
        raise ValueError(f"{path} is not a valid PyTorch .pth zip archive ({e}); it may be "
                         "truncated or corrupt: download it again") from None
    with zf:
        pkls = [n for n in zf.namelist()
                if n == "data.pkl" or (n.endswith("/data.pkl") and n.count("/") == 1)]
        if len(pkls) != 1:
            raise ValueError(f"{path}: expected one <archive>/data.pkl in the zip, found {pkls}")
        prefix = pkls[0][: -len("data.pkl")]
        byteorder = "little"
        if prefix + "byteorder" in zf.namelist():
            byteorder = zf.read(prefix + "byteorder").decode("ascii", "replace").strip()
            if byteorder not in ("little", "big"):
                raise ValueError(f"{path}: unknown byteorder record {byteorder!r}")
        storages: dict[tuple[str, str], _Storage] = {}
        mapped = []

        def load_storage(key: str, tag: str, numel: int) -> _Storage:
            if (key, tag) in storages:
                return storages[(key, tag)]
            name = f"{prefix}data/{key}"
            try:
                info = zf.getinfo(name)
            except KeyError:
                raise _Corrupt(f"the pickle refers to {name}, which the archive lacks") from None
            dtype = _numpy_dtype(tag, byteorder)
            nbytes = numel * dtype.itemsize
            if info.file_size < nbytes:
                raise _Corrupt(f"{name} holds {info.file_size} bytes, the pickle expects "
                               f"{numel} x {dtype.itemsize}")
            if info.compress_type == zipfile.ZIP_STORED:
                if not mapped:
                    mapped.append(np.memmap(path, np.uint8, mode="c"))
                start = _data_offset(path, info)
                if start + nbytes > mapped[0].size:
                    raise _Corrupt(f"{name} runs past the end of the file")
                raw = np.asarray(mapped[0][start:start + nbytes])
            else:
                raw = np.frombuffer(zf.read(name)[:nbytes], np.uint8)
            storages[(key, tag)] = s = _Storage(key, tag, raw.view(dtype), byteorder)
            return s

        try:
            obj = _Unpickler(io.BytesIO(zf.read(pkls[0])), load_storage).load()
        except _Refused as e:
            raise ValueError(
                f"{path}: its pickle tried to import {e}, which a weights file has no reason to "
                "need; refused without running it. Only state dicts of tensors are read (for a "
                "whole pickled model, save model.state_dict() instead)") from None
        except _Corrupt as e:
            raise ValueError(f"{path} is not a valid PyTorch state dict ({e}); it may be "
                             "corrupt: download it again") from None
        except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError,
                IndexError, zipfile.BadZipFile, OSError) as e:
            raise ValueError(f"{path}: its data.pkl does not unpickle ({type(e).__name__}: "
                             f"{e}); the file may be corrupt: download it again") from None
    sd = _state_dict(obj)
    if not isinstance(sd, dict):
        raise ValueError(f"{path} holds a pickled {type(sd).__name__}, not a state dict")
    tensors, other = {}, {}
    for k, v in sd.items():
        if isinstance(v, np.ndarray):
            (tensors if v.dtype == np.float32 else other)[str(k)] = v
    if not tensors:
        raise ValueError(f"{path} holds no floating-point tensors (keys: {list(sd)[:5]})")
    return Weights(tensors=tensors, format="pth", path=path, other=other)
