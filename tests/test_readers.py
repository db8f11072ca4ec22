"""Tests of qcnn.readers: Caffe, PyTorch .pth, safetensors and .npz files.

Caffe files are built with tests/caffe_encoder.py (an encoder written from caffe.proto's field
numbers, independent of the decoder); .pth files are built opcode by opcode the way torch.save
writes them (pickle protocol 2, persistent storage ids, one zip member per storage), without torch.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

import caffe_encoder as ce  # tests/ is on sys.path under pytest (rootdir conftest, no package)
import numpy as np
import pytest

from qcnn import architectures, readers
from qcnn.net import Net

RNG = np.random.default_rng(1234)


def small_tensors(spec):
    """Random tensors of the spec's true shapes (the values are what the tests compare)."""
    return architectures.random_tensors(spec, seed=7)


def features(spec):
    """The spec up to its classifier (true conv shapes at a fraction of the floats)."""
    return spec[: next(i for i, s in enumerate(spec) if s["type"] == "flatten")]


def write(tmp_path, name, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def assert_same_tensors(got: dict, want: dict):
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        assert got[k].dtype == np.float32, k
        assert got[k].shape == v.shape, k
        np.testing.assert_array_equal(got[k], v, err_msg=k)


# ------------------------------------------------------------------ Caffe
@pytest.mark.slow
def test_alexnet_caffemodel_true_shapes_v1(tmp_path):
    """All 61M floats of BVLC AlexNet's true shapes, in V1 `layers` as the 2014 file has them."""
    spec = architectures.get("alexnet-caffe")
    t = small_tensors(spec)
    p = write(tmp_path, "bvlc_alexnet.caffemodel", ce.net_from_spec(spec, t, v1=True,
                                                                    name="AlexNet"))
    w = readers.read(p)
    assert w.format == "caffe" and w.metadata["name"] == "AlexNet"
    assert sum(a.size for a in w.tensors.values()) == 60_965_224
    assert w.tensors["conv2.weight"].shape == (256, 48, 5, 5)
    assert w.tensors["fc6.weight"].shape == (4096, 9216)
    assert w.tensors["fc8.bias"].shape == (1000,)
    assert_same_tensors(w.tensors, t)
    assert w.layers["conv2"]["group"] == 2 and w.layers["conv2"]["pad"] == [2, 2]
    assert w.layers["conv1"]["stride"] == [4, 4] and w.layers["conv1"]["kernel"] == [11, 11]
    assert w.layers["norm1"]["alpha"] == 1e-4 and w.layers["norm1"]["local_size"] == 5
    assert w.layers["pool5"]["pool"] == "MAX" and w.layers["fc7"]["num_output"] == 4096
    readers.check_architecture(w, spec)
    net = Net.from_spec(spec, w.tensors)
    assert net.get("fc6").weight.shape == (4096, 9216)


@pytest.mark.parametrize("arch", ["alexnet-caffe", "cnn-s-caffe", "vgg16-caffe",
                                  "squeezenet1_0-caffe"])
@pytest.mark.parametrize("v1", [False, True], ids=["layer", "V1layers"])
def test_caffe_reference_architectures(tmp_path, arch, v1):
    """True layer settings and conv shapes of every Caffe reference model, both generations."""
    spec = architectures.get(arch)
    if arch != "squeezenet1_0-caffe":
        spec = features(spec)  # the classifiers' 100M+ floats are covered by the AlexNet test
    t = small_tensors(spec)
    p = write(tmp_path, f"{arch}.caffemodel", ce.net_from_spec(spec, t, v1=v1))
    w = readers.read(p)
    assert_same_tensors(w.tensors, t)
    readers.check_architecture(w, spec)
    Net.from_spec(spec, w.tensors)
    convs = [s for s in architectures.weight_layers(spec) if s["type"] == "conv"]
    for s in convs:
        info = w.layers[s["name"]]
        assert info["type"] == "Convolution"
        assert (info["kernel"], info["stride"], info["pad"], info["group"], info["num_output"]) == (
            s["kernel"], s["stride"], s["pad"], s["groups"], s["out"])


def test_squeezenet_caffe_forward_matches(tmp_path):
    """A net rebuilt from the file computes what the net built from the original tensors does."""
    spec = architectures.get("squeezenet1_0-caffe")
    t = small_tensors(spec)
    w = readers.read(write(tmp_path, "sq.caffemodel", ce.net_from_spec(spec, t)))
    assert w.layers["pool10"]["global_pooling"] and w.layers["pool10"]["pool"] == "AVE"
    assert w.layers["conv10"]["pad"] == [1, 1]
    assert w.layers["fire2/concat"]["bottom"] == ["fire2/conv1x1_2", "fire2/conv3x3_2"]
    x = RNG.standard_normal((1, 3, 67, 67), np.float32)
    np.testing.assert_array_equal(Net.from_spec(spec, w.tensors)(x), Net.from_spec(spec, t)(x))


def test_check_architecture_lists_every_mismatch(tmp_path):
    spec = architectures.get("alexnet-caffe")
    fspec = features(spec)
    t = small_tensors(fspec)
    w = readers.read(write(tmp_path, "a.caffemodel", ce.net_from_spec(fspec, t)))
    wrong = [dict(s) for s in fspec]
    by_name = {s["name"]: s for s in wrong}
    by_name["conv2"]["pad"] = [1, 1]
    by_name["conv4"]["groups"] = 1
    by_name["norm1"]["alpha"] = 5e-4
    by_name["pool5"]["ceil"] = False
    with pytest.raises(ValueError) as e:
        readers.check_architecture(w, wrong)
    msg = str(e.value)
    assert "a.caffemodel" in msg and "4 mismatches" in msg
    assert "conv2: pad: file [2, 2] != spec [1, 1]" in msg
    assert "conv4: group: file 2 != spec 1" in msg
    assert "norm1: alpha: file 0.0001 != spec 0.0005" in msg
    assert "pool5: round_mode: file 'CEIL' != spec 'FLOOR'" in msg
    # the full spec: fc6..fc8 are missing from this file
    with pytest.raises(ValueError, match=r"fc6: layer: missing from the file"):
        readers.check_architecture(w, spec)
    # a file with a weight layer the spec lacks
    with pytest.raises(ValueError, match=r"conv5: layer: the file's Convolution layer"):
        readers.check_architecture(w, [s for s in fspec if s["name"] != "conv5"])


def test_check_architecture_catches_caffenet_layer_order(tmp_path):
    """CaffeNet pools before LRN; its file must not pass as BVLC AlexNet."""
    spec = features(architectures.get("alexnet-caffe"))
    caffenet = list(spec)
    i, j = (next(k for k, s in enumerate(caffenet) if s["name"] == n) for n in ("norm1", "pool1"))
    caffenet[i], caffenet[j] = caffenet[j], caffenet[i]
    t = small_tensors(spec)
    w = readers.read(write(tmp_path, "caffenet.caffemodel", ce.net_from_spec(caffenet, t)))
    readers.check_architecture(w, caffenet)
    with pytest.raises(ValueError, match=r"layer order"):
        readers.check_architecture(w, spec)


def test_check_architecture_needs_caffe_layers(tmp_path):
    p = tmp_path / "w.npz"
    np.savez(p, a=np.ones(2))
    with pytest.raises(ValueError, match="only Caffe files"):
        readers.check_architecture(readers.read(p), [])


def test_caffe_encodings_old_and_new(tmp_path):
    """kernel_h/_w fields, unpacked and double data, transposed and legacy InnerProduct blobs."""
    conv_w = RNG.standard_normal((4, 3, 3, 5), np.float32)
    conv_b = RNG.standard_normal(4).astype(np.float32)
    ip_w = RNG.standard_normal((6, 8)).astype(np.float32)
    ip_b = RNG.standard_normal(6)
    conv = {"type": "conv", "name": "c", "out": 4, "kernel": [3, 5], "stride": [1, 2],
            "pad": [0, 2], "groups": 1}
    msgs = [
        ce.layer("c", "Convolution", [ce.blob(conv_w, packed=False),
                                      ce.blob(conv_b, legacy=True)], ce.conv_param(conv, hw=True)),
        ce.layer("ip", "InnerProduct",
                 [ce.blob(ip_w.T, double=True), ce.blob(ip_b, double=True, packed=False)],
                 ce.f_varint(1, 6) + ce.f_varint(6, 1)),  # transpose: stored (in, out)
        ce.layer("ip2", "InnerProduct", [ce.blob(ip_w, legacy=True)],
                 ce.f_varint(1, 6) + ce.f_varint(2, 0)),
    ]
    p = write(tmp_path, "mixed.caffemodel", ce.join(ce.f_bytes(100, m) for m in msgs))
    w = readers.read(p)
    np.testing.assert_array_equal(w.tensors["c.weight"], conv_w)
    np.testing.assert_array_equal(w.tensors["c.bias"], conv_b)
    assert w.layers["c"]["kernel"] == [3, 5] and w.layers["c"]["stride"] == [1, 2]
    assert w.layers["c"]["pad"] == [0, 2]
    np.testing.assert_array_equal(w.tensors["ip.weight"], ip_w)
    np.testing.assert_array_equal(w.tensors["ip.bias"], ip_b.astype(np.float32))
    np.testing.assert_array_equal(w.tensors["ip2.weight"], ip_w)
    assert w.layers["ip2"]["bias_term"] is False and "ip2.bias" not in w.tensors


def test_caffe_v0_layers(tmp_path):
    """2013-era files: a V0LayerParameter (field 1) inside each `layers` entry; padding folded."""
    wt = RNG.standard_normal((2, 3, 3, 3), np.float32)

    def v0(name, typ, extra=b"", blobs=()):
        body = [ce.f_str(1, name), ce.f_str(2, typ), extra, *(ce.f_bytes(50, b) for b in blobs)]
        return ce.join(ce.f_bytes(2, ce.f_bytes(1, body)))

    data = (v0("pad1", "padding", ce.f_varint(7, 1))
            + v0("conv1", "conv", ce.f_varint(3, 2) + ce.f_varint(8, 3) + ce.f_varint(10, 2),
                 [ce.blob(wt, legacy=True), ce.blob(np.ones(2), legacy=True)])
            + v0("norm1", "lrn", ce.f_varint(13, 3) + ce.f_float(14, 2e-4)))
    w = readers.read(write(tmp_path, "v0.caffemodel", data))
    np.testing.assert_array_equal(w.tensors["conv1.weight"], wt)
    assert w.tensors["conv1.bias"].shape == (2,)
    c = w.layers["conv1"]
    assert (c["type"], c["kernel"], c["stride"], c["pad"], c["num_output"]) == (
        "Convolution", [3, 3], [2, 2], [1, 1], 2)
    assert w.layers["norm1"]["local_size"] == 3 and w.layers["norm1"]["alpha"] == 2e-4


@pytest.mark.parametrize("legacy", [True, False])
def test_read_mean(tmp_path, legacy):
    mean = RNG.uniform(0, 255, (3, 256, 256)).astype(np.float32)
    mean += np.array([104.0, 116.7, 122.7], np.float32)[:, None, None] - mean.mean(axis=(1, 2),
                                                                                  keepdims=True)
    p = write(tmp_path, "mean.binaryproto", ce.mean_binaryproto(mean, legacy=legacy))
    m = readers.read_mean(p)
    assert m.shape == (3, 256, 256) and m.dtype == np.float32
    np.testing.assert_array_equal(m, mean)
    np.testing.assert_allclose(m.mean(axis=(1, 2)), [104.0, 116.7, 122.7], rtol=1e-4)
    with pytest.raises(ValueError, match="read_mean|Caffe protobuf"):
        readers.read(p)


def test_read_mean_rejects_a_non_image(tmp_path):
    p = write(tmp_path, "v.binaryproto", ce.join(ce.blob(np.ones(5, np.float32))))
    with pytest.raises(ValueError, match=r"v.binaryproto.*\(C, H, W\)"):
        readers.read_mean(p)


def test_caffe_truncated_and_corrupt(tmp_path):
    spec = features(architectures.get("alexnet-caffe"))[:4]
    data = ce.net_from_spec(spec, small_tensors(spec))
    for cut in (len(data) - 1, len(data) // 2, 7):
        p = write(tmp_path, f"cut{cut}.caffemodel", data[:cut])
        with pytest.raises(ValueError, match=rf"cut{cut}.caffemodel.*(truncated|no Caffe layers)"):
            readers.read(p)
    # a blob whose data disagrees with its shape
    bad = ce.join(ce.f_bytes(100, ce.layer("c", "Convolution", [
        [ce.f_bytes(7, ce.packed_varints(1, [2, 3])), ce.f_bytes(5, b"\0" * 20)]])))
    with pytest.raises(ValueError, match=r"bad.caffemodel.*holds 5 values but its shape \(2, 3\)"):
        readers.read(write(tmp_path, "bad.caffemodel", bad))
    # a wire type protobuf does not have
    with pytest.raises(ValueError, match=r"wire type 7"):
        readers.read(write(tmp_path, "wt.caffemodel", b"\x0f\x00"))


# ------------------------------------------------------------------ .pth, written like torch.save
class TorchPickle:
    """Pickle opcodes (protocol 2) as torch.save emits them for a state dict."""

    def __init__(self):
        self.out = bytearray(b"\x80\x02")

    def glob(self, module, name):
        self.out += b"c" + module.encode() + b"\n" + name.encode() + b"\n"

    def str(self, s):
        b = s.encode()
        self.out += b"X" + struct.pack("<I", len(b)) + b

    def int(self, v):
        if -(2 ** 31) <= v < 2 ** 31:
            self.out += b"J" + struct.pack("<i", v)
        else:
            b = v.to_bytes(9, "little", signed=True)
            self.out += b"\x8a" + bytes([len(b)]) + b

    def tuple_of_ints(self, vals):
        if not vals:
            self.out += b")"
            return
        self.out += b"("
        for v in vals:
            self.int(v)
        self.out += b"t"

    def ordered_dict(self):
        self.glob("collections", "OrderedDict")
        self.out += b")R"

    def tensor(self, stype, key, numel, offset, size, stride, parameter=False):
        if parameter:
            self.glob("torch._utils", "_rebuild_parameter")
            self.out += b"("
        self.glob("torch._utils", "_rebuild_tensor_v2")
        self.out += b"(" + b"("  # args tuple, then the persistent id tuple
        self.str("storage")
        self.glob("torch", stype)
        self.str(key)
        self.str("cpu")
        self.int(numel)
        self.out += b"tQ"  # TUPLE, BINPERSID
        self.int(offset)
        self.tuple_of_ints(size)
        self.tuple_of_ints(stride)
        self.out += b"\x89"  # requires_grad False
        self.ordered_dict()  # backward hooks
        self.out += b"tR"
        if parameter:
            self.out += b"\x88"
            self.ordered_dict()
            self.out += b"tR"

    def state_dict(self, entries):
        """entries: list of (name, (stype, key, numel, offset, size, stride[, parameter]))."""
        self.ordered_dict()
        self.out += b"("
        for name, args in entries:
            self.str(name)
            self.tensor(*args)
        self.out += b"u"
        return self

    def done(self) -> bytes:
        return bytes(self.out + b".")


def torch_zip(path, pkl: bytes, storages: dict, byteorder="little", archive="archive",
              deflate=()):
    """torch.save's zip layout: storages stored uncompressed, 64-byte aligned by an 'FB' extra."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{archive}/data.pkl", pkl)
        z.writestr(f"{archive}/byteorder", byteorder)
        for key, raw in storages.items():
            info = zipfile.ZipInfo(f"{archive}/data/{key}")
            if key in deflate:
                info.compress_type = zipfile.ZIP_DEFLATED
            else:
                here = z.fp.tell() + 30 + len(info.filename) + 4
                pad = -here % 64
                info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
            z.writestr(info, raw)
        z.writestr(f"{archive}/version", "3\n")
    return path


def test_pth_state_dict_like_torch_save(tmp_path):
    conv = RNG.standard_normal((8, 3, 3, 3), np.float32)
    fc = RNG.standard_normal((5, 7), np.float32)
    half = RNG.standard_normal(6).astype(np.float16)
    dbl = RNG.standard_normal((2, 3))
    bf = RNG.standard_normal(4).astype(np.float32)
    bf_bits = (bf.view(np.uint32) >> 16).astype(np.uint16)  # bfloat16 = top half of a float32
    shared = np.concatenate([conv.ravel(), fc.ravel()])  # two tensors in one storage
    storages = {"0": shared.tobytes(), "1": half.tobytes(), "2": dbl.tobytes(),
                "3": bf_bits.tobytes(), "4": np.array([17], "<i8").tobytes()}
    n = shared.size
    pkl = TorchPickle().state_dict([
        ("features.0.weight", ("FloatStorage", "0", n, 0, [8, 3, 3, 3], [27, 9, 3, 1])),
        ("classifier.weight", ("FloatStorage", "0", n, conv.size, [5, 7], [7, 1], True)),
        # a non-contiguous view: the transpose of fc, at an offset into the shared storage
        ("classifier.weight_t", ("FloatStorage", "0", n, conv.size, [7, 5], [1, 7])),
        ("half", ("HalfStorage", "1", 6, 0, [6], [1])),
        ("double", ("DoubleStorage", "2", 6, 0, [2, 3], [3, 1])),
        ("bf16", ("BFloat16Storage", "3", 4, 0, [4], [1])),
        ("bn.num_batches_tracked", ("LongStorage", "4", 1, 0, [], [])),
    ]).done()
    p = torch_zip(tmp_path / "m.pth", pkl, storages, archive="m", deflate=("2",))
    w = readers.read(p)
    assert w.format == "pth"
    np.testing.assert_array_equal(w.tensors["features.0.weight"], conv)
    np.testing.assert_array_equal(w.tensors["classifier.weight"], fc)
    np.testing.assert_array_equal(w.tensors["classifier.weight_t"], fc.T)
    assert w.tensors["classifier.weight_t"].flags.c_contiguous
    np.testing.assert_array_equal(w.tensors["half"], half.astype(np.float32))
    np.testing.assert_array_equal(w.tensors["double"], dbl.astype(np.float32))
    np.testing.assert_array_equal(w.tensors["bf16"], (bf_bits.astype(np.uint32) << 16)
                                  .view(np.float32))
    assert all(v.dtype == np.float32 for v in w.tensors.values())
    assert w.other["bn.num_batches_tracked"].dtype == np.int64
    assert int(w.other["bn.num_batches_tracked"]) == 17


def test_pth_big_endian_and_checkpoint_dict(tmp_path):
    a = RNG.standard_normal((3, 4), np.float32)
    t = TorchPickle()
    t.out += b"}("  # {"epoch": 3, "state_dict": OrderedDict(...)}
    t.str("epoch")
    t.int(3)
    t.str("state_dict")
    t.state_dict([("w", ("FloatStorage", "0", 12, 0, [3, 4], [4, 1]))])
    t.out += b"u"
    p = torch_zip(tmp_path / "ckpt.pth", t.done(), {"0": a.astype(">f4").tobytes()},
                  byteorder="big")
    np.testing.assert_array_equal(readers.read(p).tensors["w"], a)


def test_pth_refuses_code_without_running_it(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    for i, obj in enumerate([Evil(), OrderedDict(w=Evil())]):
        p = torch_zip(tmp_path / f"evil{i}.pth", pickle.dumps(obj, protocol=2), {})
        with pytest.raises(ValueError, match=r"evil\d.pth: its pickle tried to import "
                                             r"(posix|os|nt)\.system.*refused"):
            readers.read(p)
    # the same inside an otherwise valid state dict, after a real tensor
    t = TorchPickle()
    t.ordered_dict()
    t.out += b"("
    t.str("w")
    t.tensor("FloatStorage", "0", 1, 0, [1], [1])
    t.str("x")
    t.glob("builtins", "eval")
    t.out += b"("
    t.str(f"open({str(marker)!r}, 'w')")
    t.out += b"tRu"
    p = torch_zip(tmp_path / "evil2.pth", t.done(), {"0": b"\0\0\0\0"})
    with pytest.raises(ValueError, match=r"builtins\.eval"):
        readers.read(p)
    assert not marker.exists()


def test_pth_rejects_out_of_bounds_views_and_missing_storages(tmp_path):
    pkl = TorchPickle().state_dict([("w", ("FloatStorage", "0", 4, 2, [2, 2], [2, 1]))]).done()
    p = torch_zip(tmp_path / "oob.pth", pkl, {"0": b"\0" * 16})
    with pytest.raises(ValueError, match=r"oob.pth.*reaches element 5 of data/0, which holds 4"):
        readers.read(p)
    p = torch_zip(tmp_path / "short.pth", pkl, {"0": b"\0" * 8})
    with pytest.raises(ValueError, match=r"short.pth.*data/0 holds 8 bytes"):
        readers.read(p)
    p = torch_zip(tmp_path / "missing.pth", pkl, {})
    with pytest.raises(ValueError, match=r"missing.pth.*archive lacks"):
        readers.read(p)


def test_pth_legacy_and_truncated(tmp_path):
    legacy = tmp_path / "old.pth"
    legacy.write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + b"rest")
    with pytest.raises(ValueError, match=r"old.pth.*legacy.*torch.save"):
        readers.read(legacy)
    pkl = TorchPickle().state_dict([("w", ("FloatStorage", "0", 4, 0, [4], [1]))]).done()
    good = torch_zip(tmp_path / "good.pth", pkl, {"0": np.arange(4, dtype="<f4").tobytes()})
    np.testing.assert_array_equal(readers.read(good).tensors["w"], np.arange(4))
    data = good.read_bytes()
    cut = write(tmp_path, "cut.pth", data[: len(data) - 30])
    with pytest.raises(ValueError, match=r"cut.pth.*(corrupt|truncated)"):
        readers.read(cut)


def test_pth_against_real_torch(tmp_path):
    """Cross-check with torch.save when torch happens to be installed (not a dependency)."""
    torch = pytest.importorskip("torch")
    sd = OrderedDict(conv=torch.randn(4, 3, 3, 3), fc=torch.randn(6, 5).t(),
                     half=torch.randn(3).half(), bf=torch.randn(3).bfloat16(),
                     n=torch.tensor(5))
    torch.save(sd, tmp_path / "real.pth")
    w = readers.read(tmp_path / "real.pth")
    for k in ("conv", "fc", "half", "bf"):
        np.testing.assert_array_equal(w.tensors[k], sd[k].float().numpy())
    assert int(w.other["n"]) == 5


# ------------------------------------------------------------------ safetensors
@pytest.mark.shared
def test_safetensors_squeezenet_matches_test_vectors(shared_data):
    w = readers.read(shared_data / "squeezenet1.1" / "squeezenet1_1.safetensors")
    assert w.format == "safetensors"
    assert w.tensors["features.0.weight"].shape == (64, 3, 3, 3)
    assert "features.3.expand3x3.weight" in w.tensors and "classifier.1.bias" in w.tensors
    assert sum(a.size for a in w.tensors.values()) == 1_235_496
    spec = architectures.get("squeezenet1_1-torchvision")
    assert spec[-1]["type"] == "softmax"
    net = Net.from_spec(spec[:-1], w.tensors)  # the vectors hold the output before softmax
    for i in range(3):
        d = shared_data / "squeezenet1.1" / "test_vectors" / str(i)
        want = np.load(d / "output_0.npy")
        got = net(np.load(d / "input_0.npy"))
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def safetensors_bytes(entries: dict, metadata=None, raw_header=None) -> bytes:
    """entries: name -> (dtype string, shape, bytes)."""
    header, buf = {}, b""
    for name, (dt, shape, data) in entries.items():
        header[name] = {"dtype": dt, "shape": list(shape),
                        "data_offsets": [len(buf), len(buf) + len(data)]}
        buf += data
    if metadata is not None:
        header["__metadata__"] = metadata
    h = raw_header if raw_header is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + buf


def test_safetensors_dtypes(tmp_path):
    f32 = RNG.standard_normal((2, 3), np.float32)
    f16 = RNG.standard_normal(5).astype(np.float16)
    f64 = RNG.standard_normal((1, 4))
    bf_bits = np.array([0x3F80, 0xC000, 0x0000, 0x7F80], np.uint16)  # 1, -2, 0, inf
    ids = np.arange(3, dtype=np.int64)
    p = write(tmp_path, "m.safetensors", safetensors_bytes({
        "a": ("F32", f32.shape, f32.tobytes()), "h": ("F16", f16.shape, f16.tobytes()),
        "d": ("F64", f64.shape, f64.tobytes()), "b": ("BF16", (4,), bf_bits.tobytes()),
        "i": ("I64", (3,), ids.tobytes()), "empty": ("F32", (0, 3), b"")},
        metadata={"format": "pt"}))
    w = readers.read(p)
    np.testing.assert_array_equal(w.tensors["a"], f32)
    np.testing.assert_array_equal(w.tensors["h"], f16.astype(np.float32))
    np.testing.assert_array_equal(w.tensors["d"], f64.astype(np.float32))
    np.testing.assert_array_equal(w.tensors["b"], [1.0, -2.0, 0.0, np.inf])
    assert w.tensors["empty"].shape == (0, 3)
    np.testing.assert_array_equal(w.other["i"], ids)
    assert w.metadata == {"format": "pt"}
    assert all(v.dtype == np.float32 for v in w.tensors.values())


def test_safetensors_against_the_reference_writer(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    t = {"x": RNG.standard_normal((3, 2, 5), np.float32),
         "y": RNG.standard_normal(7).astype(np.float16), "z": RNG.standard_normal((4, 4))}
    st.save_file(t, str(tmp_path / "ref.safetensors"), metadata={"k": "v"})
    w = readers.read(tmp_path / "ref.safetensors")
    for k, v in t.items():
        np.testing.assert_array_equal(w.tensors[k], v.astype(np.float32))
    assert w.metadata == {"k": "v"}


@pytest.mark.parametrize("case,match", [
    ("dtype", r"dtype 'F8_E4M3'"),
    ("offsets", r"outside the 24-byte data buffer"),
    ("size", r"24 bytes for shape \[2, 2\]"),
    ("overlap", r"overlap"),
    ("json", r"not JSON"),
    ("headerlen", r"header length"),
    ("truncated", r"outside|header length"),
])
def test_safetensors_corrupt(tmp_path, case, match):
    a = np.zeros(6, np.float32).tobytes()
    if case == "dtype":
        data = safetensors_bytes({"a": ("F8_E4M3", (24,), a)})
    elif case == "offsets":
        h = {"a": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]}}
        data = safetensors_bytes({}, raw_header=json.dumps(h).encode()) + a
    elif case == "size":
        data = safetensors_bytes({"a": ("F32", (2, 2), a)})
    elif case == "overlap":
        h = {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
             "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}
        data = safetensors_bytes({}, raw_header=json.dumps(h).encode()) + a
    elif case == "json":
        data = safetensors_bytes({}, raw_header=b"{not json") + a
    elif case == "headerlen":
        data = struct.pack("<Q", 10**9) + b"{}" + a
    else:
        full = safetensors_bytes({"a": ("F32", (6,), a)})
        data = full[:-5]
    p = write(tmp_path, f"{case}.safetensors", data)
    with pytest.raises(ValueError, match=rf"{case}.safetensors.*{match}"):
        readers.read(p)


# ------------------------------------------------------------------ npz
@pytest.mark.shared
def test_npz_shared_files_agree_with_safetensors(shared_data):
    onnx = readers.read(shared_data / "squeezenet1.1" / "squeezenet1.1_fp32_OIHW.npz")
    assert onnx.format == "npz" and len(onnx.tensors) == 52
    assert sum(a.size for a in onnx.tensors.values()) == 1_235_496
    tv = readers.read(shared_data / "squeezenet1.1" / "squeezenet1_1.safetensors")
    convs = architectures.weight_layers(architectures.get("squeezenet1_1-torchvision"))
    assert len(convs) == 26
    for n, s in enumerate(convs):  # conv0..conv25 in network order = torchvision's order
        np.testing.assert_array_equal(onnx.tensors[f"squeezenet0_conv{n}_weight"],
                                      tv.tensors[f"{s['name']}.weight"])
    dc = readers.read(shared_data / "squeezenet1.0-caffe-dc" / "decoded_squeezenet1.0_dc.npz")
    assert dc.tensors["conv1/weight"].shape == (96, 3, 7, 7)
    assert dc.tensors["conv_final/weight"].shape == (1000, 512, 1, 1)  # the prototxt's conv10
    assert len(dc.tensors) == 52 and all(a.dtype == np.float32 for a in dc.tensors.values())


def test_npz_dtypes_and_refusals(tmp_path):
    p = tmp_path / "w.npz"
    w64 = RNG.standard_normal((2, 2))
    np.savez(p, w=w64, steps=np.array([3]))
    w = readers.read(p)
    np.testing.assert_array_equal(w.tensors["w"], w64.astype(np.float32))
    assert w.other["steps"].dtype.kind == "i"
    obj = tmp_path / "obj.npz"
    np.savez(obj, w=np.ones(2), o=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match=r"obj.npz"):
        readers.read(obj)
    data = p.read_bytes()
    cut = write(tmp_path, "cut.npz", data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut.npz.*(corrupt|truncated)"):
        readers.read(cut)


# ------------------------------------------------------------------ detection
def test_detect_format_from_content_not_extension(tmp_path):
    np.savez(tmp_path / "a.npz", w=np.ones(1))
    (tmp_path / "a.npz").rename(tmp_path / "a.caffemodel")
    assert readers.detect_format(tmp_path / "a.caffemodel") == "npz"
    st = write(tmp_path, "b.npz", safetensors_bytes({"x": ("F32", (1,), b"\0\0\x80?")}))
    assert readers.detect_format(st) == "safetensors"
    assert readers.read(st).tensors["x"][0] == 1.0
    pkl = TorchPickle().state_dict([("w", ("FloatStorage", "0", 1, 0, [1], [1]))]).done()
    pth = torch_zip(tmp_path / "c.safetensors", pkl, {"0": b"\0\0\0\0"})
    assert readers.detect_format(pth) == "pth"
    spec = features(architectures.get("alexnet-caffe"))[:2]
    cm = write(tmp_path, "d.pth", ce.net_from_spec(spec, small_tensors(spec)))
    assert readers.detect_format(cm) == "caffe"


@pytest.mark.parametrize("name,data,match", [
    ("empty.bin", b"", r"empty"),
    ("garbage.bin", bytes(range(256)) * 4, r"Supported formats"),
    ("text.bin", b"hello, this is not a model\n", r"Supported formats"),
])
def test_unknown_files(tmp_path, name, data, match):
    p = write(tmp_path, name, data)
    with pytest.raises(ValueError, match=rf"{name}.*{match}|{match}.*{name}"):
        readers.read(p)


def test_zip_without_weights(tmp_path):
    p = tmp_path / "docs.zip"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("readme.txt", "hi")
    with pytest.raises(ValueError, match=r"docs.zip.*neither data.pkl"):
        readers.read(p)


def test_weights_repr():
    w = readers.Weights(tensors={"a": np.zeros(3, np.float32)}, format="npz", path="/x/w.npz")
    assert "3 floats" in repr(w) and "w.npz" in repr(w)
