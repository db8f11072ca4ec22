"""Readers of reference weights: Caffe .caffemodel/.binaryproto, PyTorch .pth, safetensors, .npz.

`read` tells the format from the file's first bytes (never its extension) and returns a `Weights`.
Every reader validates what it reads and raises ``ValueError`` naming the file on truncated or
corrupt input. None imports torch, protobuf or safetensors; the PyTorch reader unpickles with an
allow-list, so a malicious .pth cannot run code.
"""

from __future__ import annotations

import os
import struct
import zipfile
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Weights", "read", "detect_format", "read_mean", "check_architecture", "FORMATS"]

FORMATS = ("caffe", "pth", "safetensors", "npz")
_SUPPORTED = ("Caffe .caffemodel (protobuf), PyTorch .pth (zip, or the legacy pre-1.6 format), safetensors, "
              "NumPy .npz")


@dataclass
class Weights:
    """Tensors read from a weights file, plus what the file says about its own layers.

    Attributes
    ----------
    tensors : dict[str, np.ndarray]
        Floating-point tensors as float32, by name (Caffe: ``"<layer>.weight"``, ``"<layer>.bias"``;
        other formats: the file's own names).
    format : str
        One of `FORMATS`.
    path : str
        The file read (for error messages).
    layers : dict[str, dict]
        Caffe only: per layer, in file order, its type and declared settings (``num_output``,
        ``kernel``, ``stride``, ``pad``, ``group``, LRN and pooling settings ...). Empty otherwise.
    other : dict[str, np.ndarray]
        Non-float tensors (e.g. BatchNorm's int64 ``num_batches_tracked``), in their own dtype.
    metadata : dict
        safetensors ``__metadata__``; Caffe net ``name`` and ``input_dim`` when present.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "w.npz")
    >>> np.savez(p, **{"fc.weight": np.ones((2, 3))})
    >>> w = read(p)
    >>> w.format, w.tensors["fc.weight"].dtype
    ('npz', dtype('float32'))
    """

    tensors: dict[str, np.ndarray]
    format: str
    path: str
    layers: dict[str, dict] = field(default_factory=dict)
    other: dict[str, np.ndarray] = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)

    def __repr__(self):
        n = sum(int(t.size) for t in self.tensors.values())
        return (f"Weights({self.format}, {os.path.basename(self.path)!r}, "
                f"{len(self.tensors)} tensors, {n:,} floats, {len(self.layers)} layer records)")


def detect_format(path) -> str:
    """The format of a weights file, from its content.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    str
        ``"pth"`` (zip holding ``data.pkl``), ``"safetensors"`` (8-byte header length, then
        ``{``), ``"npz"`` (zip of ``.npy`` members) or ``"caffe"`` (anything else: a protobuf).

    Raises
    ------
    ValueError
        Empty file, a zip that is neither .pth nor .npz, or a legacy (pre-1.6) PyTorch file.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "w.bin")
    >>> np.savez(p, a=np.zeros(2))
    >>> detect_format(p + ".npz")
    'npz'
    """
    path = os.fspath(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        raise ValueError(f"{path} is empty; supported weight formats: {_SUPPORTED}")
    if head[:4] == b"PK\x03\x04" or head[:4] == b"PK\x05\x06":
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            raise ValueError(f"{path} starts like a zip archive (.pth or .npz) but is not a "
                             f"valid one ({e}); the file is truncated or corrupt: download it "
                             "again") from None
        if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            return "pth"
        if names and any(n.endswith(".npy") for n in names):
            return "npz"
        raise ValueError(f"{path} is a zip archive with neither data.pkl (PyTorch) nor .npy "
                         f"members (NumPy .npz): {names[:5]}; supported weight formats: "
                         f"{_SUPPORTED}")
    if len(head) >= 9 and head[8:9] == b"{":
        (n,) = struct.unpack("<Q", head[:8])
        if 8 + n <= size:
            return "safetensors"
        raise ValueError(f"{path} looks like safetensors but its header length {n} does not fit "
                         f"the file's {size} bytes: truncated or corrupt, download it again")
    if (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")) or (
            head[257:262] == b"ustar"):
        return "pth"
    return "caffe"


def read(path) -> Weights:
    """Read a weights file, whatever its format (told from its content).

    Parameters
    ----------
    path : str or os.PathLike
        A Caffe .caffemodel, a PyTorch .pth (zip or legacy format), a .safetensors or a .npz file.

    Returns
    -------
    Weights

    Raises
    ------
    ValueError
        Unknown, truncated or corrupt file (the message names the file), or a .pth whose pickle
        asks for anything but tensors and containers.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "w.npz")
    >>> np.savez(p, **{"conv.bias": np.arange(3.0)})
    >>> read(p).tensors["conv.bias"]
    array([0., 1., 2.], dtype=float32)
    """
    fmt = detect_format(path)
    if fmt == "pth":
        from . import pth as reader
    elif fmt == "safetensors":
        from . import safetensors as reader
    elif fmt == "npz":
        from . import npz as reader
    else:
        from . import caffe as reader
    return reader.read(path)


def read_mean(path) -> np.ndarray:
    """The (C, H, W) float32 mean image of a Caffe ``.binaryproto`` file.

    See `qcnn.readers.caffe.read_mean`.

    Examples
    --------
    >>> read_mean("ilsvrc_2012_mean.binaryproto").shape  # doctest: +SKIP
    (3, 256, 256)
    """
    from . import caffe

    return caffe.read_mean(path)


def check_architecture(weights: Weights, spec: list[dict]) -> None:
    """Compare a Caffe file's declared layer settings with a qcnn spec; raise on any mismatch.

    See `qcnn.readers.caffe.check_architecture`.

    Examples
    --------
    >>> from qcnn import architectures
    >>> check_architecture(read("bvlc_alexnet.caffemodel"),
    ...                    architectures.get("alexnet-caffe"))  # doctest: +SKIP
    """
    from . import caffe

    caffe.check_architecture(weights, spec)
