"""qcnn.evaluate: metrics on hand-made outputs, and evaluate() end to end on a tiny entry."""

import csv
import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from qcnn import architectures, qfile
from qcnn.evaluate import compare, evaluate, format_report, read_labels, storage
from qcnn.layers import Linear

# the tiny entry has no hash for its weights file, by design
pytestmark = pytest.mark.filterwarnings("ignore:using .* without checking its hash")

# ------------------------------------------------------------------------------------------------
# compare(): top-k, agreement and KL on outputs chosen by hand


def test_compare_hand_made_case():
    # 3 images, 6 classes. Float: image 0 right at top-1; image 1 right only in the top-5;
    # image 2 wrong everywhere (its label is the least probable class).
    p = np.array([[0.50, 0.10, 0.10, 0.10, 0.10, 0.10],
                  [0.30, 0.25, 0.20, 0.15, 0.10, 0.00],
                  [0.40, 0.20, 0.15, 0.10, 0.10, 0.05]])
    # Quantized: image 0 now picks class 1 (disagrees, wrong top-1, right top-5); image 1 still
    # picks class 0 (agrees); image 2 identical (agrees, KL 0).
    q = np.array([[0.30, 0.40, 0.10, 0.10, 0.05, 0.05],
                  [0.30, 0.25, 0.20, 0.15, 0.05, 0.05],
                  [0.40, 0.20, 0.15, 0.10, 0.10, 0.05]])
    y = np.array([0, 4, 5])
    r = compare(p, q, y)
    assert r["float"] == {"top1": pytest.approx(1 / 3), "top5": pytest.approx(2 / 3)}
    # image 1: label 4 has q 0.05, tied with class 5 for 5th place: argpartition may keep either,
    # so only image 0 is sure to be a top-5 hit
    assert r["quantized"]["top1"] == 0.0
    assert r["quantized"]["top5"] in (pytest.approx(1 / 3), pytest.approx(2 / 3))
    assert r["agreement_top1"] == pytest.approx(2 / 3)
    kl0 = 0.5 * math.log(0.5 / 0.3) + 0.1 * math.log(0.1 / 0.4) + 0.1 * math.log(0.1 / 0.05) * 2
    kl1 = 0.10 * math.log(0.10 / 0.05)  # the p = 0 term contributes nothing
    assert r["kl_mean"] == pytest.approx((kl0 + kl1 + 0.0) / 3, rel=1e-9)
    assert r["images"] == 3


def test_compare_identical_outputs_have_zero_kl_and_full_agreement():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(10), size=20)
    r = compare(p, p.copy(), rng.integers(0, 10, 20))
    assert r["kl_mean"] == pytest.approx(0.0, abs=1e-12)
    assert r["agreement_top1"] == 1.0
    assert r["float"] == r["quantized"]


def test_compare_rejects_label_outside_classes():
    p = np.full((2, 4), 0.25)
    with pytest.raises(ValueError, match="outside the network's 4 classes"):
        compare(p, p, [0, 4])


# ------------------------------------------------------------------------------------------------
# read_labels()


def test_read_labels_reports_line_and_missing_files(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "labels.csv").write_text("file,label_caffe_index\na.png,x\n")
    with pytest.raises(ValueError, match="line 2"):
        read_labels(tmp_path / "labels.csv")
    (tmp_path / "labels.csv").write_text("file,label_caffe_index\na.png,3\nb.png,1\n")
    with pytest.raises(FileNotFoundError, match="b.png"):
        read_labels(tmp_path / "labels.csv")
    (tmp_path / "labels.csv").write_text("file,wnid\na.png,n1\n")
    with pytest.raises(ValueError, match="label_caffe_index"):
        read_labels(tmp_path / "labels.csv")


# ------------------------------------------------------------------------------------------------
# evaluate() end to end on a tiny registered architecture


def _tiny_spec():
    return [
        {"type": "conv", "name": "conv", "in": 3, "out": 16, "kernel": [3, 3], "stride": [2, 2],
         "pad": [1, 1], "groups": 1, "bias": True},
        {"type": "relu", "name": "relu"},
        {"type": "gap", "name": "gap"},
        {"type": "flatten", "name": "flatten"},
        {"type": "linear", "name": "fc", "in": 16, "out": 10, "bias": True},
        {"type": "softmax", "name": "prob"},
    ]


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A tiny entry file with its weights, 12 labelled images and 6 calibration images."""
    monkeypatch.setitem(architectures.ARCHITECTURES, "tiny-eval-test", _tiny_spec)
    monkeypatch.setenv("QCNN_HOME", str(tmp_path / "cache"))
    spec = _tiny_spec()
    tensors = architectures.random_tensors(spec, seed=3)
    np.savez(tmp_path / "tiny.npz", **tensors)
    (tmp_path / "classes.txt").write_text("".join(f"c{i} class {i}\n" for i in range(10)))
    entry = {
        "name": "tiny-eval", "architecture": "tiny-eval-test", "licence": "test weights",
        "weights": {"path": "tiny.npz"}, "labels": "classes.txt",
        "preprocess": {"resize": 20, "resize_mode": "square", "crop": 16, "channel_order": "RGB",
                       "scale": 1 / 255, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        "quantization": {"conv_subdim": 3, "conv_k": 16, "linear_subdim": 2, "linear_k": 4,
                         "calibration": {"images": 6, "iterations": 2, "seed": 0}},
    }
    (tmp_path / "tiny.json").write_text(json.dumps(entry))
    rng = np.random.default_rng(1)
    imgs = tmp_path / "images"
    imgs.mkdir()
    rows = []
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (24, 30, 3), dtype=np.uint8)).save(imgs / f"{i}.png")
        rows.append({"file": f"{i}.png", "label_caffe_index": i % 10, "wnid": f"c{i % 10}",
                     "name": "x"})
    with open(imgs / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["file", "label_caffe_index", "wnid", "name"])
        w.writeheader()
        w.writerows(rows)
    calib = tmp_path / "calib"
    calib.mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(calib / f"{i}.png")
    return tmp_path


def _softmax_of(net, x):
    return np.asarray(net(x), np.float64)


def test_evaluate_end_to_end(tiny):
    from qcnn.model import load

    r = evaluate(str(tiny / "tiny.json"), tiny / "images", tiny / "images" / "labels.csv",
                 calibration=tiny / "calib", progress=False, batch_size=5)
    # recompute every metric independently from the float net and the cached quantized file
    fmodel = load(str(tiny / "tiny.json"), quantized=False, progress=False)
    qnet, _ = qfile.load(r["path"])
    files = [tiny / "images" / f"{i}.png" for i in range(12)]
    x = fmodel.preprocess(files)
    p, q = _softmax_of(fmodel.net, x), _softmax_of(qnet, x)
    y = np.arange(12) % 10
    assert r["images"] == 12
    assert r["float"]["top1"] == pytest.approx(np.mean(p.argmax(1) == y))
    assert r["quantized"]["top1"] == pytest.approx(np.mean(q.argmax(1) == y))
    top5 = np.argsort(-q, axis=1)[:, :5]
    assert r["quantized"]["top5"] == pytest.approx(np.mean([y[i] in top5[i] for i in range(12)]))
    assert r["agreement_top1"] == pytest.approx(np.mean(p.argmax(1) == q.argmax(1)))
    assert r["kl_mean"] == pytest.approx(np.mean(np.sum(p * np.log(p / q), axis=1)), rel=1e-4)
    assert r["kl_mean"] > 0  # a quantized net differs from the float one
    # storage: the file on disk against fp32 weights + biases of both layers
    assert r["file_bytes"] == os.path.getsize(r["path"])
    assert r["reference_bytes"] == 4 * (16 * 3 * 9 + 16 + 16 * 10 + 10)
    assert r["compression"] == pytest.approx(r["reference_bytes"] / r["file_bytes"])
    # conv: 8x8 outputs x 16 x 27 MACs float; table 16*16 inputs x 3 ch x 16 words + accumulate
    # 8*8 x 16 x 9 x 1 subspace; fc: 160 MACs float, table 16 x 4, accumulate 10 x 8 subspaces
    float_ops = 64 * 16 * 27 + 160
    q_ops = 16 * 16 * 3 * 16 + 64 * 16 * 9 + 16 * 4 + 10 * 8
    assert r["speedup_theoretical"] == pytest.approx(float_ops / q_ops)
    assert r["settings"]["conv"]["K"] == 16 and r["settings"]["fc"]["subdim"] == 2
    assert "12" in format_report(r).splitlines()[0]


def test_evaluate_reuses_cached_file_and_limit(tiny):
    kw = {"calibration": tiny / "calib", "progress": False}
    r1 = evaluate(str(tiny / "tiny.json"), tiny / "images", limit=4, **kw)
    mtime = os.path.getmtime(r1["path"])
    r2 = evaluate(str(tiny / "tiny.json"), tiny / "images", limit=4, **kw)
    assert r2["path"] == r1["path"] and os.path.getmtime(r2["path"]) == mtime
    assert r1["images"] == 4
    assert r2["kl_mean"] == pytest.approx(r1["kl_mean"])


def test_evaluate_refuses_calibration_images_among_evaluation_images(tiny):
    with pytest.raises(ValueError, match="also calibration images"):
        evaluate(str(tiny / "tiny.json"), tiny / "images", calibration=tiny / "images",
                 progress=False)


def test_storage_of_a_quantized_net_counts_dense_layers_on_both_sides(tiny):
    from qcnn.model import load
    from qcnn.quantizer import LayerSettings

    model = load(str(tiny / "tiny.json"), calibration=tiny / "calib", progress=False,
                 settings={"fc": LayerSettings(dense=True)})
    s = storage(model)
    assert isinstance(model.net.get("fc"), Linear)
    float_ops = 64 * 16 * 27 + 160
    q_ops = 16 * 16 * 3 * 16 + 64 * 16 * 9 + 160
    assert s["speedup_theoretical"] == pytest.approx(float_ops / q_ops)
    assert s["reference_bytes"] == 4 * (16 * 3 * 9 + 16 + 16 * 10 + 10)


def test_cli_eval_prints_json_and_table(tiny, capsys):
    from qcnn.cli import main

    args = ["eval", str(tiny / "tiny.json"), str(tiny / "images"), "--labels",
            str(tiny / "images" / "labels.csv"), "--calibration", str(tiny / "calib"), "--quiet"]
    assert main(args + ["--json", "--limit", "5"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["images"] == 5 and 0 <= r["agreement_top1"] <= 1
    assert main(args + ["--fc-k", "8"]) == 0
    out = capsys.readouterr().out
    assert "tiny-eval on 12 images" in out and "top-1 agreement" in out


def test_no_error_correction_with_explicit_settings_is_not_the_cached_corrected_file(tiny):
    from qcnn.quantizer import LayerSettings

    settings = {"conv": LayerSettings(subdim=3, K=16), "fc": LayerSettings(subdim=2, K=4)}
    kw = {"calibration": tiny / "calib", "settings": settings, "progress": False}
    with_ec = evaluate(str(tiny / "tiny.json"), tiny / "images", **kw)
    without = evaluate(str(tiny / "tiny.json"), tiny / "images", error_correction=False, **kw)
    assert with_ec["path"] != without["path"]
    assert without["error_correction"] is False
    assert all(not s["error_correction"] for s in without["settings"].values())
