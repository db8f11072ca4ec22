"""BVLC AlexNet: the Q-CNN paper's first model, in Caffe conventions."""

from qcnn.zoo import Accuracy, LayerQuant, Preprocess, Quantization, WeightsFile, ZooEntry

ENTRY = ZooEntry(
    name="alexnet",
    description="BVLC AlexNet (Caffe reference model, grouped convs + LRN), 227x227 BGR",
    architecture="alexnet-caffe",
    weights=WeightsFile(
        urls=("http://dl.caffe.berkeleyvision.org/bvlc_alexnet.caffemodel",),
        filename="bvlc_alexnet.caffemodel",
        format="caffe",
        sha1="9116a64c0fbe4459d18f4bb6b56d647b63920377",
    ),
    # Pixel mean, not the mean image: ilsvrc_2012_mean (3x256x256) is published only inside
    # caffe_ilsvrc12.tar.gz with no hash, and Caffe's own classification example reduces it to
    # this per-channel average (mu.mean(1).mean(1)); BGR, 0..255.
    preprocess=Preprocess(
        resize=256,
        resize_mode="square",
        crop=227,
        channel_order="BGR",
        scale=1.0,
        mean=(104.00698793, 116.66876762, 122.67891434),
    ),
    labels="imagenet1k",
    licence="unrestricted use (BVLC model zoo: 'released for unrestricted use')",
    accuracy=Accuracy(top1=57.1, top5=80.2,
                      source="BVLC model zoo README, single centre crop, ILSVRC-2012 val"),
    # The official Q-CNN release: conv 8/128 (conv1 3 real input channels), fc6/fc7 4/32,
    # fc8 scalar 1/16.
    quantization=Quantization(
        conv_subdim=8, conv_k=128, linear_subdim=4, linear_k=32,
        layers=(LayerQuant("conv1", subdim=3), LayerQuant("fc8", subdim=1, k=16)),
    ),
)
