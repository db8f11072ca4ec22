"""A ready-to-use model: zoo entry -> reference weights -> quantized file in the cache -> predictions.

First use of a model downloads (or takes from ``weights=``) the reference weights, quantizes them and
writes the quantized file atomically into the cache; every later use, in any process, loads only that
file (memory-mapped).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from . import cache, qfile, threads, zoo
from .architectures import weight_layers
from .labels import load_labels
from .net import Net
from .preprocess import preprocess

__all__ = ["Model", "Prediction", "load", "classify", "WeightsError"]

# Bump when a change of the quantizer makes older cached files worth re-making.
QUANTIZER_VERSION = 2


class WeightsError(ValueError):
    """A reference-weights file that does not match its zoo entry."""


@dataclass(frozen=True)
class Prediction:
    """One class of a classification, best first."""

    index: int  # class index in the entry's label list (Caffe / torchvision order)
    wnid: str  # WordNet id, e.g. "n01440764"
    name: str  # human-readable class names
    probability: float

    def __str__(self):
        return f"{self.probability:7.2%}  {self.wnid}  {self.name}"


class Model:
    """A network with its zoo entry and labels; call :meth:`classify` as often as you like.

    Parameters
    ----------
    net : Net
        Float or quantized network ending in a softmax.
    entry : ZooEntry
        Pre-processing and labels come from here.
    path : Path, optional
        The quantized file the net was loaded from.
    mean_image : ndarray, optional
        The decoded mean image, for entries whose pre-processing subtracts one.
    """

    def __init__(self, net: Net, entry: zoo.ZooEntry, path: Path | None = None, mean_image=None):
        self.net, self.entry, self.path, self.mean_image = net, entry, path, mean_image
        self.labels = load_labels(entry.labels)
        self.created = False  # True when this load quantized the net and wrote `path`

    @property
    def quantized(self) -> bool:
        return any(type(layer).__name__.startswith("Q") for _, layer in self.net.named_layers())

    def __repr__(self):
        kind = "quantized" if self.quantized else "float"
        return f"<qcnn.Model {self.entry.name!r} ({kind}){' from ' + str(self.path) if self.path else ''}>"

    def preprocess(self, images) -> np.ndarray:
        """Images (paths, PIL images, HxWx3 uint8 arrays) -> the network's input batch."""
        return preprocess(images, self.entry.preprocess, self.mean_image)

    def predict(self, images) -> np.ndarray:
        """Class probabilities, shape (N, classes)."""
        return self.net(self.preprocess(images))

    def classify(self, images, top: int = 5):
        """The `top` most probable classes, best first.

        Returns a list of :class:`Prediction` for one image, a list of such lists for a list of images
        (classified as one batch).
        """
        single = not isinstance(images, (list, tuple)) and not (
            isinstance(images, np.ndarray) and images.ndim == 4)
        probs = self.predict(images)
        out = []
        for p in probs:
            best = np.argsort(-p, kind="stable")[: max(1, int(top))]
            out.append([Prediction(int(i), *self.labels[i], float(p[i])) for i in best])
        return out[0] if single else out


def check_weights_file(path: Path, wf: zoo.WeightsFile, unverified: bool) -> None:
    """Insist that a user-supplied weights file is the entry's, unless `unverified` (then warn)."""
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if unverified or not wf.verified:
        why = "--unverified given" if unverified else "the zoo entry has no hash to check it against"
        warnings.warn(f"using {path} without checking its hash ({why}): results are only as good "
                      "as that file", stacklevel=3)
        return
    algorithm, expected = next((a, v) for a, v in (("sha256", wf.sha256), ("sha1", wf.sha1),
                                                    ("sha256", wf.sha256_prefix)) if v)
    actual = cache.file_digest(path, algorithm)
    if not actual.startswith(expected.lower()):
        raise WeightsError(f"{path}: {algorithm} is {actual}, but the zoo entry expects {expected}. "
                           "It is not the entry's reference file; if you trust it, pass --unverified "
                           "(weights=..., unverified=True in Python).")


def reference_weights(entry: zoo.ZooEntry, weights=None, unverified=False, progress=True) -> Path:
    """The reference-weights file: the user's `weights`, the entry's local path, or a download."""
    wf = entry.weights
    if weights is not None:
        path = Path(weights).expanduser()
        check_weights_file(path, wf, unverified)
        return path
    if wf.path:
        path = Path(wf.path)
        check_weights_file(path, wf, unverified)
        return path
    if not wf.urls:
        raise WeightsError(f"zoo entry {entry.name!r} names no URL and no local path for its weights")
    full = wf.sha256 or wf.sha1
    path = cache.fetch(wf.urls, wf.filename, sha256=wf.sha256, sha1=wf.sha1, size=wf.size,
                       progress=progress, unverified=unverified or not full)
    if not full and wf.sha256_prefix and not unverified:
        try:
            check_weights_file(path, wf, False)
        except WeightsError:
            path.unlink(missing_ok=True)  # never leave a file a later run could take for the real one
            raise
    return path


def mean_image(entry: zoo.ZooEntry, progress=True):
    """The decoded mean image of entries that subtract one, else None."""
    mi = entry.preprocess.mean_image
    if mi is None:
        return None
    from .readers import read_mean

    if mi.path:
        return read_mean(mi.path)
    full = mi.sha256 or mi.sha1
    path = cache.fetch(mi.urls, mi.filename, sha256=mi.sha256, sha1=mi.sha1, size=mi.size,
                       progress=progress, unverified=not full)
    return read_mean(path)


def float_net(entry: zoo.ZooEntry, path: Path) -> Net:
    """Read a reference-weights file (any supported format) into the entry's float network."""
    from . import readers

    w = readers.read(path)
    spec = entry.spec()
    if w.format == "caffe" and w.layers:
        readers.check_architecture(w, spec)
    tensors = entry.map_tensors(w.tensors)
    wanted = entry.spec_tensor_names()
    missing = sorted(wanted - set(tensors))
    if missing:
        raise WeightsError(f"{path}: no tensor for {missing[:6]}{' ...' if len(missing) > 6 else ''} "
                           f"(the file has {sorted(w.tensors)[:6]} ...); is it the weights of "
                           f"{entry.name!r}? A renaming goes in the entry's tensor_map.")
    try:
        return Net.from_spec(spec, {k: v for k, v in tensors.items() if k in wanted})
    except ValueError as e:
        raise WeightsError(f"{path}: {e}") from None


def quant_settings(entry: zoo.ZooEntry, overrides: dict | None = None,
                   error_correction: bool = True) -> dict:
    """Per-layer quantizer settings: the entry's, then `overrides` (layer name -> LayerSettings)."""
    from .quantizer import LayerSettings

    q = entry.quantization
    settings = {}
    for s in weight_layers(entry.spec()):
        lq = q.for_layer(s)
        if lq is None:
            settings[s["name"]] = LayerSettings(dense=True)
        else:
            settings[s["name"]] = LayerSettings(
                subdim=lq.subdim, K=lq.k, error_correction=error_correction,
                iterations=q.calibration.iterations, codebook_dtype=q.codebook_dtype)
    for name, s in (overrides or {}).items():
        settings[name] = replace(s, error_correction=s.error_correction and error_correction)
    return settings


def choose_run_modes(qnet: Net, entry: zoo.ZooEntry) -> list[str]:
    """Let quantized layers whose tables cost more than they save run as float layers (their weights
    decoded once; the file keeps codes and codebooks): the mode is recorded in the file's spec.

    Decided by :func:`qcnn.qlayers.choose_dense`'s op-count model (deterministic: the same file on
    every machine).
    """
    from .qlayers import QConv2d, QLinear, choose_dense

    quantized = {n: lay for n, lay in qnet.named_layers() if isinstance(lay, (QConv2d, QLinear))}
    slow = choose_dense(entry.spec(), entry.preprocess.crop,
                        {n: (lay.subdim, lay.K) for n, lay in quantized.items()})
    for name in slow:
        quantized[name].run = "float"
    return sorted(slow)


def _settings_key(entry, settings, weights_id, calibration_id) -> str:
    blob = json.dumps({"entry": entry.to_dict(),
                       "settings": {k: vars(v) for k, v in sorted(settings.items())},
                       "weights": weights_id, "calibration": calibration_id,
                       "quantizer": QUANTIZER_VERSION, "format": qfile.FORMAT_VERSION},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _weights_id(entry: zoo.ZooEntry, weights, unverified: bool):
    """What identifies the reference weights in the cache key, without hashing big files each run."""
    if weights is None and not entry.weights.path:
        w = entry.weights
        return w.sha256 or w.sha1 or w.sha256_prefix or w.filename
    p = Path(weights or entry.weights.path).expanduser().resolve()
    st = p.stat() if p.exists() else None
    return [str(p), st.st_size if st else None, int(st.st_mtime) if st else None, bool(unverified)]


def load(model: str | os.PathLike = "alexnet", *, weights=None, unverified: bool = False,
         quantized: bool = True, calibration=None, settings: dict | None = None,
         error_correction: bool = True, keep_reference: bool = True, progress: bool | None = None,
         output: str | os.PathLike | None = None) -> Model:
    """Load a zoo model, quantizing it on first use.

    Parameters
    ----------
    model : str or path
        A zoo name (``qcnn.list_models()``), or the path of an entry file (JSON/TOML, same schema)
        or of a quantized ``.qcnn`` file.
    weights : path, optional
        A local reference-weights file (any supported format) instead of the download.
    unverified : bool
        Accept `weights` whose hash differs from the entry's (warns).
    quantized : bool
        False gives the float reference network (no quantization, nothing cached).
    calibration : path, list of paths or ndarray, optional
        Unlabelled images for the quantizer's error correction (a folder, a list of image files, or
        a pre-processed batch); default: collages of the photos shipped with qcnn
        (:func:`qcnn.calibration.photo_crops`, docs/calibration.md).
    settings : dict, optional
        Layer name -> :class:`qcnn.quantizer.LayerSettings`, overriding the entry's.
    error_correction : bool
        False gives plain product k-means (faster, less accurate).
    keep_reference : bool
        False deletes the downloaded reference weights once the quantized file is written (saves
        phone storage; a later ``quantized=False`` or re-quantization downloads them again).
    progress : bool, optional
        Progress on stderr (default: when stderr is a terminal).
    output : path, optional
        Write the quantized file here instead of the cache (it is then not reused automatically).

    Examples
    --------
    >>> import qcnn
    >>> model = qcnn.load("alexnet")                       # doctest: +SKIP
    >>> model.classify("cat.jpg", top=1)                   # doctest: +SKIP
    [Prediction(index=281, wnid='n02123045', name='tabby, tabby cat', probability=0.62)]
    """
    if progress is None:
        progress = sys.stderr.isatty()
    threads.configure()  # once per process: QCNN_NUM_THREADS or the performance cores
    if str(model).endswith(".qcnn") and Path(model).is_file():
        net, meta = qfile.load(model)
        entry = zoo.ZooEntry.from_dict(meta["entry"], source=str(model))
        return Model(net, entry, Path(model), mean_image(entry, progress))
    entry = zoo.get_entry(model)
    if not quantized:
        net = float_net(entry, reference_weights(entry, weights, unverified, progress))
        return Model(net, entry, None, mean_image(entry, progress))

    from . import calibration as calib

    settings_all = quant_settings(entry, settings, error_correction)
    calib_id = calib.identity(calibration, entry)
    key = _settings_key(entry, settings_all, _weights_id(entry, weights, unverified), calib_id)
    path = Path(output) if output is not None else cache.model_path(entry.name, key)
    if output is None and path.is_file():
        net, _ = qfile.load(path)
        return Model(net, entry, path, mean_image(entry, progress))

    with cache.locked(path.name):
        if output is None and path.is_file():  # another process made it while we waited
            net, _ = qfile.load(path)
            return Model(net, entry, path, mean_image(entry, progress))
        ref = reference_weights(entry, weights, unverified, progress)
        fnet = float_net(entry, ref)
        mean = mean_image(entry, progress)
        batch = calib.calibration_batch(calibration, entry, mean, seed=entry.quantization.calibration.seed)
        from .quantizer import quantize

        if progress:
            print(f"qcnn: quantizing {entry.name} on {len(batch)} calibration images "
                  f"({calib.describe(calibration)}); this happens once", file=sys.stderr)
        qnet, report = quantize(fnet, batch, settings_all, error_correction=error_correction,
                                seed=entry.quantization.calibration.seed, progress=progress)
        as_float = choose_run_modes(qnet, entry)
        meta = {"entry": entry.to_dict(), "settings": {k: vars(v) for k, v in settings_all.items()},
                "calibration": calib.describe(calibration), "report": report.to_dict(),
                "run_as_float": as_float,
                "weights": str(_weights_id(entry, weights, unverified))}
        path.parent.mkdir(parents=True, exist_ok=True)
        qfile.save(path, qnet, meta)
        if not keep_reference and weights is None and ref.parent == cache.download_path(ref.name).parent:
            ref.unlink(missing_ok=True)
            if progress:
                print(f"qcnn: deleted the reference weights {ref} (--delete-reference)", file=sys.stderr)
    net, _ = qfile.load(path)
    model = Model(net, entry, path, mean)
    model.created = True
    return model


def classify(images, model: str = "alexnet", top: int = 5, **load_options):
    """Classify one image or a list of images (one batch) with a zoo model.

    A one-line wrapper over ``load(model, **load_options).classify(images, top)``; keep the
    :class:`Model` from :func:`load` to classify many images without reloading.

    Parameters
    ----------
    images : path, PIL image, HxWx3 uint8 array, or a list of them
    model : str
        A zoo name or entry-file path (see :func:`load`).
    top : int
        How many classes to return per image.

    Returns
    -------
    list of Prediction (one image) or list of such lists (a list of images), best first.

    Examples
    --------
    >>> import qcnn
    >>> for p in qcnn.classify("cat.jpg"):                 # doctest: +SKIP
    ...     print(p)
    """
    return load(model, **load_options).classify(images, top=top)
