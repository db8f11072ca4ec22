import numpy as np
import pytest

from qcnn import architectures as A
from qcnn.net import Net

# name -> (input size, parameter count of conv + FC weights and biases)
EXPECTED = {
    "alexnet-caffe": (227, 60_965_224),
    "cnn-s-caffe": (224, 102_908_520),
    "vgg16-caffe": (224, 138_357_544),
    "alexnet-torchvision": (224, 61_100_840),
    "vgg16-torchvision": (224, 138_357_544),
    "squeezenet1_0-caffe": (227, 1_248_424),
    "squeezenet1_1-torchvision": (224, 1_235_496),
}


@pytest.mark.parametrize("name", sorted(A.ARCHITECTURES))
def test_architecture_builds_runs_and_has_published_size(name):
    size, params = EXPECTED[name]
    spec = A.get(name)
    tensors = A.random_tensors(spec, seed=1)
    assert sum(t.size for t in tensors.values()) == params
    if name.startswith("vgg16"):
        return  # a forward pass costs ~0.3 s each; the shapes are already checked by from_spec
    net = Net.from_spec(spec, tensors)
    y = net(np.random.default_rng(0).random((1, 3, size, size), np.float32))
    assert y.shape == (1, 1000)
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-5)


def test_unknown_architecture_lists_known_ones():
    with pytest.raises(ValueError, match="alexnet-caffe"):
        A.get("lenet")


def test_squeezenet1_1_float_forward_matches_reference_vectors(shared_data):
    """The shared test vectors come from the ONNX model zoo's own run of this network."""
    import json
    import struct

    path = shared_data / "squeezenet1.1" / "squeezenet1_1.safetensors"
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    tensors = {k: np.frombuffer(raw[8 + n + v["data_offsets"][0] : 8 + n + v["data_offsets"][1]],
                                np.float32).reshape(v["shape"])
               for k, v in header.items() if k != "__metadata__"}
    spec = [s for s in A.get("squeezenet1_1-torchvision") if s["type"] != "softmax"]
    net = Net.from_spec(spec, tensors)
    for i in range(3):
        d = shared_data / "squeezenet1.1" / "test_vectors" / str(i)
        x, want = np.load(d / "input_0.npy"), np.load(d / "output_0.npy")
        got = net(x)
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
