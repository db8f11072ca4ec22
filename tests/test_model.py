"""End to end: zoo entry -> local download -> quantize on first use -> cached file -> predictions."""

import hashlib
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
from local_server import Server
from PIL import Image

import qcnn
from qcnn import architectures as A
from qcnn.cache import cache_info
from qcnn.model import WeightsError

TINY = [
    A.conv("c1", 3, 8, 3, 2, 1), A.relu("r1"), A.maxpool("p1", 3, 2),
    A.conv("c2", 8, 16, 3, 1, 1), A.relu("r2"), A.simple("gap", "gap"), A.simple("flatten", "flat"),
    A.linear("fc", 16, 1000), A.simple("softmax", "prob"),
]


def write_safetensors(path, tensors):
    header, offset, blobs = {}, 0, []
    for name, t in tensors.items():
        b = np.ascontiguousarray(t, np.float32).tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def tiny_entry(tmp_path, url=None, sha256=None, path=None, images=8):
    d = {
        "name": "tiny", "architecture": "tiny-test", "layers": TINY, "licence": "test weights",
        "weights": {"urls": [url] if url else [], "filename": "tiny.safetensors", "format": "safetensors",
                    "sha256": sha256, "path": path},
        "preprocess": {"resize": 36, "resize_mode": "shorter", "crop": 32, "channel_order": "RGB",
                       "scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        "quantization": {"conv_subdim": 4, "conv_k": 16, "linear_subdim": 4, "linear_k": 16,
                         "layers": [{"layer": "c1", "subdim": 3}],
                         "calibration": {"images": images, "iterations": 1, "seed": 0}},
    }
    p = tmp_path / "tiny.json"
    p.write_text(json.dumps(d))
    return p


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("QCNN_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("QCNN_OFFLINE", raising=False)
    monkeypatch.delenv("QCNN_MIRROR", raising=False)
    return tmp_path / "cache"


@pytest.fixture
def served(tmp_path):
    w = tmp_path / "tiny.safetensors"
    write_safetensors(w, A.random_tensors(TINY, seed=3))
    data = w.read_bytes()
    s = Server()
    s.files["/tiny.safetensors"] = data
    yield s, hashlib.sha256(data).hexdigest(), w
    s.close()


def _images(tmp_path, n=3):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def _run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "qcnn.cli", *map(str, args)], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=300)


def test_first_use_downloads_quantizes_and_later_processes_reuse_the_file(tmp_path, home, served):
    server, sha, _ = served
    entry = tiny_entry(tmp_path, server.url("/tiny.safetensors"), sha)
    img = _images(tmp_path, 1)[0]

    model = qcnn.load(str(entry), progress=False)
    assert model.quantized and model.path.is_file() and model.path.parent == home / "models"
    assert server.paths() == ["/tiny.safetensors"]
    preds = model.classify(img, top=3)
    assert len(preds) == 3 and preds[0].probability >= preds[1].probability >= preds[2].probability
    mtime = model.path.stat().st_mtime_ns

    r = _run_cli("classify", img, "--model", entry, "--top", "3", "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)[0]["predictions"]
    assert [p["index"] for p in got] == [p.index for p in preds]
    np.testing.assert_allclose([p["probability"] for p in got], [p.probability for p in preds], rtol=1e-5)
    assert server.paths() == ["/tiny.safetensors"], "a later process must not download again"
    assert model.path.stat().st_mtime_ns == mtime, "a later process must not quantize again"
    assert "quantizing" not in r.stderr


def test_quantized_net_follows_the_entry_settings_and_tracks_the_float_net(tmp_path, home, served):
    server, sha, _ = served
    entry = tiny_entry(tmp_path, server.url("/tiny.safetensors"), sha, images=16)
    imgs = _images(tmp_path, 4)
    qm = qcnn.load(str(entry), progress=False)
    layers = dict(qm.net.named_layers())
    assert (layers["c1"].subdim, layers["c1"].K) == (3, 16)
    assert (layers["c2"].subdim, layers["c2"].K, layers["fc"].subdim) == (4, 16, 4)
    q = qm.predict(imgs)
    f = qcnn.load(str(entry), quantized=False, progress=False).predict(imgs)
    assert q.shape == f.shape == (4, 1000)
    np.testing.assert_allclose(q.sum(axis=1), 1, rtol=1e-5)
    corr = np.corrcoef(np.log(q).ravel(), np.log(f).ravel())[0, 1]
    assert corr > 0.5, f"quantized log-probabilities barely follow the float net's (r={corr:.2f})"


def test_a_cached_model_loads_without_reference_weights_readers_or_network_code(tmp_path, home,
                                                                             served):
    """Start-up of a warm run: only the quantized file is read; the float reference weights, the
    weight readers and the download stack (requests, filelock) are never imported."""
    server, sha, _ = served
    entry = tiny_entry(tmp_path, server.url("/tiny.safetensors"), sha)
    first = qcnn.load(str(entry), progress=False)
    img = _images(tmp_path, 1)[0]
    script = (
        "import sys, qcnn\n"
        f"m = qcnn.load({str(entry)!r}, progress=False)\n"
        f"print(m.path, len(m.classify({str(img)!r})))\n"
        "print(' '.join(k for k in ('requests', 'filelock', 'qcnn.readers') if k in sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "QCNN_HOME": str(home)})
    assert r.returncode == 0, r.stderr
    path, imported = r.stdout.splitlines()
    assert path == f"{first.path} 5"
    assert imported == "", f"a warm load imported {imported}"
    assert server.paths() == ["/tiny.safetensors"]


def test_two_processes_download_and_quantize_once(tmp_path, home, served):
    server, sha, _ = served
    entry = tiny_entry(tmp_path, server.url("/tiny.safetensors"), sha)
    env = {**os.environ, "QCNN_HOME": str(home)}
    procs = [subprocess.Popen([sys.executable, "-m", "qcnn.cli", "quantize", str(entry)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert outs[0][0] == outs[1][0] and outs[0][0].strip().endswith(".qcnn")
    assert sum("wrote" in err for _, err in outs) == 1, outs
    assert server.paths() == ["/tiny.safetensors"]


def test_classify_accepts_paths_pil_arrays_and_batches(tmp_path, home, served):
    server, sha, _ = served
    model = qcnn.load(str(tiny_entry(tmp_path, server.url("/tiny.safetensors"), sha)), progress=False)
    p = _images(tmp_path, 1)[0]
    arr = np.asarray(Image.open(p).convert("RGB"))
    one = model.classify(p, top=2)
    assert [x.index for x in model.classify(Image.open(p), top=2)] == [x.index for x in one]
    assert [x.index for x in model.classify(arr, top=2)] == [x.index for x in one]
    batch = model.classify([p, arr], top=2)
    assert len(batch) == 2 and [x.index for x in batch[1]] == [x.index for x in one]
    assert one[0].wnid.startswith("n") and one[0].name


def test_local_weights_file_must_match_the_entry_hash_unless_unverified(tmp_path, home, served):
    server, sha, wfile = served
    entry = tiny_entry(tmp_path, server.url("/tiny.safetensors"), "0" * 64)
    with pytest.raises(WeightsError, match="--unverified"):
        qcnn.load(str(entry), weights=wfile, progress=False)
    with pytest.warns(UserWarning, match="without checking its hash"):
        model = qcnn.load(str(entry), weights=wfile, unverified=True, progress=False)
    assert model.quantized and server.paths() == []


def test_offline_without_cached_weights_says_how_to_supply_them(tmp_path, home, served):
    server, sha, _ = served
    entry = tiny_entry(tmp_path, server.url("/tiny.safetensors"), sha)
    r = _run_cli("classify", _images(tmp_path, 1)[0], "--model", entry, env={"QCNN_OFFLINE": "1",
                                                                             "QCNN_HOME": str(home)})
    assert r.returncode == 4 and r.stdout == ""
    assert "--weights" in r.stderr and "tiny.safetensors" in r.stderr
    assert server.paths() == []


def test_delete_reference_keeps_only_the_quantized_file(tmp_path, home, served):
    server, sha, _ = served
    entry = tiny_entry(tmp_path, server.url("/tiny.safetensors"), sha)
    model = qcnn.load(str(entry), keep_reference=False, progress=False)
    kinds = {e.kind for e in cache_info()}
    assert "model" in kinds and "download" not in kinds
    assert qcnn.load(str(entry), progress=False).path == model.path
    assert server.paths() == ["/tiny.safetensors"]


def test_a_corrupt_cached_model_is_refused_with_advice(tmp_path, home, served):
    server, sha, _ = served
    entry = tiny_entry(tmp_path, server.url("/tiny.safetensors"), sha)
    path = qcnn.load(str(entry), progress=False).path
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF
    path.write_bytes(bytes(raw))
    r = _run_cli("classify", _images(tmp_path, 1)[0], "--model", entry)
    assert r.returncode == 3 and str(path.name) in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_real_squeezenet_classifies_real_images(tmp_path, home, shared_data):
    """The shared SqueezeNet 1.1 weights, quantized on first use, find the true class in the top 5."""
    import csv

    from qcnn.zoo import get_entry

    d = get_entry("squeezenet1_1").to_dict()
    d["weights"] = {"path": str(shared_data / "squeezenet1.1" / "squeezenet1_1.safetensors"),
                    "format": "safetensors"}
    # 2 dims x 64 codewords (3 bits a weight): SqueezeNet's thin layers need finer codebooks than
    # AlexNet's official 8 x 128 (docs/accuracy.md)
    d["quantization"].update(conv_subdim=2, conv_k=64, calibration={"images": 16, "iterations": 2, "seed": 0})
    entry = tmp_path / "squeezenet.json"
    entry.write_text(json.dumps(d))
    files, labels = [], []
    for folder in ("val10", "foolbox20"):
        with open(shared_data / "images" / folder / "labels.csv") as f:
            for row in csv.DictReader(f):
                files.append(shared_data / "images" / folder / row["file"])
                labels.append(int(row["label_caffe_index"]))
    calibration = sorted((shared_data / "images" / "imagenet-sample").glob("*.JPEG"))[::60]
    with pytest.warns(UserWarning):
        model = qcnn.load(str(entry), calibration=calibration, progress=False)
    results = model.classify(files, top=5)
    hits = sum(label in [p.index for p in preds] for label, preds in zip(labels, results, strict=True))
    assert hits >= 0.7 * len(files), f"true class in the top 5 for only {hits}/{len(files)} images"
