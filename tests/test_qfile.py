import json
import math
import os
import struct

import numpy as np
import pytest

from qcnn import architectures, qfile, qlayers
from qcnn import net as net_module
from qcnn.layers import LRN, AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU
from qcnn.net import Concat, Net
from qcnn.qfile import QFileError

HAVE_QLAYERS = hasattr(qlayers.QConv2d, "from_spec")


# --- independent readers / references ------------------------------------------------------------

def raw_header(path):
    """(header length N, parsed JSON header) read with struct + json only."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return n, json.loads(f.read(n))


def reference_pack(codes, bits):
    """Slow, obvious packing: each code's bits LSB first, one little-endian bit stream."""
    b = np.unpackbits(codes.reshape(-1, 1), axis=1, bitorder="little")[:, :bits]
    return np.packbits(b.reshape(-1), bitorder="little")


# --- quantized layers: a stand-in with the qlayers contract until qcnn/qlayers.py lands ---------

class StubQuantized:
    """Holds and checks the tensors of a qconv/qlinear spec (no forward pass)."""

    def __init__(self, spec, tensors):
        self.s = dict(spec)
        self.name = spec["name"]
        self.t = tensors

    def spec(self):
        return dict(self.s)

    def tensors(self):
        return dict(self.t)

    @classmethod
    def from_spec(cls, s, tensors):
        name, g = s["name"], s.get("groups", 1)
        m = math.ceil(s["in"] // g / s["subdim"])
        kernel = tuple(s["kernel"]) if s["type"] == "qconv" else ()
        want = {f"{name}.codebooks": ((m, s["K"], s["subdim"]), np.dtype(s["codebook_dtype"])),
                f"{name}.codes": ((s["out"], *kernel, m), np.dtype(np.uint8))}
        if s["bias"]:
            want[f"{name}.bias"] = ((s["out"],), np.dtype(np.float32))
        for key, (shape, dtype) in want.items():
            a = tensors[key]
            if a.shape != shape or a.dtype != dtype:
                raise ValueError(f"tensor {key!r} is {a.dtype}{a.shape}, expected {dtype}{shape}")
        return cls(s, {k: tensors[k] for k in want})


@pytest.fixture(params=["stub", "qlayers"])
def qimpl(request, monkeypatch):
    if request.param == "stub":
        monkeypatch.setitem(net_module.LAYER_TYPES, "qconv", StubQuantized)
        monkeypatch.setitem(net_module.LAYER_TYPES, "qlinear", StubQuantized)
    elif not HAVE_QLAYERS:
        pytest.skip("qcnn/qlayers.py has no QConv2d.from_spec yet")
    return request.param


def qconv_spec(name, cin, cout, k, subdim, K, groups=1, stride=1, pad=0, dtype="float32"):
    return {"type": "qconv", "name": name, "in": cin, "out": cout, "kernel": [k, k],
            "stride": [stride, stride], "pad": [pad, pad], "groups": groups, "bias": True,
            "subdim": subdim, "K": K, "codebook_dtype": dtype}


def qlinear_spec(name, cin, cout, subdim, K, dtype="float32"):
    return {"type": "qlinear", "name": name, "in": cin, "out": cout, "bias": True,
            "subdim": subdim, "K": K, "codebook_dtype": dtype}


def quantized_tensors(spec, seed=0):
    """Random codebooks, codes covering 0..K-1 and biases for the q-layers of a spec."""
    rng = np.random.default_rng(seed)
    t = {}
    for s in spec:
        if s["type"] not in ("qconv", "qlinear"):
            continue
        m = math.ceil(s["in"] // s.get("groups", 1) / s["subdim"])
        kernel = tuple(s["kernel"]) if s["type"] == "qconv" else ()
        t[f"{s['name']}.codebooks"] = rng.standard_normal((m, s["K"], s["subdim"])).astype(
            s["codebook_dtype"])
        codes = rng.integers(0, s["K"], (s["out"], *kernel, m), dtype=np.uint8)
        codes.reshape(-1)[0] = s["K"] - 1  # the largest code must survive packing
        t[f"{s['name']}.codes"] = codes
        t[f"{s['name']}.bias"] = rng.standard_normal(s["out"]).astype(np.float32)
    return t


def small_float_net():
    rng = np.random.default_rng(3)
    w = rng.standard_normal
    return Net([
        ("c1", Conv2d(w((8, 3, 3, 3)), w(8), stride=2, padding=1, name="c1")),
        ("r1", ReLU("r1")),
        ("n1", LRN(5, 1e-4, 0.75, 2.0, name="n1")),
        ("p1", MaxPool2d(3, 2, name="p1")),
        ("cat", Concat([[("a", Conv2d(w((4, 8, 1, 1)), None, name="a"))],
                        [("b", Conv2d(w((6, 4, 3, 3)), w(6), padding=1, groups=2, name="b")),
                         ("rb", ReLU("rb"))]], name="cat")),
        ("p2", AvgPool2d(2, 2, name="p2")),
        ("flat", Flatten("flat")),
        ("fc", Linear(w((5, 10 * 2 * 2)), w(5), name="fc")),
    ])


META = {"preprocessing": {"size": 224, "mean": [0.485, 0.456, 0.406], "order": "RGB"},
        "labels": "imagenet-1k", "quantization": {"conv1": {"subdim": 3, "K": 128}}}


def assert_same_net(a, b):
    sa, ta = a.to_spec()
    sb, tb = b.to_spec()
    assert sa == sb
    assert list(ta) == list(tb)
    for k in ta:
        assert ta[k].dtype == tb[k].dtype and ta[k].shape == tb[k].shape, k
        assert ta[k].tobytes() == tb[k].tobytes(), k  # bit-exact


# --- packing -------------------------------------------------------------------------------------

def test_code_bits_is_ceil_log2():
    for k in (2, 3, 4, 5, 16, 17, 100, 128, 129, 255, 256):
        assert qfile.code_bits(k) == math.ceil(math.log2(k))
    with pytest.raises(ValueError, match="257"):
        qfile.code_bits(257)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 13, 1001, 70_001])
def test_pack_round_trip_and_bit_order(bits, n):
    codes = np.random.default_rng(bits * 1000 + n).integers(0, 1 << bits, n, dtype=np.uint8)
    packed = qfile.pack_codes(codes, bits)
    assert packed.dtype == np.uint8 and packed.ndim == 1
    assert packed.size == math.ceil(n * bits / 8)
    np.testing.assert_array_equal(packed, reference_pack(codes, bits))
    out = qfile.unpack_codes(packed, bits, (n,))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, codes)


def test_pack_crosses_chunk_boundary(monkeypatch):
    monkeypatch.setattr(qfile, "_GROUPS_PER_STEP", 3)
    codes = np.random.default_rng(0).integers(0, 32, (5, 7, 3), dtype=np.uint8)
    packed = qfile.pack_codes(codes, 5)
    np.testing.assert_array_equal(packed, reference_pack(codes, 5))
    np.testing.assert_array_equal(qfile.unpack_codes(packed, 5, codes.shape), codes)


def test_pack_hand_worked_example():
    # codes 1, 2, 3 in 2 bits: stream bits (LSB first) 10 01 11 -> byte 0b00111001
    assert qfile.pack_codes(np.array([1, 2, 3], np.uint8), 2).tolist() == [0b00111001]
    # 3-bit codes 5, 6, 7: bits 101|011|111 (each LSB first) -> 0b11110101, 0b00000001
    assert qfile.pack_codes(np.array([5, 6, 7], np.uint8), 3).tolist() == [0b11110101, 0b1]


def test_pack_refuses_codes_too_wide_and_unpack_wrong_size():
    with pytest.raises(ValueError, match="does not fit in 3 bits"):
        qfile.pack_codes(np.array([0, 8], np.uint8), 3)
    with pytest.raises(ValueError, match="uint8"):
        qfile.pack_codes(np.array([0, 1], np.int32), 3)
    with pytest.raises(ValueError, match="bit width"):
        qfile.pack_codes(np.array([0], np.uint8), 0)
    with pytest.raises(ValueError, match="take 4 bytes"):
        qfile.unpack_codes(np.zeros(5, np.uint8), 3, (10,))


# --- round trips ---------------------------------------------------------------------------------

def test_float_squeezenet_round_trip_is_bit_exact_and_mapped(tmp_path):
    spec = architectures.get("squeezenet1_1-torchvision")
    net = Net.from_spec(spec, architectures.random_tensors(spec, seed=1))
    path = tmp_path / "sq.qcnn"
    size = qfile.save(path, net, META)
    assert size == os.path.getsize(path)
    net2, meta = qfile.load(path)
    assert meta == META
    assert_same_net(net, net2)
    w = net2.get("features.3.squeeze").weight
    assert not w.flags.writeable and not w.flags.owndata  # a view of the read-only map
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    assert net(x).tobytes() == net2(x).tobytes()


def test_small_float_net_round_trip_and_alignment(tmp_path):
    net = small_float_net()
    path = tmp_path / "small.qcnn"
    qfile.save(path, net)
    net2, meta = qfile.load(path)
    assert meta == {}
    assert_same_net(net, net2)
    n, header = raw_header(path)
    assert (8 + n) % 64 == 0
    meta_raw = header.pop("__metadata__")
    real = {k: e for k, e in header.items() if not k.startswith("__pad__")}
    assert set(real) == set(net.to_spec()[1])
    assert all(e["data_offsets"][0] % 64 == 0 for e in real.values())
    assert json.loads(meta_raw["spec"]) == net.to_spec()[0]
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    np.testing.assert_array_equal(net(x), net2(x))


def test_header_starts_with_fixed_magic_and_version(tmp_path):
    for i, net in enumerate([small_float_net(), Net([("r", ReLU("r"))])]):
        qfile.save(tmp_path / f"{i}.qcnn", net, META if i else None)
        head = (tmp_path / f"{i}.qcnn").read_bytes()[8:80]
        assert head.startswith(b'{"__metadata__":{"format":"qcnn","format_version":"1",'
                               b'"header_crc32":"')


@pytest.mark.parametrize("K", [2, 16, 100, 128, 256])
def test_quantized_round_trip_packs_codes(tmp_path, qimpl, K):
    spec = [qconv_spec("conv1", 3, 16, 3, 2, K, pad=1),
            {"type": "relu", "name": "relu1"},
            qconv_spec("conv2", 16, 12, 3, 3, K, groups=2, stride=2, dtype="float16"),
            {"type": "flatten", "name": "flat"},
            qlinear_spec("fc", 12 * 3 * 3, 7, 4, K)]
    tensors = quantized_tensors(spec, seed=K)
    net = Net.from_spec(spec, tensors)
    path = tmp_path / "q.qcnn"
    qfile.save(path, net, META)
    net2, meta = qfile.load(path)
    assert meta == META
    assert_same_net(net, net2)
    if qimpl == "qlayers":
        x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
        assert net(x).tobytes() == net2(x).tobytes()

    bits = math.ceil(math.log2(K))
    n, header = raw_header(path)
    header.pop("__metadata__")
    stored = {k: e["data_offsets"][1] - e["data_offsets"][0] for k, e in header.items()}
    logical = 0
    for name, a in tensors.items():
        if name.endswith(".codes"):
            assert header[name]["dtype"] == "U8" and header[name]["shape"] == [stored[name]]
            assert stored[name] == math.ceil(a.size * bits / 8)
            logical += math.ceil(a.size * bits / 8)
        else:
            assert stored[name] == a.nbytes
            logical += a.nbytes
    padding = sum(stored.values()) - logical
    assert 0 <= padding < 64 * len(tensors)
    assert os.path.getsize(path) == 8 + n + sum(stored.values())
    summary = qfile.file_summary(path)
    assert summary["file_bytes"] == os.path.getsize(path)
    assert summary["padding_bytes"] == padding
    assert summary["layers"]["fc"]["codes"] == math.ceil(tensors["fc.codes"].size * bits / 8)
    assert summary["layers"]["conv2"]["codebooks"] == tensors["conv2.codebooks"].nbytes
    assert summary["layers"]["conv1"]["bias"] == 16 * 4


def test_save_refuses_codes_not_below_K(tmp_path):
    spec = [qlinear_spec("fc", 8, 3, 4, 100)]
    tensors = quantized_tensors(spec)
    tensors["fc.codes"][0, 0] = 100
    net = Net([("fc", StubQuantized(spec[0], tensors))])
    with pytest.raises(ValueError, match="not below K = 100"):
        qfile.save(tmp_path / "x.qcnn", net)
    assert not (tmp_path / "x.qcnn").exists()


def test_load_refuses_codes_not_below_K(tmp_path, qimpl):
    spec = [qlinear_spec("fc", 8, 3, 4, 100)]
    tensors = quantized_tensors(spec)
    tensors["fc.codes"][1, 1] = 120  # fits 7 bits, but K = 100
    path = tmp_path / "x.qcnn"
    qfile.write_tensors(path, tensors, {"spec": spec}, bits={"fc.codes": 7})
    with pytest.raises(QFileError) as e:
        qfile.load(path)
    assert str(path) in str(e.value)
    if qimpl == "stub":  # real qlayers may refuse the codes first, in their own words
        assert "not below K = 100" in str(e.value)


def test_low_level_tensors_keep_dtypes_and_metadata(tmp_path):
    t = {"a": np.arange(5, dtype=np.int64), "b": np.ones((2, 3), np.float16),
         "c": np.array([True, False]), "d": np.zeros((0, 4), np.float32),
         "e": np.arange(9, dtype=np.uint8).reshape(3, 3)}
    path = tmp_path / "t.qcnn"
    qfile.write_tensors(path, t, {"x": [1, "two"]}, bits={"e": 4})
    out, meta = qfile.read_tensors(path)
    assert meta == {"x": [1, "two"]}
    assert list(out) == list(t)
    for k in t:
        assert out[k].dtype == t[k].dtype and out[k].shape == t[k].shape
        np.testing.assert_array_equal(out[k], t[k])


def test_writer_refuses_reserved_names_and_bad_metadata(tmp_path):
    path = tmp_path / "t.qcnn"
    with pytest.raises(ValueError, match="reserved"):
        qfile.write_tensors(path, {}, {"format": "x"})
    with pytest.raises(ValueError, match="not allowed"):
        qfile.write_tensors(path, {"__pad__1": np.zeros(2)})
    with pytest.raises(ValueError, match="JSON"):
        qfile.write_tensors(path, {}, {"x": float("nan")})
    with pytest.raises(ValueError, match="reserved"):
        qfile.save(path, small_float_net(), {"spec": []})
    assert not path.exists()


def test_overwrite_while_loaded_keeps_old_net_valid(tmp_path):
    path = tmp_path / "m.qcnn"
    net = small_float_net()
    qfile.save(path, net)
    old, _ = qfile.load(path)
    qfile.save(path, Net([("r", ReLU("r"))]))  # os.replace: the old mapping keeps its inode
    assert_same_net(net, old)
    assert len(qfile.load(path)[0]) == 1


def _mapped_rss_kb(path) -> int | None:
    """Resident KiB of this process's mappings of `path` (Linux /proc/self/smaps), else None."""
    try:
        lines = open("/proc/self/smaps").read().splitlines()
    except OSError:
        return None
    rss, inside = 0, False
    for line in lines:
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
            inside = len(fields) >= 6 and fields[5] == str(path)
        elif inside and fields[0] == "Rss:":
            rss += int(fields[1])
    return rss


def test_loading_leaves_packed_codes_and_the_checksum_pass_out_of_the_mapping(tmp_path):
    """Only tensors used in place stay mapped: the CRC pass reads through the page cache and the
    packed codes are read and unpacked, so a loaded net does not keep the file resident."""
    spec = [qlinear_spec("fc", 1024, 8192, 4, 32)]  # 2M codes: 1.25 MiB packed at 5 bits
    path = tmp_path / "big.qcnn"
    saved = Net.from_spec(spec, quantized_tensors(spec))
    size = qfile.save(path, saved)
    net, _ = qfile.load(path)
    rss = _mapped_rss_kb(path)
    if rss is None:
        pytest.skip("no /proc/self/smaps on this system")
    # resident: codebooks (128 KiB) + bias (32 KiB) + the kernel's fault-around pages
    assert rss * 1024 < 0.4 * size, f"{rss} KiB of the {size // 1024} KiB file are resident"
    assert_same_net(saved, net)
    x = np.random.default_rng(0).standard_normal((1, 1024)).astype(np.float32)
    assert net(x).tobytes() == saved(x).tobytes()


# --- safetensors compatibility -------------------------------------------------------------------

def test_safetensors_library_reads_the_file(tmp_path, qimpl):
    st = pytest.importorskip("safetensors.numpy")
    from safetensors import safe_open

    spec = [qconv_spec("conv1", 3, 8, 3, 2, 16, pad=1), {"type": "relu", "name": "r"},
            {"type": "flatten", "name": "f"}, qlinear_spec("fc", 8 * 4 * 4, 5, 4, 100)]
    tensors = quantized_tensors(spec)
    path = tmp_path / "q.qcnn"
    qfile.save(path, Net.from_spec(spec, tensors), META)
    loaded = st.load_file(str(path))
    for name, a in tensors.items():
        if name.endswith(".codes"):
            bits = math.ceil(math.log2(spec[0]["K"] if name.startswith("conv1") else 100))
            np.testing.assert_array_equal(loaded[name], reference_pack(a, bits))
        else:
            np.testing.assert_array_equal(loaded[name], a)
    assert {k for k in loaded if not k.startswith("__pad__")} == set(tensors)
    with safe_open(str(path), framework="numpy") as f:
        md = f.metadata()
    assert md["format"] == "qcnn" and md["format_version"] == "1"
    assert json.loads(md["preprocessing"]) == META["preprocessing"]
    assert json.loads(md["packed"])["fc.codes"] == {"shape": [5, 32], "bits": 7}


# --- refusals ------------------------------------------------------------------------------------

@pytest.fixture
def good_file(tmp_path):
    path = tmp_path / "good.qcnn"
    qfile.save(path, small_float_net(), META)
    return path


def refused(path, match=None):
    with pytest.raises(QFileError) as e:
        qfile.load(path)
    assert str(path) in str(e.value)
    if match:
        assert match in str(e.value), str(e.value)
    return str(e.value)


def test_truncated_files_are_refused(good_file, tmp_path):
    data = good_file.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    for cut in [0, 3, 8, 9, 8 + n // 2, 8 + n - 1, 8 + n, 8 + n + 1, len(data) // 2, len(data) - 1]:
        bad = tmp_path / f"cut{cut}.qcnn"
        bad.write_bytes(data[:cut])
        msg = refused(bad)
        assert "qcnn quantize" in msg or "truncated" in msg
    longer = tmp_path / "longer.qcnn"
    longer.write_bytes(data + b"\0")
    refused(longer, "extra bytes")


def test_every_flipped_header_byte_is_refused(tmp_path):
    net = Net([("fc", Linear(np.ones((2, 3)), np.zeros(2), name="fc")), ("r", ReLU("r"))])
    qfile.save(tmp_path / "small.qcnn", net, {"labels": "imagenet-1k"})
    data = bytearray((tmp_path / "small.qcnn").read_bytes())
    n = struct.unpack("<Q", data[:8])[0]
    bad = tmp_path / "flip.qcnn"
    for i in range(8 + n):
        for mask in (0x01, 0x20):
            flipped = bytearray(data)
            flipped[i] ^= mask
            bad.write_bytes(flipped)
            with pytest.raises(QFileError) as e:
                qfile.load(bad, verify=False)
            assert str(bad) in str(e.value), (i, mask)


def test_flipped_data_byte_is_refused_when_verifying(good_file):
    data = bytearray(good_file.read_bytes())
    data[-3] ^= 0x10
    good_file.write_bytes(data)
    refused(good_file, "data checksum mismatch")


def craft(path, entries, data, version="1", extra_meta=None):
    """A file with a correctly sealed header (valid CRC) around arbitrary entries."""
    meta = {"format": "qcnn", "format_version": version, "header_crc32": "00000000",
            "data_crc32": "00000000", "packed": "{}", **(extra_meta or {})}
    header = qfile._seal_header(meta, entries)
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


def entry(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def test_inconsistent_tensor_tables_are_refused(tmp_path):
    cases = {
        "needs 16": {"a": entry("F32", [2, 2], 0, 12), "b": entry("U8", [4], 12, 16)},
        "overlap": {"a": entry("F32", [2, 2], 0, 16), "b": entry("U8", [4], 12, 16)},
        "truncated": {"a": entry("F32", [2, 2], 0, 16), "b": entry("U8", [8], 16, 24)},
        "unaccounted bytes": {"a": entry("F32", [2], 0, 8), "b": entry("U8", [4], 12, 16)},
        "not supported": {"a": entry("BF16", [8], 0, 16)},
        "not [begin, end]": {"a": entry("F32", [4], 16, 0)},
        "not a list of sizes": {"a": entry("F32", [-4], 0, 16)},
    }
    for match, entries in cases.items():
        refused(craft(tmp_path / "c.qcnn", entries, bytes(16)), match)


def test_inconsistent_packed_entries_are_refused(tmp_path):
    entries = {"fc.codes": entry("U8", [3], 0, 3)}
    packed = {"fc.codes": {"shape": [5], "bits": 4}}  # 5 codes of 4 bits need 3 bytes: fine
    ok = craft(tmp_path / "ok.qcnn", entries, bytes(3), extra_meta={"packed": json.dumps(packed)})
    assert qfile.read_tensors(ok, verify=False)[0]["fc.codes"].tolist() == [0] * 5
    for bad_info, match in [({"shape": [7], "bits": 4}, "need 4"),
                            ({"shape": [5], "bits": 9}, "bad"),
                            ({"shape": [5], "bits": 4, "of": "x"}, None)]:
        meta = {"packed": json.dumps({"fc.codes": bad_info})}
        path = craft(tmp_path / "p.qcnn", entries, bytes(3), extra_meta=meta)
        if match is None:  # unknown extra fields are tolerated
            qfile.read_tensors(path, verify=False)
            continue
        with pytest.raises(QFileError, match=match):
            qfile.read_tensors(path, verify=False)


def test_wrong_version_is_refused(tmp_path):
    refused(craft(tmp_path / "v2.qcnn", {}, b"", version="2"), "upgrade qcnn")
    refused(craft(tmp_path / "v0.qcnn", {}, b"", version="0"), "not supported")


def test_wrong_shapes_for_the_spec_are_refused(tmp_path):
    spec, tensors = small_float_net().to_spec()
    tensors["fc.weight"] = tensors["fc.weight"][:, :-1]
    path = tmp_path / "shape.qcnn"
    qfile.write_tensors(path, tensors, {"spec": spec})
    refused(path, "'fc.weight' has shape (5, 39), expected (5, 40)")
    qfile.write_tensors(path, tensors, {"nospec": 1})
    refused(path, "'spec'")


def test_foreign_files_are_refused(tmp_path):
    plain = tmp_path / "plain.safetensors"
    header = json.dumps({"w": entry("F32", [1], 0, 4)}).encode()
    plain.write_bytes(struct.pack("<Q", len(header)) + header + bytes(4))
    refused(plain, "not a qcnn model file")
    other = tmp_path / "other.safetensors"
    header = json.dumps({"__metadata__": {"format": "pt"}, "w": entry("F32", [1], 0, 4)}).encode()
    other.write_bytes(struct.pack("<Q", len(header)) + header + bytes(4))
    refused(other, "'pt'")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(struct.pack("<Q", 6) + b"\xff\xfe{}[]" + bytes(10))
    refused(junk, "not JSON")
    huge = tmp_path / "huge.bin"
    huge.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    refused(huge, "header length")
    refused(tmp_path / "missing.qcnn", "cannot read")


def test_safetensors_library_file_is_refused(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    path = tmp_path / "lib.safetensors"
    st.save_file({"w": np.ones(3, np.float32)}, str(path), metadata={"format": "np"})
    refused(path, "not a qcnn model file")


def test_reference_weights_file_is_refused(shared_data):
    refused(shared_data / "squeezenet1.1" / "squeezenet1_1.safetensors", "not a qcnn model file")


# --- atomic writes -------------------------------------------------------------------------------

def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    path = tmp_path / "m.qcnn"
    calls = []

    def failing_write(f, array):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # interrupted mid-write
        f.write(np.ascontiguousarray(array).reshape(-1).view(np.uint8))

    monkeypatch.setattr(qfile, "_write_buffer", failing_write)
    with pytest.raises(KeyboardInterrupt):
        qfile.save(path, small_float_net(), META)
    assert len(calls) == 3
    assert list(tmp_path.iterdir()) == []


def test_failed_save_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "m.qcnn"
    qfile.save(path, Net([("r", ReLU("r"))]))
    before = path.read_bytes()

    def no_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(qfile.os, "fsync", no_fsync)
    with pytest.raises(OSError, match="No space"):
        qfile.save(path, small_float_net())
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.qcnn"]
