import numpy as np
import pytest

from qcnn.layers import Conv2d, Linear, ReLU
from qcnn.net import Concat, Net, StopForward


def _tiny():
    rng = np.random.default_rng(0)
    return Net([
        ("c1", Conv2d(rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4), padding=1, name="c1")),
        ("r1", ReLU("r1")),
        ("cat", Concat([[("a", Conv2d(rng.standard_normal((2, 4, 1, 1)), None, name="a"))],
                        [("b", Conv2d(rng.standard_normal((3, 4, 3, 3)), None, padding=1, name="b")),
                         ("rb", ReLU("rb"))]], name="cat")),
    ])


def test_concat_joins_branches_over_channels():
    net = _tiny()
    x = np.random.default_rng(1).standard_normal((2, 3, 5, 5)).astype(np.float32)
    y = net(x)
    h = np.maximum(net.get("c1")(x), 0)
    assert y.shape == (2, 5, 5, 5)
    np.testing.assert_allclose(y[:, :2], net.get("a")(h), rtol=1e-6)
    np.testing.assert_allclose(y[:, 2:], np.maximum(net.get("b")(h), 0), rtol=1e-6)


def test_named_layers_descend_into_branches_in_forward_order():
    assert [n for n, _ in _tiny().named_layers()] == ["c1", "r1", "a", "b", "rb"]


def test_hook_sees_every_leaf_and_can_stop():
    seen = []

    def hook(name, layer, x, y):
        seen.append((name, x.shape, y.shape))
        if name == "a":
            raise StopForward

    with pytest.raises(StopForward):
        _tiny()(np.zeros((1, 3, 4, 4), np.float32), hook)
    assert [s[0] for s in seen] == ["c1", "r1", "a"]
    assert seen[2][1:] == ((1, 4, 4, 4), (1, 2, 4, 4))


def test_replace_returns_new_net_and_keeps_old():
    net = _tiny()
    new_b = Conv2d(np.zeros((3, 4, 3, 3)), None, padding=1, name="b")
    net2 = net.replace("b", new_b)
    assert net2.get("b") is new_b and net.get("b") is not new_b
    assert net2.get("c1") is net.get("c1")
    with pytest.raises(KeyError, match="nope"):
        net.replace("nope", new_b)


def test_spec_round_trip_is_exact():
    net = _tiny()
    spec, tensors = net.to_spec()
    net2 = Net.from_spec(spec, tensors)
    x = np.random.default_rng(2).standard_normal((1, 3, 6, 6)).astype(np.float32)
    np.testing.assert_array_equal(net(x), net2(x))
    assert net2.to_spec()[0] == spec


def test_from_spec_refuses_wrong_shapes_and_extra_tensors():
    spec, tensors = _tiny().to_spec()
    bad = dict(tensors, **{"b.weight": np.zeros((3, 4, 2, 3), np.float32)})
    with pytest.raises(ValueError, match=r"b\.weight.*\(3, 4, 2, 3\).*\(3, 4, 3, 3\)"):
        Net.from_spec(spec, bad)
    with pytest.raises(ValueError, match="not used"):
        Net.from_spec(spec, dict(tensors, extra=np.zeros(1)))
    missing = {k: v for k, v in tensors.items() if k != "c1.bias"}
    with pytest.raises(ValueError, match="missing tensor 'c1.bias'"):
        Net.from_spec(spec, missing)
    with pytest.raises(ValueError, match="unknown layer type"):
        Net.from_spec([{"type": "warp", "name": "w"}], {})


def test_duplicate_names_refused():
    with pytest.raises(ValueError, match="unique"):
        Net([("x", ReLU("x")), ("x", ReLU("x"))])


def test_layers_reject_wrong_input():
    fc = Linear(np.zeros((2, 3)), np.zeros(2), name="fc")
    with pytest.raises(ValueError, match="fc: expected 3 input features"):
        fc(np.zeros((1, 4), np.float32))
    conv = Conv2d(np.zeros((2, 3, 1, 1)), name="cv")
    with pytest.raises(ValueError, match="cv: expected 3 input channels"):
        conv(np.zeros((1, 4, 2, 2), np.float32))


def test_relu_after_a_conv_is_fused_only_without_hooks():
    net = _tiny()
    x = np.random.default_rng(2).standard_normal((2, 3, 5, 5)).astype(np.float32)
    seen = []
    hooked = net(x, hook=lambda name, layer, a, b: seen.append(name))
    assert seen == ["c1", "r1", "a", "b", "rb"]  # hooks see every layer, the ReLUs included
    fused = net(x)
    np.testing.assert_allclose(fused, hooked, rtol=1e-6)
    assert (fused[:, 2:] >= 0).all() and (fused[:, :2] < 0).any()  # branch a has no ReLU
