"""A network: an ordered list of named layers, plus the branch-and-concatenate layer.

A net describes itself as a JSON-able spec (a list of layer specs) and a flat dict of tensors, and is
rebuilt from both with every shape checked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from . import layers as L
from . import qlayers as Q

__all__ = ["Net", "Concat", "StopForward", "LAYER_TYPES", "layer_from_spec"]


class StopForward(Exception):
    """Raised by a forward hook to end a pass early (the quantizer needs only the layers below)."""


Hook = Callable[[str, object, np.ndarray, np.ndarray], None]


class Net:
    """An ordered list of named layers.

    Parameters
    ----------
    layers : list of (name, layer)
        Leaf names must be unique in the whole net, including inside `Concat` branches.

    Examples
    --------
    >>> import numpy as np
    >>> from qcnn.layers import Conv2d, ReLU
    >>> net = Net([("conv1", Conv2d(np.ones((2, 3, 1, 1)), name="conv1")), ("relu1", ReLU("relu1"))])
    >>> net(np.ones((1, 3, 4, 4), np.float32)).shape
    (1, 2, 4, 4)
    """

    def __init__(self, layers):
        self.layers = [(str(n), layer) for n, layer in layers]
        names = [n for n, _ in self.named_layers()]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"layer names must be unique, repeated: {dup}")

    def __call__(self, x, hook: Hook | None = None):
        layers, i = self.layers, 0
        while i < len(layers):
            name, layer = layers[i]
            if isinstance(layer, Concat):
                y = layer(x, hook)
            elif (hook is None and getattr(layer, "fuses_relu", False) and i + 1 < len(layers)
                  and isinstance(layers[i + 1][1], L.ReLU)):
                y = layer(x, relu=True)  # the ReLU without another pass over the output
                i += 1
            else:
                y = layer(x)
                if hook is not None:
                    hook(name, layer, x, y)
            x = y
            i += 1
        return x

    def __len__(self):
        return len(self.layers)

    def __repr__(self):
        return "Net(\n" + "".join(f"  {n}: {type(lay).__name__}\n" for n, lay in self.layers) + ")"

    def named_layers(self) -> Iterator[tuple[str, object]]:
        """(name, leaf layer) in forward order, descending into `Concat` branches."""
        for name, layer in self.layers:
            if isinstance(layer, Concat):
                for branch in layer.branches:
                    yield from branch.named_layers()
            else:
                yield name, layer

    def get(self, name: str):
        for n, layer in self.named_layers():
            if n == name:
                return layer
        raise KeyError(f"no layer named {name!r}")

    def replace(self, name: str, new) -> Net:
        """A new Net with leaf `name` replaced by `new` (other layers are shared, not copied)."""
        found = False

        def walk(net: Net) -> Net:
            nonlocal found
            out = []
            for n, layer in net.layers:
                if isinstance(layer, Concat):
                    layer = Concat([walk(b) for b in layer.branches], layer.name)
                elif n == name:
                    layer, found = new, True
                out.append((n, layer))
            return Net(out)

        net = walk(self)
        if not found:
            raise KeyError(f"no layer named {name!r}")
        return net

    def to_spec(self) -> tuple[list[dict], dict[str, np.ndarray]]:
        spec, tensors = [], {}
        for _, layer in self.layers:
            spec.append(layer.spec())
            tensors.update(layer.tensors())
        return spec, tensors

    @classmethod
    def from_spec(cls, spec: list[dict], tensors: dict) -> Net:
        """Build a net; every tensor's shape is checked against the spec, extra tensors are refused."""
        seen = _Fetched(tensors)
        net = cls([(s["name"], layer_from_spec(s, seen)) for s in spec])
        extra = sorted(set(tensors) - seen.fetched)
        if extra:
            raise ValueError(f"tensors not used by any layer: {extra[:5]}{' ...' if len(extra) > 5 else ''}")
        return net


class _Fetched(dict):
    """The tensors, remembering which ones the layers fetched (``layers.check_tensor``)."""

    def __init__(self, tensors):
        super().__init__(tensors)
        self.fetched = set()

    def __getitem__(self, key):
        self.fetched.add(key)
        return super().__getitem__(key)


class Concat:
    """Run each branch on the same input and concatenate their outputs over channels (Fire module)."""

    def __init__(self, branches, name="concat"):
        self.branches = [b if isinstance(b, Net) else Net(b) for b in branches]
        self.name = name

    def __call__(self, x, hook: Hook | None = None):
        return np.concatenate([b(x, hook) for b in self.branches], axis=1)

    def spec(self) -> dict:
        return {"type": "concat", "name": self.name, "branches": [b.to_spec()[0] for b in self.branches]}

    def tensors(self) -> dict:
        t = {}
        for b in self.branches:
            t.update(b.to_spec()[1])
        return t

    @classmethod
    def from_spec(cls, s: dict, tensors: dict) -> Concat:
        return cls([Net([(c["name"], layer_from_spec(c, tensors)) for c in b]) for b in s["branches"]],
                   s["name"])


LAYER_TYPES = {
    "conv": L.Conv2d, "linear": L.Linear, "relu": L.ReLU, "maxpool": L.MaxPool2d,
    "avgpool": L.AvgPool2d, "gap": L.GlobalAvgPool, "lrn": L.LRN, "dropout": L.Dropout,
    "flatten": L.Flatten, "softmax": L.Softmax, "concat": Concat,
    "qconv": Q.QConv2d, "qlinear": Q.QLinear,
}


def layer_from_spec(s: dict, tensors: dict):
    try:
        cls = LAYER_TYPES[s["type"]]
    except KeyError:
        raise ValueError(f"layer {s.get('name')!r}: unknown layer type {s.get('type')!r}") from None
    return cls.from_spec(s, tensors)
