"""Whole-network latency of qcnn (float and Q-CNN) against ONNX Runtime (fp32 and int8).

For AlexNet, CNN-S, VGG-16 and SqueezeNet 1.1 at their true shapes (random weights, random
codebooks and codes at the official settings; see qcnn/bench.py), batch 1 and 8, one thread and all
threads: interleaved runs, one subprocess per engine, medians, ratios and peak RSS. Writes
docs/speed.json, docs/speed-table.md and docs/speed.png, and prints the table and the per-layer
profiles of the batch-1 one-thread runs.

    python benchmarks/network.py             # everything (about 10 minutes)
    python benchmarks/network.py --quick     # AlexNet, batch 1, one thread
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from qcnn import bench  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="AlexNet, batch 1, one thread")
    ap.add_argument("--nets", default=",".join(bench.NETWORKS))
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--threads", default=f"1,{os.cpu_count()}")
    ap.add_argument("--repeat", type=int, default=9, help="rounds at batch 1 (3 at batch 8)")
    ap.add_argument("--out", default=str(ROOT / "docs"), help="where the json/md/png go")
    args = ap.parse_args(argv)
    nets = ["alexnet-caffe"] if args.quick else args.nets.split(",")
    batches = [1] if args.quick else [int(b) for b in args.batches.split(",")]
    threads = [1] if args.quick else sorted({int(t) for t in args.threads.split(",")})
    t0 = time.perf_counter()
    load0 = os.getloadavg()
    results = []
    for net in nets:
        for batch in batches:
            for t in threads:
                # idle OpenBLAS / ONNX Runtime workers spin ~0.1 s after a call: let them sleep
                r = bench.run(net, batch, t, args.repeat if batch == 1 else 3,
                              pause=0.02 if t == 1 else 0.25)
                results.append(r)
                print(f"{net} batch {batch} {t} thread(s): qcnn {r['qcnn_ms']:.1f} ms, float "
                      f"{r['float_ms']:.1f}, ort fp32 {r['ort_fp32_ms']}, int8 "
                      f"{r['ort_int8_ms']} ({time.perf_counter() - t0:.0f} s)", flush=True)
    table = bench.markdown_table(results)
    out = Path(args.out)
    meta = {"command": "python benchmarks/network.py" + (" --quick" if args.quick else ""),
            "seconds": round(time.perf_counter() - t0), "load_avg_start": load0,
            "load_avg_end": os.getloadavg(), "cpus": os.cpu_count()}
    (out / "speed.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    (out / "speed-table.md").write_text(table + "\n")
    try:
        bench.plot(results, out / "speed.png")
    except ImportError:
        print("matplotlib is not installed: no plot (pip install quantized-cnn[bench])")
    print(f"\n{meta}\n\n{table}\n")
    for r in results:
        if r["batch"] == 1 and r["threads"] == 1:
            print(f"### {r['model']} per layer (ms, batch 1, one thread; dense: {r['dense']})")
            for e, prof in r["profile"].items():
                top = sorted(prof.items(), key=lambda kv: -kv[1])[:8]
                print(f"  {e}: " + ", ".join(f"{k} {v:.2f}" for k, v in top))


if __name__ == "__main__":
    main()
