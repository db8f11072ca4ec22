"""The look-up-table kernels against slow literal references (tests/naive.py), JIT and fallback."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import naive
import numpy as np
import pytest

from qcnn import kernels as K
from qcnn._jit import HAVE_NUMBA

ROOT = Path(__file__).resolve().parent.parent

# (N, C, H, W, out, kernel, stride, pad, groups, subdim, K): hand-picked edge cases; shapes stay
# small so the file runs in well under a minute with NUMBA_DISABLE_JIT=1.
CONV_CASES = [
    (1, 3, 5, 5, 2, 1, 1, 0, 1, 3, 2),  # 1x1, one subspace, K=2
    (1, 4, 6, 6, 3, 3, 1, 1, 1, 2, 16),  # 3x3 pad 1
    (3, 6, 7, 9, 4, 3, 2, 1, 2, 2, 16),  # batch 3, stride 2, groups 2, odd sizes
    (1, 5, 9, 8, 4, 5, 2, 2, 1, 2, 16),  # C_s=5 not divisible by d=2, pad 2
    (2, 8, 8, 7, 4, 3, 1, 0, 2, 3, 16),  # C_g=4 not divisible by d=3, groups 2
    (1, 3, 23, 23, 3, 11, 4, 0, 1, 3, 256),  # 11x11 stride 4: AlexNet conv1 on a small input
    (1, 3, 13, 11, 2, 7, 4, 2, 1, 2, 8),  # 7x7 stride 4 pad 2: several phases, W odd
    (3, 2, 6, 6, 2, 2, (2, 1), (0, 1), 1, 1, 4),  # anisotropic stride / pad, even kernel
    (1, 4, 4, 4, 3, (1, 3), 1, (0, 1), 1, 4, 256),  # 1x3 kernel, K=256, d = C_g
]


def _conv_case(case, seed=0):
    n, c, h, w, o, k, s, p, g, d, n_code = case
    rng = np.random.default_rng(seed)
    kh, kw = (k, k) if np.ndim(k) == 0 else k
    n_sub = -(-(c // g) // d)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    cb = rng.standard_normal((n_sub, n_code, d)).astype(np.float32)
    codes = rng.integers(0, n_code, (o, kh, kw, n_sub)).astype(np.uint8)
    bias = rng.standard_normal(o).astype(np.float32)
    return x, cb, codes, bias, (kh, kw), s, p, g


def _close(actual, expected, rtol=1e-5):
    """Max abs error within rtol of the largest magnitude (float32 sums of up to ~1000 terms)."""
    scale = max(1.0, float(np.abs(expected).max()))
    err = float(np.abs(np.asarray(actual, np.float64) - expected).max())
    assert err <= rtol * scale, f"max abs error {err:.3g} exceeds {rtol} x {scale:.3g}"


@pytest.mark.parametrize("case", CONV_CASES, ids=[f"conv{i}" for i in range(len(CONV_CASES))])
def test_conv_matches_naive_lut(case):
    x, cb, codes, bias, kernel, s, p, g = _conv_case(case)
    geo = K.conv_geometry(x.shape[2], x.shape[3], kernel, s, p)
    out = K.conv_accumulate(K.conv_table(x, cb, kernel, s, p, g), codes, bias, geo)
    ref = naive.lut_conv2d(x, cb, codes, bias, s, p, g)
    assert out.shape == ref.shape and out.dtype == np.float32
    _close(out, ref)


STRIDE1 = [c for c in CONV_CASES if c[6] == 1] + [
    (2, 10, 11, 9, 6, 5, 1, 2, 2, 2, 32),  # 5x5 pad 2 groups 2 (AlexNet conv2): 25 = 9+9+4+1+1+1
    (1, 16, 14, 14, 7, 3, 1, 1, 1, 8, 128),  # VGG's 3x3 with d = 8, odd number of outputs
    (1, 24, 6, 7, 4, 3, 1, 1, 2, 8, 7),  # d = 8, C_g = 12 (a short last subspace), K = 4 + 2 + 1
    (1, 9, 6, 5, 3, (3, 2), 1, (1, 0), 1, 3, 3),  # K odd (last codeword alone), anisotropic
]


@pytest.mark.parametrize("case", STRIDE1, ids=[f"s1-{i}" for i in range(len(STRIDE1))])
@pytest.mark.parametrize("plan", [None, (1, 1), (2, 3), (100, 2)])
def test_conv_fused_matches_naive_lut(case, plan):
    x, cb, codes, bias, kernel, s, p, g = _conv_case(case)
    o = codes.shape[0] // g
    plan = None if plan is None else (plan[0], min(plan[1], o))
    out = K.conv_fused(x, cb, codes, bias, kernel, p, g, plan=plan)
    ref = naive.lut_conv2d(x, cb, codes, bias, 1, p, g)
    assert out.shape == ref.shape and out.dtype == np.float32
    _close(out, ref)
    _close(K.conv_fused(x, cb, codes, bias, kernel, p, g, plan=plan, relu=True), np.maximum(ref, 0))


def test_conv_fused_on_random_shapes():
    rng = np.random.default_rng(11)
    for _ in range(6):
        g = int(rng.integers(1, 3))
        c = g * int(rng.integers(1, 12))
        o = g * int(rng.integers(1, 6))
        kh, kw = (int(v) for v in rng.integers(1, 5, 2))
        h, w = int(rng.integers(kh, 16)), int(rng.integers(kw, 16))
        p = (int(rng.integers(0, kh)), int(rng.integers(0, kw)))
        d, n_code = int(rng.integers(1, 9)), int(rng.integers(2, 40))
        case = (int(rng.integers(1, 3)), c, h, w, o, (kh, kw), 1, p, g, d, n_code)
        x, cb, codes, bias, kernel, _, _, _ = _conv_case(case, seed=int(rng.integers(1000)))
        plan = (int(rng.integers(1, h + 1)), int(rng.integers(1, o // g + 1)))
        _close(K.conv_fused(x, cb, codes, bias, kernel, p, g, plan=plan),
               naive.lut_conv2d(x, cb, codes, bias, 1, p, g))


def test_fused_plan_bands_and_chunks():
    geo = K.conv_geometry(224, 224, 3, 1, 1)
    rows, n_chunk = K.fused_plan(geo, 1, 1, 64, threads=1)
    assert 1 < rows < geo.out_h and n_chunk == 1
    assert rows * geo.phase_w >= K._FUSED_POSITIONS > (rows - 1) * geo.phase_w
    small = K.conv_geometry(7, 7, 3, 1, 1)
    assert K.fused_plan(small, 1, 1, 5, threads=4) == (7, 4)  # one band: outputs split instead
    assert K.fused_plan(small, 1, 1, 3, threads=8) == (7, 3)  # never more chunks than outputs


def test_conv_fused_rejects_bad_inputs():
    x, cb, codes, bias, kernel, s, p, g = _conv_case(CONV_CASES[1])
    with pytest.raises(ValueError, match="subspaces"):
        K.conv_fused(x, cb, codes[..., :0], bias, kernel, p)
    with pytest.raises(ValueError, match="groups"):
        K.conv_fused(x, cb, codes, bias, kernel, p, groups=3)
    bad = codes.copy()
    bad[0, 0, 0, 0] = cb.shape[1]
    with pytest.raises(ValueError, match="code"):
        K.conv_fused(x, cb, bad, bias, kernel, p)
    with pytest.raises(ValueError, match="plan"):
        K.conv_fused(x, cb, codes, bias, kernel, p, plan=(1, codes.shape[0] + 1))

def test_maxpool_matches_caffe_on_random_shapes():
    rng = np.random.default_rng(5)
    for _ in range(8):
        k = int(rng.integers(1, 5))
        s, p = int(rng.integers(1, 4)), int(rng.integers(0, k))
        h, w = int(rng.integers(k, 17)), int(rng.integers(k, 17))
        x = rng.standard_normal((int(rng.integers(1, 3)), int(rng.integers(1, 5)), h, w))
        x = x.astype(np.float32)
        ref = naive.caffe_max_pool(x, k, s, p)
        out = K.maxpool(x, k, s, p, ref.shape[2:])
        np.testing.assert_array_equal(out, ref)
        for kernel in (K._maxpool, K._maxpool_np):  # whichever the wrapper did not run
            other = np.empty_like(out)
            kernel(x, k, k, s, s, p, p, other)
            np.testing.assert_array_equal(other, ref)


def test_maxpool_rejects_windows_outside_the_input():
    x = np.zeros((1, 1, 4, 4), np.float32)
    with pytest.raises(ValueError, match="outside"):
        K.maxpool(x, 2, 2, 0, (3, 2))
    with pytest.raises(ValueError, match="padding"):
        K.maxpool(x, 2, 2, 2, (2, 2))

def test_conv_without_bias_is_the_bias_free_sum():
    x, cb, codes, bias, kernel, s, p, g = _conv_case(CONV_CASES[2])
    geo = K.conv_geometry(x.shape[2], x.shape[3], kernel, s, p)
    table = K.conv_table(x, cb, kernel, s, p, g)
    with_bias = K.conv_accumulate(table, codes, bias, geo)
    without = K.conv_accumulate(table, codes, None, geo)
    _close(with_bias - without, np.broadcast_to(bias[None, :, None, None], with_bias.shape))
    _close(without, naive.lut_conv2d(x, cb, codes, None, s, p, g))


@pytest.mark.parametrize("case", [CONV_CASES[2], CONV_CASES[6], CONV_CASES[7]])
def test_conv_table_layout(case):
    """Entry (n, g, m, k) at the phase position of padded (h, w) is <x subvector, codeword k>."""
    x, cb, codes, bias, kernel, s, p, g = _conv_case(case)
    (sh, sw), (ph, pw) = (s, s) if np.ndim(s) == 0 else s, (p, p) if np.ndim(p) == 0 else p
    n, c, h, w = x.shape
    n_sub, n_code, d = cb.shape
    cg = c // g
    geo = K.conv_geometry(h, w, kernel, s, p)
    table = K.conv_table(x, cb, kernel, s, p, g)
    assert table.shape == (n, g, n_sub, n_code, geo.positions)
    xp = np.zeros((n, g, n_sub * d, h + 2 * ph, w + 2 * pw), np.float32)
    xp[:, :, :cg, ph : ph + h, pw : pw + w] = x.reshape(n, g, cg, h, w)
    hq, wq = geo.phase_h, geo.phase_w
    rows = (geo.out_h - 1) * sh + kernel[0]
    cols = (geo.out_w - 1) * sw + kernel[1]
    for y in range(rows):
        for z in range(cols):
            pos = ((y % sh) * sw + z % sw) * hq * wq + (y // sh) * wq + z // sw
            sub = xp[:, :, :, y, z].reshape(n, g, n_sub, d)
            expected = np.einsum("ngmd,mkd->ngmk", sub, cb)
            _close(table[..., pos], expected)


def test_conv_geometry_offsets_address_the_strided_inputs():
    geo = K.conv_geometry(227, 227, 11, 4)
    assert (geo.out_h, geo.out_w) == (55, 55)
    hq, wq = geo.phase_h, geo.phase_w
    for i, j in [(0, 0), (3, 7), (10, 10), (4, 9)]:
        off = geo.offsets[i * 11 + j]
        for oh, ow in [(0, 0), (54, 54), (17, 3)]:
            y, z = oh * 4 + i, ow * 4 + j  # padded input position read by output (oh, ow)
            pos = ((y % 4) * 4 + z % 4) * hq * wq + (y // 4) * wq + z // 4
            assert off + oh * wq + ow == pos
    assert geo.positions >= geo.offsets.max() + geo.out_h * wq  # wide reads stay in the row


@pytest.mark.parametrize("n,c,o,d,n_code", [(1, 7, 5, 2, 16), (3, 12, 9, 4, 2), (2, 10, 6, 1, 256),
                                            (1, 5, 3, 5, 16)])
def test_linear_matches_naive_lut(n, c, o, d, n_code):
    rng = np.random.default_rng(c * o)
    n_sub = -(-c // d)
    x = rng.standard_normal((n, c)).astype(np.float32)
    cb = rng.standard_normal((n_sub, n_code, d)).astype(np.float32)
    codes = rng.integers(0, n_code, (o, n_sub)).astype(np.uint8)
    bias = rng.standard_normal(o).astype(np.float32)
    table = K.linear_table(x, cb)
    assert table.shape == (n, n_sub, n_code)
    out = K.linear_accumulate(table, np.ascontiguousarray(codes.T), bias)
    _close(out, naive.lut_linear(x, cb, codes, bias))
    _close(K.linear_accumulate(table, codes.T, None), naive.lut_linear(x, cb, codes, None))


def test_linear_accumulate_spans_several_output_blocks():
    rng = np.random.default_rng(1)
    o = 2 * K._O_BLOCK + 3
    table = rng.standard_normal((2, 3, 4)).astype(np.float32)
    codes_t = rng.integers(0, 4, (3, o)).astype(np.uint8)
    out = K.linear_accumulate(table, codes_t, None)
    ref = sum(table[:, m, codes_t[m]] for m in range(3))
    _close(out, ref)


@pytest.mark.skipif(not HAVE_NUMBA, reason="compares the Numba kernels with the NumPy fallbacks")
@pytest.mark.parametrize("case", [CONV_CASES[2], CONV_CASES[3], CONV_CASES[4], CONV_CASES[7]])
def test_numpy_fallbacks_match_kernels(case):
    x, cb, codes, bias, kernel, s, p, g = _conv_case(case, seed=3)
    geo = K.conv_geometry(x.shape[2], x.shape[3], kernel, s, p)
    xr = K._phase_split(x, geo)
    shape = (x.shape[0], g, cb.shape[0], cb.shape[1], geo.positions)
    t_jit, t_np = np.empty(shape, np.float32), np.empty(shape, np.float32)
    K._conv_table(xr, cb, g, t_jit)
    K._conv_table_np(xr, cb, g, t_np)
    _close(t_jit, t_np)
    flat_codes = codes.reshape(codes.shape[0], -1, cb.shape[0])
    out_shape = (x.shape[0], codes.shape[0], geo.out_h, geo.out_w)
    y_jit, y_np = np.empty(out_shape, np.float32), np.empty(out_shape, np.float32)
    plan = (2, geo.out_h, 2)
    K._conv_accumulate(t_np, flat_codes, geo.offsets, bias, geo.phase_w, y_jit, *plan)
    K._conv_accumulate_np(t_np, flat_codes, geo.offsets, bias, geo.phase_w, y_np, *plan)
    _close(y_jit, y_np)

    if K._pair(case[6], "stride") == (1, 1):
        f_jit, f_np = np.empty(out_shape, np.float32), np.empty(out_shape, np.float32)
        for relu in (False, True):
            K._conv_fused(xr, cb, flat_codes, geo.offsets, bias, g, geo.phase_w, f_jit, 2, 2, relu)
            K._conv_fused_np(xr, cb, flat_codes, geo.offsets, bias, g, geo.phase_w, f_np, 2, 2, relu)
            _close(f_jit, f_np)
            _close(f_jit, np.maximum(y_np, 0) if relu else y_np)

    rng = np.random.default_rng(4)
    xl = rng.standard_normal((2, 19)).astype(np.float32)
    cbl = rng.standard_normal((10, 16, 2)).astype(np.float32)
    l_jit, l_np = np.empty((2, 10, 16), np.float32), np.empty((2, 10, 16), np.float32)
    K._linear_table(xl, cbl, l_jit)
    K._linear_table_np(xl, cbl, l_np)
    _close(l_jit, l_np)
    codes_t = rng.integers(0, 16, (10, 7)).astype(np.uint8)
    bl = np.arange(7, dtype=np.float32)
    o_jit, o_np = np.empty((2, 7), np.float32), np.empty((2, 7), np.float32)
    K._linear_accumulate(l_np, codes_t, bl, o_jit, 3)
    K._linear_accumulate_np(l_np, codes_t, bl, o_np, 3)
    _close(o_jit, o_np)
    p_jit, p_np = np.empty((2, 5, 256), np.float32), np.empty((2, 5, 256), np.float32)
    K._linear_pair_table(l_np, p_jit)
    K._linear_pair_table_np(l_np, p_np)
    _close(p_jit, p_np)
    xn = rng.standard_normal((2, 7, 12)).astype(np.float32)
    n_jit, n_np = np.empty_like(xn), np.empty_like(xn)
    K._lrn(xn, 5, 1e-2, 0.75, 2.0, n_jit)
    K._lrn_np(xn, 5, 1e-2, 0.75, 2.0, n_np)
    _close(n_jit, n_np)


_FALLBACK_SCRIPT = textwrap.dedent("""
    import json, sys, warnings
    sys.modules["numba"] = None  # as if numba were not installed
    import numpy as np
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import qcnn._jit
        import qcnn.kernels as K
        import qcnn.qlayers
        import qcnn.net  # noqa: F401
        at_import = len(caught)  # Numba is first needed by a kernel call
        a = np.load(sys.argv[1])
        g = int(a["groups"])
        geo = K.conv_geometry(a["x"].shape[2], a["x"].shape[3], a["codes"].shape[1:3], 2, 1)
        conv = K.conv_accumulate(K.conv_table(a["x"], a["cb"], a["codes"].shape[1:3], 2, 1, g),
                                 a["codes"], a["bias"], geo)
        table = K.linear_table(a["xl"], a["cbl"])
        lin = K.linear_accumulate(table, a["codes_t"], None)
        pairs = K.linear_accumulate(K.linear_pair_table(table), K.pair_codes(a["codes_t"], 16),
                                    None)
        lrn = K.lrn(a["x"], 3, 0.1, 0.6, 1.5)
    np.savez(sys.argv[2], conv=conv, lin=lin, pairs=pairs, lrn=lrn)
    mine = [w for w in caught if issubclass(w.category, qcnn._jit.NumbaMissingWarning)]
    print(json.dumps({"have_numba": qcnn._jit.HAVE_NUMBA, "n": len(mine), "at_import": at_import,
                      "runtime": all(issubclass(w.category, RuntimeWarning) for w in mine),
                      "message": str(mine[0].message) if mine else ""}))
""")


def test_fallback_without_numba_warns_once_and_matches(tmp_path):
    x, cb, codes, bias, kernel, s, p, g = _conv_case(CONV_CASES[2], seed=5)
    rng = np.random.default_rng(6)
    xl = rng.standard_normal((2, 9)).astype(np.float32)
    cbl = rng.standard_normal((3, 16, 3)).astype(np.float32)
    codes_t = rng.integers(0, 16, (3, 11)).astype(np.uint8)
    np.savez(tmp_path / "in.npz", x=x, cb=cb, codes=codes, bias=bias, groups=g, xl=xl, cbl=cbl,
             codes_t=codes_t)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, "-c", _FALLBACK_SCRIPT, str(tmp_path / "in.npz"),
                          str(tmp_path / "out.npz")], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=120)
    assert run.returncode == 0, run.stderr
    info = json.loads(run.stdout.strip().splitlines()[-1])
    assert info["have_numba"] is False
    assert info["n"] == 1 and info["runtime"] and info["at_import"] == 0, info
    assert "numba" in info["message"] and "NumPy fallback" in info["message"]
    got = np.load(tmp_path / "out.npz")
    geo = K.conv_geometry(x.shape[2], x.shape[3], kernel, 2, 1)
    conv = K.conv_accumulate(K.conv_table(x, cb, kernel, 2, 1, g), codes, bias, geo)
    _close(got["conv"], conv)
    _close(got["lin"], K.linear_accumulate(K.linear_table(xl, cbl), codes_t, None))
    _close(got["pairs"], naive.lut_linear(xl, cbl, codes_t.T, None))
    _close(got["lrn"], naive.caffe_lrn(x, 3, 0.1, 0.6, 1.5))


def test_jit_module_changes_no_numba_config():
    if not HAVE_NUMBA:
        pytest.skip("numba is not importable")
    code = ("from numba.core import config as c; before = dict(vars(c)); import qcnn.kernels; "
            "after = dict(vars(c)); print(sorted(k for k in after if k.isupper() and "
            "before.get(k, object()) is not after[k]))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


# ---- bad inputs: ValueError naming what was wrong


def _small():
    x, cb, codes, bias, kernel, s, p, g = _conv_case(CONV_CASES[1])
    return x, cb, codes, bias


def test_conv_table_rejects_bad_inputs():
    x, cb, codes, bias = _small()
    with pytest.raises(ValueError, match="x must be float32"):
        K.conv_table(x.astype(np.float64), cb, 3, 1, 1)
    with pytest.raises(ValueError, match="x must be a 4-d array"):
        K.conv_table(x[0], cb, 3, 1, 1)
    with pytest.raises(ValueError, match=r"ceil\(4 / 2\) = 2"):
        K.conv_table(x, cb[:1], 3, 1, 1)
    with pytest.raises(ValueError, match="do not split into 3 groups"):
        K.conv_table(x, cb, 3, 1, 1, groups=3)
    with pytest.raises(ValueError, match="smaller than the 9x9 kernel"):
        K.conv_table(x, cb, 9, 1, 1)
    with pytest.raises(ValueError, match="stride must be >= 1"):
        K.conv_geometry(6, 6, 3, 0, 1)


def test_conv_accumulate_rejects_bad_inputs():
    x, cb, codes, bias = _small()
    geo = K.conv_geometry(6, 6, 3, 1, 1)
    table = K.conv_table(x, cb, 3, 1, 1)
    with pytest.raises(ValueError, match="codes must be uint8"):
        K.conv_accumulate(table, codes.astype(np.int64), bias, geo)
    bad = codes.copy()
    bad[0, 0, 0, 0] = 16
    with pytest.raises(ValueError, match="holds code 16.*only 16 codewords"):
        K.conv_accumulate(table, bad, bias, geo)
    with pytest.raises(ValueError, match="same input"):
        K.conv_accumulate(table, codes, bias, K.conv_geometry(7, 6, 3, 1, 1))
    with pytest.raises(ValueError, match="do not match"):
        K.conv_accumulate(table, codes[:, :2], bias, geo)
    with pytest.raises(ValueError, match="one per output"):
        K.conv_accumulate(table, codes, bias[:2], geo)


def test_linear_rejects_bad_inputs():
    cb = np.ones((3, 4, 2), np.float32)
    with pytest.raises(ValueError, match=r"ceil\(7 / 2\) = 4"):
        K.linear_table(np.ones((1, 7), np.float32), cb)
    table = K.linear_table(np.ones((1, 6), np.float32), cb)
    with pytest.raises(ValueError, match="one per subspace"):
        K.linear_accumulate(table, np.zeros((5, 3), np.uint8), None)
    with pytest.raises(ValueError, match="only 4 codewords"):
        K.linear_accumulate(table, np.full((3, 5), 4, np.uint8), None)


# ---- the speed paths: plans, pair tables, buffers, LRN


@pytest.mark.parametrize("plan", [(1, 1, 1), (3, 2, 2), (4, 7, 3), (2, 100, 8)])
def test_conv_accumulate_any_plan_gives_the_same_result(plan):
    """Chunks of outputs, segments of output rows and subspace blocks only reorder the sums."""
    x, cb, codes, bias, kernel, s, p, g = _conv_case((2, 12, 9, 8, 8, 3, 1, 1, 2, 2, 16), seed=9)
    geo = K.conv_geometry(x.shape[2], x.shape[3], kernel, s, p)
    table = K.conv_table(x, cb, kernel, s, p, g)
    chunks = min(plan[0], codes.shape[0] // g)
    out = K.conv_accumulate(table, codes, bias, geo, plan=K.AccumulatePlan(chunks, *plan[1:]))
    _close(out, naive.lut_conv2d(x, cb, codes, bias, s, p, g))


def test_accumulate_plan_fits_the_cache_and_feeds_every_thread():
    geo = K.conv_geometry(13, 13, 3, 1, 1)
    plan = K.accumulate_plan(geo, 1, 1, 32, 128, 384, threads=4, cache_bytes=1 << 20)
    assert plan.n_chunk == 4 and plan.seg_rows == 13
    assert 1 <= plan.m_block <= 4 and plan.m_block * 128 * 4 * geo.positions <= (1 << 20) // 2
    # enough images x groups: one chunk each; a tiny cache: one subspace per block
    assert K.accumulate_plan(geo, 4, 2, 32, 128, 384, threads=4, cache_bytes=1024).n_chunk == 1
    assert K.accumulate_plan(geo, 1, 1, 32, 128, 384, cache_bytes=1024).m_block == 1
    with pytest.raises(ValueError, match="invalid plan"):
        x, cb, codes, bias, kernel, s, p, g = _conv_case(CONV_CASES[1])
        K.conv_accumulate(K.conv_table(x, cb, kernel, s, p, g), codes, bias,
                          K.conv_geometry(6, 6, 3, 1, 1), plan=K.AccumulatePlan(0, 1, 1))


@pytest.mark.parametrize("n,c,o,d,n_code", [(1, 9, 40, 3, 4), (2, 16, 600, 2, 16),
                                            (3, 7, 20, 1, 2)])
def test_linear_pair_tables_match_naive_lut(n, c, o, d, n_code):
    rng = np.random.default_rng(o)
    n_sub = -(-c // d)
    x = rng.standard_normal((n, c)).astype(np.float32)
    cb = rng.standard_normal((n_sub, n_code, d)).astype(np.float32)
    codes = rng.integers(0, n_code, (o, n_sub)).astype(np.uint8)
    bias = rng.standard_normal(o).astype(np.float32)
    pairs = K.linear_pair_table(K.linear_table(x, cb))
    assert pairs.shape == (n, -(-n_sub // 2), n_code * n_code)
    pc = K.pair_codes(np.ascontiguousarray(codes.T), n_code)
    assert pc.dtype == np.uint16 and pc.shape == (-(-n_sub // 2), o)
    _close(K.linear_accumulate(pairs, pc, bias), naive.lut_linear(x, cb, codes, bias))


def test_pair_codes_and_uint16_codes_are_checked():
    with pytest.raises(ValueError, match="holds code 4"):
        K.pair_codes(np.full((2, 3), 4, np.uint8), 4)
    table = np.zeros((1, 2, 16), np.float32)
    with pytest.raises(ValueError, match="holds code 16"):
        K.linear_accumulate(table, np.full((2, 3), 16, np.uint16), None)
    with pytest.raises(ValueError, match="uint8 \\(or uint16 pair codes\\)"):
        K.linear_accumulate(table, np.zeros((2, 3), np.int32), None)


def test_out_and_scratch_buffers_are_used_and_checked():
    x, cb, codes, bias, kernel, s, p, g = _conv_case(CONV_CASES[2])
    geo = K.conv_geometry(x.shape[2], x.shape[3], kernel, s, p)
    fresh = K.conv_table(x, cb, kernel, s, p, g)
    out = np.full(fresh.shape, np.nan, np.float32)
    scratch = np.full((x.shape[0], x.shape[1], geo.positions), np.nan, np.float32)
    got = K.conv_table(x, cb, kernel, s, p, g, out=out, scratch=scratch)
    assert got is out
    np.testing.assert_array_equal(got, fresh)
    with pytest.raises(ValueError, match="out must be a C-contiguous float32 array"):
        K.conv_table(x, cb, kernel, s, p, g, out=out[..., :-1])
    xl = np.ones((2, 6), np.float32)
    buf = np.empty((2, 3, 4), np.float32)
    assert K.linear_table(xl, np.ones((3, 4, 2), np.float32), out=buf) is buf


def test_unchecked_codes_give_the_same_result():
    x, cb, codes, bias, kernel, s, p, g = _conv_case(CONV_CASES[4])
    geo = K.conv_geometry(x.shape[2], x.shape[3], kernel, s, p)
    table = K.conv_table(x, cb, kernel, s, p, g)
    np.testing.assert_array_equal(K.conv_accumulate(table, codes, bias, geo, check=False),
                                  K.conv_accumulate(table, codes, bias, geo))


@pytest.mark.parametrize("size,alpha,beta,k", [(5, 1e-4, 0.75, 1.0), (5, 5e-4, 0.75, 2.0),
                                               (3, 0.1, 0.5, 1.0), (4, 0.3, 0.9, 0.5)])
def test_lrn_matches_caffe(size, alpha, beta, k):
    x = np.random.default_rng(size).standard_normal((2, 9, 5, 3)).astype(np.float32) * 20
    _close(K.lrn(x, size, alpha, beta, k), naive.caffe_lrn(x, size, alpha, beta, k))
    with pytest.raises(ValueError, match="size must be >= 1"):
        K.lrn(x, 0)


def test_numba_is_imported_by_the_first_kernel_not_before():
    # A net of float layers (SqueezeNet's run modes) never imports Numba; a quantized layer does,
    # and afterwards every kernel is a Numba dispatcher.
    code = textwrap.dedent("""
        import json, sys
        import numpy as np
        import qcnn, qcnn.model, qcnn.cli  # noqa: F401
        from qcnn.layers import Conv2d, Linear, MaxPool2d, ReLU, Flatten
        from qcnn.net import Net
        from qcnn.qlayers import QConv2d
        rng = np.random.default_rng(0)
        net = Net([("c", Conv2d(rng.standard_normal((4, 3, 3, 3)), None, padding=1, name="c")),
                   ("r", ReLU("r")), ("p", MaxPool2d(3, 2, name="p")), ("f", Flatten("f")),
                   ("l", Linear(rng.standard_normal((2, 36)), None, name="l"))])
        y = net(rng.standard_normal((1, 3, 7, 7)).astype(np.float32))
        before = "numba" in sys.modules
        q = QConv2d(rng.standard_normal((1, 4, 3)).astype(np.float32),
                    rng.integers(0, 4, (2, 3, 3, 1), dtype=np.uint8), None, in_channels=3, padding=1)
        q(rng.standard_normal((1, 3, 5, 5)).astype(np.float32))
        from qcnn import kernels
        print(json.dumps({"shape": list(y.shape), "before": before,
                          "after": "numba" in sys.modules,
                          "kernel": type(kernels._conv_fused).__name__}))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert info["shape"] == [1, 2] and info["before"] is False
    if HAVE_NUMBA:
        assert info["after"] is True and info["kernel"] != "_Lazy", info  # a Numba dispatcher
