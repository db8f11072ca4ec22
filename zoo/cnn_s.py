"""VGG_CNN_S (Chatfield et al. 2014): the Q-CNN paper's second model, in Caffe conventions."""

from qcnn.zoo import Accuracy, LayerQuant, Preprocess, Quantization, WeightsFile, ZooEntry

_BASE = "http://www.robots.ox.ac.uk/~vgg/software/deep_eval/releases/bvlc/"

ENTRY = ZooEntry(
    name="cnn-s",
    description="VGG CNN-S (Chatfield et al. 2014), 224x224 BGR; NON-COMMERCIAL use only",
    architecture="cnn-s-caffe",
    # No hash is enforced: the only one seen (sha1 862b3744bce69b7ba90d29b8099aed3b00c8580b) comes
    # from a third-party script and is unverified; a wrong enforced hash would lock every user out.
    weights=WeightsFile(
        urls=(_BASE + "VGG_CNN_S.caffemodel",),
        filename="VGG_CNN_S.caffemodel",
        format="caffe",
    ),
    # The publisher's mean image, centre-cropped like the input. Its per-channel average is not
    # published; `mean` holds the ILSVRC-2012 pixel mean (BGR) as an approximation for callers
    # that cannot read the mean file.
    preprocess=Preprocess(
        resize=256,
        resize_mode="shorter",
        crop=224,
        channel_order="BGR",
        scale=1.0,
        mean=(104.00698793, 116.66876762, 122.67891434),
        mean_image=WeightsFile(
            urls=(_BASE + "VGG_mean.binaryproto",),
            filename="VGG_mean.binaryproto",
            format="caffe-mean",
        ),
    ),
    labels="imagenet1k",
    licence="NON-COMMERCIAL research use only (VGG deep_eval release terms); not for commercial "
            "use",
    accuracy=Accuracy(top1=None, top5=84.6,
                      source="Chatfield et al. 2014: 15.4% top-5 error, single centre crop"),
    # Same per-kind settings as the official AlexNet release; conv1 has 3 input channels.
    quantization=Quantization(
        conv_subdim=8, conv_k=128, linear_subdim=4, linear_k=32,
        layers=(LayerQuant("conv1", subdim=3), LayerQuant("fc8", subdim=1, k=16)),
    ),
)
