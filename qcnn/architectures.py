"""Layer specs of the reference networks (see docs/architecture.md for the spec schema).

Each function returns a spec list; ``Net.from_spec(spec, tensors)`` builds the net, ``random_tensors``
gives weights of the true shapes (for benchmarks and tests). Layer names follow each publisher's file
(Caffe layer names for the Caffe models, torchvision state-dict prefixes for torchvision models).
"""

from __future__ import annotations

import numpy as np

from .layers import pair

__all__ = ["ARCHITECTURES", "get", "random_tensors", "weight_layers"]


def conv(name, cin, cout, k, stride=1, pad=0, groups=1, bias=True):
    return {"type": "conv", "name": name, "in": cin, "out": cout, "kernel": list(pair(k)),
            "stride": list(pair(stride)), "pad": list(pair(pad)), "groups": groups, "bias": bias}


def linear(name, cin, cout, bias=True):
    return {"type": "linear", "name": name, "in": cin, "out": cout, "bias": bias}


def relu(name):
    return {"type": "relu", "name": name}


def maxpool(name, k, s, pad=0, ceil=True):
    return {"type": "maxpool", "name": name, "kernel": list(pair(k)), "stride": list(pair(s)),
            "pad": list(pair(pad)), "ceil": ceil}


def lrn(name, size=5, alpha=1e-4, beta=0.75, k=1.0):
    return {"type": "lrn", "name": name, "size": size, "alpha": alpha, "beta": beta, "k": k}


def simple(kind, name):
    return {"type": kind, "name": name}


def _classifier(fc6_in, names=("fc6", "fc7", "fc8")):
    f6, f7, f8 = names
    return [simple("flatten", "flatten"), linear(f6, fc6_in, 4096), relu(f"relu_{f6}"),
            simple("dropout", f"drop_{f6}"), linear(f7, 4096, 4096), relu(f"relu_{f7}"),
            simple("dropout", f"drop_{f7}"), linear(f8, 4096, 1000), simple("softmax", "prob")]


def alexnet_caffe() -> list[dict]:
    """BVLC AlexNet (grouped conv2/4/5, LRN after relu1/relu2), 227x227 input."""
    return [
        conv("conv1", 3, 96, 11, 4), relu("relu1"), lrn("norm1"), maxpool("pool1", 3, 2),
        conv("conv2", 96, 256, 5, 1, 2, groups=2), relu("relu2"), lrn("norm2"), maxpool("pool2", 3, 2),
        conv("conv3", 256, 384, 3, 1, 1), relu("relu3"),
        conv("conv4", 384, 384, 3, 1, 1, groups=2), relu("relu4"),
        conv("conv5", 384, 256, 3, 1, 1, groups=2), relu("relu5"), maxpool("pool5", 3, 2),
        *_classifier(9216),
    ]


def cnn_s_caffe() -> list[dict]:
    """VGG_CNN_S (Chatfield et al. 2014), 224x224 input; conv2 pad 1 as in the Q-CNN code."""
    return [
        conv("conv1", 3, 96, 7, 2), relu("relu1"), lrn("norm1", 5, 5e-4, 0.75, 2.0),
        maxpool("pool1", 3, 3),
        conv("conv2", 96, 256, 5, 1, 1), relu("relu2"), maxpool("pool2", 2, 2),
        conv("conv3", 256, 512, 3, 1, 1), relu("relu3"),
        conv("conv4", 512, 512, 3, 1, 1), relu("relu4"),
        conv("conv5", 512, 512, 3, 1, 1), relu("relu5"), maxpool("pool5", 3, 3),
        *_classifier(18432),
    ]


def vgg16_caffe() -> list[dict]:
    """VGG_ILSVRC_16_layers, 224x224 input."""
    spec, cin = [], 3
    for block, (width, n) in enumerate([(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)], 1):
        for i in range(1, n + 1):
            spec += [conv(f"conv{block}_{i}", cin, width, 3, 1, 1), relu(f"relu{block}_{i}")]
            cin = width
        spec.append(maxpool(f"pool{block}", 2, 2))
    return spec + _classifier(25088)


def vgg16_torchvision() -> list[dict]:
    """torchvision vgg16 (state-dict names features.N / classifier.N), 224x224 input."""
    spec, cin, idx = [], 3, 0
    for width, n in [(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)]:
        for _ in range(n):
            spec += [conv(f"features.{idx}", cin, width, 3, 1, 1), relu(f"features.{idx + 1}")]
            cin, idx = width, idx + 2
        spec.append(maxpool(f"features.{idx}", 2, 2, ceil=False))
        idx += 1
    return spec + _classifier(25088, ("classifier.0", "classifier.3", "classifier.6"))


def alexnet_torchvision() -> list[dict]:
    """torchvision alexnet ("one weird trick"), 224x224 input (its adaptive pool is then the identity)."""
    return [
        conv("features.0", 3, 64, 11, 4, 2), relu("features.1"), maxpool("features.2", 3, 2, ceil=False),
        conv("features.3", 64, 192, 5, 1, 2), relu("features.4"), maxpool("features.5", 3, 2, ceil=False),
        conv("features.6", 192, 384, 3, 1, 1), relu("features.7"),
        conv("features.8", 384, 256, 3, 1, 1), relu("features.9"),
        conv("features.10", 256, 256, 3, 1, 1), relu("features.11"),
        maxpool("features.12", 3, 2, ceil=False),
        *_classifier(9216, ("classifier.1", "classifier.4", "classifier.6")),
    ]


def _fire(prefix, cin, s, e1, e3, names):
    """Fire module: squeeze 1x1 + ReLU, then concat(expand 1x1 + ReLU, expand 3x3 pad 1 + ReLU)."""
    sq, r_sq, x1, r_x1, x3, r_x3, cat = (f"{prefix}{n}" for n in names)
    return [conv(sq, cin, s, 1), relu(r_sq),
            {"type": "concat", "name": cat, "branches": [
                [conv(x1, s, e1, 1), relu(r_x1)],
                [conv(x3, s, e3, 3, 1, 1), relu(r_x3)]]}]


_FIRES = [(16, 64), (16, 64), (32, 128), (32, 128), (48, 192), (48, 192), (64, 256), (64, 256)]


def squeezenet1_0_caffe() -> list[dict]:
    """SqueezeNet 1.0 in Caffe conventions (DeepScale deploy.prototxt), 227x227 input."""
    names = ("/conv1x1_1", "/relu_conv1x1_1", "/conv1x1_2", "/relu_conv1x1_2", "/conv3x3_2",
             "/relu_conv3x3_2", "/concat")
    spec, cin = [conv("conv1", 3, 96, 7, 2), relu("relu_conv1"), maxpool("pool1", 3, 2)], 96
    for i, (s, e) in enumerate(_FIRES, 2):
        spec += _fire(f"fire{i}", cin, s, e, e, names)
        cin = 2 * e
        if i in (4, 8):
            spec.append(maxpool(f"pool{i}", 3, 2))
    return spec + [simple("dropout", "drop9"), conv("conv10", 512, 1000, 1, 1, 1), relu("relu_conv10"),
                   simple("gap", "pool10"), simple("flatten", "flatten"), simple("softmax", "prob")]


def squeezenet1_1_torchvision() -> list[dict]:
    """torchvision squeezenet1_1 (state-dict names), 224x224 input."""
    names = (".squeeze", ".squeeze_activation", ".expand1x1", ".expand1x1_activation", ".expand3x3",
             ".expand3x3_activation", ".concat")
    spec, cin = [conv("features.0", 3, 64, 3, 2), relu("features.1"), maxpool("features.2", 3, 2)], 64
    idx = 3
    for i, (s, e) in enumerate(_FIRES):
        spec += _fire(f"features.{idx}", cin, s, e, e, names)
        cin, idx = 2 * e, idx + 1
        if i in (1, 3):
            spec.append(maxpool(f"features.{idx}", 3, 2))
            idx += 1
    return spec + [simple("dropout", "classifier.0"), conv("classifier.1", 512, 1000, 1),
                   relu("classifier.2"), simple("gap", "classifier.3"), simple("flatten", "flatten"),
                   simple("softmax", "prob")]


ARCHITECTURES = {
    "alexnet-caffe": alexnet_caffe,
    "cnn-s-caffe": cnn_s_caffe,
    "vgg16-caffe": vgg16_caffe,
    "alexnet-torchvision": alexnet_torchvision,
    "vgg16-torchvision": vgg16_torchvision,
    "squeezenet1_0-caffe": squeezenet1_0_caffe,
    "squeezenet1_1-torchvision": squeezenet1_1_torchvision,
}


def get(name: str) -> list[dict]:
    """The spec of a named architecture."""
    try:
        return ARCHITECTURES[name]()
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; known: {sorted(ARCHITECTURES)}") from None


def weight_layers(spec: list[dict]) -> list[dict]:
    """Conv and linear layer specs in forward order, descending into concat branches."""
    out = []
    for s in spec:
        if s["type"] == "concat":
            for b in s["branches"]:
                out += weight_layers(b)
        elif s["type"] in ("conv", "linear"):
            out.append(s)
    return out


def random_tensors(spec: list[dict], seed: int = 0) -> dict[str, np.ndarray]:
    """He-initialised float32 weights (and small biases) of the spec's true shapes."""
    rng = np.random.default_rng(seed)
    t = {}
    for s in weight_layers(spec):
        if s["type"] == "conv":
            shape = (s["out"], s["in"] // s["groups"], *s["kernel"])
        else:
            shape = (s["out"], s["in"])
        fan_in = int(np.prod(shape[1:]))
        t[f"{s['name']}.weight"] = (rng.standard_normal(shape, np.float32)
                                    * np.float32(np.sqrt(2.0 / fan_in)))
        if s["bias"]:
            t[f"{s['name']}.bias"] = rng.standard_normal(s["out"], np.float32) * np.float32(0.01)
    return t
