"""Accuracy of a quantized model against its float reference, on labelled images.

:func:`evaluate` loads the float network and the quantized one (through :func:`qcnn.model.load`, so
a second evaluation reuses the cached quantized file), runs both on the same pre-processed batches
and reports top-1 / top-5 accuracy of each, how often they agree, the mean KL divergence between
their softmax outputs, the file size against the fp32 reference and the theoretical speed-up from
op counts. ``qcnn eval`` prints the result (:func:`format_report`) or its JSON.

The parts are public for scripts that evaluate many settings on the same images
(``benchmarks/table1.py``): :func:`read_labels`, :func:`predict`, :func:`compare` and
:func:`storage`.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np

from . import layers as L
from .qlayers import QConv2d, QLinear

__all__ = ["evaluate", "format_report", "read_labels", "predict", "compare", "storage"]

#: Images per forward pass: bounds memory (SqueezeNet's largest activation at batch 32 is ~100 MB).
BATCH_SIZE = 32


def read_labels(csv_path, images_dir=None) -> list[tuple[Path, int]]:
    """(image path, class index) pairs from a ``labels.csv``.

    The file needs the columns ``file`` and ``label_caffe_index`` (others, such as ``wnid`` and
    ``name``, are ignored); ``file`` is relative to `images_dir` (default: the CSV's folder).

    Parameters
    ----------
    csv_path : str or path
    images_dir : str or path, optional

    Returns
    -------
    list of (Path, int)

    Raises
    ------
    FileNotFoundError
        The CSV or an image it lists does not exist (the message lists the first missing ones).
    ValueError
        A missing column or a label that is not a non-negative integer (the message names the line).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> (d / "a.jpg").write_bytes(b"")
    0
    >>> _ = (d / "labels.csv").write_text("file,label_caffe_index,wnid,name\\na.jpg,7,n0,x\\n")
    >>> [(p.name, y) for p, y in read_labels(d / "labels.csv")]
    [('a.jpg', 7)]
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"labels file {csv_path} does not exist (expected a CSV with "
                                "columns file,label_caffe_index,...)")
    base = Path(images_dir) if images_dir is not None else csv_path.parent
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        missing = [c for c in ("file", "label_caffe_index") if c not in cols]
        if missing:
            raise ValueError(f"{csv_path}: no column {missing} (columns: {cols}); the labels file "
                             "needs file,label_caffe_index (as in ../shared/data/images/*/labels.csv)")
        out = []
        for line, row in enumerate(reader, 2):
            raw = (row["label_caffe_index"] or "").strip()
            if not raw.isdigit():
                raise ValueError(f"{csv_path}, line {line}: label_caffe_index {raw!r} is not a "
                                 "non-negative integer class index")
            out.append((base / row["file"], int(raw)))
    if not out:
        raise ValueError(f"{csv_path} lists no images")
    absent = [str(p) for p, _ in out if not p.is_file()]
    if absent:
        raise FileNotFoundError(f"{len(absent)} images listed in {csv_path} do not exist in {base}, "
                                f"e.g. {absent[:3]}; is the images folder right?")
    return out


def predict(model, images, batch_size: int = BATCH_SIZE, progress: bool = False,
            what: str = "") -> np.ndarray:
    """Softmax outputs of `model` on `images`, a batch of `batch_size` images at a time.

    Parameters
    ----------
    model : qcnn.model.Model
    images : list of paths (or anything :meth:`Model.preprocess` takes)
    batch_size : int
    progress : bool
        A line per batch on stderr.
    what : str
        Named in the progress lines.

    Returns
    -------
    ndarray, (len(images), classes) float32

    Examples
    --------
    >>> import qcnn
    >>> model = qcnn.load("squeezenet1_1")                 # doctest: +SKIP
    >>> predict(model, ["cat.jpg", "dog.jpg"]).shape       # doctest: +SKIP
    (2, 1000)
    """
    images = list(images)
    out, t0 = [], time.perf_counter()
    for s in range(0, len(images), batch_size):
        out.append(np.asarray(model.net(model.preprocess(images[s : s + batch_size])), np.float32))
        if progress:
            done = min(len(images), s + batch_size)
            print(f"qcnn: {what} {done}/{len(images)} images ({time.perf_counter() - t0:.0f} s)",
                  file=sys.stderr, flush=True)
    return np.concatenate(out)


def _topk_hits(probs: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    k = min(k, probs.shape[1])
    best = np.argpartition(-probs, k - 1, axis=1)[:, :k]
    return (best == labels[:, None]).any(axis=1)


def compare(float_probs, quant_probs, labels) -> dict:
    """Accuracy of both networks, their top-1 agreement and the mean KL(float || quantized).

    Parameters
    ----------
    float_probs, quant_probs : array (N, classes)
        Softmax outputs of the float and the quantized network on the same images.
    labels : array (N,) of int
        True class indices.

    Returns
    -------
    dict
        ``float`` and ``quantized``: ``{"top1", "top5"}`` (fractions); ``agreement_top1``
        (fraction of images whose most probable class is the same); ``kl_mean`` (nats, mean
        over images of ``sum p log(p / q)``, q clipped at 1e-12); ``images``.

    Examples
    --------
    >>> import numpy as np
    >>> p = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    >>> q = np.array([[0.6, 0.3, 0.1], [0.1, 0.6, 0.3]])
    >>> r = compare(p, q, [0, 2])
    >>> r["float"]["top1"], r["quantized"]["top1"], r["agreement_top1"]
    (1.0, 0.5, 0.5)
    """
    p = np.asarray(float_probs, np.float64)
    q = np.asarray(quant_probs, np.float64)
    y = np.asarray(labels, np.int64)
    if p.shape != q.shape or p.ndim != 2 or y.shape != (p.shape[0],):
        raise ValueError(f"compare: float {p.shape} and quantized {q.shape} outputs must be the "
                         f"same (N, classes) shape with N = {y.shape[0]} labels")
    if y.size and (y.min() < 0 or y.max() >= p.shape[1]):
        raise ValueError(f"a label index ({int(y.max())}) is outside the network's "
                         f"{p.shape[1]} classes: does the labels file follow the model's classes?")
    pc = np.clip(p, 1e-12, None)
    kl = np.sum(np.where(p > 0, p * (np.log(pc) - np.log(np.clip(q, 1e-12, None))), 0.0), axis=1)
    return {
        "float": {"top1": float(_topk_hits(p, y, 1).mean()), "top5": float(_topk_hits(p, y, 5).mean())},
        "quantized": {"top1": float(_topk_hits(q, y, 1).mean()),
                      "top5": float(_topk_hits(q, y, 5).mean())},
        "agreement_top1": float(np.mean(p.argmax(1) == q.argmax(1))),
        "kl_mean": float(kl.mean()),
        "images": int(y.size),
    }


def storage(qmodel, float_net=None) -> dict:
    """File size against the fp32 reference, and the theoretical speed-up from op counts.

    Parameters
    ----------
    qmodel : qcnn.model.Model
        A quantized model loaded from its file (``qmodel.path``).
    float_net : Net, optional
        The float reference; default: the reference size is computed from the quantized layers'
        shapes (``4 * (out * in/groups * kh * kw + out)`` bytes per layer, the same number).

    Returns
    -------
    dict
        ``file_bytes`` (the quantized file on disk: codebooks, packed codes, biases, dense layers,
        header), ``reference_bytes`` (fp32 conv + linear weights and biases), ``compression``
        (their ratio), ``speedup_theoretical`` (float multiply-adds over table multiply-adds plus
        accumulate additions, dense layers counted the same on both sides, at the entry's input
        size), ``float_macs``, ``quantized_ops``.

    Examples
    --------
    >>> import qcnn
    >>> s = storage(qcnn.load("squeezenet1_1"))            # doctest: +SKIP
    >>> s["compression"] > 4                               # doctest: +SKIP
    True
    """
    size = qmodel.entry.preprocess.crop
    shapes = {}

    def hook(name, layer, x_in, x_out):
        shapes[name] = (x_in.shape, x_out.shape)

    qmodel.net(np.zeros((1, 3, size, size), np.float32), hook)
    ref, fmacs, qops = 0, 0, 0
    for name, layer in qmodel.net.named_layers():
        if isinstance(layer, QConv2d):
            c = layer.op_counts(*shapes[name][0][2:])
        elif isinstance(layer, QLinear):
            c = layer.op_counts()
        elif isinstance(layer, (L.Conv2d, L.Linear)):
            fl = layer.weight.size * int(np.prod(shapes[name][1][2:]))  # x output positions
            ref += 4 * (layer.weight.size + (0 if layer.bias is None else layer.bias.size))
            fmacs, qops = fmacs + fl, qops + fl
            continue
        else:
            continue
        ref += c.float_bytes
        fmacs, qops = fmacs + c.float_macs, qops + c.table_macs + c.accumulate_adds
    if float_net is not None:
        ref = sum(4 * (lay.weight.size + (0 if lay.bias is None else lay.bias.size))
                  for _, lay in float_net.named_layers() if isinstance(lay, (L.Conv2d, L.Linear)))
    file_bytes = os.path.getsize(qmodel.path) if qmodel.path is not None else None
    return {"file_bytes": file_bytes, "reference_bytes": int(ref),
            "compression": ref / file_bytes if file_bytes else None,
            "speedup_theoretical": fmacs / qops if qops else 1.0,
            "float_macs": int(fmacs), "quantized_ops": int(qops)}


def _image_list(images, labels) -> list[tuple[Path, int]]:
    if isinstance(images, (str, os.PathLike)):
        folder = Path(images)
        if not folder.is_dir():
            raise FileNotFoundError(f"images folder {folder} does not exist")
        csv_path = Path(labels) if labels is not None else folder / "labels.csv"
        return read_labels(csv_path, folder)
    if labels is not None:
        raise ValueError("give labels (a labels.csv) with a folder of images, or a list of "
                         "(image path, class index) pairs as `images` and no labels")
    return [(Path(p), int(y)) for p, y in images]


def _check_disjoint(calibration, files) -> None:
    if calibration is None or isinstance(calibration, np.ndarray):
        return
    from .calibration import image_files

    calib = {f.resolve() for f in image_files(calibration)}
    both = sorted(str(f) for f in files if f.resolve() in calib)
    if both:
        raise ValueError(f"{len(both)} evaluation images are also calibration images (e.g. "
                         f"{both[:3]}): the accuracy would be optimistic; keep the calibration "
                         "folder and the evaluation images apart")


def evaluate(model, images, labels=None, weights=None, unverified: bool = False, calibration=None,
             settings: dict | None = None, error_correction: bool = True, limit: int | None = None,
             progress: bool = True, batch_size: int = BATCH_SIZE) -> dict:
    """Accuracy of the float and the quantized network on labelled images, and what it costs.

    The quantized network comes from :func:`qcnn.model.load` with the same options, so it is
    quantized on the first evaluation and read from the cache afterwards.

    Parameters
    ----------
    model : str or path
        A zoo name or an entry file (see :func:`qcnn.load`).
    images : str, path, or list of (path, int)
        A folder of images with `labels`, or (image, class index) pairs.
    labels : str or path, optional
        A CSV with the columns ``file,label_caffe_index`` (``wnid``, ``name`` may follow), file
        names relative to the `images` folder; default ``<images>/labels.csv``.
    weights, unverified, calibration, settings, error_correction
        As for :func:`qcnn.load`. Calibration images must not be evaluation images.
    limit : int, optional
        Only the first `limit` images.
    progress : bool
        Progress on stderr.
    batch_size : int
        Images per forward pass.

    Returns
    -------
    dict
        ``model``, ``images``, ``float`` and ``quantized`` (``{"top1", "top5"}``, fractions),
        ``agreement_top1``, ``kl_mean``, ``file_bytes``, ``reference_bytes``, ``compression``,
        ``speedup_theoretical``, ``error_correction``, ``calibration`` (in words), ``settings``
        (layer name -> the quantizer settings used), ``path`` (the quantized file), ``seconds``.

    Examples
    --------
    >>> from qcnn.evaluate import evaluate, format_report
    >>> r = evaluate("squeezenet1_1", "val_images/", "val_images/labels.csv")  # doctest: +SKIP
    >>> print(format_report(r))                                                # doctest: +SKIP
    """
    from . import calibration as calib
    from .model import load, quant_settings

    t0 = time.perf_counter()
    pairs = _image_list(images, labels)
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be a positive number of images, got {limit}")
        pairs = pairs[:limit]
    files = [p for p, _ in pairs]
    y = np.array([c for _, c in pairs], np.int64)
    _check_disjoint(calibration, files)

    if settings is not None and not error_correction:
        # the layers' own flag is what distinguishes the cached file from an error-corrected one
        settings = {k: dataclasses.replace(v, error_correction=False) for k, v in settings.items()}
    common = {"weights": weights, "unverified": unverified, "progress": progress}
    fmodel = load(model, quantized=False, **common)
    qmodel = load(model, calibration=calibration, settings=settings,
                  error_correction=error_correction, **common)
    p_float = predict(fmodel, files, batch_size, progress, "float")
    p_quant = predict(qmodel, files, batch_size, progress, "quantized")
    result = {"model": qmodel.entry.name, **compare(p_float, p_quant, y),
              **storage(qmodel, fmodel.net)}
    used = quant_settings(qmodel.entry, settings, error_correction)
    result.update({
        "error_correction": bool(error_correction),
        "calibration": calib.describe(calibration),
        "settings": {k: dict(vars(v)) for k, v in used.items()},
        "path": str(qmodel.path),
        "seconds": round(time.perf_counter() - t0, 1),
    })
    return result


def format_report(result: dict) -> str:
    """A short human-readable table of an :func:`evaluate` result.

    Examples
    --------
    >>> r = {"model": "m", "images": 10, "float": {"top1": 0.6, "top5": 0.8},
    ...      "quantized": {"top1": 0.5, "top5": 0.8}, "agreement_top1": 0.9, "kl_mean": 0.05,
    ...      "file_bytes": 1000, "reference_bytes": 5000, "compression": 5.0,
    ...      "speedup_theoretical": 3.0, "calibration": "synthetic", "error_correction": True}
    >>> print(format_report(r).splitlines()[2])
    float             60.00%    80.00%
    """
    f, q = result["float"], result["quantized"]
    lines = [
        f"{result['model']} on {result['images']} images",
        f"{'':<14} {'top-1':>8} {'top-5':>9}",
        f"{'float':<14} {f['top1']:>9.2%} {f['top5']:>9.2%}",
        f"{'quantized':<14} {q['top1']:>9.2%} {q['top5']:>9.2%}",
        f"{'drop':<14} {100 * (f['top1'] - q['top1']):>+8.2f}pt {100 * (f['top5'] - q['top5']):>+7.2f}pt",
        f"top-1 agreement {result['agreement_top1']:.2%}, mean KL(float||quantized) "
        f"{result['kl_mean']:.4f} nats",
        f"file {result['file_bytes'] / 1e6:.3f} MB vs fp32 {result['reference_bytes'] / 1e6:.3f} MB: "
        f"{result['compression']:.2f}x smaller; theoretical speed-up {result['speedup_theoretical']:.2f}x",
        f"calibration: {result['calibration']}; error correction "
        f"{'on' if result['error_correction'] else 'off'}",
    ]
    return "\n".join(lines)
