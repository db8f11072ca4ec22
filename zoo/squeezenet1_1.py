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
    # Measured on the shared data (docs/accuracy.md, policy "d2k64-fp16-dense"): subspaces of 2
    # channels with 64 codewords (3 bits per weight; 4 bits would be d=2 K=256, whose codebooks
    # outweigh SqueezeNet's thin layers), and the layers whose codebooks + codes would take more
    # than half of their float bytes stay float: all eight squeeze layers and the two smallest
    # 1x1 expand layers. The first conv (3 channels) has subspaces of 2 (the second zero-padded),
    # as measured. Codebooks are float32 here (4.3x smaller file) until entries can ask for
    # float16 ones (4.8x, as in the table; fp16 costs under 0.2 point).
    quantization=Quantization(
        conv_subdim=2, conv_k=64,
        layers=tuple(LayerQuant(name, skip=True) for name in (
            "features.3.squeeze", "features.3.expand1x1", "features.4.squeeze",
            "features.4.expand1x1", "features.6.squeeze", "features.7.squeeze",
            "features.9.squeeze", "features.10.squeeze", "features.11.squeeze",
            "features.12.squeeze")),
        # 128 crops of the shipped photos by default (qcnn.calibration; docs/calibration.md)
        calibration=Calibration(images=128)),
)
