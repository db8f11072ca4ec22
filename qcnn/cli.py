"""The ``qcnn`` command. Results go to stdout, errors to stderr; exit codes in EXIT below."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

# Exit codes scripts can rely on (also in docs/cli.md).
EXIT = {
    "ok": 0,
    "error": 1,  # anything unexpected (a bug: please report it)
    "usage": 2,  # bad command line (argparse)
    "input": 3,  # a bad image, entry file, weights file or label file
    "download": 4,  # the network or the cache failed (offline, 404, hash mismatch, disk full)
}


def _model_options(p: argparse.ArgumentParser, default: str | None = "alexnet") -> None:
    if default is not None:
        p.add_argument("--model", "-m", default=default,
                       help="zoo name or entry-file path (default: %(default)s; see `qcnn models`)")
    p.add_argument("--weights", metavar="FILE",
                   help="local reference-weights file (caffemodel, pth, safetensors, npz) instead of "
                        "downloading; its hash must match the entry's unless --unverified")
    p.add_argument("--unverified", action="store_true",
                   help="accept a --weights file whose hash differs from the entry's (warns)")
    p.add_argument("--calibration", metavar="DIR",
                   help="folder of unlabelled images for the quantizer (default: collages of 5 photos "
                        "shipped with qcnn; docs/calibration.md)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")


def _settings_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("quantization settings (default: the zoo entry's)")
    g.add_argument("--conv-subdim", type=int, help="input channels per subspace of conv layers (C_s')")
    g.add_argument("--conv-k", type=int, help="codewords per subspace of conv layers (K, 2..256)")
    g.add_argument("--fc-subdim", type=int, help="input channels per subspace of FC layers")
    g.add_argument("--fc-k", type=int, help="codewords per subspace of FC layers")
    g.add_argument("--no-error-correction", action="store_true",
                   help="plain product k-means (faster, less accurate)")
    g.add_argument("--fp16-codebooks", action="store_true", help="store codebooks in float16")


def _settings(args, entry) -> dict | None:
    """LayerSettings overrides from the command line, or None."""
    from dataclasses import replace

    from .architectures import weight_layers
    from .model import quant_settings

    if not any(getattr(args, a, None) for a in ("conv_subdim", "conv_k", "fc_subdim", "fc_k",
                                                   "fp16_codebooks")):
        return None
    base = quant_settings(entry)
    specs = {s["name"]: s for s in weight_layers(entry.spec())}
    out = {}
    for name, s in base.items():
        conv = specs[name]["type"] == "conv"
        sub = args.conv_subdim if conv else args.fc_subdim
        k = args.conv_k if conv else args.fc_k
        changes = {}
        if sub:
            changes["subdim"] = min(sub, specs[name]["in"] // specs[name].get("groups", 1)) if conv else sub
        if k:
            changes["K"] = k
        if args.fp16_codebooks:
            changes["codebook_dtype"] = "float16"
        out[name] = replace(s, **changes)
    return out


def _load(args, quantized=True):
    from .model import load
    from .zoo import get_entry

    settings = _settings(args, get_entry(args.model)) if hasattr(args, "conv_k") else None
    return load(args.model, weights=args.weights, unverified=args.unverified, quantized=quantized,
                calibration=args.calibration, settings=settings,
                error_correction=not getattr(args, "no_error_correction", False),
                keep_reference=not getattr(args, "delete_reference", False),
                progress=False if args.quiet else None)


def cmd_classify(args) -> int:
    model = _load(args, quantized=not args.float)
    results = model.classify(list(args.images), top=args.top)
    if args.json:
        print(json.dumps([{"image": img, "predictions": [vars(p) for p in preds]}
                          for img, preds in zip(args.images, results, strict=True)], indent=1))
    else:
        for img, preds in zip(args.images, results, strict=True):
            if len(args.images) > 1:
                print(f"{img}:")
            for p in preds:
                print(p)
    return 0


def cmd_models(args) -> int:
    from .zoo import get_entry, list_entries

    rows = []
    for name in list_entries():
        e = get_entry(name)
        acc = "/".join("-" if v is None else f"{v:.1f}"
                       for v in ((e.accuracy.top1, e.accuracy.top5) if e.accuracy else (None, None)))
        rows.append({"name": name, "architecture": e.architecture, "input": e.preprocess.crop,
                     "top1/top5": acc, "licence": e.licence, "description": e.description})
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        for r in rows:
            print(f"{r['name']:<22} {r['top1/top5']:<12} {r['description']}")
    return 0


def cmd_fetch(args) -> int:
    from .model import mean_image, reference_weights
    from .zoo import get_entry

    entry = get_entry(args.model)
    path = reference_weights(entry, None, args.unverified, progress=not args.quiet)
    mean_image(entry, progress=not args.quiet)
    print(path)
    return 0


def cmd_quantize(args) -> int:
    model = _load(args)
    print(f"qcnn: {'wrote' if model.created else 'already cached:'} {model.path}", file=sys.stderr)
    print(model.path)
    return 0


def cmd_eval(args) -> int:
    from .evaluate import evaluate, format_report
    from .zoo import get_entry

    result = evaluate(args.model, args.images, labels=args.labels, weights=args.weights,
                      unverified=args.unverified, calibration=args.calibration,
                      settings=_settings(args, get_entry(args.model)),
                      error_correction=not args.no_error_correction, limit=args.limit,
                      progress=not args.quiet)
    print(json.dumps(result, indent=1) if args.json else format_report(result))
    return 0


def cmd_bench(args) -> int:
    from .bench import format_result, run

    result = run(args.model, threads=args.threads, batch=args.batch, repeat=args.repeat,
                 ort=not args.no_ort)
    print(json.dumps(result, indent=1) if args.json else format_result(result))
    return 0


def cmd_cache(args) -> int:
    from .cache import cache_info, cache_root, clear

    if args.clear:
        kind = None if args.clear == "all" else args.clear.rstrip("s")
        removed = clear(kind)
        print(f"removed {len(removed)} files from {cache_root()}")
        return 0
    entries = cache_info()
    if args.json:
        print(json.dumps({"root": str(cache_root()), "files": [
            {"path": str(e.path), "kind": e.kind, "bytes": e.size} for e in entries]}, indent=1))
        return 0
    print(f"cache: {cache_root()}")
    for e in entries:
        print(f"{e.size / 2**20:10.2f} MiB  {e.kind:<9} {e.path.name}")
    print(f"{sum(e.size for e in entries) / 2**20:10.2f} MiB  total")
    return 0


def parser() -> argparse.ArgumentParser:
    from . import __version__

    ap = argparse.ArgumentParser(prog="qcnn", description="Quantized CNNs (Q-CNN) for phones.")
    ap.add_argument("--version", action="version", version=f"qcnn {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("classify", help="classify images (quantizes the model on first use)")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    _model_options(p)
    p.add_argument("--top", type=int, default=5, help="classes per image (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--float", action="store_true", help="use the float reference network")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("models", help="list the zoo")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("fetch", help="download a model's reference weights into the cache")
    p.add_argument("model")
    p.add_argument("--unverified", action="store_true", help="accept a file with no known hash")
    p.add_argument("--quiet", "-q", action="store_true")
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser("quantize", help="quantize a model into the cache (or --output) and print its path")
    p.add_argument("model")
    _model_options(p, default=None)
    _settings_options(p)
    p.add_argument("--output", "-o", metavar="FILE", help="write the quantized file here")
    p.add_argument("--delete-reference", action="store_true",
                   help="delete the downloaded reference weights afterwards (saves storage)")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("eval", help="accuracy of the float and the quantized network on labelled images")
    p.add_argument("model")
    p.add_argument("images", help="folder of images")
    p.add_argument("--labels", required=True, metavar="CSV",
                   help="labels.csv with columns file,label_caffe_index,...")
    p.add_argument("--limit", type=int, help="evaluate only the first N images")
    p.add_argument("--json", action="store_true")
    _model_options(p, default=None)
    _settings_options(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("bench", help="latency of Q-CNN against the float net and ONNX Runtime")
    p.add_argument("model", help="zoo name or architecture name")
    p.add_argument("--threads", type=int, default=1, help="threads (default: %(default)s)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeat", type=int, default=10, help="timed runs per engine")
    p.add_argument("--no-ort", action="store_true", help="skip ONNX Runtime")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("cache", help="show the cache (downloads, quantized models) or clear it")
    p.add_argument("--clear", choices=["downloads", "models", "all"])
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_cache)
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    warnings.simplefilter("default")
    warnings.formatwarning = lambda msg, cat, *a, **k: f"qcnn: warning: {msg}\n"
    from .cache import CacheError

    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("qcnn: interrupted", file=sys.stderr)
        return 130
    except CacheError as e:
        print(f"qcnn: error: {e}", file=sys.stderr)
        return EXIT["download"]
    # ValueError covers ZooError and QFileError
    except (ValueError, FileNotFoundError, IsADirectoryError, PermissionError) as e:
        print(f"qcnn: error: {e}", file=sys.stderr)
        return EXIT["input"]


def run() -> None:
    """The ``qcnn`` command: :func:`main`, then exit without tearing the interpreter down.

    Python's shutdown frees every object of every module one by one; once Numba has loaded its
    compiler that takes 0.15-0.25 s, a quarter of a warm ``qcnn classify``. Output is flushed
    first and every file qcnn writes is complete (atomic renames, fsync) before :func:`main`
    returns, so skipping the teardown loses nothing. For use as the program only: it never
    returns (call :func:`main` from Python).

    Examples
    --------
    The console script and ``python -m qcnn`` call it::

        [project.scripts]
        qcnn = "qcnn.cli:run"
    """
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:  # the reader stopped early (`qcnn ... | head -1`): not an error
        code = EXIT["ok"]
    try:
        sys.stderr.flush()
    except (BrokenPipeError, ValueError):
        pass
    os._exit(code)


if __name__ == "__main__":
    run()
