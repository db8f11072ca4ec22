"""Tests of qcnn.quantizer (and qcnn.kmeans): small nets, seconds each."""

import json
import warnings

import numpy as np
import pytest

from qcnn import architectures
from qcnn.kmeans import product_kmeans
from qcnn.layers import Conv2d, Flatten, Linear, MaxPool2d, ReLU
from qcnn.net import Concat, Net
from qcnn.qlayers import QConv2d, QLinear
from qcnn.quantizer import (
    FewSamplesWarning,
    LayerSettings,
    _split,
    _sweep_chunk_p1,
    _sweep_subspaces,
    default_settings,
    quantize,
)


def rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


def toy_net(rng, c_in=5):
    """conv (d does not divide C) -> grouped conv -> linear."""
    return Net([
        ("c1", Conv2d(rng.standard_normal((12, c_in, 3, 3)) * 0.3, rng.standard_normal(12) * 0.1,
                      padding=1, name="c1")),
        ("r1", ReLU("r1")),
        ("c2", Conv2d(rng.standard_normal((16, 6, 3, 3)) * 0.2, rng.standard_normal(16) * 0.1,
                      stride=2, padding=1, groups=2, name="c2")),
        ("r2", ReLU("r2")),
        ("f", Flatten("f")),
        ("fc", Linear(rng.standard_normal((10, 16 * 4 * 4)) * 0.05, rng.standard_normal(10) * 0.1,
                      name="fc")),
    ])


TOY = {"c1": LayerSettings(2, 8), "c2": LayerSettings(4, 8), "fc": LayerSettings(4, 8)}


def test_kmeans_exact_and_deterministic():
    rng = np.random.default_rng(0)
    x = rng.integers(-2, 3, (3, 400, 2)).astype(np.float32)  # 25 distinct vectors per subspace
    cb, codes = product_kmeans(x, 32, seed=5)
    rebuilt = np.take_along_axis(cb, codes.astype(np.intp)[..., None].repeat(2, -1), axis=1)
    assert np.array_equal(rebuilt, x)
    cb2, codes2 = product_kmeans(x, 32, seed=5)
    assert np.array_equal(cb, cb2) and np.array_equal(codes, codes2)


def test_kmeans_rejects_bad_k():
    with pytest.raises(ValueError, match="1..256"):
        product_kmeans(np.zeros((1, 4, 2)), 300)


def test_exact_when_codebook_holds_every_subvector():
    # weights take values in {-1, 0, 1}: 9 distinct 2-d subvectors (K=16), 27 distinct 3-d ones
    # (K=32); C_g = 5 is not a multiple of d, groups = 2
    rng = np.random.default_rng(1)
    conv = Conv2d(rng.integers(-1, 2, (8, 5, 3, 3)), rng.standard_normal(8), padding=1, groups=2,
                  name="conv")
    fc = Linear(rng.integers(-1, 2, (6, 8 * 6 * 6)), rng.standard_normal(6), name="fc")
    net = Net([("conv", conv), ("relu", ReLU("relu")), ("f", Flatten("f")), ("fc", fc)])
    x = rng.standard_normal((6, 10, 6, 6)).astype(np.float32)
    st = {"conv": LayerSettings(2, 16), "fc": LayerSettings(3, 32)}
    qnet, report = quantize(net, x, st, progress=False)
    assert isinstance(qnet.get("conv"), QConv2d) and isinstance(qnet.get("fc"), QLinear)
    assert np.allclose(qnet.get("conv").weight(), conv.weight, atol=1e-5)
    assert np.allclose(qnet.get("fc").weight(), fc.weight, atol=1e-5)
    assert rel(net(x), qnet(x)) < 1e-5
    assert report["conv"].error_final < 1e-5 and report["fc"].error_final < 1e-5


def test_error_correction_never_increases_layer_error():
    # every output position sampled, so the report's errors are the layer's whole response errors
    # on the fit and on the held-out images
    rng = np.random.default_rng(2)
    net = toy_net(rng)
    x = rng.standard_normal((10, 5, 8, 8)).astype(np.float32)
    samples = 10 * 8 * 8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FewSamplesWarning)
        q_ec, r_ec = quantize(net, x, TOY, samples=samples, progress=False)
        q_km, r_km = quantize(net, x, TOY, samples=samples, error_correction=False,
                              progress=False)
    for name in TOY:
        assert r_ec[name].error_final <= r_ec[name].error_kmeans
        assert r_ec[name].error_heldout <= r_ec[name].error_heldout_kmeans
        assert r_km[name].error_final == r_km[name].error_kmeans
        assert r_ec[name].heldout == 2 * (64 if name == "c1" else 16 if name == "c2" else 1)
    assert all(r_ec[name].sweeps_run > 0 for name in TOY)
    # first layer: same input for both, so its measured response error is directly comparable
    ho = _split(len(x), 0.2, 0)
    assert ho.sum() == 2
    first = Net(net.layers[:1])
    for part, key_ec, key_km in ((~ho, "error_final", "error_kmeans"),
                                 (ho, "error_heldout", "error_heldout_kmeans")):
        e_ec = rel(first(x[part]), Net(q_ec.layers[:1])(x[part]))
        e_km = rel(first(x[part]), Net(q_km.layers[:1])(x[part]))
        assert e_ec <= e_km
        assert e_ec == pytest.approx(getattr(r_ec["c1"], key_ec), rel=1e-3)
        assert e_km == pytest.approx(getattr(r_km["c1"], key_km), rel=1e-3)


def test_fc_few_samples_warns_and_heldout_never_worse():
    # 24 images against 96 inputs: the fit error can be driven far down, the held-out one not
    rng = np.random.default_rng(8)
    w = rng.standard_normal((40, 96)).astype(np.float32) * 0.1
    net = Net([("fc", Linear(w, rng.standard_normal(40) * 0.1, name="fc"))])
    x = rng.standard_normal((24, 96)).astype(np.float32)
    st = {"fc": LayerSettings(2, 8, iterations=6)}
    with pytest.warns(FewSamplesWarning, match="fc.*fit samples for 96 inputs"):
        _, r0 = quantize(net, x, st, progress=False, ridge=0.0)
    with pytest.warns(FewSamplesWarning):
        _, ra = quantize(net, x, st, progress=False)
    for r in (r0, ra):
        assert r["fc"].samples == 19 and r["fc"].heldout == 5 and r["fc"].space == "data"
        assert r["fc"].error_final <= r["fc"].error_kmeans
        assert r["fc"].error_heldout <= r["fc"].error_heldout_kmeans
    assert r0["fc"].ridge == 0.0 and ra["fc"].ridge == pytest.approx(0.1 * 96 / 19)
    # without a ridge the first sweep fits noise: the held-out error rose, so it was undone
    assert r0["fc"].sweeps_run == 1 and r0["fc"].sweeps == 0
    assert r0["fc"].error_final == r0["fc"].error_kmeans


def test_chunk_kernel_matches_generic_path():
    # one kernel position: the Numba chunk kernel and the per-subspace path solve the same steps
    rng = np.random.default_rng(9)
    g, og, mm, k, d = 2, 30, 3, 4, 3
    s = rng.standard_normal((g, 50, mm * d))
    grr = s.transpose(0, 2, 1) @ s
    lr = rng.standard_normal((g, mm * d, og)) * 200
    cb = rng.standard_normal((mm, k, d))
    codes = rng.integers(0, k, (mm, g, og, 1)).astype(np.int64)
    real = np.array([3, 3, 2], np.int64)
    cb[2, :, 2:] = 0.0
    wb = cb[np.arange(mm)[:, None, None, None], codes].reshape(mm, g, og, d)
    a = [lr.copy(), cb.copy(), codes.copy(), wb.copy()]
    b = [lr.copy(), cb.copy(), codes.copy(), wb.copy()]
    _sweep_chunk_p1(a[0], grr, a[1], a[2][..., 0], a[3], real)
    _sweep_subspaces(b[0], grr, b[1], b[2], b[3], real, 0, mm, d, 4)
    assert not np.array_equal(a[2], codes)  # something changed
    assert np.allclose(a[1], b[1], atol=1e-8) and np.array_equal(a[2], b[2])
    assert np.allclose(a[3], b[3], atol=1e-8) and np.allclose(a[0][:, -d:], b[0][:, -d:])


def test_small_cache_gives_identical_result():
    # the checkpoint budget changes what is re-run, never the result
    rng = np.random.default_rng(10)
    net = toy_net(rng)
    x = rng.standard_normal((9, 5, 8, 8)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FewSamplesWarning)
        a = quantize(net, x, TOY, progress=False, batch_size=4, cache_bytes=0)[0].to_spec()[1]
        b = quantize(net, x, TOY, progress=False, batch_size=4)[0].to_spec()[1]
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_report_to_dict_is_json():
    rng = np.random.default_rng(11)
    net = toy_net(rng)
    x = rng.standard_normal((1, 5, 8, 8)).astype(np.float32)  # one image: no held-out part
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FewSamplesWarning)
        _, report = quantize(net, x, TOY, progress=False)
    d = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert [r["name"] for r in d["layers"]] == ["c1", "c2", "fc"]
    assert d["heldout_images"] == 0 and d["layers"][0]["error_heldout"] is None
    assert d["layers"][2]["settings"] == {"subdim": 4, "K": 8, "error_correction": True,
                                          "iterations": 4, "dense": False,
                                          "codebook_dtype": "float32", "ridge": None}
    assert "ho-final" in str(report)


@pytest.mark.filterwarnings("ignore::qcnn.quantizer.FewSamplesWarning")
def test_error_correction_beats_kmeans_on_final_output():
    rng = np.random.default_rng(3)
    net = toy_net(rng)
    x = rng.standard_normal((32, 5, 8, 8)).astype(np.float32)
    q_ec, _ = quantize(net, x, TOY, progress=False)
    q_km, _ = quantize(net, x, TOY, error_correction=False, progress=False)
    # on images it has not seen (fitting all 32 without the held-out guard and the ridge reaches
    # 2e-5 on them and 0.70 here, worse than k-means' 0.62)
    xt = rng.standard_normal((32, 5, 8, 8)).astype(np.float32)
    y = net(xt)
    e_ec, e_km = rel(y, q_ec(xt)), rel(y, q_km(xt))
    assert e_ec < 0.92 * e_km, (e_ec, e_km)


@pytest.mark.filterwarnings("ignore::qcnn.quantizer.FewSamplesWarning")
def test_same_seed_bit_identical_other_seed_differs():
    rng = np.random.default_rng(4)
    net = toy_net(rng)
    x = rng.standard_normal((4, 5, 8, 8)).astype(np.float32)
    a = quantize(net, x, TOY, seed=7, progress=False)[0].to_spec()[1]
    b = quantize(net, x, TOY, seed=7, progress=False)[0].to_spec()[1]
    c = quantize(net, x, TOY, seed=8, progress=False)[0].to_spec()[1]
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert any(not np.array_equal(a[k], c[k]) for k in a)


@pytest.mark.filterwarnings("ignore::qcnn.quantizer.FewSamplesWarning")
def test_concat_branches_dense_and_float16():
    rng = np.random.default_rng(5)
    fire = Concat([
        Net([("e1", Conv2d(rng.standard_normal((6, 4, 1, 1)), name="e1")), ("re1", ReLU("re1"))]),
        Net([("e3", Conv2d(rng.standard_normal((6, 4, 3, 3)) * 0.3, padding=1, name="e3")),
             ("re3", ReLU("re3"))]),
    ], name="fire")
    net = Net([("sq", Conv2d(rng.standard_normal((4, 3, 1, 1)), name="sq")), ("rs", ReLU("rs")),
               ("fire", fire), ("pool", MaxPool2d(2, 2, name="pool")),
               ("cls", Conv2d(rng.standard_normal((5, 12, 1, 1)) * 0.3, name="cls"))])
    x = rng.standard_normal((4, 3, 6, 6)).astype(np.float32)
    st = {"sq": LayerSettings(3, 4, dense=True), "e1": LayerSettings(2, 8),
          "e3": LayerSettings(4, 16, codebook_dtype="float16"), "cls": LayerSettings(4, 8)}
    qnet, report = quantize(net, x, st, progress=False)
    assert isinstance(qnet.get("sq"), Conv2d)
    assert isinstance(qnet.get("e3"), QConv2d) and qnet.get("e3").codebook_dtype == "float16"
    for name in ("e1", "e3", "cls"):
        assert report[name].error_final <= report[name].error_kmeans
    assert qnet(x).shape == net(x).shape
    assert rel(net(x), qnet(x)) < 0.5


def test_default_settings_alexnet_presets():
    spec = architectures.get("alexnet-caffe")
    net = Net.from_spec(spec, architectures.random_tensors(spec))
    s = default_settings(net)
    assert (s["conv1"].subdim, s["conv1"].K) == (3, 128)
    assert all((s[f"conv{i}"].subdim, s[f"conv{i}"].K) == (8, 128) for i in range(2, 6))
    assert (s["fc6"].subdim, s["fc6"].K, s["fc7"].subdim) == (4, 32, 4)
    assert (s["fc8"].subdim, s["fc8"].K) == (1, 16)
    s15 = default_settings(net, "paper-15.4x")
    assert s15["fc6"].subdim == 3 and s15["fc8"].subdim == 1 and s15["conv3"].subdim == 8
    with pytest.raises(ValueError, match="unknown quantization preset"):
        default_settings(net, "nope")


def test_bad_settings_are_refused():
    rng = np.random.default_rng(6)
    net = toy_net(rng)
    x = np.zeros((1, 5, 8, 8), np.float32)
    with pytest.raises(ValueError, match="not conv/linear layers"):
        quantize(net, x, {"r1": LayerSettings()}, progress=False)
    with pytest.raises(ValueError, match="K must be in 1..256"):
        LayerSettings(K=512)
    with pytest.raises(ValueError, match="codebook_dtype"):
        LayerSettings(codebook_dtype="int8")
