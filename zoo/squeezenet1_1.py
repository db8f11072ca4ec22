"""torchvision SqueezeNet 1.1.

The shared test data's ``squeezenet1_1.safetensors`` uses the same tensor names (but other
weights: the ONNX model zoo's), so it loads with this entry as a local weights file.
"""

from qcnn.zoo import Accuracy, Calibration, Quantization, WeightsFile, ZooEntry

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
    # Measured on the shared data (docs/accuracy.md): scalar product quantization, one codebook
    # of 32 values per input channel (5 bits per weight), met every accuracy target: with 200
    # user photos top-5 drop -0.24 point and 93.4 % top-1 agreement with the float net, with
    # the default calibration -0.12 and 92.4 %, at 4.8x with float16 codebooks. It saves no
    # arithmetic (subdim 1: one table addition per weight), so these layers run as float
    # layers with their weights decoded at load time (qcnn.model.choose_run_modes): the file
    # stays 4.8x smaller, the speed is the float net's. The speed-first alternative, subspaces
    # of 2 channels with 64
    # codewords and the thin squeeze layers kept float (conv_subdim=2, conv_k=64, skip the 8
    # squeeze layers and features.3/4.expand1x1), computes 1.5x less in theory but agrees on
    # only 86 %.
    quantization=Quantization(
        conv_subdim=1, conv_k=32, codebook_dtype="float16",
        # 128 collages of the shipped photos by default (qcnn.calibration; docs/calibration.md)
        calibration=Calibration(images=128)),
)
