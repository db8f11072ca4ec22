"""Per-layer speed and storage of Q-CNN versus the float layers, at the paper networks' true shapes.

For every conv and FC layer of AlexNet (Caffe), CNN-S and VGG-16: the float layer (im2col + BLAS,
``qcnn.layers``) and a quantized layer with random codebooks and codes at the official release
settings (``qcnn.qlayers.release_settings``: conv1: subdim 3, K 128; other convs: subdim 8, K 128;
fc6/fc7: subdim 4, K 32; fc8: subdim 1, K 16), batch 1, median of several runs after a warm-up.
Prints a markdown table with the measured and the theoretical speed-up (op counts, REFERENCE.md)
and the storage ratio; "(dense)" marks the layers ``qcnn.qlayers.choose_dense`` keeps float.

BLAS and Numba fix their thread counts when they are imported, so each thread count runs in its own
subprocess with OPENBLAS_NUM_THREADS / OMP_NUM_THREADS / MKL_NUM_THREADS / NUMBA_NUM_THREADS set.

    python benchmarks/layers.py                 # all three networks, 1 thread and all threads
    python benchmarks/layers.py --quick         # AlexNet only
    python benchmarks/layers.py --threads 1,2 --repeat 7
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

NETS = {"alexnet-caffe": "AlexNet", "cnn-s-caffe": "CNN-S", "vgg16-caffe": "VGG-16"}
INPUT = {"alexnet-caffe": 227, "cnn-s-caffe": 224, "vgg16-caffe": 224}
THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def _median_ms(f, x, repeat: int) -> float:
    import numpy as np

    f(x)  # warm-up (and JIT load from cache)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        f(x)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def measure(net_name: str, repeat: int) -> list[dict]:
    """Time every weight layer of one network; one dict per layer."""
    import numpy as np

    from qcnn import architectures
    from qcnn.net import Net
    from qcnn.qlayers import QConv2d, QLinear, choose_dense, release_settings

    spec = architectures.get(net_name)
    net = Net.from_spec(spec, architectures.random_tensors(spec))
    inputs = {}

    def keep_input(name, layer, x_in, x_out):
        if type(layer).__name__ in ("Conv2d", "Linear"):
            inputs[name] = x_in

    size = INPUT[net_name]
    net(np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32),
        hook=keep_input)
    weights = architectures.weight_layers(spec)
    settings = release_settings(spec)
    dense = choose_dense(spec, size, settings)
    rng = np.random.default_rng(1)
    rows = []
    for s in weights:
        name, x = s["name"], inputs[s["name"]]
        d, n_code = settings[name]
        flt = net.get(name)
        if s["type"] == "conv":
            n_sub = -(-(s["in"] // s["groups"]) // d)
            codes = rng.integers(0, n_code, (s["out"], *s["kernel"], n_sub), dtype=np.uint8)
            q = QConv2d(rng.standard_normal((n_sub, n_code, d), np.float32), codes, flt.bias,
                        s["in"], s["stride"], s["pad"], s["groups"], name)
            counts = q.op_counts(x.shape[2], x.shape[3])
            shape = (f"{s['out']}x{s['in'] // s['groups']}x{s['kernel'][0]}x{s['kernel'][1]}"
                     f" s{s['stride'][0]}{' g' + str(s['groups']) if s['groups'] > 1 else ''}"
                     f" @{x.shape[2]}")
        else:
            n_sub = -(-s["in"] // d)
            codes = rng.integers(0, n_code, (s["out"], n_sub), dtype=np.uint8)
            q = QLinear(rng.standard_normal((n_sub, n_code, d), np.float32), codes, flt.bias,
                        s["in"], name)
            counts = q.op_counts()
            shape = f"{s['out']}x{s['in']}"
        rows.append({
            "net": NETS[net_name], "layer": name + (" (dense)" if name in dense else ""),
            "shape": shape, "subdim": d, "K": n_code,
            "float_ms": _median_ms(flt, x, repeat), "q_ms": _median_ms(q, x, repeat),
            "float_ops": counts.float_macs, "q_ops": counts.table_macs + counts.accumulate_adds,
            "float_bytes": counts.float_bytes, "q_bytes": counts.quantized_bytes,
        })
    return rows


def _run_worker(threads: int, nets: list[str], repeat: int) -> list[dict]:
    env = dict(os.environ, **{v: str(threads) for v in THREAD_VARS})
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as qcnn.threads does: no spinning idle threads
    root = Path(__file__).resolve().parent.parent
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    cmd = [sys.executable, __file__, "--worker", "--nets", ",".join(nets), "--repeat", str(repeat)]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if run.returncode:
        sys.exit(f"the {threads}-thread worker failed:\n{run.stderr}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def _table(results: dict[int, list[dict]]) -> str:
    threads = sorted(results)
    head = ["net", "layer", "shape", "subdim/K"]
    for t in threads:
        head += [f"float ms ({t}t)", f"Q-CNN ms ({t}t)", f"speed-up ({t}t)"]
    head += ["theory", "storage"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = results[threads[0]]

    def row(label, layer, shape, sk, picks):
        cells = [label, layer, shape, sk]
        for t in threads:
            f = sum(r["float_ms"] for r in picks(results[t]))
            q = sum(r["q_ms"] for r in picks(results[t]))
            cells += [f"{f:.2f}", f"{q:.2f}", f"{f / q:.2f}x"]
        b = picks(base)
        cells.append(f"{sum(r['float_ops'] for r in b) / sum(r['q_ops'] for r in b):.2f}x")
        cells.append(f"{sum(r['float_bytes'] for r in b) / sum(r['q_bytes'] for r in b):.1f}x")
        return "| " + " | ".join(cells) + " |"

    for net in dict.fromkeys(r["net"] for r in base):
        for i, r in enumerate(base):
            if r["net"] == net:
                lines.append(row(net, r["layer"], r["shape"], f"{r['subdim']}/{r['K']}",
                                 lambda rs, i=i: [rs[i]]))
        lines.append(row(f"**{net}**", "**total**", "", "",
                         lambda rs, net=net: [r for r in rs if r["net"] == net]))
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default=f"1,{os.cpu_count()}",
                    help="comma-separated thread counts, one subprocess each (default: 1 and all)")
    ap.add_argument("--quick", action="store_true", help="AlexNet only")
    ap.add_argument("--nets", default=",".join(NETS), help=f"comma-separated, from {list(NETS)}")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per layer (median)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    nets = ["alexnet-caffe"] if args.quick else args.nets.split(",")
    unknown = sorted(set(nets) - set(NETS))
    if unknown:
        ap.error(f"unknown networks {unknown}; choose from {list(NETS)}")
    if args.worker:
        print(json.dumps([r for n in nets for r in measure(n, args.repeat)]))
        return
    threads = sorted({int(t) for t in args.threads.split(",")})
    t0 = time.perf_counter()
    results = {t: _run_worker(t, nets, args.repeat) for t in threads}
    import numpy as np

    print(f"batch 1, median of {args.repeat} runs; numpy {np.__version__}, {os.cpu_count()} CPUs; "
          f"{time.perf_counter() - t0:.0f} s\n")
    print(_table(results))


if __name__ == "__main__":
    main()
