"""Zoo entries (typed, frozen, declarative) and the registry that finds them.

A :class:`ZooEntry` says everything needed to turn a published weight file into a classifier: where
the weights are and how to check them, which architecture in :mod:`qcnn.architectures` they fit, how
file tensor names map to spec names, how images are pre-processed, which label list the outputs
follow, the licence, the published accuracy and the quantization settings.

Entries come from three places, looked up in this order by :func:`get_entry`:

1. built-in modules in ``qcnn._zoo`` (the repository's ``zoo/`` folder), each defining ``ENTRY``;
2. plugins: entry points in the group ``"qcnn.zoo"`` whose value resolves to a ``ZooEntry`` or to a
   callable returning one (loaded only when that name is asked for);
3. a path to an entry file (JSON, or TOML where :mod:`tomllib` exists) holding
   ``ZooEntry.to_dict()``.

Nothing is discovered at import time: the first :func:`get_entry` or :func:`list_entries` call does.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import importlib.metadata
import importlib.util
import json
import os
import pkgutil
import re
import sys
import threading
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from . import architectures

__all__ = [
    "ENTRY_POINT_GROUP",
    "Accuracy",
    "Calibration",
    "LayerQuant",
    "Preprocess",
    "Quantization",
    "WeightsFile",
    "ZooEntry",
    "ZooError",
    "get_entry",
    "list_entries",
    "load_entry_file",
]

ENTRY_POINT_GROUP = "qcnn.zoo"

# File suffix -> format, used when an entry does not name the format. Weight formats are
# qcnn.readers.FORMATS; mean images are "caffe-mean" (.binaryproto) or "npy" (3xHxW array).
FORMATS = {
    ".caffemodel": "caffe",
    ".binaryproto": "caffe-mean",
    ".pth": "pth",
    ".pt": "pth",
    ".safetensors": "safetensors",
    ".npz": "npz",
    ".npy": "npy",
}

_HEX = re.compile(r"[0-9a-f]+")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


class ZooError(ValueError):
    """A zoo entry is unknown, malformed or inconsistent; the message names the source and field."""


def _check_hex(value: str | None, what: str, lengths: tuple[int, ...]) -> None:
    if value is None:
        return
    if len(value) not in lengths or not _HEX.fullmatch(value):
        want = " or ".join(str(n) for n in lengths)
        raise ValueError(f"{what} must be {want} lowercase hexadecimal digits, got {value!r}")


@dataclass(frozen=True)
class WeightsFile:
    """One file to fetch (or find locally) and verify.

    Examples
    --------
    >>> w = WeightsFile(urls=("https://example.org/net.safetensors",), sha256="ab" * 32)
    >>> w.filename, w.format
    ('net.safetensors', 'safetensors')
    """

    # Download locations, tried in order (the first is the publisher's, the rest are mirrors).
    # May be empty when `path` is given.
    urls: tuple[str, ...] = ()
    # Name of the file in the cache; defaults to the last part of `path` or of the first URL.
    filename: str = ""
    # File format, one of FORMATS' values ("caffe", "pth", "safetensors", "npz" for weights,
    # "caffe-mean" or "npy" for a mean image); defaults to the one the filename suffix implies.
    format: str = ""
    # Full SHA-256 of the file (64 lowercase hex digits), when the publisher gives it.
    sha256: str | None = None
    # SHA-1 of the file (40 hex digits): what Caffe's model zoo publishes.
    sha1: str | None = None
    # Leading hex digits of the SHA-256 when only those are known: torch.hub file names carry the
    # first 8 (e.g. squeezenet1_1-b8a52dc0.pth); verification then compares this prefix only.
    sha256_prefix: str | None = None
    # Size in bytes, when known (early truncation check, progress bars).
    size: int | None = None
    # A local file to use instead of downloading: absolute, or relative to the entry file.
    path: str | None = None

    def __post_init__(self):
        if not self.urls and not self.path:
            raise ValueError("give at least one of 'urls' or 'path'")
        for u in self.urls:
            if not re.match(r"(https?|file)://", u):
                raise ValueError(f"urls: {u!r} is not an http(s):// or file:// URL")
        if not self.filename:
            base = self.path if self.path else self.urls[0].rsplit("?", 1)[0]
            object.__setattr__(self, "filename", re.split(r"[/\\]", base)[-1])
        if not self.filename or re.search(r"[/\\]", self.filename) or self.filename in (".", ".."):
            raise ValueError(f"filename must be a plain file name, got {self.filename!r}")
        if not self.format:
            suffix = os.path.splitext(self.filename)[1].lower()
            if suffix not in FORMATS:
                raise ValueError(f"format not given and the suffix of {self.filename!r} names "
                                 f"none; set 'format' to one of {sorted(set(FORMATS.values()))}")
            object.__setattr__(self, "format", FORMATS[suffix])
        if self.format not in FORMATS.values():
            raise ValueError(f"format {self.format!r} is not one of "
                             f"{sorted(set(FORMATS.values()))}")
        _check_hex(self.sha256, "sha256", (64,))
        _check_hex(self.sha1, "sha1", (40,))
        if self.sha256_prefix is not None:
            _check_hex(self.sha256_prefix, "sha256_prefix", tuple(range(8, 64)))
            if self.sha256 is not None and not self.sha256.startswith(self.sha256_prefix):
                raise ValueError("sha256_prefix does not match the start of sha256")
        if self.size is not None and self.size <= 0:
            raise ValueError(f"size must be a positive number of bytes, got {self.size}")

    @property
    def verified(self) -> bool:
        """True when some hash (full or prefix) can check the file."""
        return bool(self.sha256 or self.sha1 or self.sha256_prefix)


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the network input (see :func:`qcnn.preprocess.preprocess`).

    The input is ``(resized-and-cropped 8-bit pixels in channel_order) * scale - mean``, then
    divided by ``std`` when given. Caffe models take 0..255 BGR minus a mean; torchvision models
    take RGB scaled to 0..1, minus mean, over std.

    Examples
    --------
    >>> p = Preprocess(resize=256, resize_mode="shorter", crop=224, channel_order="RGB",
    ...                scale=1 / 255, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    >>> p.crop
    224
    """

    # Size of the resize step in pixels (the side length for "square", the shorter side otherwise).
    resize: int
    # "square": resize to resize x resize, ignoring the aspect ratio (Caffe's ImageNet lmdb);
    # "shorter": the shorter side to `resize`, keeping the aspect ratio (torchvision Resize(int)).
    resize_mode: Literal["square", "shorter"]
    # Side of the centre crop fed to the network.
    crop: int
    # Channel order the network expects: "BGR" for Caffe models, "RGB" for torchvision ones.
    channel_order: Literal["RGB", "BGR"]
    # Multiplier applied to 0..255 pixel values: 1.0 for Caffe, 1/255 for torchvision.
    scale: float
    # Per-channel mean subtracted after scaling, in the network's channel order and scale. When
    # `mean_image` is set, the mean image is subtracted instead and this is its per-channel average
    # (an approximation for callers that cannot read the mean file).
    mean: tuple[float, float, float]
    # Per-channel divisor applied after the mean (torchvision), or None (Caffe).
    std: tuple[float, float, float] | None = None
    # A mean image (3 x H x W, network channel order and scale) whose centre crop is subtracted.
    mean_image: WeightsFile | None = None

    def __post_init__(self):
        if self.resize <= 0 or self.crop <= 0:
            raise ValueError(f"resize and crop must be positive, got {self.resize} and {self.crop}")
        if self.crop > self.resize:
            raise ValueError(f"crop {self.crop} is larger than the resize step {self.resize}")
        if not self.scale > 0:
            raise ValueError(f"scale must be positive, got {self.scale}")
        if self.std is not None and not all(s > 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")


@dataclass(frozen=True)
class Accuracy:
    """Published ImageNet-1k validation accuracy (percent) and where it comes from."""

    # Top-1 accuracy in percent, or None when not published.
    top1: float | None
    # Top-5 accuracy in percent, or None when not published.
    top5: float | None
    # Where the numbers come from (publisher page, paper and table) and the evaluation protocol.
    source: str

    def __post_init__(self):
        for name in ("top1", "top5"):
            v = getattr(self, name)
            if v is not None and not 0 <= v <= 100:
                raise ValueError(f"{name} must be a percentage in 0..100, got {v}")


@dataclass(frozen=True)
class LayerQuant:
    """Quantization settings of one layer, overriding the defaults of its kind."""

    # Name of a conv or linear layer of the architecture.
    layer: str
    # Input channels per subspace (C_s'); None keeps the default of the layer's kind.
    subdim: int | None = None
    # Codewords per subspace (codes are uint8, so at most 256); None keeps the default.
    k: int | None = None
    # Keep this layer in float.
    skip: bool = False

    def __post_init__(self):
        if self.subdim is not None and self.subdim < 1:
            raise ValueError(f"layer {self.layer!r}: subdim must be >= 1, got {self.subdim}")
        if self.k is not None and not 2 <= self.k <= 256:
            raise ValueError(f"layer {self.layer!r}: k must be in 2..256, got {self.k}")


@dataclass(frozen=True)
class Calibration:
    """Defaults of the quantizer's calibration (error-correction) pass."""

    # Unlabelled images used to capture layer responses. The authors used 250-500 per conv layer;
    # 128 keeps first use on a phone to about a minute and the batch to ~80 MB at 227x227
    # (AlexNet with 500: 223 s and 1.65 GB peak here), and the held-out check guards the FC layers.
    images: int = 128
    # Block-coordinate-descent sweeps over the subspaces per layer.
    iterations: int = 4
    # Seed of every random choice (image order, sampled positions, k-means initialisation).
    seed: int = 0

    def __post_init__(self):
        if self.images < 1 or self.iterations < 0:
            raise ValueError(f"images must be >= 1 and iterations >= 0, got {self.images} "
                             f"and {self.iterations}")


@dataclass(frozen=True)
class Quantization:
    """Per-kind defaults, per-layer overrides and calibration defaults.

    The defaults are the official Q-CNN AlexNet release's: conv 8/128, fully connected 4/32.

    Examples
    --------
    >>> q = Quantization(layers=(LayerQuant("fc8", subdim=1, k=16),))
    >>> q.for_layer({"type": "linear", "name": "fc8"})
    LayerQuant(layer='fc8', subdim=1, k=16, skip=False)
    >>> q.for_layer({"type": "conv", "name": "conv2"})
    LayerQuant(layer='conv2', subdim=8, k=128, skip=False)
    """

    # Input channels per subspace (C_s') of conv layers.
    conv_subdim: int = 8
    # Codewords per subspace of conv layers.
    conv_k: int = 128
    # Input channels per subspace of linear layers.
    linear_subdim: int = 4
    # Codewords per subspace of linear layers.
    linear_k: int = 32
    # Per-layer overrides, at most one per layer.
    layers: tuple[LayerQuant, ...] = ()
    # Storage type of the codebooks: "float16" halves them (thin layers: codebooks are much of the
    # file) at a measured cost under 0.2 point (docs/accuracy.md).
    codebook_dtype: Literal["float32", "float16"] = "float32"
    # Defaults of the calibration pass.
    calibration: Calibration = field(default_factory=Calibration)

    def __post_init__(self):
        LayerQuant("<default conv>", self.conv_subdim, self.conv_k)
        LayerQuant("<default linear>", self.linear_subdim, self.linear_k)
        names = [lq.layer for lq in self.layers]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"layers: more than one override for {dup}")

    def for_layer(self, spec: dict) -> LayerQuant | None:
        """The resolved settings of a conv/linear layer spec, or None when it stays float."""
        over = next((lq for lq in self.layers if lq.layer == spec["name"]), None)
        if over is not None and over.skip:
            return None
        conv = spec["type"] == "conv"
        subdim = self.conv_subdim if conv else self.linear_subdim
        k = self.conv_k if conv else self.linear_k
        if over is not None:
            subdim = over.subdim if over.subdim is not None else subdim
            k = over.k if over.k is not None else k
        return LayerQuant(spec["name"], subdim, k)


def _wildcard(pattern: str) -> re.Pattern:
    head, _, tail = pattern.partition("*")
    return re.compile(re.escape(head) + "(.+)" + re.escape(tail))


@dataclass(frozen=True)
class ZooEntry:
    """One model of the zoo: weights, architecture, pre-processing, labels, licence, quantization.

    Examples
    --------
    >>> from qcnn.zoo import get_entry
    >>> e = get_entry("squeezenet1_1")
    >>> e.architecture, e.preprocess.crop
    ('squeezenet1_1-torchvision', 224)
    >>> ZooEntry.from_dict(e.to_dict()) == e
    True
    """

    # Registry name (letters, digits, "_", ".", "+", "-").
    name: str
    # A name in qcnn.architectures.ARCHITECTURES: the layer spec the weights fit (with `layers`
    # given, only a label).
    architecture: str
    # The weight file.
    weights: WeightsFile
    # Image pre-processing the network was trained with.
    preprocess: Preprocess
    # Licence of the weights, in words (say so when use is restricted).
    licence: str
    # One line for `qcnn list`.
    description: str = ""
    # Label list of the outputs: a name known to qcnn.labels.load_labels ("imagenet1k") or a path
    # to a text file ("<id> <name>" per line; relative paths are relative to the entry file).
    labels: str = "imagenet1k"
    # Renames from tensor names in the file to spec names ("<layer>.<param>"), as (file, spec)
    # pairs applied to names the reader returns. A pair may hold one "*" on each side, matching
    # any non-empty text ("*/weight" -> "*.weight"). Exact pairs win over "*" rules; among "*"
    # rules the first match wins; names that match nothing are kept as they are.
    tensor_map: tuple[tuple[str, str], ...] = ()
    # Published accuracy of the float model, if any.
    accuracy: Accuracy | None = None
    # Quantization settings: per-kind defaults, per-layer overrides, calibration defaults.
    quantization: Quantization = field(default_factory=Quantization)
    # An inline layer spec (the schema of docs/architecture.md), for a model that is not in
    # qcnn.architectures: an entry file can then describe a new network without any code.
    layers: tuple[dict, ...] = ()

    def __post_init__(self):
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"name {self.name!r} must be letters, digits, '_', '.', '+' or '-'")
        if not self.layers and self.architecture not in architectures.ARCHITECTURES:
            raise ValueError(f"architecture {self.architecture!r} is not one of "
                             f"{sorted(architectures.ARCHITECTURES)}")
        if not self.licence.strip():
            raise ValueError("licence must say under which terms the weights may be used")
        layers = {s["name"]: s for s in architectures.weight_layers(self.spec())}
        known = self.spec_tensor_names()
        for src, dst in self.tensor_map:
            if src.count("*") > 1 or src.count("*") != dst.count("*"):
                raise ValueError(f"tensor_map: ({src!r}, {dst!r}) must hold one '*' on both "
                                 "sides or none")
            hit = (dst in known if "*" not in dst
                   else any(_wildcard(dst).fullmatch(n) for n in known))
            if not hit:
                raise ValueError(f"tensor_map: {dst!r} names no tensor of architecture "
                                 f"{self.architecture!r} (e.g. {sorted(known)[:3]})")
        for lq in self.quantization.layers:
            if lq.layer not in layers:
                raise ValueError(f"quantization.layers: {lq.layer!r} is not a conv or linear "
                                 f"layer of {self.architecture!r}; known: {sorted(layers)}")

    def spec(self) -> list[dict]:
        """The layer spec of this entry's architecture."""
        if self.layers:
            return copy.deepcopy(list(self.layers))
        return architectures.get(self.architecture)

    def spec_tensor_names(self) -> set[str]:
        """Every tensor name the architecture's layers expect (``"<layer>.weight"``, ...)."""
        names = set()
        for s in architectures.weight_layers(self.spec()):
            names.add(f"{s['name']}.weight")
            if s.get("bias", True):
                names.add(f"{s['name']}.bias")
        return names

    def map_tensor_name(self, name: str) -> str:
        """The spec name of a tensor named ``name`` in the weight file.

        Examples
        --------
        >>> e = get_entry("squeezenet1_1")
        >>> e.map_tensor_name("features.0.weight")
        'features.0.weight'
        """
        for src, dst in self.tensor_map:
            if "*" not in src and src == name:
                return dst
        for src, dst in self.tensor_map:
            if "*" in src:
                m = _wildcard(src).fullmatch(name)
                if m:
                    return dst.replace("*", m.group(1))
        return name

    def map_tensors(self, tensors: dict) -> dict:
        """``tensors`` with every key renamed by :meth:`map_tensor_name`; a clash is an error."""
        out = {}
        for name, value in tensors.items():
            new = self.map_tensor_name(name)
            if new in out:
                raise ZooError(f"entry {self.name!r}: tensor_map sends two file tensors to {new!r}")
            out[new] = value
        return out

    @classmethod
    def from_dict(cls, d: dict, source: str = "<dict>", base_dir: str | os.PathLike | None = None
                  ) -> ZooEntry:
        """Build and validate an entry from plain data (the JSON/TOML schema).

        Parameters
        ----------
        d : dict
            The entry, as :meth:`to_dict` writes it. Optional fields may be left out.
        source : str
            Named in error messages (the entry file's path).
        base_dir : path, optional
            Relative ``weights.path``, ``preprocess.mean_image.path`` and label-file paths are
            taken relative to it (the entry file's folder).

        Raises
        ------
        ZooError
            On an unknown key, a missing field, a wrong type or an inconsistent value; the message
            names ``source`` and the field.

        Examples
        --------
        >>> d = get_entry("alexnet").to_dict()
        >>> ZooEntry.from_dict(d).name
        'alexnet'
        """
        entry = _from_mapping(cls, d, source, "")
        if base_dir is not None:
            entry = _resolve_paths(entry, Path(base_dir))
        return entry

    def to_dict(self) -> dict:
        """Plain JSON-able data (tuples become lists, None stays None)."""
        return _to_plain(self)


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value, tp, source: str, where: str):
    """Check ``value`` against the type hint ``tp`` and convert it (lists -> tuples, dicts ->
    dataclasses, ints -> floats where a float is declared)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)

    def fail(expected):
        raise ZooError(f"{source}: field {where!r}: expected {expected}, got "
                       f"{type(value).__name__} {value!r}"[:400])

    if origin in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            fail(" or ".join(_type_name(a) for a in args))
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:  # the schema only uses "X | None"
            raise TypeError(f"unsupported union {tp}")
        return _convert(value, rest[0], source, where)
    if origin is Literal:
        if value not in args:
            fail("one of " + ", ".join(repr(a) for a in args))
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            fail(f"a list ({_type_name(tp)})")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], source, f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            fail(f"a list of {len(args)} items")
        return tuple(_convert(v, a, source, f"{where}[{i}]")
                     for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            fail(f"a table/object ({tp.__name__})")
        return _from_mapping(tp, value, source, where)
    if tp is dict:
        if not isinstance(value, dict):
            fail("a table/object")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            fail("true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail("an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail("a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            fail("a string")
        return value
    raise TypeError(f"unsupported type {tp} in the zoo schema")


def _from_mapping(cls, d, source: str, where: str):
    if not isinstance(d, dict):
        raise ZooError(f"{source}: {where or 'the entry'} must be a table/object, "
                       f"got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    prefix = f"{where}." if where else ""
    unknown = sorted(set(d) - set(fields))
    if unknown:
        more = f" (and {[prefix + u for u in unknown[1:]]})" if unknown[1:] else ""
        raise ZooError(f"{source}: unknown field {prefix + unknown[0]!r}{more}; "
                       f"known fields{' of ' + where if where else ''}: {sorted(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name not in d:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ZooError(f"{source}: missing required field {prefix + name!r}")
            continue
        kwargs[name] = _convert(d[name], hints[name], source, prefix + name)
    try:
        return cls(**kwargs)
    except ValueError as e:
        if isinstance(e, ZooError):
            raise
        raise ZooError(f"{source}: {where or 'entry'}: {e}") from None


def _to_plain(obj):
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [_to_plain(v) for v in obj]
    return obj


def _looks_like_path(s: str) -> bool:
    return "/" in s or "\\" in s or s.endswith((".txt", ".json", ".toml"))


def _resolve_paths(entry: ZooEntry, base: Path) -> ZooEntry:
    def fix(w: WeightsFile | None):
        if w is None or w.path is None or os.path.isabs(os.path.expanduser(w.path)):
            return w if w is None or w.path is None else dataclasses.replace(
                w, path=os.path.expanduser(w.path))
        return dataclasses.replace(w, path=str(base / w.path))

    pre = dataclasses.replace(entry.preprocess, mean_image=fix(entry.preprocess.mean_image))
    labels = entry.labels
    if _looks_like_path(labels) and not os.path.isabs(os.path.expanduser(labels)):
        labels = str(base / labels)
    return dataclasses.replace(entry, weights=fix(entry.weights), preprocess=pre, labels=labels)


def load_entry_file(path: str | os.PathLike) -> ZooEntry:
    """Read a user entry file: JSON, or TOML (Python 3.11+) when the name ends in ``.toml``.

    Relative paths inside it (a local ``weights.path``, a mean image, a label file) are taken
    relative to the file's folder, so an entry can sit beside its weights on a phone.

    Examples
    --------
    >>> import json, tempfile, pathlib
    >>> tmp = tempfile.TemporaryDirectory()
    >>> d = pathlib.Path(tmp.name)
    >>> e = get_entry("squeezenet1_1").to_dict()
    >>> e.update(name="my-squeezenet", weights={"path": "squeezenet1_1.safetensors"})
    >>> _ = (d / "my.json").write_text(json.dumps(e))
    >>> load_entry_file(d / "my.json").weights.path == str(d / "squeezenet1_1.safetensors")
    True
    >>> tmp.cleanup()
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ZooError(f"zoo entry file not found: {path}") from None
    except OSError as e:
        raise ZooError(f"cannot read zoo entry file {path}: {e}") from None
    if path.suffix.lower() == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:
            raise ZooError(f"{path}: TOML entry files need Python 3.11+ (tomllib); "
                           "write the entry as JSON instead") from None
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise ZooError(f"{path}: not valid TOML: {e}") from None
    else:
        try:
            data = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise ZooError(f"{path}: not UTF-8 text: {e}") from None
        except json.JSONDecodeError as e:
            raise ZooError(f"{path}: not valid JSON: {e.msg} at line {e.lineno}, "
                           f"column {e.colno}") from None
    return ZooEntry.from_dict(data, source=str(path), base_dir=path.parent)


_lock = threading.Lock()
_builtins: dict[str, ZooEntry] | None = None


def _builtin_package() -> types.ModuleType:
    """``qcnn._zoo``; in a source checkout (not installed) the ``zoo/`` folder beside ``qcnn/``."""
    try:
        return importlib.import_module("qcnn._zoo")
    except ModuleNotFoundError as e:
        if e.name != "qcnn._zoo":
            raise
    init = Path(__file__).resolve().parent.parent / "zoo" / "__init__.py"
    if not init.is_file():
        raise ZooError("the built-in zoo entries are missing: qcnn._zoo is not installed and "
                       f"{init} does not exist; reinstall quantized-cnn")
    spec = importlib.util.spec_from_file_location("qcnn._zoo", init,
                                                  submodule_search_locations=[str(init.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["qcnn._zoo"] = module
    spec.loader.exec_module(module)
    return module


def _builtin_entries() -> dict[str, ZooEntry]:
    global _builtins
    with _lock:
        if _builtins is None:
            package = _builtin_package()
            found = {}
            for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
                if info.name.startswith("_"):
                    continue
                module = importlib.import_module(f"qcnn._zoo.{info.name}")
                entry = getattr(module, "ENTRY", None)
                if not isinstance(entry, ZooEntry):
                    raise ZooError(f"built-in zoo module {module.__file__} must define ENTRY, "
                                   "a ZooEntry")
                if entry.name in found:
                    raise ZooError(f"two built-in zoo modules define the entry {entry.name!r}")
                found[entry.name] = entry
            _builtins = found
        return _builtins


def _plugins() -> dict[str, importlib.metadata.EntryPoint]:
    found = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep)
    return found


def _load_plugin(ep: importlib.metadata.EntryPoint) -> ZooEntry:
    dist = getattr(getattr(ep, "dist", None), "name", None) or "an installed package"
    where = f"zoo plugin {ep.name!r} ({ep.value!r}, from {dist})"
    try:
        obj = ep.load()
    except Exception as e:  # a broken third-party package must not look like our bug
        raise ZooError(f"{where} failed to load: {type(e).__name__}: {e}") from e
    if callable(obj) and not isinstance(obj, ZooEntry):
        try:
            obj = obj()
        except ZooError:
            raise
        except Exception as e:
            raise ZooError(f"{where} raised {type(e).__name__}: {e}") from e
    if not isinstance(obj, ZooEntry):
        raise ZooError(f"{where} gave a {type(obj).__name__}, not a ZooEntry (or a callable "
                       "returning one)")
    if obj.name != ep.name:
        raise ZooError(f"{where} gave an entry named {obj.name!r}; the names must match")
    return obj


def list_entries() -> list[str]:
    """Names of the built-in entries, then of installed plugins (not loaded), sorted.

    Examples
    --------
    >>> "alexnet" in list_entries()
    True
    """
    builtins, plugins = _builtin_entries(), _plugins()
    _warn_shadowed(builtins, plugins)
    return sorted(builtins) + sorted(n for n in plugins if n not in builtins)


def get_entry(name_or_path: str | os.PathLike) -> ZooEntry:
    """The entry with this name (built-in, then plugin), or the one in this entry file.

    Parameters
    ----------
    name_or_path : str or path
        A registered name (``"alexnet"``) or the path of a ``.json``/``.toml`` entry file.

    Raises
    ------
    ZooError
        When the name is unknown and no such file exists, or the entry is malformed.

    Examples
    --------
    >>> get_entry("vgg16").weights.sha1
    '9363e1f6d65f7dba68c4f27a1e62105cdf6c4e24'
    """
    if not isinstance(name_or_path, str):
        return load_entry_file(name_or_path)
    name = name_or_path
    builtins = _builtin_entries()
    if name in builtins:
        return builtins[name]
    plugins = _plugins()
    if name in plugins:
        return _load_plugin(plugins[name])
    if _looks_like_path(name) or os.path.isfile(name):
        return load_entry_file(name)
    extra = f"; plugins: {sorted(plugins)}" if plugins else ""
    raise ZooError(f"unknown zoo entry {name!r}; built-in: {sorted(builtins)}{extra}; or give "
                   "the path of a .json/.toml entry file")


def _warn_shadowed(builtins: dict, plugins: dict) -> None:
    for name in sorted(set(builtins) & set(plugins)):
        warnings.warn(f"zoo plugin {name!r} ({plugins[name].value}) has the name of a built-in "
                      "entry and is ignored", stacklevel=3)

