"""Quantized layers (and the float layers they are measured against) versus naive references."""

import naive
import numpy as np
import pytest

from qcnn import architectures, qlayers
from qcnn.layers import LRN, AvgPool2d, Conv2d, Linear, MaxPool2d
from qcnn.net import Net
from qcnn.qlayers import QConv2d, QLinear, op_counts


def _close(actual, expected, rtol=1e-5):
    scale = max(1.0, float(np.abs(expected).max()))
    err = float(np.abs(np.asarray(actual, np.float64) - expected).max())
    assert err <= rtol * scale, f"max abs error {err:.3g} exceeds {rtol} x {scale:.3g}"


def _random_qconv(cin, cout, k, d, n_code, stride=1, pad=0, groups=1, seed=0, name="qc"):
    rng = np.random.default_rng(seed)
    kh, kw = (k, k) if np.ndim(k) == 0 else k
    n_sub = -(-(cin // groups) // d)
    cb = rng.standard_normal((n_sub, n_code, d)).astype(np.float32)
    codes = rng.integers(0, n_code, (cout, kh, kw, n_sub)).astype(np.uint8)
    bias = rng.standard_normal(cout).astype(np.float32)
    return QConv2d(cb, codes, bias, cin, stride, pad, groups, name)


def _exact_codebooks(subvectors, n_code, rng):
    """(count, M, d) weight subvectors -> codebooks (M, K, d) holding every distinct one, codes."""
    count, n_sub, d = subvectors.shape
    cb = rng.standard_normal((n_sub, n_code, d)).astype(np.float32)  # unused words stay random
    codes = np.zeros((count, n_sub), np.uint8)
    for m in range(n_sub):
        words, inverse = np.unique(subvectors[:, m], axis=0, return_inverse=True)
        assert len(words) <= n_code
        cb[m, : len(words)] = words
        codes[:, m] = inverse.ravel()
    return cb, codes


# ---- float baselines (qcnn/layers.py) against definitions


@pytest.mark.parametrize("n,c,h,w,o,k,s,p,g", [
    (1, 3, 7, 7, 4, 3, 1, 1, 1), (3, 4, 9, 8, 6, 3, 2, 1, 2), (2, 3, 19, 19, 4, 11, 4, 0, 1),
    (1, 6, 6, 5, 4, 5, 1, 2, 2), (1, 4, 5, 5, 2, 1, 1, 0, 1), (2, 2, 8, 8, 2, 2, 2, 1, 1),
])
def test_float_conv_matches_naive(n, c, h, w, o, k, s, p, g):
    rng = np.random.default_rng(o * k)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((o, c // g, k, k)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32)
    _close(Conv2d(wt, b, s, p, g)(x), naive.conv2d(x, wt, b, s, p, g))


@pytest.mark.parametrize("h,k,s,p", [(13, 3, 2, 0), (12, 3, 2, 0), (55, 3, 2, 0), (7, 2, 2, 0),
                                     (10, 3, 3, 0), (8, 3, 2, 1), (9, 2, 2, 1)])
def test_float_pools_match_caffe(h, k, s, p):
    rng = np.random.default_rng(h)
    x = rng.standard_normal((2, 3, h, h + 1)).astype(np.float32)
    _close(MaxPool2d(k, s, p)(x), naive.caffe_max_pool(x, k, s, p))
    _close(AvgPool2d(k, s, p)(x), naive.caffe_ave_pool(x, k, s, p))


@pytest.mark.parametrize("size,alpha,beta,k", [(5, 1e-4, 0.75, 1.0), (5, 5e-4, 0.75, 2.0),
                                               (3, 0.1, 0.5, 1.0)])
def test_float_lrn_matches_caffe(size, alpha, beta, k):
    x = np.random.default_rng(size).standard_normal((2, 7, 4, 3)).astype(np.float32) * 20
    _close(LRN(size, alpha, beta, k)(x), naive.caffe_lrn(x, size, alpha, beta, k))


# ---- QConv2d


@pytest.mark.parametrize("n,c,h,w,o,k,s,p,g,d,n_code", [
    (1, 3, 6, 6, 4, 3, 1, 1, 1, 3, 16),
    (3, 6, 9, 7, 4, 3, 2, 1, 2, 2, 16),  # batch 3, groups 2, stride 2, odd sizes
    (1, 5, 8, 8, 3, 5, 1, 2, 1, 2, 2),  # C_s not divisible by d, K=2
    (1, 3, 23, 23, 2, 11, 4, 0, 1, 3, 256),  # AlexNet-conv1-like
    (2, 4, 5, 5, 4, 1, 1, 0, 2, 1, 4),  # 1x1 grouped
    (1, 4, 10, 9, 2, 3, 4, 2, 1, 4, 8),  # stride 4 pad 2
])
def test_qconv_matches_naive_lut_and_float_on_its_weight(n, c, h, w, o, k, s, p, g, d, n_code):
    layer = _random_qconv(c, o, k, d, n_code, s, p, g, seed=n + c + k)
    x = np.random.default_rng(1).standard_normal((n, c, h, w)).astype(np.float32)
    y = layer(x)
    assert y.shape == (n, o, *layer.output_size(h, w)) and y.dtype == np.float32
    _close(y, naive.lut_conv2d(x, layer.codebooks, layer.codes, layer.bias, s, p, g))
    wt = layer.weight()
    assert wt.shape == (o, c // g, k, k)
    np.testing.assert_array_equal(wt, naive.quantized_weight(layer.codebooks, layer.codes, c // g))
    _close(y, Conv2d(wt, layer.bias, s, p, g)(x))
    _close(layer(x, relu=True), np.maximum(y, 0))  # fused ReLU, every path (stride 1 or not)
    layer.run = "float"
    _close(layer(x, relu=True), np.maximum(y, 0))


@pytest.mark.parametrize("n,c,h,o,k,s,p,g,d", [
    (1, 6, 7, 8, 3, 1, 1, 1, 4),  # 6 channels in subspaces of 4: zero-padded last subspace
    (2, 8, 9, 4, 3, 2, 1, 2, 3),  # groups 2, C_g=4, d=3
    (1, 3, 19, 2, 11, 4, 0, 1, 3),  # 11x11 stride 4, 2*121 = 242 subvectors <= 256
    (3, 4, 6, 16, 1, 1, 0, 1, 2),
    (1, 10, 8, 6, 5, 2, 2, 2, 8),
])
def test_qconv_with_exact_codebooks_equals_float_conv(n, c, h, o, k, s, p, g, d):
    rng = np.random.default_rng(c * k)
    cg = c // g
    n_sub = -(-cg // d)
    wt = rng.standard_normal((o, cg, k, k)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32)
    wp = np.zeros((o, n_sub * d, k, k), np.float32)
    wp[:, :cg] = wt
    sub = wp.transpose(0, 2, 3, 1).reshape(o * k * k, n_sub, d)
    cb, codes = _exact_codebooks(sub, 256, rng)
    layer = QConv2d(cb, codes.reshape(o, k, k, n_sub), b, c, s, p, g, "exact")
    np.testing.assert_array_equal(layer.weight(), wt)
    x = rng.standard_normal((n, c, h, h + 1)).astype(np.float32)
    ref = Conv2d(wt, b, s, p, g)(x)
    y = layer(x)
    assert np.linalg.norm(y - ref) <= 1e-4 * np.linalg.norm(ref)
    _close(y, naive.conv2d(x, wt, b, s, p, g), rtol=1e-4)


def test_qconv_bands_give_the_same_result(monkeypatch):
    layer = _random_qconv(5, 6, 3, 2, 16, stride=2, pad=1, groups=1, seed=4)
    x = np.random.default_rng(2).standard_normal((3, 5, 17, 12)).astype(np.float32)
    whole = layer(x)
    # a whole table is 3 images x 54 KB: bands of one row, of 3 rows, whole images 2 at a time
    for budget in (1, 20_000, 120_000):
        monkeypatch.setattr(qlayers, "TABLE_BUDGET_BYTES", budget)
        _close(layer(x), whole)
    _close(whole, naive.lut_conv2d(x, layer.codebooks, layer.codes, layer.bias, 2, 1, 1))


def test_qconv_spec_tensors_roundtrip_float16():
    rng = np.random.default_rng(0)
    cb = rng.standard_normal((2, 16, 3)).astype(np.float16)
    codes = rng.integers(0, 16, (4, 3, 3, 2)).astype(np.uint8)
    layer = QConv2d(cb, codes, np.ones(4), 6, 2, 1, 1, "conv9")
    assert layer.codebook_dtype == "float16" and layer.codebooks.dtype == np.float32
    sizes = (layer.subdim, layer.K, layer.M, layer.in_channels, layer.out_channels)
    assert sizes == (3, 16, 2, 6, 4)
    s, t = layer.spec(), layer.tensors()
    assert s == {"type": "qconv", "name": "conv9", "in": 6, "out": 4, "kernel": [3, 3],
                 "stride": [2, 2], "pad": [1, 1], "groups": 1, "bias": True, "subdim": 3, "K": 16,
                 "codebook_dtype": "float16", "run": "lut"}
    assert sorted(t) == ["conv9.bias", "conv9.codebooks", "conv9.codes"]
    assert t["conv9.codebooks"].dtype == np.float16 and t["conv9.codes"].dtype == np.uint8
    np.testing.assert_array_equal(t["conv9.codebooks"], cb)
    net = Net.from_spec([s], t)
    again = net.get("conv9")
    x = rng.standard_normal((2, 6, 7, 7)).astype(np.float32)
    np.testing.assert_array_equal(again(x), layer(x))
    assert again.spec() == s


def test_qconv_from_spec_checks_shapes():
    layer = _random_qconv(6, 4, 3, 4, 16, groups=2, name="c")
    s, t = layer.spec(), layer.tensors()
    with pytest.raises(ValueError, match=r"'c.codes' has shape \(4, 3, 3, 1\), expected \(4, 3,"):
        QConv2d.from_spec({**s, "subdim": 2}, {**t, "c.codebooks": np.zeros((2, 16, 2))})
    with pytest.raises(ValueError, match="'c.codebooks' has shape"):
        QConv2d.from_spec({**s, "K": 32}, t)
    with pytest.raises(ValueError, match="missing tensor 'c.bias'"):
        QConv2d.from_spec(s, {k: v for k, v in t.items() if k != "c.bias"})
    with pytest.raises(ValueError, match="codebook_dtype"):
        QConv2d.from_spec({**s, "codebook_dtype": "int8"}, t)


def test_qconv_rejects_bad_parameters():
    rng = np.random.default_rng(0)
    cb = rng.standard_normal((2, 16, 2)).astype(np.float32)
    codes = rng.integers(0, 16, (4, 3, 3, 2)).astype(np.uint8)
    with pytest.raises(ValueError, match=r"conv7: 2 codebooks of subdim 2.*ceil\(5 / 2\) = 3"):
        QConv2d(cb, codes, None, 10, groups=2, name="conv7")
    with pytest.raises(ValueError, match="conv7: K = 1 codewords"):
        QConv2d(cb[:, :1], codes, None, 4, name="conv7")
    with pytest.raises(ValueError, match="K = 257"):
        QConv2d(np.zeros((2, 257, 2), np.float32), codes, None, 4)
    bad = codes.copy()
    bad[1, 2, 0, 1] = 16
    with pytest.raises(ValueError, match=r"conv7: codes range over 0..16.*0..15"):
        QConv2d(cb, bad, None, 4, name="conv7")
    with pytest.raises(ValueError, match="codes must be integers"):
        QConv2d(cb, codes.astype(np.float32), None, 4)
    with pytest.raises(ValueError, match=r"codes must be \(out, kh, kw, M\)"):
        QConv2d(cb, codes[..., :1], None, 4)
    with pytest.raises(ValueError, match="float32 or float16"):
        QConv2d(cb.astype(np.float64), codes, None, 4)
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\)"):
        QConv2d(cb, codes, np.ones(3), 4)
    with pytest.raises(ValueError, match="do not both split into 3 groups"):
        QConv2d(cb, codes, None, 6, groups=3)
    layer = QConv2d(cb, codes, None, 4, name="conv7")
    with pytest.raises(ValueError, match="conv7: expected 4 input channels, got 3"):
        layer(np.ones((1, 3, 5, 5), np.float32))
    with pytest.raises(ValueError, match="conv7: expected a 4-d input"):
        layer(np.ones((4, 5, 5), np.float32))
    with pytest.raises(ValueError, match="conv7: a 2x2 input .* smaller than the 3x3 kernel"):
        layer(np.ones((1, 4, 2, 2), np.float32))


# ---- QLinear


@pytest.mark.parametrize("n,c,o,d,n_code", [(1, 12, 7, 4, 32), (3, 10, 5, 3, 16), (2, 9, 600, 1, 2),
                                            (1, 8, 4, 8, 256)])
def test_qlinear_matches_naive_lut_and_float_on_its_weight(n, c, o, d, n_code):
    rng = np.random.default_rng(c + o)
    n_sub = -(-c // d)
    cb = rng.standard_normal((n_sub, n_code, d)).astype(np.float32)
    codes = rng.integers(0, n_code, (o, n_sub)).astype(np.uint8)
    b = rng.standard_normal(o).astype(np.float32)
    layer = QLinear(cb, codes, b, c, "fc")
    x = rng.standard_normal((n, c)).astype(np.float32)
    y = layer(x)
    assert y.shape == (n, o) and y.dtype == np.float32
    _close(y, naive.lut_linear(x, cb, codes, b))
    wt = layer.weight()
    assert wt.shape == (o, c)
    _close(y, Linear(wt, b)(x))


@pytest.mark.parametrize("c,o,d", [(12, 9, 4), (10, 20, 3), (7, 30, 1)])
def test_qlinear_with_exact_codebooks_equals_float_linear(c, o, d):
    rng = np.random.default_rng(c)
    n_sub = -(-c // d)
    wt = rng.standard_normal((o, c)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32)
    wp = np.zeros((o, n_sub * d), np.float32)
    wp[:, :c] = wt
    cb, codes = _exact_codebooks(wp.reshape(o, n_sub, d), 256, rng)
    layer = QLinear(cb, codes, b, c)
    x = rng.standard_normal((3, c)).astype(np.float32)
    ref = Linear(wt, b)(x)
    assert np.linalg.norm(layer(x) - ref) <= 1e-4 * np.linalg.norm(ref)


def test_qlinear_spec_roundtrip_and_errors():
    rng = np.random.default_rng(0)
    layer = QLinear(rng.standard_normal((3, 32, 4)).astype(np.float32),
                    rng.integers(0, 32, (5, 3)).astype(np.uint8), None, 10, "fc6")
    s, t = layer.spec(), layer.tensors()
    assert s == {"type": "qlinear", "name": "fc6", "in": 10, "out": 5, "bias": False, "subdim": 4,
                 "K": 32, "codebook_dtype": "float32", "run": "lut"}
    assert sorted(t) == ["fc6.codebooks", "fc6.codes"]
    again = Net.from_spec([s], t).get("fc6")
    x = rng.standard_normal((2, 10)).astype(np.float32)
    np.testing.assert_array_equal(again(x), layer(x))
    with pytest.raises(ValueError, match=r"'fc6.codes' has shape \(5, 3\), expected \(6, 3\)"):
        QLinear.from_spec({**s, "out": 6}, t)
    with pytest.raises(ValueError, match=r"fc6: 3 codebooks of subdim 4.*ceil\(13 / 4\) = 4"):
        QLinear(layer.codebooks, layer.codes, None, 13, "fc6")
    with pytest.raises(ValueError, match="fc6: expected 10 input features, got 9"):
        layer(np.ones((1, 9), np.float32))
    with pytest.raises(ValueError, match=r"codes must be \(out, M\)"):
        QLinear(layer.codebooks, layer.codes[:, :2], None, 10)


# ---- op counts and storage


def _alexnet_release():
    """AlexNet (Caffe) with the official release settings, as quantized layers of random codes."""
    out, size = [], {"conv1": 227, "conv2": 27, "conv3": 13, "conv4": 13, "conv5": 13}
    for s in architectures.weight_layers(architectures.alexnet_caffe()):
        if s["type"] == "conv":
            d = 3 if s["name"] == "conv1" else 8
            layer = _random_qconv(s["in"], s["out"], s["kernel"][0], d, 128, s["stride"][0],
                                  s["pad"][0], s["groups"], name=s["name"])
            out.append(layer.op_counts(size[s["name"]], size[s["name"]]))
        else:
            d, n_code = (1, 16) if s["name"] == "fc8" else (4, 32)
            n_sub = -(-s["in"] // d)
            layer = QLinear(np.zeros((n_sub, n_code, d), np.float32),
                            np.zeros((s["out"], n_sub), np.uint8), np.zeros(s["out"]), s["in"])
            out.append(layer.op_counts())
    return out


def test_op_counts_reproduce_the_official_alexnet_figures():
    counts = _alexnet_release()
    flops = sum(c.float_macs for c in counts)
    qflops = sum(c.table_macs + c.accumulate_adds for c in counts)
    # REFERENCE.md: 724.4 MFLOP -> 174.3 MFLOP, "theoretical 4.15x"; 232.56 MiB -> 12.60 MiB
    assert round(flops / 1e6, 1) == 724.4
    assert round(qflops / 1e6, 1) == 174.3
    assert round(flops / qflops, 2) == 4.16 and abs(flops / qflops - 4.15) < 0.01
    assert round(sum(c.float_bytes for c in counts) / 2**20, 2) == 232.56
    assert abs(sum(c.quantized_bytes for c in counts) / 2**20 - 12.60) < 0.05


def test_op_counts_by_hand():
    c = op_counts(96, 256, 5, 27, 27, 2, subdim=8, n_code=128, codebook_itemsize=2, bias=False)
    assert c.float_macs == 27 * 27 * 256 * 25 * 48
    assert c.table_macs == 27 * 27 * 96 * 128
    assert c.accumulate_adds == 27 * 27 * 256 * 25 * 6
    assert c.float_bytes == 4 * 256 * 48 * 25
    assert c.quantized_bytes == 6 * 128 * 8 * 2 + 256 * 25 * 6 * 7 // 8
    assert c.speedup == pytest.approx(c.float_macs / (c.table_macs + c.accumulate_adds))
    assert c.compression == pytest.approx(c.float_bytes / c.quantized_bytes)


# ---- speed paths: pair look-ups, reused buffers, the dense choice


def test_qlinear_pair_path_matches_naive_and_single_path(monkeypatch):
    rng = np.random.default_rng(3)
    cb = rng.standard_normal((5, 8, 3)).astype(np.float32)  # M = 5 (odd), K = 8
    codes = rng.integers(0, 8, (130, 5)).astype(np.uint8)  # 130 >= 2 * 8 * 8 outputs
    b = rng.standard_normal(130).astype(np.float32)
    layer = QLinear(cb, codes, b, 14, "fc")
    assert layer.pairs and layer._codes_t.dtype == np.uint16
    x = rng.standard_normal((3, 14)).astype(np.float32)
    _close(layer(x), naive.lut_linear(x, cb, codes, b))
    monkeypatch.setattr(qlayers, "PAIR_MAX_K", 4)
    single = QLinear(cb, codes, b, 14, "fc")
    assert not single.pairs
    _close(single(x), layer(x))
    assert single.spec() == layer.spec()


def test_qconv_reuses_its_buffers_and_follows_the_input_shape():
    layer = _random_qconv(6, 5, 3, 4, 16, stride=1, pad=1, seed=8)
    rng = np.random.default_rng(5)
    for shape in [(1, 6, 7, 7), (1, 6, 7, 7), (2, 6, 5, 9), (1, 6, 7, 7)]:
        x = rng.standard_normal(shape).astype(np.float32)
        y = layer(x)
        _close(y, naive.lut_conv2d(x, layer.codebooks, layer.codes, layer.bias, 1, 1, 1))
    assert len(layer._buffers) == 1
    first = layer(x)
    again = layer(x)
    assert first is not again  # outputs are never reused, only the table
    np.testing.assert_array_equal(first, again)


def test_release_settings_and_choose_dense():
    alex = architectures.get("alexnet-caffe")
    s = qlayers.release_settings(alex)
    assert s["conv1"] == (3, 128) and s["conv5"] == (8, 128)
    assert s["fc7"] == (4, 32) and s["fc8"] == (1, 16)
    squeeze = qlayers.release_settings(architectures.get("squeezenet1_1-torchvision"))
    assert squeeze["features.3.squeeze"] == (8, 128) and squeeze["features.0"] == (3, 128)
    # the 3-channel first convs and the subdim-1 classifier stay float; the big layers do not
    assert qlayers.choose_dense(alex, 227) == {"conv1", "fc8"}
    vgg = qlayers.choose_dense(architectures.get("vgg16-caffe"), 224)
    assert "conv1_1" in vgg and "fc8" in vgg and not vgg & {"conv3_1", "conv5_3", "fc6", "fc7"}
    # with settings that save nothing (K far above the outputs) every layer stays dense
    names = [x["name"] for x in architectures.weight_layers(alex)]
    assert qlayers.choose_dense(alex, 227, {n: (1, 256) for n in names}) == set(names)


def test_choose_dense_input_sizes_follow_pools_and_concats():
    sizes = qlayers._input_sizes(architectures.get("alexnet-caffe"), 227)
    assert sizes["conv1"] == (227, 227) and sizes["conv2"] == (27, 27)
    assert sizes["conv3"] == (13, 13) and sizes["conv5"] == (13, 13)
    sq = qlayers._input_sizes(architectures.get("squeezenet1_1-torchvision"), 224)
    assert sq["features.3.squeeze"] == (55, 55) and sq["features.3.expand3x3"] == (55, 55)
    assert sq["classifier.1"] == (13, 13)


def test_choose_dense_by_measurement_keeps_a_layer_that_is_clearly_slower_quantized():
    # subdim 1, K 256 on a 4096 -> 8 linear layer: 1 M table multiply-adds against 32 K float ones
    spec = [{"type": "flatten", "name": "flat"},
            {"type": "linear", "name": "fc", "in": 4096, "out": 8, "bias": True},
            {"type": "linear", "name": "fc2", "in": 8, "out": 4, "bias": False}]
    chosen = qlayers.choose_dense(spec, 1, {"fc": (1, 256), "fc2": (1, 256)}, measure=True,
                                  repeat=2)
    assert "fc" in chosen and chosen <= {"fc", "fc2"}


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_float_run_mode_matches_the_tables_and_round_trips(kind):
    """A layer whose tables cost more than they save runs on its decoded weights: same answers."""
    from qcnn.net import Net

    rng = np.random.default_rng(7)
    cb = rng.standard_normal((3, 16, 2), np.float32)
    if kind == "conv":
        layer = QConv2d(cb, rng.integers(0, 16, (4, 3, 3, 3), dtype=np.uint8), rng.standard_normal(4),
                        in_channels=6, stride=2, padding=1, name="q")
        x = rng.standard_normal((2, 6, 7, 9)).astype(np.float32)
    else:
        layer = QLinear(cb, rng.integers(0, 16, (5, 3), dtype=np.uint8), None, 6, name="q")
        x = rng.standard_normal((2, 6)).astype(np.float32)
    want = layer(x)
    spec, tensors = Net([("q", layer)]).to_spec()
    spec[0]["run"] = "float"
    fast = Net.from_spec(spec, tensors).get("q")
    assert fast.run == "float" and fast.spec()["run"] == "float"
    np.testing.assert_allclose(fast(x), want, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="run must be one of"):
        Net.from_spec([{**spec[0], "run": "gpu"}], tensors)


# ---- what a QLinear holds: the codes in the one form its run mode reads


@pytest.mark.parametrize("n_sub,n_code,n_out", [(5, 8, 130), (6, 32, 2048), (4, 16, 40)])
def test_qlinear_holds_one_form_of_its_codes_and_gives_them_back(n_sub, n_code, n_out):
    rng = np.random.default_rng(n_sub)
    d = 3
    cb = rng.standard_normal((n_sub, n_code, d)).astype(np.float32)
    codes = rng.integers(0, n_code, (n_out, n_sub)).astype(np.uint8)
    b = rng.standard_normal(n_out).astype(np.float32)
    x = rng.standard_normal((2, n_sub * d - 1)).astype(np.float32)
    lut = QLinear(cb, codes, b, n_sub * d - 1, "fc")
    pairs = n_out >= 2 * n_code * n_code
    assert lut.pairs == pairs and lut._codes is None and lut._float is None
    assert lut._codes_t.dtype == (np.uint16 if pairs else np.uint8)
    assert lut._codes_t.nbytes == codes.nbytes + (n_out if pairs and n_sub % 2 else 0)
    np.testing.assert_array_equal(lut.codes, codes)  # rebuilt from the kernel's layout
    np.testing.assert_array_equal(lut.tensors()["fc.codes"], codes)

    flt = QLinear(cb, codes, b, n_sub * d - 1, "fc", run="float")
    assert flt._codes_t is None and flt._float is not None  # no kernel layout for a float layer
    np.testing.assert_array_equal(flt.codes, codes)
    want = naive.lut_linear(x, cb, codes, b)
    _close(lut(x), want)
    _close(flt(x), want)
    n_in = n_sub * d - 1
    np.testing.assert_array_equal(
        flt.weight(), naive.quantized_weight(cb, codes[:, None, None, :], n_in)[:, :, 0, 0])
    np.testing.assert_array_equal(lut.weight(), flt.weight())
    flt.weight()[0, 0] = 1e9  # weight() is a copy: the layer is unchanged
    _close(flt(x), want)

    lut.run = "float"  # converting keeps the codes and the answers
    assert lut._codes_t is None and lut.spec()["run"] == "float"
    _close(lut(x), want)
    lut.run = "lut"
    assert lut._float is None and lut._codes is None
    np.testing.assert_array_equal(lut.codes, codes)
    _close(lut(x), want)
    with pytest.raises(ValueError, match="run must be one of"):
        lut.run = "gpu"


@pytest.mark.parametrize("n_sub", [1, 2, 7, 40])
@pytest.mark.parametrize("n_code", [2, 5, 32])
def test_unpair_codes_inverts_pair_codes(n_sub, n_code):
    from qcnn import kernels

    rng = np.random.default_rng(n_sub * n_code)
    codes = rng.integers(0, n_code, (37, n_sub)).astype(np.uint8)
    pc = kernels.pair_codes(np.ascontiguousarray(codes.T), n_code)
    np.testing.assert_array_equal(qlayers._unpair_codes(pc, n_code, n_sub), codes)
    np.testing.assert_array_equal(qlayers._kernel_codes(codes, n_code, True), pc)
