"""torchvision VGG-16 (no batch norm)."""

from qcnn.zoo import Accuracy, LayerQuant, Quantization, WeightsFile, ZooEntry

from ._torchvision import BASE_URL, LICENCE, PREPROCESS

ENTRY = ZooEntry(
    name="vgg16-torchvision",
    description="torchvision VGG-16, 224x224 RGB",
    architecture="vgg16-torchvision",
    weights=WeightsFile(
        urls=(BASE_URL + "vgg16-397923af.pth",),
        filename="vgg16-397923af.pth",
        format="pth",
        sha256="397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0",
    ),
    preprocess=PREPROCESS,
    labels="imagenet1k",
    licence=LICENCE,
    accuracy=Accuracy(top1=71.592, top5=90.382, source="torchvision VGG16_Weights.IMAGENET1K_V1"),
    quantization=Quantization(
        layers=(LayerQuant("features.0", subdim=3), LayerQuant("classifier.6", subdim=1, k=16)),
    ),
)
