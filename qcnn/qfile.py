"""The quantized model file: one network per file, in the safetensors layout.

Layout (details and the versioning policy in ``docs/file-format.md``)::

    8 bytes   N, the header length (little-endian unsigned 64-bit)
    N bytes   JSON header, padded with spaces so that the data starts at a multiple of 64:
              {"__metadata__":{"format":"qcnn","format_version":"1","header_crc32":"<8 hex>",...},
               "<tensor>":{"dtype":"F32","shape":[...],"data_offsets":[begin,end]}, ...}
    data      the tensors, little-endian, each starting at a multiple of 64 bytes

The header always starts with the same bytes (magic + version), then a CRC-32 of the header itself.
Every tensor starts 64-byte aligned, so :func:`load` maps the file read-only and views the tensors
without copying them. Because the safetensors reference reader wants the tensors back to back, the
gaps are filled by zero ``U8`` tensors named ``__pad__<i>``; qcnn drops them when reading.
The codes of quantized layers (``"<layer>.codes"``, uint8, ``K`` codewords) are bit-packed to
``ceil(log2 K)`` bits and stored as a 1-D ``U8`` tensor; the metadata records their logical shape.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import secrets
import zlib
from pathlib import Path

import numpy as np

from .net import Net

__all__ = [
    "QFileError", "FORMAT", "FORMAT_VERSION", "ALIGN", "save", "load", "write_tensors",
    "read_tensors", "file_summary", "pack_codes", "unpack_codes", "packed_size", "code_bits",
]

FORMAT = "qcnn"
FORMAT_VERSION = "1"
ALIGN = 64
MAX_HEADER = 100_000_000  # the safetensors reference reader's limit
PAD_PREFIX = "__pad__"
RESERVED_KEYS = ("format", "format_version", "header_crc32", "data_crc32", "packed")
MAGIC = b'{"__metadata__":{"format":"qcnn","format_version":"'
_CRC_KEY = b'","header_crc32":"'
_CRC_PLACEHOLDER = b"00000000"

_REMAKE = "delete it and create it again (for a quantized model: `qcnn quantize MODEL`)"

# safetensors dtype names <-> little-endian numpy dtypes (BF16 and F8 have no numpy dtype)
_DTYPES = {
    "BOOL": np.dtype("|b1"), "U8": np.dtype("|u1"), "I8": np.dtype("|i1"),
    "U16": np.dtype("<u2"), "I16": np.dtype("<i2"), "F16": np.dtype("<f2"),
    "U32": np.dtype("<u4"), "I32": np.dtype("<i4"), "F32": np.dtype("<f4"),
    "U64": np.dtype("<u8"), "I64": np.dtype("<i8"), "F64": np.dtype("<f8"),
}
_DTYPE_NAMES = {(dt.kind, dt.itemsize): name for name, dt in _DTYPES.items()}

#: Groups of 8 codes packed or unpacked per step (256K codes): the temporaries (pack: 64 bytes a
#: group, unpack: 2) stay small, and unpacking runs ~3x faster than with 1M-code steps.
_GROUPS_PER_STEP = 1 << 15
#: Bytes read per call when checking the data CRC (through the page cache, not the mapping).
_CRC_CHUNK = 1 << 20


class QFileError(ValueError):
    """A model file that cannot be used: damaged, truncated, not a qcnn file or of another version.

    The message names the file, says what is wrong and what to do.
    """


def _fail(path, problem: str, advice: str = _REMAKE) -> QFileError:
    return QFileError(f"{path}: {problem}; {advice}")


# ---------------------------------------------------------------------------------------------
# bit packing


def code_bits(k: int) -> int:
    """Bits per code for ``k`` codewords: ``ceil(log2 k)``, at least 1, at most 8.

    Examples
    --------
    >>> [code_bits(k) for k in (2, 16, 100, 128, 256)]
    [1, 4, 7, 7, 8]
    """
    k = int(k)
    if not 1 <= k <= 256:
        raise ValueError(f"K = {k} codewords cannot be indexed by uint8 codes (need 1 <= K <= 256)")
    return max(1, (k - 1).bit_length())


def _check_bits(bits) -> int:
    if not isinstance(bits, (int, np.integer)) or isinstance(bits, bool) or not 1 <= bits <= 8:
        raise ValueError(f"bit width must be an integer from 1 to 8, got {bits!r}")
    return int(bits)


def packed_size(count: int, bits: int) -> int:
    """Bytes that ``count`` codes of ``bits`` bits take packed: ``ceil(count * bits / 8)``."""
    return (int(count) * _check_bits(bits) + 7) // 8


def pack_codes(codes, bits: int) -> np.ndarray:
    """Bit-pack uint8 codes into a 1-D uint8 array of ``ceil(codes.size * bits / 8)`` bytes.

    Codes are taken in C order. Code ``i`` occupies bits ``i*bits`` to ``i*bits + bits - 1`` of a
    little-endian bit stream (stream bit ``j`` is bit ``j % 8``, value ``2**(j % 8)``, of byte
    ``j // 8``), its least significant bit first. The result does not depend on the host's
    endianness.

    Parameters
    ----------
    codes : ndarray of uint8, any shape
        Every code must be below ``2**bits``.
    bits : int
        1 to 8.

    Returns
    -------
    ndarray of uint8, 1-D

    Examples
    --------
    >>> pack_codes(np.array([1, 2, 3], np.uint8), 2)  # 01 10 11 -> 0b111001
    array([57], dtype=uint8)
    >>> unpack_codes(pack_codes(np.arange(5, dtype=np.uint8), 3), 3, (5,))
    array([0, 1, 2, 3, 4], dtype=uint8)
    """
    codes = np.asarray(codes)
    bits = _check_bits(bits)
    if codes.dtype != np.uint8:
        raise ValueError(f"codes must be uint8, got {codes.dtype}")
    flat = codes.reshape(-1)
    n = flat.size
    if bits == 8:
        return np.ascontiguousarray(flat)
    if n and int(flat.max()) >> bits:
        raise ValueError(f"code {int(flat.max())} does not fit in {bits} bits "
                         f"(codes must be < {1 << bits})")
    groups = -(-n // 8)
    out = np.empty(groups * bits, np.uint8)
    shifts = np.arange(8, dtype=np.uint64) * np.uint64(bits)
    for g0 in range(0, groups, _GROUPS_PER_STEP):
        g1 = min(groups, g0 + _GROUPS_PER_STEP)
        block = flat[g0 * 8 : g1 * 8]
        if block.size < (g1 - g0) * 8:  # the last group: zero codes up to a multiple of 8
            block = np.concatenate([block, np.zeros((g1 - g0) * 8 - block.size, np.uint8)])
        # 8 codes of `bits` bits -> one 64-bit word -> its low `bits` bytes, little-endian
        words = np.bitwise_or.reduce(block.reshape(-1, 8).astype(np.uint64) << shifts, axis=1)
        low = words.astype("<u8").view(np.uint8).reshape(-1, 8)[:, :bits]
        out[g0 * bits : g1 * bits] = low.ravel()
    return out[: packed_size(n, bits)]


def unpack_codes(packed, bits: int, shape) -> np.ndarray:
    """Invert :func:`pack_codes`: the uint8 codes of ``shape`` from their packed bytes.

    With ``bits == 8`` the result is a view of ``packed`` (no copy).

    Parameters
    ----------
    packed : ndarray of uint8, 1-D
        Exactly ``ceil(prod(shape) * bits / 8)`` bytes.
    bits : int
        1 to 8.
    shape : tuple of int

    Returns
    -------
    ndarray of uint8 of ``shape``

    Examples
    --------
    >>> unpack_codes(np.array([57], np.uint8), 2, (3,))
    array([1, 2, 3], dtype=uint8)
    """
    packed = np.asarray(packed)
    bits = _check_bits(bits)
    shape = tuple(int(s) for s in shape)
    n = int(np.prod(shape, dtype=np.int64))
    if packed.dtype != np.uint8 or packed.ndim != 1:
        raise ValueError(f"packed codes must be a 1-D uint8 array, "
                         f"got {packed.dtype} {packed.shape}")
    if packed.size != packed_size(n, bits):
        raise ValueError(f"{n} codes of {bits} bits take {packed_size(n, bits)} bytes packed, "
                         f"got {packed.size}")
    if bits == 8:
        return packed.reshape(shape)
    out = np.empty(n, np.uint8)
    full = n // 8  # whole groups: `bits` bytes hold 8 codes
    step = _GROUPS_PER_STEP
    mask = np.uint16((1 << bits) - 1)
    word = np.empty(min(full, step), np.uint16)  # the only temporary: 2 bytes per group
    for g0 in range(0, full, step):
        g1 = min(full, g0 + step)
        src = packed[g0 * bits : g1 * bits].reshape(g1 - g0, bits)
        dst = out[g0 * 8 : g1 * 8].reshape(g1 - g0, 8)
        w = word[: g1 - g0]
        for j in range(8):  # code j of each group: bits j*bits.. of the group, in 1 or 2 bytes
            byte, shift = divmod(j * bits, 8)
            if shift + bits <= 8:
                np.right_shift(src[:, byte], shift, out=w, dtype=np.uint16)
            else:
                np.left_shift(src[:, byte + 1], 8, out=w, dtype=np.uint16)
                np.bitwise_or(w, src[:, byte], out=w)
                np.right_shift(w, shift, out=w)
            np.bitwise_and(w, mask, out=w)
            dst[:, j] = w
    if full * 8 < n:  # the last, partial group: zero-fill its bytes to a whole group
        last = np.zeros(bits, np.uint8)
        tail = packed[full * bits :]
        last[: tail.size] = tail
        out[full * 8 :] = unpack_codes(last, bits, (8,))[: n - full * 8]
    return out.reshape(shape)


# ---------------------------------------------------------------------------------------------
# writing


def _spec_code_bits(spec) -> dict[str, tuple[int, int]]:
    """{"<layer>.codes": (bits, K)} for the quantized layers of a spec, concat branches included."""
    found = {}
    for s in spec:
        if s.get("type") == "concat":
            for branch in s["branches"]:
                found.update(_spec_code_bits(branch))
        elif s.get("type") in ("qconv", "qlinear"):
            found[f"{s['name']}.codes"] = (code_bits(s["K"]), int(s["K"]))
    return found


def _seal_header(meta: dict[str, str], entries: dict[str, dict]) -> bytes:
    """The header bytes: JSON (metadata first), space padding to ALIGN, then the header CRC-32.

    ``meta`` must start with format, format_version, header_crc32 (placeholder), in that order.
    """
    text = json.dumps({"__metadata__": meta, **entries}, separators=(",", ":"), ensure_ascii=True)
    raw = text.encode("ascii")
    raw += b" " * (-(8 + len(raw)) % ALIGN)
    at = raw.index(_CRC_KEY) + len(_CRC_KEY)
    if raw[:at] != MAGIC + meta["format_version"].encode() + _CRC_KEY:
        raise AssertionError("header metadata must start with format, format_version, header_crc32")
    crc = f"{zlib.crc32(raw):08x}".encode()
    return raw[:at] + crc + raw[at + 8 :]


def _as_bytes(array: np.ndarray) -> np.ndarray:
    """The raw bytes of a contiguous array as a 1-D uint8 view (size 0 allowed)."""
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)


def _write_buffer(f, array: np.ndarray) -> None:
    f.write(_as_bytes(array))


def write_tensors(path, tensors: dict, metadata: dict | None = None,
                  bits: dict[str, int] | None = None) -> int:
    """Write tensors and metadata atomically as a qcnn file (safetensors layout).

    The file is written to a temporary file in the same folder, flushed to disk and renamed over
    ``path``: ``path`` never holds a partial file, and a failure leaves no temporary file behind.

    Parameters
    ----------
    path : str or Path
    tensors : dict of str -> ndarray
        Stored in this order, each 64-byte aligned, little-endian. Names may not start with
        ``__pad__``.
    metadata : dict of str -> JSON-able, optional
        Each value is stored as its JSON text under ``__metadata__``. The keys ``format``,
        ``format_version``, ``header_crc32``, ``data_crc32`` and ``packed`` are reserved.
    bits : dict of str -> int, optional
        Tensor name -> bit width (1..8) for uint8 tensors to store bit-packed.

    Returns
    -------
    int
        The file size in bytes.

    Examples
    --------
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> codes = np.array([[0, 1], [2, 3]], np.uint8)
    >>> size = write_tensors(f"{d}/t.qcnn", {"fc.codes": codes}, {"note": "x"}, {"fc.codes": 2})
    >>> size % 64  # a 64-byte aligned header, then one byte: four 2-bit codes
    1
    >>> t, meta = read_tensors(f"{d}/t.qcnn")
    >>> t["fc.codes"].tolist(), meta
    ([[0, 1], [2, 3]], {'note': 'x'})
    """
    path = Path(path)
    metadata = dict(metadata or {})
    bits = dict(bits or {})
    for key in metadata:
        if not isinstance(key, str) or key in RESERVED_KEYS:
            raise ValueError(f"metadata key {key!r} is reserved or not a string "
                             f"(reserved: {', '.join(RESERVED_KEYS)})")
    unknown = sorted(set(bits) - set(tensors))
    if unknown:
        raise ValueError(f"bit widths given for tensors that are not written: {unknown}")

    blobs, entries, packed, offset = [], {}, {}, 0
    for name, value in tensors.items():
        if (not isinstance(name, str) or not name or name == "__metadata__"
                or name.startswith(PAD_PREFIX)):
            raise ValueError(f"tensor name {name!r} is not allowed (empty, '__metadata__' or "
                             f"starting with {PAD_PREFIX!r})")
        a = np.asarray(value)
        if name in bits:
            if a.dtype != np.uint8:
                raise ValueError(f"tensor {name!r}: only uint8 codes are bit-packed, got {a.dtype}")
            try:
                blob = pack_codes(a, bits[name])
            except ValueError as e:
                raise ValueError(f"tensor {name!r}: {e}") from None
            packed[name] = {"shape": list(a.shape), "bits": int(bits[name])}
            a = blob
        dtype_name = _DTYPE_NAMES.get((a.dtype.kind, a.dtype.itemsize))
        if dtype_name is None:
            raise ValueError(f"tensor {name!r}: dtype {a.dtype} cannot be stored "
                             f"(supported: {', '.join(_DTYPES)})")
        a = np.ascontiguousarray(a, dtype=_DTYPES[dtype_name])
        gap = -offset % ALIGN
        if gap:
            entries[f"{PAD_PREFIX}{len(blobs)}"] = {"dtype": "U8", "shape": [gap],
                                                   "data_offsets": [offset, offset + gap]}
            blobs.append(np.zeros(gap, np.uint8))
            offset += gap
        entries[name] = {"dtype": dtype_name, "shape": list(a.shape),
                         "data_offsets": [offset, offset + a.nbytes]}
        blobs.append(a)
        offset += a.nbytes

    data_crc = 0
    for blob in blobs:
        data_crc = zlib.crc32(_as_bytes(blob), data_crc)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION,
            "header_crc32": _CRC_PLACEHOLDER.decode(), "data_crc32": f"{data_crc:08x}",
            "packed": json.dumps(packed, separators=(",", ":"))}
    for key, value in metadata.items():
        try:
            meta[key] = json.dumps(value, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ValueError(f"metadata {key!r} cannot be stored as JSON: {e}") from None
    header = _seal_header(meta, entries)

    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(len(header).to_bytes(8, "little"))
            f.write(header)
            for blob in blobs:
                _write_buffer(f, blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable; not possible everywhere
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return 8 + len(header) + offset


def save(path, net: Net, metadata: dict | None = None) -> int:
    """Save a network (float or quantized) atomically; quantized codes are bit-packed.

    Parameters
    ----------
    path : str or Path
    net : Net
    metadata : dict of str -> JSON-able, optional
        Caller's information, returned by :func:`load`; by convention ``preprocessing``,
        ``labels`` and ``quantization``. The key ``spec`` is reserved for the net's spec.

    Returns
    -------
    int
        The file size in bytes.

    Examples
    --------
    >>> import tempfile
    >>> from qcnn.layers import Linear
    >>> net = Net([("fc", Linear(np.eye(3), np.zeros(3), name="fc"))])
    >>> path = f"{tempfile.mkdtemp()}/tiny.qcnn"
    >>> size = save(path, net, {"labels": "imagenet-1k"})
    >>> net2, meta = load(path)
    >>> meta, net2.get("fc").weight.tolist() == net.get("fc").weight.tolist()
    ({'labels': 'imagenet-1k'}, True)
    """
    metadata = dict(metadata or {})
    if "spec" in metadata:
        raise ValueError("metadata key 'spec' is reserved for the net's spec")
    spec, tensors = net.to_spec()
    code_info = _spec_code_bits(spec)
    for name, (_, k) in code_info.items():
        codes = np.asarray(tensors[name])
        if codes.dtype != np.uint8:
            raise ValueError(f"tensor {name!r}: codes must be uint8, got {codes.dtype}")
        if codes.size and int(codes.max()) >= k:
            raise ValueError(f"tensor {name!r}: code {int(codes.max())} is not below K = {k}")
    return write_tensors(path, tensors, {"spec": spec, **metadata},
                         bits={name: b for name, (b, _) in code_info.items()})


# ---------------------------------------------------------------------------------------------
# reading


def _read_header(path) -> tuple[dict, dict, int, int]:
    """Check the length prefix, magic, version and header CRC; parse and check the tensor table.

    Returns (entries without padding, metadata {str: str}, data start, file size).
    """
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 8:
                raise _fail(path, f"file is {size} bytes, too short for a model file (truncated?)")
            n = int.from_bytes(f.read(8), "little")
            if n > size - 8 or n > MAX_HEADER:
                raise _fail(path, f"header length {n} is larger than the file ({size} bytes): "
                            "the file is truncated or not a model file")
            raw = f.read(n)
    except OSError as e:
        raise QFileError(f"{path}: cannot read the model file ({e.strerror or e})") from e
    if len(raw) != n:
        raise _fail(path, "file changed while being read")

    if not raw.startswith(MAGIC):
        _diagnose_foreign(path, raw)
    end = raw.find(b'"', len(MAGIC))
    version = raw[len(MAGIC) : end].decode("ascii", "replace") if end > 0 else "?"
    if version != FORMAT_VERSION:
        if version.isdigit() and int(version) > int(FORMAT_VERSION):
            raise _fail(path, f"format version {version} is newer than this qcnn reads "
                        f"({FORMAT_VERSION})", f"upgrade qcnn, or {_REMAKE}")
        raise _fail(path, f"format version {version!r} is not supported (this qcnn reads "
                    f"{FORMAT_VERSION})")
    at = len(MAGIC) + len(version) + len(_CRC_KEY)
    if raw[len(MAGIC) + len(version) : at] != _CRC_KEY or len(raw) < at + 8:
        raise _fail(path, "header has no CRC-32 after the format version (damaged file)")
    stored = raw[at : at + 8]
    actual = f"{zlib.crc32(raw[:at] + _CRC_PLACEHOLDER + raw[at + 8 :]):08x}".encode()
    if stored != actual:
        raise _fail(path, f"header checksum mismatch (stored {stored.decode('ascii', 'replace')}, "
                    f"computed {actual.decode()}): the header is damaged")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise _fail(path, f"header is not valid JSON ({e})") from None
    if not isinstance(header, dict) or not isinstance(header.get("__metadata__"), dict):
        raise _fail(path, "header is not a JSON object with __metadata__")
    meta = header.pop("__metadata__")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise _fail(path, "__metadata__ values must all be strings")

    data_start = 8 + n
    buffer_len = size - data_start
    spans = []
    for name, e in header.items():
        if not isinstance(e, dict) or set(e) != {"dtype", "shape", "data_offsets"}:
            raise _fail(path, f"tensor {name!r}: entry must have exactly dtype, shape and "
                        "data_offsets")
        dtype, shape, offs = e["dtype"], e["shape"], e["data_offsets"]
        if dtype not in _DTYPES:
            raise _fail(path, f"tensor {name!r}: dtype {dtype!r} is not supported "
                        f"(supported: {', '.join(_DTYPES)})")
        if not isinstance(shape, list) or not all(type(s) is int and s >= 0 for s in shape):
            raise _fail(path, f"tensor {name!r}: shape {shape!r} is not a list of sizes")
        if (not isinstance(offs, list) or len(offs) != 2
                or not all(type(o) is int for o in offs) or not 0 <= offs[0] <= offs[1]):
            raise _fail(path, f"tensor {name!r}: data_offsets {offs!r} are not [begin, end]")
        if offs[1] > buffer_len:
            raise _fail(path, f"tensor {name!r} ends at data byte {offs[1]} but the file holds "
                        f"only {buffer_len} data bytes: the file is truncated")
        nbytes = int(np.prod(shape, dtype=np.int64)) * _DTYPES[dtype].itemsize
        if offs[1] - offs[0] != nbytes:
            raise _fail(path, f"tensor {name!r}: {offs[1] - offs[0]} bytes stored, but dtype "
                        f"{dtype} x shape {shape} needs {nbytes}")
        spans.append((offs[0], offs[1], name))
    spans.sort()
    pos, prev = 0, None
    for begin, end, name in spans:
        if begin < pos:
            raise _fail(path, f"tensors {prev!r} and {name!r} overlap in the file")
        if begin > pos:
            raise _fail(path, f"unaccounted bytes {pos}..{begin} before tensor {name!r}")
        pos, prev = end, name
    if pos != buffer_len:
        raise _fail(path, f"the tensors end at data byte {pos} but the file has {buffer_len} "
                    "data bytes (extra bytes at the end)")
    entries = {k: v for k, v in header.items() if not k.startswith(PAD_PREFIX)}
    return entries, meta, data_start, size


def _diagnose_foreign(path, raw: bytes):
    """The header lacks the qcnn magic: say whether it is JSON, and whether it is safetensors."""
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise _fail(path, f"not a qcnn model file: the header is not JSON ({e})") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    fmt = meta.get("format") if isinstance(meta, dict) else None
    if fmt == FORMAT and isinstance(meta, dict):
        raise _fail(path, f"qcnn header not in the layout qcnn writes (format version "
                    f"{meta.get('format_version')!r}; rewritten by another tool?)")
    raise _fail(path, f"a safetensors-like file but not a qcnn model file (metadata format "
                f"{fmt!r}, expected 'qcnn')", "pass a file written by qcnn.qfile.save; reference "
                "weights in safetensors format are read by the weight readers, not by qcnn.qfile")


def _decode_meta(path, meta: dict[str, str]) -> tuple[dict, dict]:
    """(packed info, user metadata with JSON values decoded)."""
    for key in ("data_crc32", "packed"):
        if key not in meta:
            raise _fail(path, f"metadata {key!r} is missing")
    decoded = {}
    for key, text in meta.items():
        if key in ("format", "format_version", "header_crc32", "data_crc32"):
            continue
        try:
            decoded[key] = json.loads(text)
        except ValueError as e:
            raise _fail(path, f"metadata {key!r} is not JSON ({e})") from None
    packed = decoded.pop("packed")
    if not isinstance(packed, dict):
        raise _fail(path, "metadata 'packed' is not an object")
    return packed, decoded


def _check_data_crc(path, f, data_start: int, stored: str) -> None:
    """CRC-32 of the data, read in chunks through the page cache (a pass over a mapping would
    leave every page resident in this process)."""
    f.seek(data_start)
    chunk = bytearray(_CRC_CHUNK)
    view = memoryview(chunk)
    crc = 0
    while n := f.readinto(chunk):
        crc = zlib.crc32(view[:n], crc)
    actual = f"{crc:08x}"
    if stored != actual:
        raise _fail(path, f"data checksum mismatch (stored {stored}, computed {actual}): "
                    "the tensors are damaged")


def _read_at(path, f, offset: int, nbytes: int) -> np.ndarray:
    """``nbytes`` bytes of the file from ``offset`` into a new uint8 array."""
    out = np.empty(nbytes, np.uint8)
    f.seek(offset)
    if f.readinto(out) != nbytes:
        raise _fail(path, "file changed while being read")
    return out


def read_tensors(path, verify: bool = True) -> tuple[dict[str, np.ndarray], dict]:
    """Map a qcnn file read-only and return its tensors (codes unpacked) and metadata.

    Tensors are read-only views of the mapped file (no copy), except bit-packed codes below
    8 bits, which are read (not mapped) and unpacked into new arrays. Every structural problem
    raises :class:`QFileError` before any tensor byte is touched.

    Parameters
    ----------
    path : str or Path
    verify : bool
        Also check the CRC-32 of the data (reads the whole file once, in 1 MiB chunks).

    Returns
    -------
    tensors : dict of str -> ndarray
    metadata : dict
        The metadata given to :func:`write_tensors` (JSON values decoded).

    Examples
    --------
    >>> import tempfile
    >>> path = f"{tempfile.mkdtemp()}/t.qcnn"
    >>> _ = write_tensors(path, {"w": np.ones(3, np.float32)})
    >>> read_tensors(path)[0]["w"]
    array([1., 1., 1.], dtype=float32)
    """
    entries, meta, data_start, size = _read_header(path)
    packed, decoded = _decode_meta(path, meta)
    for name, info in packed.items():
        e = entries.get(name)
        ok = (isinstance(info, dict) and isinstance(info.get("shape"), list)
              and all(type(s) is int and s >= 0 for s in info["shape"])
              and type(info.get("bits")) is int and 1 <= info["bits"] <= 8)
        if not ok or e is None or e["dtype"] != "U8" or len(e["shape"]) != 1:
            raise _fail(path, f"packed tensor {name!r}: bad entry {info!r} / {e!r}")
        count = int(np.prod(info["shape"], dtype=np.int64))
        if e["shape"][0] != packed_size(count, info["bits"]):
            need = packed_size(count, info["bits"])
            raise _fail(path, f"packed tensor {name!r}: {e['shape'][0]} bytes stored, but "
                        f"{count} codes of {info['bits']} bits need {need}")
    try:
        with open(path, "rb") as f:
            if verify:
                _check_data_crc(path, f, data_start, meta["data_crc32"])
            buf = b""
            if size > data_start and any(name not in packed or packed[name]["bits"] == 8
                                         for name in entries):
                buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                if len(buf) != size:
                    raise _fail(path, f"file size changed while loading ({size} -> "
                                f"{len(buf)} bytes)")
            tensors = {}
            for name, e in entries.items():
                dt, (begin, end) = _DTYPES[e["dtype"]], e["data_offsets"]
                count = (end - begin) // dt.itemsize
                bits = packed[name]["bits"] if name in packed else None
                if bits is not None and bits < 8:
                    # read, not mapped: the packed bytes are dropped once unpacked, while pages of
                    # the mapping would stay resident (in RSS) for as long as the net lives
                    raw = _read_at(path, f, data_start + begin, end - begin)
                    tensors[name] = unpack_codes(raw, bits, packed[name]["shape"])
                    continue
                if count == 0:
                    a = np.zeros(e["shape"], dt)
                elif (data_start + begin) % dt.alignment:  # not written by qcnn: copy to align
                    a = np.frombuffer(buf, dt, count, data_start + begin).copy().reshape(e["shape"])
                else:
                    a = np.frombuffer(buf, dt, count, data_start + begin).reshape(e["shape"])
                tensors[name] = a if bits is None else a.reshape(packed[name]["shape"])  # 8-bit
    except (OSError, ValueError) as e:
        if isinstance(e, QFileError):
            raise
        raise QFileError(f"{path}: cannot read the model file ({e})") from e
    return tensors, decoded


def load(path, verify: bool = True) -> tuple[Net, dict]:
    """Load a network saved by :func:`save`, mapping the file read-only.

    Parameters
    ----------
    path : str or Path
    verify : bool
        Also check the CRC-32 of the data (reads the whole file once).

    Returns
    -------
    net : Net
        Rebuilt with ``Net.from_spec``, which checks every tensor's shape.
    metadata : dict
        The metadata given to :func:`save`.

    Raises
    ------
    QFileError
        The file is damaged, truncated, of another format version, not a qcnn file, or its
        tensors do not fit its spec. The message names the file and what to do.

    Examples
    --------
    >>> import tempfile
    >>> from qcnn.layers import ReLU
    >>> path = f"{tempfile.mkdtemp()}/relu.qcnn"
    >>> _ = save(path, Net([("r", ReLU("r"))]), {"preprocessing": {"size": 224}})
    >>> load(path)
    (Net(
      r: ReLU
    ), {'preprocessing': {'size': 224}})
    """
    tensors, meta = read_tensors(path, verify)
    spec = meta.pop("spec", None)
    if not isinstance(spec, list):
        raise _fail(path, "metadata 'spec' (the architecture) is missing or not a list")
    try:
        net = Net.from_spec(spec, tensors)
        code_info = _spec_code_bits(spec)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
        raise _fail(path, f"tensors do not match the network spec "
                    f"({type(e).__name__}: {e})") from None
    for name, (_, k) in code_info.items():
        top = int(tensors[name].max()) if tensors[name].size else -1
        if top >= k:
            raise _fail(path, f"tensor {name!r} holds code {top}, not below K = {k}")
    del tensors  # the unpacked codes: the layers hold what they run on
    _release_free_memory()
    return net, meta


def _release_free_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc's ``malloc_trim``; a no-op where
    there is none).

    Unpacking codes and converting them to the kernels' layout leaves tens of MB of freed
    temporaries inside glibc's heap (its mmap threshold rises after the first large free), which
    would otherwise stay in the process's resident set: AlexNet 163 -> 141 MB after loading.
    """
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (Android's bionic, macOS, musl)
        return
    trim(0)


def file_summary(path) -> dict:
    """Bytes on disk per layer and parameter, read from the header alone.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    dict
        ``file_bytes``, ``header_bytes`` (length prefix + header), ``padding_bytes``,
        ``layers``: ``{layer: {param: bytes}}`` with params such as ``weight``, ``bias``,
        ``codebooks`` and ``codes`` (packed), ``packed``: ``{tensor: bits}``.

    Examples
    --------
    >>> import tempfile
    >>> path = f"{tempfile.mkdtemp()}/t.qcnn"
    >>> _ = write_tensors(path, {"fc.weight": np.ones((2, 3), np.float32)})
    >>> file_summary(path)["layers"]
    {'fc': {'weight': 24}}
    """
    entries, meta, data_start, size = _read_header(path)
    packed, _ = _decode_meta(path, meta)
    layers: dict[str, dict[str, int]] = {}
    for name, e in entries.items():
        layer, _, param = name.rpartition(".")
        layers.setdefault(layer, {})[param] = e["data_offsets"][1] - e["data_offsets"][0]
    data = sum(b for params in layers.values() for b in params.values())
    return {"file_bytes": size, "header_bytes": data_start,
            "padding_bytes": size - data_start - data, "layers": layers,
            "packed": {k: v.get("bits") for k, v in packed.items() if isinstance(v, dict)}}
