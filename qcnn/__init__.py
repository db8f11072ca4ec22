"""quantized-cnn: Q-CNN (Wu et al., CVPR 2016) for phones.

>>> import qcnn
>>> qcnn.classify("photo.jpg")             # doctest: +SKIP
>>> model = qcnn.load("alexnet")           # doctest: +SKIP
"""

__version__ = "0.1.0"

__all__ = ["classify", "load", "list_models", "quantize", "Model", "Net", "__version__"]


def __getattr__(name):
    # Lazy: `import qcnn` stays cheap (no Numba, no zoo discovery) until something is used.
    if name in ("classify", "load", "Model"):
        from . import model

        return getattr(model, name)
    if name == "quantize":
        from .quantizer import quantize

        return quantize
    if name == "Net":
        from .net import Net

        return Net
    if name == "list_models":
        from .zoo import list_entries

        return list_entries
    raise AttributeError(f"module 'qcnn' has no attribute {name!r}")
