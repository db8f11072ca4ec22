"""Whole-network latency: our float path, our Q-CNN path, ONNX Runtime fp32 and ONNX Runtime int8.

Every engine runs the same network (true shapes, random weights from
:func:`qcnn.architectures.random_tensors`) in its own subprocess, so its peak RSS is its own. The
Q-CNN net quantizes each weight layer with random codebooks and codes at the official release
settings (:func:`qcnn.qlayers.release_settings`), except the layers that run faster float on this
machine (:func:`qcnn.qlayers.choose_dense` with ``measure=True``); for timing, random codes cost the
same as learned ones. ONNX Runtime runs an ONNX graph built here from the net spec with the same
float weights (fp32), and that graph after ``onnxruntime.quantization.quantize_dynamic`` of its
MatMul (int8).

Timed runs are interleaved: every engine loads and warms up, then the engines run one forward
pass each in turn, ``repeat`` rounds; medians are reported. ``onnx`` and ``onnxruntime`` are the
``bench`` extra (``pip install quantized-cnn[bench]``); without them the ONNX Runtime columns are
None.

    python -m qcnn.bench alexnet --json          # what `qcnn bench alexnet --json` prints
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

__all__ = ["NETWORKS", "ENGINES", "ALIASES", "build_nets", "onnx_model", "run", "format_result",
           "markdown_table", "plot", "main"]

#: Benchmarked architectures and their input size.
NETWORKS = {"alexnet-caffe": 227, "cnn-s-caffe": 224, "vgg16-caffe": 224,
            "squeezenet1_1-torchvision": 224}
#: Short names accepted by :func:`run`.
ALIASES = {"alexnet": "alexnet-caffe", "cnn-s": "cnn-s-caffe", "vgg16": "vgg16-caffe",
           "vgg-16": "vgg16-caffe", "squeezenet1.1": "squeezenet1_1-torchvision",
           "squeezenet1_1": "squeezenet1_1-torchvision"}
ENGINES = ("float", "qcnn", "ort_fp32", "ort_int8")
_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _arch(name: str) -> str:
    from . import architectures

    name = ALIASES.get(name, name)
    if name not in architectures.ARCHITECTURES:
        raise ValueError(f"unknown network {name!r}; choose from {sorted(NETWORKS)} or "
                         f"{sorted(ALIASES)}")
    return name


def build_nets(arch: str, seed: int = 0, dense: set | None = None, which: str = "both",
               measure: bool = False):
    """The float net and the Q-CNN net (random codebooks and codes) of an architecture.

    Parameters
    ----------
    arch : str
        An architecture name (``qcnn.architectures.ARCHITECTURES``) or an alias.
    seed : int
    dense : set of str, optional
        Layers to keep dense; default :func:`qcnn.qlayers.choose_dense` (its cost model, or its
        timings on this machine with ``measure=True``).
    which : {"both", "float", "qcnn"}
        Build only one net (the other is None): the Q-CNN net is then built without ever holding
        the float weights of its quantized layers, so its process's peak memory is its own.

    Returns
    -------
    (Net or None, Net or None, list of dict, set of str)
        Float net, Q-CNN net, float spec, the dense layer names.

    Examples
    --------
    >>> f, q, spec, dense = build_nets("alexnet")
    >>> type(q.get("fc6")).__name__, type(q.get("conv1")).__name__, sorted(dense)
    ('QLinear', 'Conv2d', ['conv1', 'fc8'])
    """
    from . import architectures, qlayers
    from .net import Net

    if which not in ("both", "float", "qcnn"):
        raise ValueError(f"which must be 'both', 'float' or 'qcnn', got {which!r}")
    arch = _arch(arch)
    spec = architectures.get(arch)
    size = NETWORKS.get(arch, 224)
    settings = qlayers.release_settings(spec)
    if dense is None:
        dense = qlayers.choose_dense(spec, size, settings, measure=measure)
    dense = set(dense)
    fnet = None
    if which != "qcnn":
        fnet = Net.from_spec(spec, architectures.random_tensors(spec, seed))
    if which == "float":
        return fnet, None, spec, dense
    keep = [s for s in architectures.weight_layers(spec) if s["name"] in dense]
    qtensors = architectures.random_tensors(keep, seed)  # float weights of the dense layers only
    rng = np.random.default_rng(seed + 1)

    def quantize(specs):
        out = []
        for s in specs:
            if s["type"] == "concat":
                out.append({**s, "branches": [quantize(b) for b in s["branches"]]})
                continue
            if s["type"] not in ("conv", "linear") or s["name"] in dense:
                out.append(s)
                continue
            d, n_code = settings[s["name"]]
            name = s["name"]
            if s.get("bias", True):
                qtensors[f"{name}.bias"] = rng.standard_normal(s["out"], np.float32) * 0.01
            if s["type"] == "conv":
                n_sub = -(-(s["in"] // s["groups"]) // d)
                codes_shape = (s["out"], *s["kernel"], n_sub)
            else:
                n_sub = -(-s["in"] // d)
                codes_shape = (s["out"], n_sub)
            qtensors[f"{name}.codebooks"] = (rng.standard_normal((n_sub, n_code, d), np.float32)
                                             * np.float32(0.05))
            qtensors[f"{name}.codes"] = rng.integers(0, n_code, codes_shape, dtype=np.uint8)
            out.append({**s, "type": "q" + s["type"], "subdim": d, "K": n_code,
                        "codebook_dtype": "float32"})
        return out

    return fnet, Net.from_spec(quantize(spec), qtensors), spec, dense


def onnx_model(spec: list[dict], tensors: dict, size, batch: int = 1):
    """An ONNX graph of a float net spec (input ``data`` (N, 3, H, W), output ``prob``).

    Conv, Relu, LRN, MaxPool / AveragePool (ceil_mode as the spec), Concat, GlobalAveragePool,
    Flatten, MatMul + Add for linear layers (so dynamic quantization can take them), Softmax.

    Parameters
    ----------
    spec : list of dict
    tensors : dict
    size : int or (int, int)
    batch : int

    Returns
    -------
    onnx.ModelProto

    Examples
    --------
    >>> from qcnn import architectures
    >>> spec = architectures.get("alexnet-caffe")
    >>> m = onnx_model(spec, architectures.random_tensors(spec), 227)  # doctest: +SKIP
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from .layers import pair

    h, w = pair(size)
    nodes, inits = [], []

    def add_init(name, array):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))

    def emit(specs, x):
        for s in specs:
            t, name = s["type"], s["name"]
            y = f"{name}:out"
            if t == "conv":
                ins = [x, f"{name}.weight"]
                add_init(f"{name}.weight", tensors[f"{name}.weight"])
                if s.get("bias", True):
                    ins.append(f"{name}.bias")
                    add_init(f"{name}.bias", tensors[f"{name}.bias"])
                ph, pw = pair(s.get("pad", 0))
                nodes.append(helper.make_node(
                    "Conv", ins, [y], name=name, kernel_shape=list(pair(s["kernel"])),
                    strides=list(pair(s.get("stride", 1))), pads=[ph, pw, ph, pw],
                    group=int(s.get("groups", 1))))
            elif t == "linear":
                add_init(f"{name}.weight_t", tensors[f"{name}.weight"].T)
                mm = y if not s.get("bias", True) else f"{name}:mm"
                nodes.append(helper.make_node("MatMul", [x, f"{name}.weight_t"], [mm],
                                              name=name))
                if s.get("bias", True):
                    add_init(f"{name}.bias", tensors[f"{name}.bias"])
                    nodes.append(helper.make_node("Add", [mm, f"{name}.bias"], [y],
                                                  name=f"{name}:bias"))
            elif t == "relu":
                nodes.append(helper.make_node("Relu", [x], [y], name=name))
            elif t == "lrn":
                nodes.append(helper.make_node("LRN", [x], [y], name=name, size=int(s["size"]),
                                              alpha=float(s["alpha"]), beta=float(s["beta"]),
                                              bias=float(s["k"])))
            elif t in ("maxpool", "avgpool"):
                ph, pw = pair(s.get("pad", 0))
                kw = {"count_include_pad": 1} if t == "avgpool" else {}
                nodes.append(helper.make_node(
                    "MaxPool" if t == "maxpool" else "AveragePool", [x], [y], name=name,
                    kernel_shape=list(pair(s["kernel"])), strides=list(pair(s["stride"])),
                    pads=[ph, pw, ph, pw], ceil_mode=int(s.get("ceil", True)), **kw))
            elif t == "gap":
                nodes.append(helper.make_node("GlobalAveragePool", [x], [y], name=name))
            elif t == "flatten":
                nodes.append(helper.make_node("Flatten", [x], [y], name=name, axis=1))
            elif t == "softmax":
                nodes.append(helper.make_node("Softmax", [x], [y], name=name, axis=1))
            elif t == "dropout":
                nodes.append(helper.make_node("Identity", [x], [y], name=name))
            elif t == "concat":
                outs = [emit(b, x) for b in s["branches"]]
                nodes.append(helper.make_node("Concat", outs, [y], name=name, axis=1))
            else:
                raise ValueError(f"layer {name!r}: type {t!r} has no ONNX export")
            x = y
        return x

    last = emit(spec, "data")
    nodes.append(helper.make_node("Identity", [last], ["prob"], name="output"))
    graph = helper.make_graph(
        nodes, "qcnn", [helper.make_tensor_value_info("data", TensorProto.FLOAT, [batch, 3, h, w])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [batch, None])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


# --------------------------------------------------------------------------------------------------
# worker: one engine in its own process, driven line by line over stdin/stdout


def _profile_net(net, x, rounds: int = 3) -> dict[str, float]:
    """Least ms per leaf layer over the rounds (time between consecutive forward hooks); the
    least is the least disturbed by other processes."""
    times: dict[str, list[float]] = {}
    for _ in range(rounds):
        last = [time.perf_counter()]

        def hook(name, layer, x_in, x_out, last=last):
            now = time.perf_counter()
            times.setdefault(name, []).append((now - last[0]) * 1e3)
            last[0] = now

        net(x, hook=hook)
    return {k: float(np.min(v)) for k, v in times.items()}


def _ort_session(path: str, threads: int, profile: bool = False):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(path).with_suffix("")) + "-profile"
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def _ort_profile(path: str, threads: int, x, rounds: int = 3) -> dict[str, float]:
    sess = _ort_session(path, threads, profile=True)
    for _ in range(rounds + 1):
        sess.run(None, {"data": x})
    prof = sess.end_profiling()
    with open(prof) as f:
        events = json.load(f)
    os.unlink(prof)
    per: dict[str, list[float]] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            per.setdefault(e["name"][: -len("_kernel_time")], []).append(e["dur"] / 1e3)
    return {k: float(min(v)) for k, v in per.items()}  # least of the runs, as _profile_net


def _worker(engine: str, arch: str, batch: int, threads: int, workdir: str,
            dense: str | None = None) -> None:
    from . import threads as qthreads

    if engine == "float":  # BLAS does the work; its LRN (the only Numba kernel) is tiny and runs
        # on one thread, so the spinning OpenBLAS workers never wait on a Numba pool
        qthreads.set_num_threads(1, blas_threads=threads)
    else:  # Q-CNN: Numba does the work, BLAS (dense conv1 / fc8) one thread (qcnn.threads)
        qthreads.configure(threads)
    size = NETWORKS.get(arch, 224)
    x = np.random.default_rng(7).standard_normal((batch, 3, size, size)).astype(np.float32)
    if engine == "export":  # the ONNX files, written before the ONNX Runtime workers start
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        from . import architectures

        spec = architectures.get(arch)
        fp32 = os.path.join(workdir, "ort_fp32.onnx")
        onnx.save(onnx_model(spec, architectures.random_tensors(spec), size, batch), fp32)
        quantize_dynamic(fp32, os.path.join(workdir, "ort_int8.onnx"),
                         op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8)
        print(json.dumps({"ready": True}), flush=True)
        return
    if engine == "dense":  # which layers run faster float here (timed in its own process, so
        # the float weights it builds do not count in the Q-CNN engine's peak memory)
        from . import architectures, qlayers

        chosen = qlayers.choose_dense(architectures.get(arch), size, measure=True)
        print(json.dumps({"ready": True, "dense": sorted(chosen)}), flush=True)
        return
    if engine in ("float", "qcnn"):
        chosen = None if dense is None else {n for n in dense.split(",") if n}
        net, qnet, _, dense = build_nets(arch, dense=chosen, which=engine)
        net = net if engine == "float" else qnet
        del qnet

        def forward():
            net(x)

        def profile():
            return _profile_net(net, x)
    else:
        dense = set()  # reported by the Q-CNN worker
        path = os.path.join(workdir, f"{engine}.onnx")
        sess = _ort_session(path, threads)

        def forward():
            sess.run(None, {"data": x})

        def profile():
            return _ort_profile(path, threads, x)
    forward()  # warm-up: JIT load from cache, first-touch allocations
    if batch == 1:
        forward()
    print(json.dumps({"ready": True}), flush=True)
    times = []
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "run":
            c0, t0 = time.process_time(), time.perf_counter()
            forward()
            times.append((time.perf_counter() - t0) * 1e3)
            print(json.dumps({"ms": times[-1], "cpu_ms": (time.process_time() - c0) * 1e3}),
                  flush=True)
        elif cmd == "done":
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
            prof = profile() if batch == 1 else {}  # per layer: batch 1 only (time)
            print(json.dumps({"peak_rss_mb": peak, "times": times, "profile": prof,
                              "dense": sorted(dense)}), flush=True)
            return


def _ort_available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _start(engine, arch, batch, threads, workdir, dense=None):
    env = dict(os.environ, **{v: str(threads) for v in _THREAD_VARS})
    env.setdefault("NUMBA_NUM_THREADS", str(max(threads, os.cpu_count() or 1)))
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "qcnn.bench", "--worker", engine, arch, "--batch", str(batch),
           "--threads", str(threads), "--workdir", workdir]
    if dense is not None:
        cmd += ["--dense", ",".join(sorted(dense))]
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _stop(proc) -> None:
    """End a worker (if it still runs) and close its pipes."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    for f in (proc.stdin, proc.stdout, proc.stderr):
        f.close()


def _reply(proc, engine):
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"the {engine} worker died:\n{proc.stderr.read()}")
    return json.loads(line)


def run(model: str = "alexnet", batch: int = 1, threads: int = 1, repeat: int = 10,
        engines=ENGINES, pause: float = 0.0, ort: bool = True) -> dict:
    """Benchmark one network on every engine; interleaved runs, one subprocess per engine.

    Parameters
    ----------
    model : str
        An architecture (``NETWORKS``) or alias (``ALIASES``: alexnet, cnn-s, vgg16,
        squeezenet1.1).
    batch, threads : int
    repeat : int
        Timed rounds (each round runs every engine once, in turn).
    engines : sequence of str
        From ``ENGINES``; ONNX Runtime engines are skipped (None) when it is not installed.
    pause : float
        Seconds to sleep between runs (lets the previous engine's spinning threads sleep).
    ort : bool
        False skips the ONNX Runtime engines (as ``qcnn bench --no-ort``).

    Returns
    -------
    dict
        ``qcnn_ms``, ``float_ms``, ``ort_fp32_ms``, ``ort_int8_ms`` (medians of wall time, None
        if not run), ``<engine>_cpu_ms`` (medians of the process's CPU time: with one thread,
        the latency without other processes' interference),
        ``peak_rss_mb`` (the Q-CNN engine's), ``rss_mb`` per engine, ``profile`` (per engine,
        least ms per layer over 3-4 extra runs after the timed ones; batch 1 only), ``dense``
        (layers kept float), ratios ``qcnn_vs_<engine>``, and the settings.

    Examples
    --------
    >>> r = run("alexnet", repeat=3, engines=("qcnn",))  # doctest: +SKIP
    >>> r["qcnn_ms"] > 0  # doctest: +SKIP
    True
    """
    arch = _arch(model)
    unknown = set(engines) - set(ENGINES)
    if unknown:
        raise ValueError(f"unknown engines {sorted(unknown)}; choose from {ENGINES}")
    have_ort = _ort_available()
    active = [e for e in engines if (have_ort and ort) or not e.startswith("ort")]
    result = {"model": arch, "batch": batch, "threads": threads, "repeat": repeat,
              "cpus": os.cpu_count(), "load_avg": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory(prefix="qcnn-bench-") as workdir:
        procs = {}
        try:
            if any(e.startswith("ort") for e in active):
                procs["export"] = _start("export", arch, batch, threads, workdir)
                _reply(procs["export"], "ONNX export")
                _stop(procs.pop("export"))
            dense = None
            if "qcnn" in active:
                procs["dense"] = _start("dense", arch, 1, threads, workdir)
                dense = _reply(procs["dense"], "dense-layer timing")["dense"]
                _stop(procs.pop("dense"))
            for e in active:  # one at a time, so loading does not disturb the others' warm-up
                procs[e] = _start(e, arch, batch, threads, workdir, dense)
                _reply(procs[e], e)
            times = {e: [] for e in active}
            cpu = {e: [] for e in active}
            for _ in range(repeat):
                for e in active:
                    if pause:
                        time.sleep(pause)
                    procs[e].stdin.write("run\n")
                    procs[e].stdin.flush()
                    reply = _reply(procs[e], e)
                    times[e].append(reply["ms"])
                    cpu[e].append(reply["cpu_ms"])
            final = {}
            for e in active:
                procs[e].stdin.write("done\n")
                procs[e].stdin.flush()
                final[e] = _reply(procs[e], e)
        finally:
            for p in procs.values():
                _stop(p)
    for e in ENGINES:
        result[f"{e}_ms"] = float(np.median(times[e])) if e in times else None
        # CPU time of the engine's process: with one thread, immune to other processes' load
        result[f"{e}_cpu_ms"] = float(np.median(cpu[e])) if e in cpu else None
    result["rss_mb"] = {e: round(final[e]["peak_rss_mb"], 1) for e in active}
    result["peak_rss_mb"] = result["rss_mb"].get("qcnn")
    result["profile"] = {e: final[e]["profile"] for e in active}
    result["dense"] = final["qcnn"]["dense"] if "qcnn" in final else []
    for e in ENGINES:
        if e != "qcnn" and result.get(f"{e}_ms") and result.get("qcnn_ms"):
            result[f"qcnn_vs_{e}"] = result["qcnn_ms"] / result[f"{e}_ms"]
    if ort and not have_ort:
        result["note"] = "onnxruntime not installed: pip install quantized-cnn[bench]"
    return result


def format_result(r: dict) -> str:
    """The text ``qcnn bench`` prints for one :func:`run` result.

    Examples
    --------
    >>> print(format_result({"model": "alexnet-caffe", "batch": 1, "threads": 1, "repeat": 3,
    ...                      "qcnn_ms": 20.0, "float_ms": 40.0, "qcnn_vs_float": 0.5,
    ...                      "rss_mb": {"qcnn": 200.0, "float": 380.0}, "dense": ["conv1"]}))
    alexnet-caffe, batch 1, 1 thread(s), median of 3; kept float: conv1
      float         40.00 ms  peak RSS   380.0 MB  (qcnn / float = 0.50)
      qcnn          20.00 ms  peak RSS   200.0 MB
    """
    lines = [f"{r['model']}, batch {r['batch']}, {r['threads']} thread(s), median of "
             f"{r['repeat']}; kept float: {', '.join(r.get('dense', [])) or 'none'}"]
    for e in ENGINES:
        if r.get(f"{e}_ms") is not None:
            ratio = r.get(f"qcnn_vs_{e}")
            lines.append(f"  {e:9s} {r[f'{e}_ms']:9.2f} ms  peak RSS {r['rss_mb'][e]:7.1f} MB"
                         + (f"  (qcnn / {e} = {ratio:.2f})" if ratio else ""))
    if r.get("note"):
        lines.append(f"  ({r['note']})")
    return "\n".join(lines)


_LABELS = {"alexnet-caffe": "AlexNet", "cnn-s-caffe": "CNN-S", "vgg16-caffe": "VGG-16",
           "squeezenet1_1-torchvision": "SqueezeNet 1.1"}


def markdown_table(results: list[dict]) -> str:
    """One row per :func:`run` result: medians in ms, Q-CNN's ratios, peak RSS per engine.

    Examples
    --------
    >>> r = {"model": "alexnet-caffe", "batch": 1, "threads": 1, "float_ms": 40.0, "qcnn_ms": 20.0,
    ...      "ort_fp32_ms": 50.0, "ort_int8_ms": None, "rss_mb": {"qcnn": 90.0}, "dense": []}
    >>> print(markdown_table([r]).splitlines()[2])
    | AlexNet | 1 | 1 | 40.0 | **20.0** | 50.0 | - | 0.50 | 0.40 | - | - / - / - | - / 90 / - / - |
    """
    head = ["net", "batch", "threads", "float ms", "Q-CNN ms", "ORT fp32 ms", "ORT int8 ms",
            "Q-CNN / float", "Q-CNN / ORT fp32", "Q-CNN / ORT int8",
            "CPU-time ratios (float / fp32 / int8)", "peak RSS MB (float / Q-CNN / fp32 / int8)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def ms(v):
        return "-" if v is None else f"{v:.1f}"

    for r in results:
        q = r.get("qcnn_ms")
        ratio = [("-" if not (q and r.get(f"{e}_ms")) else f"{q / r[f'{e}_ms']:.2f}")
                 for e in ("float", "ort_fp32", "ort_int8")]
        qc = r.get("qcnn_cpu_ms")
        cpu = " / ".join("-" if not (qc and r.get(f"{e}_cpu_ms"))
                         else f"{qc / r[f'{e}_cpu_ms']:.2f}" for e in ("float", "ort_fp32",
                                                                      "ort_int8"))
        rss = " / ".join(f"{r['rss_mb'][e]:.0f}" if e in r.get("rss_mb", {}) else "-"
                         for e in ENGINES)
        lines.append("| " + " | ".join([
            _LABELS.get(r["model"], r["model"]), str(r["batch"]), str(r["threads"]),
            ms(r.get("float_ms")), f"**{ms(q)}**", ms(r.get("ort_fp32_ms")),
            ms(r.get("ort_int8_ms")), *ratio, cpu, rss]) + " |")
    return "\n".join(lines)


def plot(results: list[dict], path) -> None:
    """Bar chart of the batch-1 latencies per network and engine (PNG); needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results if r["batch"] == 1]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / len(ENGINES)
    names = {"float": "qcnn float", "qcnn": "qcnn Q-CNN", "ort_fp32": "ONNX Runtime fp32",
             "ort_int8": "ONNX Runtime int8"}
    for i, e in enumerate(ENGINES):
        vals = [r.get(f"{e}_ms") or 0.0 for r in rows]
        ax.bar([j + (i - 1.5) * width for j in range(len(rows))], vals, width, label=names[e])
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([f"{_LABELS.get(r['model'], r['model'])}\n{r['threads']}T" for r in rows],
                       fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("ms per image (batch 1, median, log scale)")
    ax.set_xlabel("network, threads (T)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Whole-network latency of qcnn vs ONNX Runtime.")
    ap.add_argument("model", help=f"one of {sorted(NETWORKS)} or {sorted(ALIASES)}")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--dense", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        _worker(args.worker, args.model, args.batch, args.threads, args.workdir, args.dense)
        return
    r = run(args.model, args.batch, args.threads, args.repeat, args.engines.split(","))
    print(json.dumps(r) if args.json else format_result(r))


if __name__ == "__main__":
    main()
