"""VGG-16 (VGG_ILSVRC_16_layers): the Q-CNN paper's third model, in Caffe conventions."""

from qcnn.zoo import Accuracy, LayerQuant, Preprocess, Quantization, WeightsFile, ZooEntry

ENTRY = ZooEntry(
    name="vgg16",
    description="VGG-16 (Simonyan & Zisserman, VGG_ILSVRC_16_layers), 224x224 BGR",
    architecture="vgg16-caffe",
    weights=WeightsFile(
        urls=("http://www.robots.ox.ac.uk/~vgg/software/very_deep/caffe/"
              "VGG_ILSVRC_16_layers.caffemodel",),
        filename="VGG_ILSVRC_16_layers.caffemodel",
        format="caffe",
        sha1="9363e1f6d65f7dba68c4f27a1e62105cdf6c4e24",
    ),
    # The publisher asks for mean-pixel (not mean-image) subtraction with these BGR values.
    preprocess=Preprocess(
        resize=256,
        resize_mode="shorter",
        crop=224,
        channel_order="BGR",
        scale=1.0,
        mean=(103.939, 116.779, 123.68),
    ),
    labels="imagenet1k",
    licence="CC BY 4.0 (attribution: Simonyan & Zisserman, arXiv:1409.1556)",
    accuracy=Accuracy(top1=70.968, top5=89.878,
                      source="OpenVINO Open Model Zoo 'vgg16' (these Caffe weights), 224 crop"),
    quantization=Quantization(
        conv_subdim=8, conv_k=128, linear_subdim=4, linear_k=32,
        layers=(LayerQuant("conv1_1", subdim=3), LayerQuant("fc8", subdim=1, k=16)),
    ),
)
