"""The whole-network benchmark: the nets it builds, its ONNX export, and the `--json` contract."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qcnn import bench
from qcnn.qlayers import QConv2d, QLinear

ROOT = Path(__file__).resolve().parent.parent


def test_build_nets_quantizes_all_but_the_dense_layers():
    fnet, qnet, spec, dense = bench.build_nets("alexnet")
    assert dense == {"conv1", "fc8"}
    assert isinstance(qnet.get("conv3"), QConv2d) and isinstance(qnet.get("fc6"), QLinear)
    assert type(qnet.get("conv1")).__name__ == "Conv2d"
    assert qnet.get("conv2").subdim == 8 and qnet.get("fc7").K == 32
    x = np.random.default_rng(0).standard_normal((1, 3, 227, 227)).astype(np.float32)
    assert fnet(x).shape == qnet(x).shape == (1, 1000)
    f_only, q_none, _, _ = bench.build_nets("alexnet", which="float")
    assert q_none is None and f_only is not None
    with pytest.raises(ValueError, match="unknown network 'lenet'"):
        bench.build_nets("lenet")


def test_onnx_export_matches_the_float_net():
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from qcnn import architectures
    from qcnn.net import Net

    for arch, size in [("alexnet-caffe", 227), ("squeezenet1_1-torchvision", 96)]:
        spec = architectures.get(arch)
        tensors = architectures.random_tensors(spec, seed=3)
        model = bench.onnx_model(spec, tensors, size, batch=2)
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        x = np.random.default_rng(1).standard_normal((2, 3, size, size)).astype(np.float32)
        ref = Net.from_spec(spec, tensors)(x)
        got = sess.run(None, {"data": x})[0]
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-3)


def test_bench_json_contract():
    """`python -m qcnn.bench MODEL --json` prints one object with the medians and peak RSS."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, "-m", "qcnn.bench", "squeezenet1.1", "--json",
                          "--repeat", "2"], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=600)
    assert run.returncode == 0, run.stderr
    r = json.loads(run.stdout.strip().splitlines()[-1])
    assert r["model"] == "squeezenet1_1-torchvision" and r["batch"] == 1 and r["threads"] == 1
    for key in ("qcnn_ms", "float_ms"):
        assert r[key] > 0
    have_ort = all(r[k] is not None for k in ("ort_fp32_ms", "ort_int8_ms"))
    assert have_ort or "pip install" in r["note"]
    assert 10 < r["peak_rss_mb"] == r["rss_mb"]["qcnn"]
    assert r["qcnn_vs_float"] == pytest.approx(r["qcnn_ms"] / r["float_ms"])
    # which layers stay dense is measured on this machine (timing), so only its form is checked
    names = {f"features.{i}.{p}" for i in (3, 4, 6, 7, 9, 10, 11, 12)
             for p in ("squeeze", "expand1x1", "expand3x3")} | {"features.0", "classifier.1"}
    assert set(r["dense"]) <= names
    prof = r["profile"]["qcnn"]
    assert "classifier.1" in prof and all(v >= 0 for v in prof.values())
