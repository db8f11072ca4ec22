"""Time to quantize AlexNet (alexnet-caffe) and VGG-16 at their true shapes, official settings.

Random He-initialised weights (qcnn.architectures.random_tensors) and random calibration inputs:
this measures time and memory, not accuracy. Prints the per-layer report (seconds, fit and held-out
errors), the total and the peak RSS. On a machine shared with other work, set
OPENBLAS_NUM_THREADS=1 (or QCNN_NUM_THREADS): oversubscribed BLAS threads made the float layers
up to 10x slower in our measurements.

    PYTHONPATH=. python benchmarks/quantize_time.py                  # AlexNet
    PYTHONPATH=. python benchmarks/quantize_time.py --arch vgg16-caffe --images 32
"""

from __future__ import annotations

import argparse
import resource
import time
import warnings

import numpy as np

from qcnn import architectures
from qcnn.net import Net
from qcnn.quantizer import default_settings, quantize

INPUT = {"alexnet-caffe": 227, "vgg16-caffe": 224, "cnn-s-caffe": 224}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="alexnet-caffe", choices=sorted(INPUT))
    ap.add_argument("--images", type=int, default=128, help="calibration images (= FC samples)")
    ap.add_argument("--samples", type=int, default=4096, help="sampled positions per conv layer")
    ap.add_argument("--iterations", type=int, default=None,
                    help="error-correction sweeps (default: the settings' own, 4)")
    ap.add_argument("--kmeans-iterations", type=int, default=10)
    ap.add_argument("--no-ec", action="store_true", help="plain k-means")
    args = ap.parse_args(argv)

    spec = architectures.get(args.arch)
    net = Net.from_spec(spec, architectures.random_tensors(spec, seed=0))
    size = INPUT[args.arch]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.images, 3, size, size), np.float32) * np.float32(50)
    settings = default_settings(net)
    if args.iterations is not None:
        settings = {k: type(v)(**{**v.__dict__, "iterations": args.iterations})
                    for k, v in settings.items()}
    print(f"{args.arch}: {args.images} calibration images of {size}x{size}, {args.samples} "
          f"sampled positions per conv layer, {args.kmeans_iterations} k-means iterations, "
          f"error correction {'off' if args.no_ec else 'on'}")
    warnings.simplefilter("ignore")  # FewSamplesWarning: the FC layers see only --images samples
    t = time.perf_counter()
    _, report = quantize(net, x, settings, error_correction=not args.no_ec, samples=args.samples,
                         kmeans_iterations=args.kmeans_iterations, progress=True)
    wall = time.perf_counter() - t
    print(report)
    print(f"wall {wall:.1f} s (float pass, k-means, input passes and error correction); peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
