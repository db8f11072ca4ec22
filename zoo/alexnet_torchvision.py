"""torchvision AlexNet ("one weird trick" variant: no groups, no LRN)."""

from qcnn.zoo import Accuracy, LayerQuant, Quantization, WeightsFile, ZooEntry

from ._torchvision import BASE_URL, LICENCE, PREPROCESS

ENTRY = ZooEntry(
    name="alexnet-torchvision",
    description="torchvision AlexNet (one-weird-trick variant), 224x224 RGB",
    architecture="alexnet-torchvision",
    weights=WeightsFile(
        urls=(BASE_URL + "alexnet-owt-7be5be79.pth",),
        filename="alexnet-owt-7be5be79.pth",
        format="pth",
        sha256="7be5be791159472b1fbf3c69796f7cb30dca7ad8466c2df70058c37116cdee02",
    ),
    preprocess=PREPROCESS,
    labels="imagenet1k",
    licence=LICENCE,
    accuracy=Accuracy(top1=56.522, top5=79.066,
                      source="torchvision AlexNet_Weights.IMAGENET1K_V1"),
    quantization=Quantization(
        layers=(LayerQuant("features.0", subdim=3), LayerQuant("classifier.6", subdim=1, k=16)),
    ),
)
