"""torchvision SqueezeNet 1.1.

The shared test data's ``squeezenet1_1.safetensors`` uses the same tensor names (but other
weights: the ONNX model zoo's), so it loads with this entry as a local weights file.
"""

from qcnn.zoo import Accuracy, Calibration, LayerQuant, Quantization, WeightsFile, ZooEntry

from ._torchvision import BASE_URL, LICENCE, PREPROCESS

ENTRY = ZooEntry(
    name="squeezenet1_1",
    description="torchvision SqueezeNet 1.1 (1.2 M parameters), 224x224 RGB",
    architecture="squeezenet1_1-torchvision",
    # Only the first 8 hex digits of the SHA-256 are known (from the file name, which torch.hub
    # checks the same way), so verification is by that prefix.
    weights=WeightsFile(
        urls=(BASE_URL + "squeezenet1_1-b8a52dc0.pth",),
        filename="squeezenet1_1-b8a52dc0.pth",
        format="pth",
        sha256_prefix="b8a52dc0",
    ),
    preprocess=PREPROCESS,
    labels="imagenet1k",
    licence=LICENCE + "; SqueezeNet by DeepScale (BSD-2-Clause)",
    accuracy=Accuracy(top1=58.178, top5=80.624,
                      source="torchvision SqueezeNet1_1_Weights.IMAGENET1K_V1"),
    # The first conv has 3 input channels: one 3-dim subspace.
    quantization=Quantization(layers=(LayerQuant("features.0", subdim=3),),
                              calibration=Calibration(images=128)),
)
