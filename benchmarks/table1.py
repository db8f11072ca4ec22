"""The analogue of the Q-CNN paper's Table 1, measured for real on ../shared/data.

Accuracy (top-1 / top-5 of the float and the quantized net, top-1 agreement, KL) against whole-file
compression for SqueezeNet 1.1 (torchvision names, the ONNX zoo's weights) and the Caffe-convention
SqueezeNet 1.0 after Deep Compression, for several settings, with and without error correction,
with the default calibration (nothing from the user) and with 200 user-style calibration images.
Then the storage and theoretical speed-up of AlexNet / CNN-S / VGG-16 at the official settings
(weights of the true shapes, random codes) beside the paper's numbers.

Images: ``images/imagenet-sample`` minus every 5th file (those 200 are the user-style calibration
images), plus ``foolbox20`` and ``val10``: 830 evaluation images, never used for calibration.

    PYTHONPATH=. python benchmarks/table1.py                 # everything (resumes: see --fresh)
    PYTHONPATH=. python benchmarks/table1.py --only sq11 --eval-limit 200   # a quick look

Writes docs/accuracy.json, docs/accuracy.png and the table between the markers of
docs/accuracy.md. Each finished run is saved at once, so an interrupted run resumes where it
stopped; quantized files are cached by qcnn (QCNN_HOME), float outputs in <cache>/table1/.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from qcnn import architectures, cache, qfile
from qcnn.evaluate import compare, predict, storage
from qcnn.model import load
from qcnn.net import Net
from qcnn.qlayers import QConv2d, QLinear, op_counts
from qcnn.quantizer import LayerSettings, default_settings
from qcnn.zoo import get_entry

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SQ10_ENTRY = Path(__file__).resolve().parent / "squeezenet1_0_caffe_dc.json"
BEGIN, END = "<!-- table1:begin -->", "<!-- table1:end -->"

# The paper's Table 1 rows (ILSVRC-12 val top-5 error increase): (speed-up, compression, +top-5 err)
PAPER = {
    "alexnet": [(4.05, 15.40, 0.84), (4.15, 18.76, 0.97)],
    "cnn-s": [(5.69, 16.32, 0.81), (5.78, 20.16, 0.85)],
    "vgg16": [(4.05, 16.55, 0.58), (4.06, 20.34, 0.65)],
}


def data_dir(arg) -> Path:
    d = Path(arg or os.environ.get("QCNN_TEST_DATA", ROOT.parent / "shared" / "data"))
    if not (d / "squeezenet1.1").is_dir():
        sys.exit(f"table1: the shared data is not at {d} (give --data or set QCNN_TEST_DATA)")
    return d


def image_sets(data: Path):
    """(evaluation (path, label) pairs, 200 calibration paths): every 5th imagenet-sample file
    is a calibration image and is left out of the evaluation."""
    evals, calib = [], []
    for sub in ("imagenet-sample", "foolbox20", "val10"):
        with open(data / "images" / sub / "labels.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        for i, r in enumerate(rows):
            p = data / "images" / sub / r["file"]
            if sub == "imagenet-sample" and i % 5 == 0:
                calib.append(p)
            else:
                evals.append((p, int(r["label_caffe_index"])))
    return evals, calib


# --------------------------------------------------------------------------------------------------
# settings policies


def policy(entry, name: str, error_correction: bool = True) -> dict[str, LayerSettings]:
    """Layer settings of a policy name ``d<d>k<K>[-fp16][-dense][-last<d>k<K>]``.

    Every conv layer gets subdim ``d`` (at most its input channels per group, so the 3-channel
    first conv has one 3-dim subspace) and K codewords. ``-fp16`` stores codebooks in float16;
    ``-dense`` keeps a layer float where the codebooks + codes would take more than half the
    bytes of its float weights (SqueezeNet's thin squeeze and 1x1 expand layers);
    ``-last<d>k<K>`` gives the classifier (the last layer) its own d and K. The layers carry
    `error_correction` (which is also what keys the cached quantized file).
    """
    parts = name.split("-")

    def dk(text):
        d, k = (int(v) for v in text.lstrip("d").split("k"))
        return d, k

    d, k = dk(parts[0])
    last = next((dk(p[4:]) for p in parts if p.startswith("last")), None)
    fp16, dense = "fp16" in parts, "dense" in parts
    layers = architectures.weight_layers(entry.spec())
    out = {}
    for i, s in enumerate(layers):
        ld, lk = last if (last and i == len(layers) - 1) else (d, k)
        cg = s["in"] // s.get("groups", 1)
        sub = min(ld, cg)
        c = op_counts(s["in"], s["out"], s.get("kernel", [1, 1]), 1, 1, s.get("groups", 1), sub,
                      lk, 2 if fp16 else 4, s.get("bias", True))
        if dense and c.quantized_bytes > 0.5 * c.float_bytes:
            out[s["name"]] = LayerSettings(dense=True)
        else:
            out[s["name"]] = LayerSettings(subdim=sub, K=lk, error_correction=error_correction,
                                           codebook_dtype="float16" if fp16 else "float32")
    return out


# --------------------------------------------------------------------------------------------------
# calibration candidates that are experiments only (the package's own are in qcnn/calibration.py)


def synthetic_v1(n: int, size: int = 256, seed: int = 0) -> np.ndarray:
    """The first default of qcnn/calibration.py: coloured 1/f noise (channels mixed by a random
    matrix near the identity, so barely correlated) plus 2-6 flat-coloured ellipses."""
    rng = np.random.default_rng(seed)
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    f[0, 0] = 1.0
    out = np.empty((n, size, size, 3), np.uint8)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        alpha = rng.uniform(0.8, 1.4)
        spec = (rng.standard_normal((3, size, size // 2 + 1))
                + 1j * rng.standard_normal((3, size, size // 2 + 1))) / f**alpha
        spec[:, 0, 0] = 0
        img = np.fft.irfft2(spec, s=(size, size), axes=(1, 2))
        mix = rng.standard_normal((3, 3)) * 0.3 + np.eye(3)
        img = np.tensordot(mix, img, axes=1)
        img = (img - img.mean()) / (img.std() + 1e-8)
        img = img * rng.uniform(35, 65) + rng.uniform(80, 170, size=(3, 1, 1))
        for _ in range(rng.integers(2, 7)):
            cy, cx, r = rng.uniform(0, size, 2).tolist() + [rng.uniform(size / 16, size / 3)]
            mask = ((yy - cy) / r) ** 2 + ((xx - cx) / (r * rng.uniform(0.5, 2))) ** 2 < 1
            img[:, mask] = rng.uniform(0, 255, size=(3, 1))
        out[i] = np.clip(img, 0, 255).transpose(1, 2, 0).astype(np.uint8)
    return out


def gaussian_batch(entry, n: int, seed: int = 0) -> np.ndarray:
    """White Gaussian inputs matched per channel to ImageNet pixel statistics (mean, std of
    0..255 RGB pixels: 124/116/104 and 58/57/57), pre-processed as the entry says."""
    from qcnn.preprocess import preprocess

    rng = np.random.default_rng(seed)
    mean, std = np.array([124.0, 116.0, 104.0]), np.array([58.0, 57.0, 57.0])
    imgs = np.clip(rng.standard_normal((n, 256, 256, 3)) * std + mean, 0, 255).astype(np.uint8)
    return preprocess(imgs, entry.preprocess)


def photo_crops_batch(entry, folder: Path, n: int, seed: int = 0) -> np.ndarray:
    """Random crops (scale, position, flip) of the few CC0 / public-domain colour photos that
    scikit-image ships (astronaut, chelsea, coffee, rocket, hubble_deep_field)."""
    from PIL import Image

    from qcnn.preprocess import preprocess

    names = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg"]
    photos = [np.asarray(Image.open(folder / f).convert("RGB")) for f in names]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        p = photos[i % len(photos)]
        h, w = p.shape[:2]
        side = int(min(h, w) * rng.uniform(0.3, 1.0))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = p[y : y + side, x : x + side]
        out.append(crop[:, ::-1] if rng.random() < 0.5 else crop)
    return preprocess([np.ascontiguousarray(c) for c in out], entry.preprocess)


def collage_batch(entry, folder: Path, n: int, seed: int = 0) -> np.ndarray:
    """The default's collages (qcnn.calibration.photo_crops), cut from the full-size originals of
    the same CC0 / public-domain photos instead of the shipped re-encoded copies."""
    from PIL import Image

    from qcnn.calibration import photo_crops
    from qcnn.preprocess import preprocess

    names = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg"]
    photos = [Image.open(folder / f).convert("RGB") for f in names]
    return preprocess(photo_crops(n, 256, seed, photos=photos), entry.preprocess)


# --------------------------------------------------------------------------------------------------


MODELS = {
    "sq11": ("squeezenet1_1", "squeezenet1.1/squeezenet1_1.safetensors"),
    "sq10": (str(SQ10_ENTRY), "squeezenet1.0-caffe-dc/decoded_squeezenet1.0_dc.npz"),
}

# (model, policy, calibration, error correction, evaluation images): the runs of the table, in
# order. The first two use all 830 images; the others 300 spread evenly over them, to keep the
# table within an hour on a shared 2-core machine (float and quantized nets always see the same
# images).
RUNS = [
    ("sq11", "d2k64-fp16-dense", "user200", True, None),
    ("sq11", "d2k64-fp16-dense", "default", True, None),
    ("sq11", "d2k64-fp16-dense", "default", False, 300),
    ("sq11", "d1k16-fp16", "user200", True, 300),
    ("sq11", "d1k32-fp16", "user200", True, 300),
    ("sq11", "d1k32-fp16", "user200", True, None),
    ("sq11", "d1k32-fp16", "default", True, None),
    ("sq11", "d2k64-fp16-dense-last1k16", "user200", True, 300),
    ("sq11", "d4k64-fp16-dense", "user200", True, 300),
    ("sq11", "d2k32-fp16-dense", "user200", True, 300),
    ("sq11", "d2k64-dense", "default", True, 300),
    ("sq10", "d2k64-fp16-dense", "user200", True, 300),
    ("sq10", "d2k64-fp16-dense", "default", True, 300),
    ("sq10", "d2k64-fp16-dense", "default", False, 300),
]

# calibration options compared (docs/calibration.md), SqueezeNet 1.1 at the table's main policy
CALIBRATION_RUNS = [
    ("sq11", "d2k64-fp16-dense", "user200", True, 300),
    ("sq11", "d2k64-fp16-dense", "default", True, 300),
    ("sq11", "d2k64-fp16-dense", "synthetic-v1", True, 300),
    ("sq11", "d2k64-fp16-dense", "synthetic-v2", True, None),
    ("sq11", "d2k64-fp16-dense", "shipped-crops", True, None),
    ("sq11", "d2k64-fp16-dense", "shipped-crops", True, 300),
    ("sq11", "d2k64-fp16-dense", "synthetic-v2", True, 300),
    ("sq11", "d2k64-fp16-dense", "gaussian", True, 300),
    ("sq11", "d2k64-fp16-dense", "photos", True, 300),
    ("sq11", "d2k64-fp16-dense", "collage", True, 300),
]


def run_key(run) -> str:
    return "/".join(str(v) for v in run[:4]) + (f"@{run[4]}" if run[4] else "")


def subset(n_all: int, n: int | None) -> np.ndarray:
    """Indices of `n` evaluation images spread evenly over all of them (all when n is None)."""
    if not n or n >= n_all:
        return np.arange(n_all)
    return np.linspace(0, n_all - 1, n).round().astype(int)


def calibration_source(kind, entry, calib_files, photos_dir, count):
    from qcnn import calibration as C

    if kind == "default":
        return None
    if kind == "user200":
        return list(calib_files)
    if kind == "gaussian":
        return gaussian_batch(entry, count)
    if kind == "synthetic-v2":
        return C.calibration_batch(C.synthetic_images(count), entry)
    if kind == "synthetic-v1":
        return C.calibration_batch(synthetic_v1(count), entry)
    if kind == "photos":
        if photos_dir is None:
            return "skip"
        return photo_crops_batch(entry, photos_dir, count)
    if kind == "collage":
        if photos_dir is None:
            return "skip"
        return collage_batch(entry, photos_dir, count)
    raise ValueError(f"unknown calibration kind {kind!r}")


def float_probs(model_key, data, evals, progress):
    name, wpath = MODELS[model_key]
    folder = cache.cache_root() / "table1"
    folder.mkdir(parents=True, exist_ok=True)
    f = folder / f"{model_key}-float-{len(evals)}.npy"
    if f.is_file():
        return np.load(f)
    fmodel = load(name, weights=data / wpath, unverified=True, quantized=False, progress=False)
    p = predict(fmodel, [p for p, _ in evals], progress=progress, what=f"{model_key} float")
    np.save(f, p)
    return p


def do_run(run, data, evals, calib_files, photos_dir, n_images, count, progress) -> dict | None:
    from qcnn import calibration as C

    model_key, pol, kind, ec, _ = run
    name, wpath = MODELS[model_key]
    entry = get_entry(name)
    src = calibration_source(kind, entry, calib_files, photos_dir, count)
    if isinstance(src, str):
        print(f"table1: skipping {run_key(run)} (no --photos folder)", file=sys.stderr)
        return None
    settings = policy(entry, pol, ec)
    t0 = time.perf_counter()
    qmodel = load(name, weights=data / wpath, unverified=True, calibration=src, settings=settings,
                  error_correction=ec, progress=progress)
    t_quant = time.perf_counter() - t0
    idx = subset(len(evals), n_images)
    ev = [evals[i] for i in idx]
    pf = float_probs(model_key, data, evals, progress)[idx]
    # the quantized outputs on all images, when an earlier run of the same file saved them
    saved = cache.cache_root() / "table1" / f"{qmodel.path.stem}-{len(evals)}.npy"
    if saved.is_file():
        pq = np.load(saved)[idx]
    else:
        pq = predict(qmodel, [p for p, _ in ev], progress=progress, what=f"{run_key(run)}")
        if len(idx) == len(evals):
            np.save(saved, pq)
    r = {"key": run_key(run), "model": model_key, "entry": entry.name, "policy": pol,
         "calibration": kind, "error_correction": ec,
         **compare(pf, pq, [y for _, y in ev]), **storage(qmodel),
         "dense_layers": sorted(k for k, v in settings.items() if v.dense),
         "calibration_identity": C.identity(src, entry),
         "quantize_seconds": round(t_quant, 1),
         # the quantizer is still changing: which source produced this file
         "quantizer_sha256_at_run": hashlib.sha256(
             (ROOT / "qcnn" / "quantizer.py").read_bytes()).hexdigest()[:12]}
    r["top5_drop"] = 100 * (r["float"]["top5"] - r["quantized"]["top5"])
    r["top1_drop"] = 100 * (r["float"]["top1"] - r["quantized"]["top1"])
    return r


def paper_models() -> list[dict]:
    """Storage and theoretical speed-up at the paper's settings, true shapes, random codes.

    The file size is that of :func:`qcnn.qfile.save` on a net whose layers hold random codebooks
    and codes (sizes do not depend on the values); op counts come from
    :func:`qcnn.qlayers.op_counts` at each layer's input size.
    """
    from qcnn.qlayers import _input_sizes  # the spatial walk choose_dense uses

    rows = []
    for zname, arch in (("alexnet", "alexnet-caffe"), ("cnn-s", "cnn-s-caffe"),
                        ("vgg16", "vgg16-caffe")):
        spec = architectures.get(arch)
        size = get_entry(zname).preprocess.crop
        sizes = _input_sizes(spec, size)
        fnet = Net.from_spec(spec, architectures.random_tensors(spec, seed=0))
        rng = np.random.default_rng(0)
        for preset in ("paper-15.4x", "official"):
            qnet, ref, fmacs, qops = fnet, 0, 0, 0
            for lname, st in default_settings(fnet, preset).items():
                lay = fnet.get(lname)
                conv = lay.weight.ndim == 4
                cin = lay.in_channels if conv else lay.weight.shape[1]
                groups = lay.groups if conv else 1
                m = -(-(cin // groups) // st.subdim)
                cb = rng.standard_normal((m, st.K, st.subdim)).astype(np.float32)
                if conv:
                    codes = rng.integers(0, st.K, (lay.weight.shape[0], *lay.weight.shape[2:], m),
                                         dtype=np.uint8)
                    q = QConv2d(cb, codes, lay.bias, cin, lay.stride, lay.padding, groups,
                                name=lname)
                    c = q.op_counts(*sizes[lname])
                else:
                    codes = rng.integers(0, st.K, (lay.weight.shape[0], m), dtype=np.uint8)
                    q = QLinear(cb, codes, lay.bias, cin, name=lname)
                    c = q.op_counts()
                qnet = qnet.replace(lname, q)
                ref, fmacs = ref + c.float_bytes, fmacs + c.float_macs
                qops += c.table_macs + c.accumulate_adds
            path = cache.cache_root() / "table1" / f"{zname}-{preset}-random.qcnn"
            path.parent.mkdir(parents=True, exist_ok=True)
            file_bytes = qfile.save(path, qnet)
            path.unlink()
            paper = PAPER[zname][0 if preset == "paper-15.4x" else 1]
            rows.append({"model": zname, "preset": preset, "reference_bytes": ref,
                         "file_bytes": file_bytes, "compression": ref / file_bytes,
                         "speedup_theoretical": fmacs / qops, "paper_speedup": paper[0],
                         "paper_compression": paper[1], "paper_top5_err_increase": paper[2]})
    return rows


# --------------------------------------------------------------------------------------------------
# output


def markdown(res: dict) -> str:
    lines = [f"Evaluation images: {res['eval_images']} (imagenet-sample minus the 200 calibration "
             "images, foolbox20, val10), or the number in the images column, spread evenly over "
             "them. Drops are float minus quantized, in points.", ""]
    lines += ["| model | settings | calibration | EC | images | float top-1 / top-5 | top-1 | top-5 "
              "| top-1 drop | top-5 drop | agreement | KL | file MB | fp32 MB | compression | "
              "speed-up |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["runs"]:
        lines.append(
            f"| {r['model']} | {r['policy']} | {r['calibration']} | "
            f"{'yes' if r['error_correction'] else 'no'} | {r['images']} | "
            f"{100 * r['float']['top1']:.1f} / {100 * r['float']['top5']:.1f} | "
            f"{100 * r['quantized']['top1']:.2f} | "
            f"{100 * r['quantized']['top5']:.2f} | {r['top1_drop']:+.2f} | {r['top5_drop']:+.2f} | "
            f"{100 * r['agreement_top1']:.1f}% | {r['kl_mean']:.4f} | {r['file_bytes'] / 1e6:.3f} | "
            f"{r['reference_bytes'] / 1e6:.3f} | {r['compression']:.2f}x | "
            f"{r['speedup_theoretical']:.2f}x |")
    if res.get("paper_models"):
        lines += ["", "| model | settings | fp32 MB | file MB | compression | speed-up | paper "
                  "compression | paper speed-up | paper top-5 err. increase |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in res["paper_models"]:
            lines.append(
                f"| {r['model']} | {r['preset']} | {r['reference_bytes'] / 2**20:.2f} MiB | "
                f"{r['file_bytes'] / 2**20:.2f} MiB | {r['compression']:.2f}x | "
                f"{r['speedup_theoretical']:.2f}x | {r['paper_compression']:.2f}x | "
                f"{r['paper_speedup']:.2f}x | +{r['paper_top5_err_increase']:.2f} |")
    return "\n".join(lines)


CALIBRATION_ORDER = ["user200", "default", "collage", "photos", "shipped-crops", "synthetic-v2",
                     "synthetic-v1", "gaussian"]


def calibration_markdown(res: dict) -> str:
    """The calibration comparison: the sq11 main-policy runs on the 300-image subset."""
    rows = [r for r in res["runs"] if r["model"] == "sq11" and r["policy"] == "d2k64-fp16-dense"
            and r["images"] == 300]
    rows.sort(key=lambda r: (not r["error_correction"], CALIBRATION_ORDER.index(r["calibration"])
                             if r["calibration"] in CALIBRATION_ORDER else 99))
    lines = ["| calibration | EC | top-1 | top-5 | top-1 drop | top-5 drop | agreement | KL |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        name = r["calibration"] if r["error_correction"] else "none (plain k-means)"
        lines.append(f"| {name} | {'yes' if r['error_correction'] else 'no'} | "
                     f"{100 * r['quantized']['top1']:.2f} | {100 * r['quantized']['top5']:.2f} | "
                     f"{r['top1_drop']:+.2f} | {r['top5_drop']:+.2f} | "
                     f"{100 * r['agreement_top1']:.1f}% | {r['kl_mean']:.4f} |")
    if rows:
        f = rows[0]["float"]
        lines.append(f"\nFloat on these {rows[0]['images']} images: top-1 {100 * f['top1']:.2f}, "
                     f"top-5 {100 * f['top5']:.2f}.")
    return "\n".join(lines)


def _replace_between(path: Path, begin: str, end: str, body: str) -> None:
    text = path.read_text() if path.is_file() else f"{begin}\n{end}\n"
    if begin not in text:
        text += f"\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    path.write_text(f"{head}{begin}\n{body}\n{end}{rest.split(end, 1)[1]}")


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    marks = {("user200", True): "o", ("default", True): "s", ("default", False): "x"}
    colours = {"sq11": "tab:blue", "sq10": "tab:orange"}
    seen = set()
    full = {r["key"] for r in res["runs"] if r["images"] == res["eval_images"]}
    for r in res["runs"]:
        if r["calibration"] not in ("user200", "default") or r["key"].split("@")[0] in full \
                and "@" in r["key"]:
            continue  # calibration experiments are in docs/calibration.md; no duplicate points
        m = marks.get((r["calibration"], r["error_correction"]), "^")
        label = (f"{r['model']}, {r['calibration']}"
                 f"{'' if r['error_correction'] else ', no EC'}")
        ax.scatter(r["compression"], r["top5_drop"], marker=m, color=colours[r["model"]],
                   label=None if label in seen else label)
        seen.add(label)
        ax.annotate(f"{r['policy']} ({r['images']})", (r["compression"], r["top5_drop"]),
                    fontsize=6,
                    xytext=(3, 3), textcoords="offset points")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.axvline(4.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("whole-file compression (fp32 weights+biases / quantized file)")
    ax.set_ylabel("top-5 drop (points)")
    ax.set_title("Q-CNN on SqueezeNet: top-5 drop against compression\n"
                 "(label: settings (evaluation images))", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_outputs(res: dict, out: Path) -> None:
    (out / "accuracy.json").write_text(json.dumps(res, indent=1) + "\n")
    if res["runs"]:
        plot(res, out / "accuracy.png")
    _replace_between(out / "accuracy.md", BEGIN, END, markdown(res))
    _replace_between(out / "calibration.md", "<!-- calibration:begin -->",
                     "<!-- calibration:end -->", calibration_markdown(res))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="the shared data folder (default ../shared/data)")
    ap.add_argument("--out", default=str(DOCS), help="where accuracy.{json,png,md} go")
    ap.add_argument("--only", nargs="*", help="run keys or model keys (sq11, sq10) to run")
    ap.add_argument("--calibration-options", action="store_true",
                    help="also the calibration comparison of docs/calibration.md")
    ap.add_argument("--photos", help="scikit-image's data folder (skimage/data), for the photo "
                                     "calibration option")
    ap.add_argument("--count", type=int, default=128,
                    help="images of the generated calibration options (default %(default)s)")
    ap.add_argument("--eval-limit", type=int,
                    help="a quick look: every run on N images spread over the evaluation set "
                         "(results are not merged with the saved table)")
    ap.add_argument("--no-paper-models", action="store_true")
    ap.add_argument("--fresh", action="store_true", help="forget earlier results in the JSON")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)

    data, out = data_dir(args.data), Path(args.out)
    evals, calib_files = image_sets(data)
    jpath = out / "accuracy.json"
    res = json.loads(jpath.read_text()) if jpath.is_file() and not args.fresh else {}
    if args.eval_limit:  # a quick look: keep it apart from the real table
        res = {}
    res["eval_images"] = len(evals)
    res.setdefault("runs", [])
    res["command"] = ("PYTHONPATH=. python benchmarks/table1.py --calibration-options "
                      "--photos <scikit-image's skimage/data folder>")
    done = {r["key"] for r in res["runs"]}
    runs = RUNS + (CALIBRATION_RUNS if args.calibration_options else [])
    for run in runs:
        if args.only and run_key(run) not in args.only and run[0] not in args.only:
            continue
        if run_key(run) in done:
            continue
        print(f"table1: {run_key(run)}", file=sys.stderr, flush=True)
        r = do_run(run, data, evals, calib_files, Path(args.photos) if args.photos else None,
                   args.eval_limit or run[4], args.count, not args.quiet)
        if r is None:
            continue
        res["runs"].append(r)
        res["runs"].sort(key=lambda x: [run_key(v) for v in runs].index(x["key"])
                         if x["key"] in [run_key(v) for v in runs] else 99)
        write_outputs(res, out)
        print(f"table1: {r['key']}: top-5 drop {r['top5_drop']:+.2f}, agreement "
              f"{r['agreement_top1']:.1%}, {r['compression']:.2f}x", file=sys.stderr, flush=True)
    if not args.no_paper_models and "paper_models" not in res:
        res["paper_models"] = paper_models()
    write_outputs(res, out)
    print(markdown(res))


if __name__ == "__main__":
    main()
