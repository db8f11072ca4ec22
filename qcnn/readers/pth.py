"""PyTorch .pth files (zip format of torch >= 1.6, and the legacy format before it), read without
torch and without running code.

Zip format: ``<archive>/data.pkl`` pickles the state dict, each tensor rebuilt by
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`` from a persistent id
``("storage", torch.FloatStorage, key, location, numel)`` whose bytes are ``<archive>/data/<key>``
(little-endian unless ``<archive>/byteorder`` says otherwise).

Legacy format (``torch.save`` before 1.6, or with ``_use_new_zipfile_serialization=False``): a
sequence of pickles, the magic number ``0x1950a86a20f9469cfc6c``, the protocol version 1001, a
``sys_info`` dict, the object (persistent ids ``("storage", type, key, location, numel,
view_metadata)``, ``view_metadata`` None or ``(view_key, offset, numel)`` in elements), then the
list of storage keys; then, per key in that order, an int64 element count and the raw elements,
both little-endian. As the bytes follow the pickle, its tensors are rebuilt once they are read.
Pickles of torch < 0.4 call ``torch._utils._rebuild_tensor`` or build a ``torch.FloatTensor`` & co.
from a ``(storage, offset, size, stride)`` state. The tar format of the first 2017 releases is
refused.

Unpickling runs whatever callables the pickle names, so this module unpickles with
``find_class`` restricted to an allow-list: ``collections.OrderedDict``, the ``torch._utils``
tensor/parameter rebuild functions, the ``torch.*Storage`` and ``torch.*Tensor`` types,
``torch.Size`` and the dtypes, each mapped to a local stand-in. A pickle that names anything else
(``os.system``, ``builtins.eval``, a model class) is refused before that object is even looked up.
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

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
LEGACY_PROTOCOL = 1001  # torch.serialization.PROTOCOL_VERSION


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
    """One storage: a flat array of its element type (``bf16`` kept as uint16).

    In a legacy file the bytes follow the pickle: ``data`` stays None while unpickling, and a
    view (``view_metadata``) keeps its ``root`` storage and element ``offset`` until then.
    """

    def __init__(self, key: str, dtype: str, data, byteorder: str, numel: int | None = None):
        self.key, self.dtype, self.data, self.byteorder = key, dtype, data, byteorder
        self.numel = numel if data is None else data.size
        self.root, self.offset = None, 0


class _Pending:
    """A tensor of a legacy file, rebuilt by `_resolve` once its storage's bytes are read."""

    def __init__(self, *args):
        self.args = args

    def resolve(self):
        return _rebuild_tensor(*self.args)


class _LegacyTensor:
    """Stands in for ``torch.FloatTensor`` & co. (pickles of torch < 0.4): the class is called,
    or ``NEWOBJ``-ed, with no arguments, then ``BUILD`` gives ``(storage, offset, size, stride)``.
    Subclassed per element type (``tag``); `_resolve` replaces the instance by its array."""

    tag = "f4"
    tensor = None

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 4):
            raise _Corrupt(f"a torch.{type(self).__name__} is built from {state!r:.80}, not "
                           "(storage, offset, size, stride)")
        storage = state[0]
        if isinstance(storage, _Storage) and storage.dtype != self.tag:
            raise _Corrupt(f"a torch.{type(self).__name__} views storage {storage.key} of "
                           f"element type {storage.dtype}")
        self.tensor = _rebuild_tensor(*state)


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
_TENSOR_TYPES = {
    name.replace("Storage", "Tensor"): type(name.replace("Storage", "Tensor"), (_LegacyTensor,),
                                            {"tag": tag})
    for name, tag in _STORAGE_DTYPES.items() if name != "UntypedStorage"
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


def _size(values=()):
    """``torch.Size(values)``: a plain tuple here."""
    _check_ints("size", values)
    return tuple(values)


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
    if storage.data is None:  # legacy file: the bytes come after the pickle
        return _Pending(storage, storage_offset, size, stride, dtype)
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
        out = (np.asarray(view, np.uint32, order="C") << 16).view(np.float32)
    elif view.dtype.kind == "f":
        out = np.asarray(view, np.float32, order="C")
    else:
        out = np.asarray(view, view.dtype.newbyteorder("="), order="C")
    # legacy records start at any byte: copy what the file leaves misaligned
    return out if out.flags.aligned else out.copy()


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       dtype, metadata=None):
    if not isinstance(dtype, _DType):
        raise _Corrupt(f"_rebuild_tensor_v3 got dtype {dtype!r:.40}")
    return _rebuild_tensor(storage, storage_offset, size, stride, dtype.dtype)


def _rebuild_parameter(data, requires_grad, backward_hooks):
    if not isinstance(data, (np.ndarray, _Pending, _LegacyTensor)):
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
    ("torch", "Size"): _size,
    **{(mod, name): _StorageType(name, tag) for name, tag in _STORAGE_DTYPES.items()
       for mod in ("torch", "torch.cuda", "torch.storage")},
    **{(mod, name): cls for name, cls in _TENSOR_TYPES.items() for mod in ("torch", "torch.cuda")},
    **{("torch", name): _DType(name, tag) for name, tag in _TORCH_DTYPES.items()},
}


class _Unpickler(pickle.Unpickler):
    """Unpickles only what a state dict needs; see the module docstring.

    `storage_for(pid)` turns a persistent id into a `_Storage` (None: the pickle may hold none).
    """

    def __init__(self, file, storage_for=None):
        super().__init__(file, encoding="utf-8")  # torch.load's encoding for Python 2 pickles
        self._storage_for = storage_for

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except (KeyError, TypeError):
            raise _Refused(f"{module}.{name}") from None

    def persistent_load(self, pid):
        if self._storage_for is None:
            raise _Corrupt(f"unexpected persistent id {pid!r:.80} outside the object pickle")
        return self._storage_for(pid)


def _resolve(obj):
    """`obj` with the tensors of dicts and lists (descending into them) turned into arrays."""

    def done(v):
        if isinstance(v, _LegacyTensor):
            if v.tensor is None:
                raise _Corrupt(f"a torch.{type(v).__name__} was unpickled without its data")
            v = v.tensor
        return v.resolve() if isinstance(v, _Pending) else v

    todo, seen = [obj], set()
    while todo:
        c = todo.pop()
        if id(c) in seen:
            continue
        seen.add(id(c))
        for k, v in list(c.items() if isinstance(c, dict) else enumerate(c)):
            c[k] = v = done(v)
            if isinstance(v, (dict, list)):
                todo.append(v)
    return obj


def _zip_storage_id(pid):
    """(dtype tag, key, numel) of a zip-format persistent id."""
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
        raise _Corrupt(f"unexpected persistent id {pid!r:.80}")
    _, stype, key, _location, numel = pid
    if not isinstance(stype, _StorageType):
        raise _Corrupt(f"persistent id names storage type {stype!r:.40}")
    if not (isinstance(key, str) and key.isalnum()) or not isinstance(numel, int) or numel < 0:
        raise _Corrupt(f"malformed persistent id {pid!r:.80}")
    return stype.dtype, key, numel


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


def _load_zip(path, zf: zipfile.ZipFile):
    """The unpickled object of a zip-format file."""
    pkls = [n for n in zf.namelist()
            if n == "data.pkl" or (n.endswith("/data.pkl") and n.count("/") == 1)]
    if len(pkls) != 1:
        raise _Corrupt(f"expected one <archive>/data.pkl in the zip, found {pkls}")
    prefix = pkls[0][: -len("data.pkl")]
    byteorder = "little"
    if prefix + "byteorder" in zf.namelist():
        byteorder = zf.read(prefix + "byteorder").decode("ascii", "replace").strip()
        if byteorder not in ("little", "big"):
            raise _Corrupt(f"unknown byteorder record {byteorder!r}")
    storages: dict[tuple[str, str], _Storage] = {}
    mapped = []

    def storage_for(pid) -> _Storage:
        tag, key, numel = _zip_storage_id(pid)
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

    return _resolve(_Unpickler(io.BytesIO(zf.read(pkls[0])), storage_for).load())


def _load_legacy(path, f):
    """The unpickled object of a legacy-format file, its tensors read from after the pickles."""
    roots: dict[str, _Storage] = {}
    views: dict[str, _Storage] = {}

    def storage_for(pid) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise _Corrupt(f"unexpected persistent id {pid!r:.80}")
        _, stype, key, _location, numel, view = pid
        if not isinstance(stype, _StorageType):
            raise _Corrupt(f"persistent id names storage type {stype!r:.40}")
        if not (isinstance(key, str) and key.isalnum()) or not isinstance(numel, int) or numel < 0:
            raise _Corrupt(f"malformed persistent id {pid!r:.80}")
        root = roots.get(key)
        if root is None:
            root = roots[key] = _Storage(key, stype.dtype, None, "little", numel)
        elif (root.dtype, root.numel) != (stype.dtype, numel):
            raise _Corrupt(f"storage {key} is named both as {root.numel} x {root.dtype} and as "
                           f"{numel} x {stype.dtype}")
        if view is None:
            return root
        if not (isinstance(view, tuple) and len(view) == 3 and isinstance(view[0], str)):
            raise _Corrupt(f"malformed view metadata {view!r:.80} of storage {key}")
        view_key, offset, view_numel = view
        _check_ints("view offset and size", (offset, view_numel))
        if offset + view_numel > numel:
            raise _Corrupt(f"a view of {view_numel} elements at offset {offset} overruns "
                           f"storage {key} of {numel}")
        v = views.get(view_key)
        if v is None:
            v = views[view_key] = _Storage(view_key, root.dtype, None, "little", view_numel)
            v.root, v.offset = root, offset
        elif (v.root, v.offset, v.numel) != (root, offset, view_numel):
            raise _Corrupt(f"storage view {view_key} is declared twice, differently")
        return v

    magic = _Unpickler(f).load()
    if magic != LEGACY_MAGIC:
        raise _Corrupt(f"it starts with a pickle of {magic!r:.40}, not torch.save's magic number")
    version = _Unpickler(f).load()
    if version != LEGACY_PROTOCOL:
        raise _Corrupt(f"protocol version {version!r:.40}, expected {LEGACY_PROTOCOL}")
    sys_info = _Unpickler(f).load()
    if not isinstance(sys_info, dict):
        raise _Corrupt(f"its sys_info is a {type(sys_info).__name__}, not a dict")
    obj = _Unpickler(f, storage_for).load()
    keys = _Unpickler(f).load()
    if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
        raise _Corrupt(f"the storage key list is {keys!r:.80}")
    pos, size = f.tell(), os.fstat(f.fileno()).st_size
    mapped = []
    for i, key in enumerate(keys):
        root = roots.get(key)
        if root is None or root.data is not None:
            raise _Corrupt(f"the data section lists storage {key} "
                           + ("twice" if root is not None else "that no tensor uses"))
        where = f"storage {key} (record {i + 1} of {len(keys)})"
        if pos + 8 > size:
            raise _Corrupt(f"the file ends at byte {size}, before the data of {where}")
        f.seek(pos)
        count_bytes = f.read(8)
        (count,) = struct.unpack("<q", count_bytes)
        byteorder = "little"
        # torch < 0.4 wrote the count and data in the machine's order, which sys_info records
        if (count != root.numel and sys_info.get("little_endian") is False
                and struct.unpack(">q", count_bytes)[0] == root.numel):
            count, byteorder = root.numel, "big"
        if count != root.numel:
            raise _Corrupt(f"the record of {where} holds {count} elements, the pickle says "
                           f"{root.numel}")
        dtype = _numpy_dtype(root.dtype, byteorder)
        end = pos + 8 + count * dtype.itemsize
        if end > size:
            raise _Corrupt(f"the file ends at byte {size}, inside the data of {where}, which "
                           f"ends at byte {end}")
        if (pos + 8) % dtype.itemsize == 0:  # memory-mapped: what is not copied costs nothing
            if not mapped:
                mapped.append(np.memmap(path, np.uint8, mode="c"))
            data = np.asarray(mapped[0][pos + 8:end]).view(dtype)
        else:  # a misaligned record would be copied anyway: read it into an aligned buffer
            data = np.empty(count, dtype)
            if f.readinto(data) != data.nbytes:
                raise _Corrupt(f"the data of {where} could not be read in full")
        root.data, root.byteorder = data, byteorder
        pos = end
    for key, root in roots.items():
        if root.data is None:
            raise _Corrupt(f"storage {key} is used by a tensor but has no data record")
    for v in views.values():
        v.data, v.byteorder = v.root.data[v.offset:v.offset + v.numel], v.root.byteorder
    return _resolve(obj)


def _tar_error(path) -> ValueError:
    return ValueError(
        f"{path} is a PyTorch file in the tar format of the first 2017 releases, which pickles "
        "more than tensors; qcnn does not read it. If you trust its source, convert it once where "
        "PyTorch is installed: python -c \"import torch; torch.save(torch.load("
        f"'{path}', map_location='cpu', weights_only=False), 'converted.pth')\", then read "
        "converted.pth")


def read(path) -> Weights:
    """Read a PyTorch ``.pth`` state dict (zip or legacy format) without torch.

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
        A corrupt or truncated file, a legacy tar-format file (early 2017), or a pickle that
        asks for anything outside the allow-list (e.g. ``os.system``): refused without running it.

    Examples
    --------
    >>> w = read("vgg16-397923af.pth")  # doctest: +SKIP
    >>> w.tensors["features.0.weight"].shape  # doctest: +SKIP
    (64, 3, 3, 3)
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        head = f.read(512)
    if head[257:262] == b"ustar":
        raise _tar_error(path)
    legacy = head[:1] == b"\x80"
    if legacy:
        what, kind = "its legacy (pre-1.6) torch.save pickles", "legacy (pre-1.6) PyTorch file"
    else:
        what, kind = "its data.pkl", "PyTorch state dict"
        try:
            zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as e:
            raise ValueError(f"{path} is not a valid PyTorch .pth zip archive ({e}); it may be "
                             "truncated or corrupt: download it again") from None
    try:
        if legacy:
            with open(path, "rb") as f:
                obj = _load_legacy(path, f)
        else:
            with zf:
                obj = _load_zip(path, zf)
    except _Refused as e:
        raise ValueError(
            f"{path}: its pickle tried to import {e}, which a weights file has no reason to "
            "need; refused without running it. Only state dicts of tensors are read (for a "
            "whole pickled model, save model.state_dict() instead)") from None
    except _Corrupt as e:
        raise ValueError(f"{path} is not a valid {kind} ({e}); it may be truncated or corrupt: "
                         "download it again") from None
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError, IndexError,
            RecursionError, zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"{path}: {what} could not be unpickled ({type(e).__name__}: {e}); the "
                         "file may be truncated or corrupt: download it again") from None
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
