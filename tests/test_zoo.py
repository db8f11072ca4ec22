"""The zoo: a contract test over every registered entry, entry files, plugins, labels."""

import importlib.metadata
import json
import math
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from qcnn import architectures
from qcnn.labels import load_labels
from qcnn.zoo import (
    ENTRY_POINT_GROUP,
    LayerQuant,
    Quantization,
    ZooEntry,
    ZooError,
    get_entry,
    list_entries,
    load_entry_file,
)

ROOT = Path(__file__).resolve().parent.parent
BUILTIN = ["alexnet", "alexnet-torchvision", "cnn-s", "squeezenet1_1", "vgg16", "vgg16-torchvision"]
# Built-ins allowed to download without an enforced hash, each for a reason written in its entry.
NO_KNOWN_HASH = {"cnn-s"}


def _out_size(n, k, s, p, ceil):
    r = (n + 2 * p - k) / s
    return (math.ceil(r) if ceil else math.floor(r)) + 1


def _propagate(spec, c, h, w):
    """(C, H, W) or (features,) through a spec, independently of qcnn.layers."""
    shape = (c, h, w)
    for s in spec:
        t = s["type"]
        if t == "conv":
            assert shape[0] == s["in"], f"{s['name']}: {shape[0]} channels in, spec says {s['in']}"
            (kh, kw), (sh, sw), (ph, pw) = s["kernel"], s["stride"], s["pad"]
            shape = (s["out"], _out_size(shape[1], kh, sh, ph, False),
                     _out_size(shape[2], kw, sw, pw, False))
        elif t in ("maxpool", "avgpool"):
            (kh, kw), (sh, sw), (ph, pw) = s["kernel"], s["stride"], s["pad"]
            shape = (shape[0], _out_size(shape[1], kh, sh, ph, s["ceil"]),
                     _out_size(shape[2], kw, sw, pw, s["ceil"]))
        elif t == "concat":
            outs = [_propagate(b, *shape) for b in s["branches"]]
            assert len({o[1:] for o in outs}) == 1
            shape = (sum(o[0] for o in outs), *outs[0][1:])
        elif t == "gap":
            shape = (shape[0], 1, 1)
        elif t == "flatten":
            shape = (int(np.prod(shape)),)
        elif t == "linear":
            assert shape == (s["in"],), f"{s['name']}: input {shape}, spec says {s['in']}"
            shape = (s["out"],)
        assert all(d >= 1 for d in shape), f"{s['name']}: empty output {shape}"
    return shape


@pytest.mark.parametrize("name", list_entries())
def test_entry_contract(name):
    e = get_entry(name)
    assert isinstance(e, ZooEntry) and e.name == name
    assert e.description and e.licence
    # architecture: exists, and the crop fits it all the way to 1000 outputs (or labels)
    assert e.architecture in architectures.ARCHITECTURES
    spec = architectures.get(e.architecture)
    labels = load_labels(e.labels)
    out = _propagate(spec, 3, e.preprocess.crop, e.preprocess.crop)
    assert out in ((len(labels),), (len(labels), 1, 1))
    # weights: a URL or a path, a known reader, hashes of the right form
    w = e.weights
    assert w.urls or w.path
    assert all(re.match(r"https?://[^ ]+$", u) for u in w.urls)
    assert w.filename and "/" not in w.filename
    assert w.format in ("caffe", "pth", "safetensors", "npz")  # qcnn.readers.FORMATS
    for value, n in ((w.sha256, 64), (w.sha1, 40)):
        assert value is None or re.fullmatch(f"[0-9a-f]{{{n}}}", value)
    assert w.sha256_prefix is None or re.fullmatch("[0-9a-f]{8,63}", w.sha256_prefix)
    if w.sha256_prefix:  # torch.hub convention: the prefix is in the file name
        assert w.sha256_prefix in w.filename
    assert w.verified or name in NO_KNOWN_HASH
    # pre-processing: mean and std in the scale of the input, a sane crop
    p = e.preprocess
    assert p.crop <= p.resize and p.crop in (224, 227)
    assert all(0 < m / p.scale < 255 for m in p.mean)
    assert (p.channel_order == "BGR") == (p.scale == 1.0)  # Caffe 0..255 BGR, else torchvision
    if p.std is not None:
        assert all(0 < s < 1 for s in p.std)
    if p.mean_image is not None:
        assert p.mean_image.urls and p.mean_image.format == "caffe-mean"
    # labels: 1000 ImageNet classes
    assert len(labels) == 1000 and e.labels == "imagenet1k"
    # tensor map targets are spec tensor names
    weight_names = {s["name"] for s in architectures.weight_layers(spec)}
    for _, dst in e.tensor_map:
        pattern = re.escape(dst).replace(r"\*", ".+")
        assert any(re.fullmatch(pattern, f"{n}.weight") or re.fullmatch(pattern, f"{n}.bias")
                   for n in weight_names), dst
    # quantization: overrides name real layers, every layer resolves to a valid setting
    assert {lq.layer for lq in e.quantization.layers} <= weight_names
    for s in architectures.weight_layers(spec):
        q = e.quantization.for_layer(s)
        assert q is None or (q.subdim >= 1 and 2 <= q.k <= 256)
    # accuracy, if given, is a percentage with a source
    if e.accuracy is not None:
        assert e.accuracy.source
        assert all(v is None or 0 < v < 100 for v in (e.accuracy.top1, e.accuracy.top5))
    # the plain-data form survives JSON
    assert ZooEntry.from_dict(json.loads(json.dumps(e.to_dict()))) == e


def test_builtins_are_registered_and_noncommercial_is_said():
    assert set(BUILTIN) <= set(list_entries())
    assert "non-commercial" in get_entry("cnn-s").licence.lower()
    assert get_entry("alexnet").weights.sha1 == "9116a64c0fbe4459d18f4bb6b56d647b63920377"
    assert get_entry("squeezenet1_1").weights.sha256_prefix == "b8a52dc0"


def test_unknown_name_lists_builtins():
    with pytest.raises(ZooError, match="unknown zoo entry 'nope'.*alexnet"):
        get_entry("nope")


def test_import_is_lazy():
    code = ("import sys, qcnn; before = set(sys.modules); import qcnn.zoo; "
            "new = set(sys.modules) - before; "
            "print(sorted(m for m in new | set(sys.modules) if m.startswith('qcnn._zoo')), "
            "sorted(m for m in new if m.startswith('PIL')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT, env={"PYTHONPATH": str(ROOT)}).stdout
    assert out.strip() == "[] []"


def _entry_dict(**changes):
    d = get_entry("squeezenet1_1").to_dict()
    d.update(name="my-net", weights={"path": "weights/sq.safetensors"})
    d.update(changes)
    return d


def test_entry_file_json_relative_path(tmp_path):
    f = tmp_path / "my.json"
    f.write_text(json.dumps(_entry_dict()))
    e = get_entry(str(f))
    assert e.name == "my-net"
    assert e.weights.path == str(tmp_path / "weights" / "sq.safetensors")
    assert e.weights.format == "safetensors" and e.weights.filename == "sq.safetensors"
    assert not e.weights.urls
    assert load_entry_file(f) == e == get_entry(f)


def test_entry_file_toml(tmp_path):
    pytest.importorskip("tomllib")
    f = tmp_path / "my.toml"
    f.write_text(textwrap.dedent("""
        name = "phone-net"
        architecture = "squeezenet1_1-torchvision"
        licence = "mine"
        labels = "classes.txt"
        [weights]
        path = "/sdcard/models/sq.pth"
        [preprocess]
        resize = 256
        resize_mode = "shorter"
        crop = 224
        channel_order = "RGB"
        scale = 0.00392156862745098
        mean = [0.485, 0.456, 0.406]
        std = [0.229, 0.224, 0.225]
        [[quantization.layers]]
        layer = "classifier.1"
        skip = true
    """))
    e = get_entry(str(f))
    assert e.weights.path == "/sdcard/models/sq.pth" and e.weights.format == "pth"
    assert e.labels == str(tmp_path / "classes.txt")
    assert e.quantization.for_layer({"type": "conv", "name": "classifier.1"}) is None
    assert e.quantization.for_layer({"type": "conv", "name": "features.3.squeeze"}).k == 128


@pytest.mark.parametrize("change, field, problem", [
    ({"colour": "red"}, "colour", "unknown field"),
    ({"preprocess": {**_entry_dict()["preprocess"], "crpo": 224}}, "preprocess.crpo", "unknown"),
    ({"preprocess": {**_entry_dict()["preprocess"], "crop": "224"}}, "preprocess.crop",
     "expected an integer"),
    ({"preprocess": {**_entry_dict()["preprocess"], "crop": 300}}, "preprocess", "larger"),
    ({"preprocess": {**_entry_dict()["preprocess"], "channel_order": "rgb"}},
     "preprocess.channel_order", "one of 'RGB', 'BGR'"),
    ({"preprocess": {**_entry_dict()["preprocess"], "mean": [0.5, 0.5]}}, "preprocess.mean",
     "3 items"),
    ({"weights": {"urls": ["https://x.org/a.pth"], "sha256": "XYZ"}}, "weights", "sha256"),
    ({"weights": {"urls": ["https://x.org/a.bin"]}}, "weights", "format"),
    ({"weights": {}}, "weights", "urls"),
    ({"architecture": "resnet50"}, "architecture", "not one of"),
    ({"tensor_map": [["*/weight", "*.wieght"]]}, "tensor_map", "names no tensor"),
    ({"tensor_map": [["a", "b", "c"]]}, "tensor_map[0]", "2 items"),
    ({"quantization": {"layers": [{"layer": "fc9", "k": 16}]}}, "quantization.layers", "fc9"),
    ({"quantization": {"layers": [{"layer": "features.0", "k": 1000}]}}, "quantization", "k"),
    ({"accuracy": {"top1": 57.0, "top5": 180.0, "source": "x"}}, "accuracy", "percentage"),
])
def test_bad_entry_file_names_file_and_field(tmp_path, change, field, problem):
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(_entry_dict(**change)))
    with pytest.raises(ZooError) as err:
        get_entry(str(f))
    msg = str(err.value)
    assert str(f) in msg and field in msg and problem in msg, msg


def test_missing_field_and_bad_json(tmp_path):
    d = _entry_dict()
    del d["licence"]
    f = tmp_path / "nolicence.json"
    f.write_text(json.dumps(d))
    with pytest.raises(ZooError, match=re.escape(str(f)) + ".*missing required field 'licence'"):
        get_entry(str(f))
    g = tmp_path / "broken.json"
    g.write_text('{"name": "x",\n "architecture": }')
    with pytest.raises(ZooError, match=re.escape(str(g)) + ".*not valid JSON.*line 2"):
        get_entry(str(g))
    with pytest.raises(ZooError, match="not found"):
        get_entry(str(tmp_path / "absent.json"))


def test_tensor_map_wildcards_and_exact_pairs():
    d = _entry_dict(architecture="squeezenet1_0-caffe", quantization={},
                    tensor_map=[["*/weight", "*.weight"], ["*/bias", "*.bias"],
                                ["conv10_w", "conv10.weight"]])
    e = ZooEntry.from_dict(d)
    assert e.map_tensor_name("fire2/squeeze1x1/weight") == "fire2/squeeze1x1.weight"
    assert e.map_tensor_name("conv1/bias") == "conv1.bias"
    assert e.map_tensor_name("conv10_w") == "conv10.weight"
    assert e.map_tensor_name("untouched") == "untouched"
    assert set(e.map_tensors({"conv1/weight": 1, "conv1/bias": 2})) == {"conv1.weight",
                                                                        "conv1.bias"}
    with pytest.raises(ZooError, match="two file tensors"):
        e.map_tensors({"conv10/weight": 1, "conv10_w": 2})


def test_quantization_for_layer_defaults_and_overrides():
    q = Quantization(layers=(LayerQuant("a", k=64), LayerQuant("b", skip=True)))
    assert q.for_layer({"type": "conv", "name": "a"}) == LayerQuant("a", 8, 64)
    assert q.for_layer({"type": "linear", "name": "c"}) == LayerQuant("c", 4, 32)
    assert q.for_layer({"type": "linear", "name": "b"}) is None
    with pytest.raises(ValueError, match="more than one override"):
        Quantization(layers=(LayerQuant("a"), LayerQuant("a", k=2)))


def _plugin_module(tmp_path, monkeypatch, body):
    (tmp_path / "qcnn_test_plugin.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("qcnn_test_plugin", None)


def _fake_entry_points(monkeypatch, *eps):
    def entry_points(**kw):
        assert kw == {"group": ENTRY_POINT_GROUP}
        return [importlib.metadata.EntryPoint(name=n, value=v, group=ENTRY_POINT_GROUP)
                for n, v in eps]
    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)


def test_plugin_entry_point_discovery(tmp_path, monkeypatch):
    _plugin_module(tmp_path, monkeypatch, """
        from qcnn.zoo import ZooEntry, get_entry
        import dataclasses
        LOADS = []
        def make():
            LOADS.append(1)
            return dataclasses.replace(get_entry("squeezenet1_1"), name="plug-made")
        ENTRY = dataclasses.replace(get_entry("vgg16"), name="plug-obj")
        WRONG = dataclasses.replace(get_entry("vgg16"), name="other-name")
        NOT_ENTRY = 42
    """)
    _fake_entry_points(monkeypatch, ("plug-made", "qcnn_test_plugin:make"),
                       ("plug-obj", "qcnn_test_plugin:ENTRY"),
                       ("plug-wrong", "qcnn_test_plugin:WRONG"),
                       ("plug-int", "qcnn_test_plugin:NOT_ENTRY"),
                       ("plug-broken", "no_such_module_qcnn:x"),
                       ("alexnet", "qcnn_test_plugin:ENTRY"))
    with pytest.warns(UserWarning, match="'alexnet'.*ignored"):
        names = list_entries()  # lists plugins without importing them (plug-broken is listed)
    assert {"plug-made", "plug-obj", "plug-broken"} <= set(names) and names.count("alexnet") == 1
    assert "qcnn_test_plugin" not in sys.modules
    assert get_entry("plug-made").architecture == "squeezenet1_1-torchvision"
    assert sys.modules["qcnn_test_plugin"].LOADS == [1]
    assert get_entry("plug-obj").architecture == "vgg16-caffe"
    assert get_entry("alexnet").architecture == "alexnet-caffe"  # built-ins win
    with pytest.raises(ZooError, match="'other-name'; the names must match"):
        get_entry("plug-wrong")
    with pytest.raises(ZooError, match="gave a int, not a ZooEntry"):
        get_entry("plug-int")
    with pytest.raises(ZooError, match="plug-broken.*no_such_module_qcnn.*failed to load"):
        get_entry("plug-broken")


def test_labels_builtin_and_files(tmp_path):
    labels = load_labels("imagenet1k")
    wnids = [w for w, _ in labels]
    assert len(labels) == 1000 and wnids == sorted(wnids) and len(set(wnids)) == 1000
    assert all(re.fullmatch(r"n\d{8}", w) for w in wnids)
    assert labels[0] == ("n01440764", "tench, Tinca tinca")
    f = tmp_path / "two.txt"
    f.write_text("cat a cat\ndog the dog\n")
    assert load_labels(f) == [("cat", "a cat"), ("dog", "the dog")]
    f.write_text("cat a cat\ncat again\n")
    with pytest.raises(ValueError, match=re.escape(str(f)) + ", line 2.*repeats line 1"):
        load_labels(str(f))
    with pytest.raises(ValueError, match="unknown label list 'imagenet22k'.*imagenet1k"):
        load_labels("imagenet22k")


@pytest.mark.shared
def test_labels_match_caffe_synset_words(shared_data):
    rows = (shared_data / "labels" / "synset_words.txt").read_text().splitlines()
    assert load_labels("imagenet1k") == [tuple(r.split(" ", 1)) for r in rows]


@pytest.mark.shared
def test_caffe_npz_names_map_onto_the_spec(shared_data, tmp_path):
    npz = shared_data / "squeezenet1.0-caffe-dc" / "decoded_squeezenet1.0_dc.npz"
    d = _entry_dict(architecture="squeezenet1_0-caffe", quantization={},
                    weights={"path": str(npz)},
                    # the file calls the last conv "conv_final", the prototxt "conv10"
                    tensor_map=[["*/weight", "*.weight"], ["*/bias", "*.bias"],
                                ["conv_final/weight", "conv10.weight"],
                                ["conv_final/bias", "conv10.bias"]])
    f = tmp_path / "sq10.json"
    f.write_text(json.dumps(d))
    e = get_entry(str(f))
    assert e.weights.path == str(npz) and e.weights.format == "npz"
    with np.load(npz) as z:
        names = set(e.map_tensors({k: None for k in z.files}))
    assert names == e.spec_tensor_names()


@pytest.mark.shared
def test_shared_safetensors_fits_the_squeezenet1_1_entry(shared_data):
    """`--weights .../squeezenet1_1.safetensors` with this entry: same names, same shapes."""
    f = shared_data / "squeezenet1.1" / "squeezenet1_1.safetensors"
    with open(f, "rb") as fh:  # the header only: 8-byte length, then JSON
        header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
    header.pop("__metadata__", None)
    e = get_entry("squeezenet1_1")
    shapes = {e.map_tensor_name(k): tuple(v["shape"]) for k, v in header.items()}
    assert set(shapes) == e.spec_tensor_names()
    for s in architectures.weight_layers(e.spec()):
        assert shapes[f"{s['name']}.weight"] == (s["out"], s["in"] // s["groups"], *s["kernel"])
