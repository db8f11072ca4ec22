"""What the torchvision entries share (a private module: the registry skips names starting "_")."""

from qcnn.zoo import Preprocess

BASE_URL = "https://download.pytorch.org/models/"

# torchvision's ImageNet transform: Resize(256) (shorter side, bilinear), CenterCrop(224),
# ToTensor (RGB, /255), Normalize(mean, std).
PREPROCESS = Preprocess(
    resize=256,
    resize_mode="shorter",
    crop=224,
    channel_order="RGB",
    scale=1 / 255,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
)

LICENCE = ("BSD-3-Clause (torchvision); the weights were trained on ImageNet: check its terms for "
           "your use")
