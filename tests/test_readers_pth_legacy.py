"""Legacy (pre-1.6, non-zip) PyTorch files, built here opcode by opcode without torch.

The layout is torch.serialization's legacy save: pickles of the magic number, the protocol
version 1001 and a sys_info dict, the object pickle (persistent ids
``("storage", type, key, location, numel, view_metadata)``), the pickled list of storage keys,
then per key an int64 element count and the raw elements. The object pickles are written the
ways torch wrote tensors over the years: ``_rebuild_tensor_v2`` (torch >= 0.4), the 2017
``_rebuild_tensor`` with a ``torch.Size``, and ``torch.FloatTensor()`` + ``BUILD`` (torch < 0.4);
Python 2 strings; storage views. When torch is installed, `test_against_real_torch` checks both
the reader on torch.save's output and these hand-built files with torch.load.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import tarfile
from collections import OrderedDict

import numpy as np
import pytest

from qcnn import architectures
from qcnn.net import Net
from qcnn.readers import pth

RNG = np.random.default_rng(2017)
MAGIC, PROTOCOL = 0x1950A86A20F9469CFC6C, 1001
SYS_INFO = {"protocol_version": 1001, "little_endian": True,
            "type_sizes": {"short": 2, "int": 4, "long": 8}}


# ------------------------------------------------------------------ a pickle opcode writer
class G:
    """A global (``GLOBAL module name``), memoized like pickle does (BINPUT, then BINGET)."""

    def __init__(self, module, name):
        self.module, self.name = module, name


class Call:
    """``func(*args)``: func, args tuple, REDUCE."""

    def __init__(self, func, args):
        self.func, self.args = func, tuple(args)


class New:
    """``cls.__new__(cls, *args)``: cls, args tuple, NEWOBJ."""

    def __init__(self, cls, args=()):
        self.cls, self.args = cls, tuple(args)


class Build:
    """``obj`` then ``state``, BUILD (``obj.__setstate__(state)``)."""

    def __init__(self, obj, state):
        self.obj, self.state = obj, state


class Pid:
    """A persistent id: the tuple, then BINPERSID."""

    def __init__(self, pid):
        self.pid = tuple(pid)


class Py2Str(str):
    """A Python 2 ``str``: SHORT_BINSTRING rather than BINUNICODE."""


class Emitter:
    """Writes protocol-2 opcodes for the small object model above; independent of the reader."""

    def __init__(self):
        self.out, self.memo = bytearray(b"\x80\x02"), {}

    def emit(self, o):
        if isinstance(o, G):
            key = (o.module, o.name)
            if key in self.memo:
                self.out += b"h" + bytes([self.memo[key]])
            else:
                self.out += b"c" + f"{o.module}\n{o.name}\n".encode()
                self.memo[key] = len(self.memo)
                self.out += b"q" + bytes([self.memo[key]])
        elif isinstance(o, Call):
            self.emit(o.func)
            self.emit(o.args)
            self.out += b"R"
        elif isinstance(o, New):
            self.emit(o.cls)
            self.emit(o.args)
            self.out += b"\x81"
        elif isinstance(o, Build):
            self.emit(o.obj)
            self.emit(o.state)
            self.out += b"b"
        elif isinstance(o, Pid):
            self.emit(o.pid)
            self.out += b"Q"
        elif o is None:
            self.out += b"N"
        elif isinstance(o, bool):
            self.out += b"\x88" if o else b"\x89"
        elif isinstance(o, int):
            if 0 <= o < 256:
                self.out += b"K" + bytes([o])
            elif -(2 ** 31) <= o < 2 ** 31:
                self.out += b"J" + struct.pack("<i", o)
            else:
                b = o.to_bytes(16, "little", signed=True)
                self.out += b"\x8a" + bytes([len(b)]) + b
        elif isinstance(o, float):
            self.out += b"G" + struct.pack(">d", o)
        elif isinstance(o, Py2Str):
            b = o.encode("ascii")
            self.out += b"U" + bytes([len(b)]) + b
        elif isinstance(o, str):
            b = o.encode()
            self.out += b"X" + struct.pack("<I", len(b)) + b
        elif isinstance(o, tuple):
            self.out += b"("
            for v in o:
                self.emit(v)
            self.out += b"t"
        elif isinstance(o, list):
            self.out += b"]("
            for v in o:
                self.emit(v)
            self.out += b"e"
        elif isinstance(o, OrderedDict):  # as Python 3 pickles it: OrderedDict(), then SETITEMS
            self.emit(Call(G("collections", "OrderedDict"), ()))
            self._items(o)
        elif isinstance(o, dict):
            self.out += b"}"
            self._items(o)
        else:
            raise TypeError(f"cannot emit {type(o)}")
        return self

    def _items(self, d):
        self.out += b"("
        for k, v in d.items():
            self.emit(k)
            self.emit(v)
        self.out += b"u"

    def done(self) -> bytes:
        return bytes(self.out + b".")


def storage(stype, key, numel, view=None, module="torch"):
    return Pid(("storage", G(module, stype), key, "cpu", numel, view))


def tensor_v2(pid, offset, size, stride):
    """torch >= 0.4: _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)."""
    return Call(G("torch._utils", "_rebuild_tensor_v2"),
                (pid, offset, tuple(size), tuple(stride), False, OrderedDict()))


def tensor_v1(pid, offset, size, stride):
    """2017: _rebuild_tensor(storage, offset, torch.Size(size), stride)."""
    return Call(G("torch._utils", "_rebuild_tensor"),
                (pid, offset, Call(G("torch", "Size"), (tuple(size),)), tuple(stride)))


def tensor_build(cls, pid, offset, size, stride, newobj=False, module="torch"):
    """torch < 0.4: torch.FloatTensor() (REDUCE or NEWOBJ), then BUILD (storage, offset, ...)."""
    obj = New(G(module, cls)) if newobj else Call(G(module, cls), ())
    return Build(obj, (pid, offset, tuple(size), tuple(stride)))


def legacy_bytes(obj, records, keys=None, sys_info=SYS_INFO, magic=MAGIC, protocol=PROTOCOL,
                 count_order="<") -> bytes:
    """The whole file: records is a list of (key, array); keys defaults to their order."""
    head = b"".join(pickle.dumps(x, protocol=2) for x in (magic, protocol, sys_info))
    obj_pkl = obj if isinstance(obj, bytes) else Emitter().emit(obj).done()
    keys = [k for k, _ in records] if keys is None else keys
    data = b"".join(struct.pack(count_order + "q", a.size) + a.tobytes() for _, a in records)
    return head + obj_pkl + pickle.dumps(keys, protocol=2) + data


def write(tmp_path, name, data: bytes):
    p = tmp_path / name
    p.write_bytes(data)
    return p


# ------------------------------------------------------------------ reading
@pytest.mark.parametrize("shift", range(8))
def test_state_dict_like_torch_2(tmp_path, shift):
    """_rebuild_tensor_v2 pickles (what torch >= 0.4 writes), shared and non-contiguous views;
    `shift` pads sys_info so that the records start at every alignment (memory-mapped when
    aligned, read into an aligned buffer when not)."""
    conv = RNG.standard_normal((8, 3, 3, 3), np.float32)
    fc = RNG.standard_normal((5, 7), np.float32)
    shared = np.concatenate([conv.ravel(), fc.ravel()])
    half = RNG.standard_normal(6).astype(np.float16)
    dbl = RNG.standard_normal((2, 3))
    bf_bits = (RNG.standard_normal(4).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    n = shared.size
    sd = OrderedDict([
        ("features.0.weight", tensor_v2(storage("FloatStorage", "140001", n), 0, conv.shape,
                                        (27, 9, 3, 1))),
        ("classifier.weight", Call(G("torch._utils", "_rebuild_parameter"), (
            tensor_v2(storage("FloatStorage", "140001", n), conv.size, (5, 7), (7, 1)),
            True, OrderedDict()))),
        ("classifier.weight_t", tensor_v2(storage("FloatStorage", "140001", n), conv.size,
                                          (7, 5), (1, 7))),
        ("half", tensor_v2(storage("HalfStorage", "140002", 6), 0, (6,), (1,))),
        ("double", tensor_v2(storage("DoubleStorage", "140003", 6), 0, (2, 3), (3, 1))),
        ("bf16", tensor_v2(storage("BFloat16Storage", "140004", 4), 0, (4,), (1,))),
        ("scalar", tensor_v2(storage("FloatStorage", "140005", 1), 0, (), ())),
        ("empty", tensor_v2(storage("FloatStorage", "140006", 0), 0, (0, 3), (3, 1))),
        ("bn.num_batches_tracked", tensor_v2(storage("LongStorage", "140007", 1), 0, (), ())),
    ])
    # a sorted key list, like torch.save; records of odd sizes leave later ones misaligned
    records = [("140001", shared), ("140002", half), ("140003", dbl), ("140004", bf_bits),
               ("140005", np.array([2.5], np.float32)), ("140006", np.zeros(0, np.float32)),
               ("140007", np.array([17], np.int64))]
    sys_info = dict(SYS_INFO, pad="x" * shift)
    w = pth.read(write(tmp_path, "m.pth", legacy_bytes(sd, records, sys_info=sys_info)))
    assert w.format == "pth"
    np.testing.assert_array_equal(w.tensors["features.0.weight"], conv)
    np.testing.assert_array_equal(w.tensors["classifier.weight"], fc)
    np.testing.assert_array_equal(w.tensors["classifier.weight_t"], fc.T)
    np.testing.assert_array_equal(w.tensors["half"], half.astype(np.float32))
    np.testing.assert_array_equal(w.tensors["double"], dbl.astype(np.float32))
    np.testing.assert_array_equal(w.tensors["bf16"],
                                  (bf_bits.astype(np.uint32) << 16).view(np.float32))
    assert w.tensors["scalar"].shape == () and float(w.tensors["scalar"]) == 2.5
    assert w.tensors["empty"].shape == (0, 3)
    assert int(w.other["bn.num_batches_tracked"]) == 17
    assert w.other["bn.num_batches_tracked"].dtype == np.int64
    for v in w.tensors.values():
        assert v.dtype == np.float32 and v.flags.c_contiguous and v.flags.aligned


def test_2017_pickles_python2_and_storage_views(tmp_path):
    """What torchvision's 2017 files may hold: Python 2 strings, an OrderedDict of [key, value]
    pairs, _rebuild_tensor with torch.Size, torch.FloatTensor built from a state (REDUCE and
    NEWOBJ), torch.cuda storages, and storage views (view_metadata) with offsets into them."""
    root = RNG.standard_normal(40).astype(np.float32)
    # view "91" = root[2:20], the weight starts 2 into it; view "92" = root[20:40], the bias
    # takes every other element from 1 into it
    longs = np.arange(-3, 3, dtype=np.int64)
    s = Py2Str
    pairs = [
        [s("features.0.weight"), tensor_v1(storage(s("FloatStorage"), s("77"), 40,
                                                   (s("91"), 2, 18)), 2, (3, 4), (4, 1))],
        [s("features.0.bias"), tensor_build("FloatTensor", storage(
            s("FloatStorage"), s("77"), 40, (s("92"), 20, 20), module="torch.cuda"),
            1, (5,), (2,), module="torch.cuda")],
        [s("classifier.1.weight"), tensor_build("FloatTensor", storage(
            s("FloatStorage"), s("77"), 40), 0, (40,), (1,), newobj=True)],
        [s("idx"), tensor_build("LongTensor", storage(s("LongStorage"), s("78"), 6), 0, (2, 3),
                                (3, 1))],
    ]
    obj = Call(G("collections", "OrderedDict"), ([*pairs],))
    p = write(tmp_path, "vgg2017.pth", legacy_bytes(obj, [("77", root), ("78", longs)]))
    w = pth.read(p)
    assert list(w.tensors) == ["features.0.weight", "features.0.bias", "classifier.1.weight"]
    np.testing.assert_array_equal(w.tensors["features.0.weight"], root[4:16].reshape(3, 4))
    np.testing.assert_array_equal(w.tensors["features.0.bias"], root[21:31:2])
    np.testing.assert_array_equal(w.tensors["classifier.1.weight"], root)
    np.testing.assert_array_equal(w.other["idx"], longs.reshape(2, 3))


def test_big_endian_records_follow_sys_info(tmp_path):
    """torch < 0.4 wrote counts and data in the machine's byte order, recorded in sys_info."""
    a = RNG.standard_normal((3, 4), np.float32)
    sd = OrderedDict(w=tensor_v2(storage("FloatStorage", "1", 12), 0, (3, 4), (4, 1)))
    be = dict(SYS_INFO, little_endian=False)
    data = legacy_bytes(sd, [("1", a.astype(">f4"))], sys_info=be, count_order=">")
    np.testing.assert_array_equal(pth.read(write(tmp_path, "be.pth", data)).tensors["w"], a)
    # the same records in a file that claims little-endian: the count gives it away
    data = legacy_bytes(sd, [("1", a.astype(">f4"))], count_order=">")
    with pytest.raises(ValueError, match=r"le.pth.*record of storage 1 .*holds \d+ elements, "
                                         r"the pickle says 12"):
        pth.read(write(tmp_path, "le.pth", data))


def test_shared_squeezenet_as_a_2017_legacy_file(tmp_path, shared_data):
    """The real SqueezeNet 1.1 weights, written as a 2017-style legacy file, read back equal and
    run through the float net to the shared test vectors."""
    from qcnn import readers

    want = readers.read(shared_data / "squeezenet1.1" / "squeezenet1_1.safetensors").tensors
    sd, records = [], []
    for i, (name, a) in enumerate(want.items()):
        key = str(94000 + i)
        stride = tuple(int(np.prod(a.shape[d + 1:])) for d in range(a.ndim))
        sd.append([Py2Str(name), tensor_v1(storage("FloatStorage", key, a.size), 0, a.shape,
                                           stride)])
        records.append((key, a))
    p = write(tmp_path, "squeezenet1_1-legacy.pth",
              legacy_bytes(Call(G("collections", "OrderedDict"), ([*sd],)), records))
    got = pth.read(p).tensors
    assert list(got) == list(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    net = Net.from_spec(architectures.get("squeezenet1_1-torchvision")[:-1], got)
    d = shared_data / "squeezenet1.1" / "test_vectors" / "0"
    out = np.load(d / "output_0.npy")
    np.testing.assert_allclose(net(np.load(d / "input_0.npy")), out, rtol=1e-5,
                               atol=1e-5 * np.abs(out).max())


# ------------------------------------------------------------------ refusals
def test_refuses_code_without_running_it(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    a = np.ones(1, np.float32)
    good = OrderedDict(w=tensor_v2(storage("FloatStorage", "1", 1), 0, (1,), (1,)))
    cases = {
        "object": dict(obj=pickle.dumps(OrderedDict(w=Evil()), protocol=2), records=[]),
        "sysinfo": dict(obj=good, records=[("1", a)], sys_info={"x": Evil()}),
        "keys": dict(obj=good, records=[("1", a)], keys=["1", Evil()]),
        "magic": dict(obj=good, records=[("1", a)], magic=Evil()),
    }
    for name, kw in cases.items():
        p = write(tmp_path, f"evil_{name}.pth", legacy_bytes(**kw))
        with pytest.raises(ValueError, match=rf"evil_{name}.pth: its pickle tried to import "
                                             r"(posix|os|nt)\.system.*refused"):
            pth.read(p)
    # builtins.eval after a real tensor, and a whole pickled nn.Module
    after = OrderedDict(w=tensor_v2(storage("FloatStorage", "1", 1), 0, (1,), (1,)),
                        x=Call(G("builtins", "eval"), (f"open({str(marker)!r}, 'w')",)))
    with pytest.raises(ValueError, match=r"builtins\.eval.*refused"):
        pth.read(write(tmp_path, "eval.pth", legacy_bytes(after, [("1", a)])))
    module = Build(New(G("torch.nn.modules.linear", "Linear")), {"training": True})
    with pytest.raises(ValueError, match=r"torch\.nn\.modules\.linear\.Linear.*state_dict"):
        pth.read(write(tmp_path, "module.pth", legacy_bytes(module, [])))
    assert not marker.exists()


def test_tar_format_is_refused_with_the_conversion(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in ("sys_info", "pickle", "storages", "tensors"):
            info = tarfile.TarInfo(name)
            info.size = 4
            tar.addfile(info, io.BytesIO(pickle.dumps(1, protocol=2)[:4]))
    p = write(tmp_path, "vgg19-341d7465.pth", buf.getvalue())
    with pytest.raises(ValueError, match=r"vgg19-341d7465.pth is a PyTorch file in the tar "
                                         r"format.*weights_only=False.*converted.pth"):
        pth.read(p)


def _one_tensor(numel=4, size=(4,), stride=(1,), offset=0, view=None, stype="FloatStorage"):
    return OrderedDict(w=tensor_v2(storage(stype, "5", numel, view), offset, size, stride))


F4 = np.arange(4, dtype=np.float32)


@pytest.mark.parametrize("case, data, match", [
    ("truncated-count", legacy_bytes(_one_tensor(), [("5", F4)])[:-18],
     r"ends at byte \d+, before the data of storage 5 \(record 1 of 1\)"),
    ("truncated-data", legacy_bytes(_one_tensor(), [("5", F4)])[:-2],
     r"ends at byte \d+, inside the data of storage 5 \(record 1 of 1\), which ends at byte"),
    ("count", legacy_bytes(_one_tensor(), [("5", np.arange(5, dtype=np.float32))]),
     r"record of storage 5 .*holds 5 elements, the pickle says 4"),
    ("unused-key", legacy_bytes(_one_tensor(), [("5", F4), ("6", F4)]),
     r"lists storage 6 that no tensor uses"),
    ("twice", legacy_bytes(_one_tensor(), [("5", F4), ("5", F4)]), r"lists storage 5 twice"),
    ("no-record", legacy_bytes(_one_tensor(), [], keys=[]),
     r"storage 5 is used by a tensor but has no data record"),
    ("magic", legacy_bytes(_one_tensor(), [("5", F4)], magic=1234),
     r"starts with a pickle of 1234, not torch.save's magic number"),
    ("protocol", legacy_bytes(_one_tensor(), [("5", F4)], protocol=1000),
     r"protocol version 1000, expected 1001"),
    ("oob", legacy_bytes(_one_tensor(size=(2, 2), stride=(2, 1), offset=1), [("5", F4)]),
     r"reaches element 4 of data/5, which holds 4"),
    ("view", legacy_bytes(_one_tensor(view=("9", 2, 3)), [("5", F4)]),
     r"view of 3 elements at offset 2 overruns storage 5 of 4"),
    ("view-oob", legacy_bytes(_one_tensor(view=("9", 1, 2)), [("5", F4)]),
     r"reaches element 3 of data/9, which holds 2"),
    ("two-types", legacy_bytes(OrderedDict(
        a=tensor_v2(storage("FloatStorage", "5", 4), 0, (4,), (1,)),
        b=tensor_v2(storage("IntStorage", "5", 4), 0, (4,), (1,))), [("5", F4)]),
     r"storage 5 is named both as 4 x f4 and as 4 x i4"),
    ("tensor-type", legacy_bytes(OrderedDict(a=tensor_build(
        "DoubleTensor", storage("FloatStorage", "5", 4), 0, (4,), (1,))), [("5", F4)]),
     r"torch.DoubleTensor views storage 5 of element type f4"),
    ("no-state", legacy_bytes(OrderedDict(a=Call(G("torch", "FloatTensor"), ())), []),
     r"torch.FloatTensor was unpickled without its data"),
    ("zip-pid", legacy_bytes(OrderedDict(a=tensor_v2(Pid(
        ("storage", G("torch", "FloatStorage"), "5", "cpu", 4)), 0, (4,), (1,))), [("5", F4)]),
     r"unexpected persistent id"),
    ("sys_info", legacy_bytes(_one_tensor(), [("5", F4)], sys_info=[1]),
     r"sys_info is a list, not a dict"),
])
def test_corrupt_files_name_the_problem(tmp_path, case, data, match):
    p = write(tmp_path, f"{case}.pth", data)
    with pytest.raises(ValueError, match=rf"{case}.pth is not a valid legacy \(pre-1.6\) "
                                         rf"PyTorch file \(.*{match}.*download it again"):
        pth.read(p)


def test_cut_after_the_magic_number(tmp_path):
    p = write(tmp_path, "old.pth", pickle.dumps(MAGIC, protocol=2) + b"rest")
    with pytest.raises(ValueError, match=r"old.pth: its legacy \(pre-1.6\) torch.save pickles "
                                         r"could not be unpickled.*corrupt"):
        pth.read(p)


# ------------------------------------------------------------------ real torch, when installed
def test_against_real_torch(tmp_path):
    """torch.save(..., _use_new_zipfile_serialization=False) read here, and the files built
    above read by torch.load, when torch happens to be installed (it is not a dependency)."""
    torch = pytest.importorskip("torch")
    base = torch.randn(8, 6)
    a = torch.randn(100)
    sd = OrderedDict(conv=torch.randn(4, 3, 3, 3), fc=torch.randn(6, 5).t(),
                     part=a[37:], half=torch.randn(3).half(), bf=torch.randn(3).bfloat16(),
                     sl=base[::2, 1::3], n=torch.tensor(5))
    for protocol in (2, 4):
        p = tmp_path / f"real{protocol}.pth"
        torch.save({"epoch": 1, "state_dict": sd}, p, pickle_protocol=protocol,
                   _use_new_zipfile_serialization=False)
        w = pth.read(p)
        for k in ("conv", "fc", "part", "half", "bf", "sl"):
            np.testing.assert_array_equal(w.tensors[k], sd[k].float().numpy())
        assert int(w.other["n"]) == 5
    # the opcode writer above against torch's own legacy loader
    x = RNG.standard_normal(40).astype(np.float32)
    obj = OrderedDict(
        v2=tensor_v2(storage("FloatStorage", "1", 40), 3, (2, 5), (1, 2)),
        v1=tensor_v1(storage("FloatStorage", "1", 40, ("2", 10, 20)), 1, (4,), (3,)),
        built=tensor_build("FloatTensor", storage("FloatStorage", "1", 40), 0, (40,), (1,)))
    p = write(tmp_path, "hand.pth", legacy_bytes(obj, [("1", x)]))
    ours, theirs = pth.read(p).tensors, torch.load(p, weights_only=True)
    for k in obj:
        np.testing.assert_array_equal(ours[k], theirs[k].numpy())
