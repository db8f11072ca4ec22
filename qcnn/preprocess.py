"""Image decoding and per-entry pre-processing: files or arrays in, a float32 NCHW batch out.

:func:`load_image` turns a path, a PIL image or an ``HxWx3`` uint8 array into an 8-bit RGB PIL
image, upright per its EXIF orientation, refusing decompression bombs and decoding big JPEGs at a
reduced scale. :func:`preprocess` resizes, centre-crops and normalises a batch as a zoo entry's
:class:`~qcnn.zoo.Preprocess` says.

Choices:

- Resizing uses PIL's ``BILINEAR`` filter, which PIL antialiases when shrinking (its support
  grows with the scale factor). That is exactly what torchvision's ``Resize`` does on PIL images,
  so torchvision entries see the inputs their published accuracy was measured with; Caffe's
  OpenCV bilinear did not antialias, but phone photos are 10-20x larger than ImageNet's and
  aliasing would hurt more than the small mismatch.
- The centre crop starts at ``(size - crop) // 2`` (Caffe's rule; torchvision rounds half to
  even, which differs by one pixel for some odd margins).
- Transparent pixels are composited on white, as image viewers show them; dropping alpha
  would expose whatever colour hides under transparent pixels (often black).
- 16-bit images are scaled to 8 bits (``round(v * 255 / 65535)``), not clipped.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .zoo import Preprocess

__all__ = ["DEFAULT_MAX_PIXELS", "load_image", "preprocess"]

# Largest image decoded at full size, in pixels: Pillow's own bomb threshold (about 89 MP, i.e.
# 0.27 GB as 8-bit RGB). JPEGs are checked after draft-mode scaling, so bigger phone photos pass.
DEFAULT_MAX_PIXELS = 89_478_485

# Decode at least this many times the target size before the final resize, as Image.thumbnail
# does: the result is then indistinguishable from resizing the full image.
_REDUCING_GAP = 2.0

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_WITH_ALPHA = ("RGBA", "RGBa", "LA", "La", "PA")


def _name(src) -> str:
    if isinstance(src, (str, os.PathLike)):
        return os.fspath(src)
    return getattr(src, "filename", "") or f"<{type(src).__name__}>"


def load_image(src, min_side: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
               ) -> Image.Image:
    """Decode an image to upright 8-bit RGB.

    Parameters
    ----------
    src : str, path, PIL.Image.Image or numpy.ndarray
        A file, an image already opened with PIL (its EXIF orientation is applied too), or an
        ``HxWx3`` uint8 RGB array (used as is).
    min_side : int, optional
        The caller will shrink the image so that its shorter side is ``min_side``: a big JPEG file
        is then decoded at 1/2, 1/4 or 1/8 scale and other big files are reduced right after
        decoding, keeping at least twice ``min_side`` pixels (as ``Image.thumbnail`` does).
    max_pixels : int
        Refuse files with more pixels than this to decode (after JPEG scaling): a guard against
        decompression bombs. Pillow itself refuses files over twice its own limit (about 179 MP).

    Returns
    -------
    PIL.Image.Image
        Mode ``"RGB"``.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        Not an image, truncated or corrupt data, too many pixels, an unsupported mode or array;
        the message names the file.

    Examples
    --------
    >>> import numpy as np
    >>> im = load_image(np.zeros((4, 6, 3), np.uint8))
    >>> im.mode, im.size
    ('RGB', (6, 4))
    """
    if isinstance(src, np.ndarray):
        if src.ndim != 3 or src.shape[2] != 3 or src.dtype != np.uint8:
            raise ValueError(f"an image array must be HxWx3 uint8 RGB, got shape {src.shape} "
                             f"dtype {src.dtype}")
        return Image.fromarray(np.ascontiguousarray(src), "RGB")
    name = _name(src)
    if isinstance(src, Image.Image):
        return _decode(src, name, None, max_pixels)
    if not isinstance(src, (str, os.PathLike)):
        raise TypeError(f"cannot read an image from a {type(src).__name__}: give a path, a PIL "
                        "image or an HxWx3 uint8 array")
    try:
        with warnings.catch_warnings():
            # Pillow warns between its limit and twice it; our own check below decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(name)
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {name}") from None
    except IsADirectoryError:
        raise ValueError(f"{name} is a folder, not an image file") from None
    except Image.DecompressionBombError as e:
        raise ValueError(f"{name}: refused as a possible decompression bomb ({e}); if you trust "
                         "this file, shrink it with an image editor first") from None
    except UnidentifiedImageError:
        raise ValueError(f"{name} is not an image file that Pillow can read (unknown format or "
                         "corrupt header)") from None
    except OSError as e:
        raise ValueError(f"cannot read image {name}: {e}") from None
    with im:
        return _decode(im, name, min_side, max_pixels)


def _decode(im: Image.Image, name: str, min_side: int | None, max_pixels: int) -> Image.Image:
    try:
        if min_side is not None and im.format == "JPEG":
            im.draft(None, (int(min_side * _REDUCING_GAP),) * 2)
        w, h = im.size
        if w * h > max_pixels:
            raise ValueError(f"{name}: {w}x{h} = {w * h:,} pixels to decode exceeds the limit of "
                             f"{max_pixels:,} (a guard against decompression bombs); pass a larger "
                             "max_pixels if you trust this file")
        im.load()
        if min_side is not None:
            factor = int(min(im.size) // (min_side * _REDUCING_GAP))
            if factor >= 2 and im.mode not in ("1", "P", "I;16", "I;16L", "I;16B", "I;16N"):
                im = im.reduce(factor)
        im = ImageOps.exif_transpose(im)
        return _to_rgb(im, name)
    except OSError as e:
        raise ValueError(f"{name}: truncated or corrupt image data ({e})") from None


def _to_rgb(im: Image.Image, name: str) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in _SIXTEEN_BIT:
        v = np.clip(np.asarray(im), 0, 65535).astype(np.uint32)
        gray = ((v * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode in _WITH_ALPHA or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode == "F":
        raise ValueError(f"{name}: floating-point images (mode F) have no agreed pixel range; "
                         "convert to 8-bit first")
    try:
        return im.convert("RGB")
    except ValueError as e:
        raise ValueError(f"{name}: cannot convert image mode {mode} to RGB ({e})") from None


def _resize_crop(im: Image.Image, pre: Preprocess) -> np.ndarray:
    """HxWx3 uint8 RGB of side ``pre.crop``: resize per ``pre.resize_mode``, then centre crop."""
    w, h = im.size
    r = pre.resize
    if pre.resize_mode == "square":
        size = (r, r)
    elif w <= h:  # torchvision Resize(int): the longer side truncates
        size = (r, int(r * h / w))
    else:
        size = (int(r * w / h), r)
    if size != (w, h):
        im = im.resize(size, Image.Resampling.BILINEAR)
    left, top = (size[0] - pre.crop) // 2, (size[1] - pre.crop) // 2
    return np.asarray(im.crop((left, top, left + pre.crop, top + pre.crop)))


def _mean_array(pre: Preprocess, mean_image) -> np.ndarray:
    if mean_image is None:
        if pre.mean_image is not None:
            raise ValueError(
                f"this Preprocess subtracts the mean image {pre.mean_image.filename!r}: load it "
                "and pass mean_image=<3xHxW array>, or use dataclasses.replace(pre, "
                f"mean_image=None) to subtract the pixel mean {pre.mean} instead")
        return np.asarray(pre.mean, np.float32).reshape(3, 1, 1)
    m = np.asarray(mean_image, np.float32)
    if m.ndim == 4 and m.shape[0] == 1:
        m = m[0]
    c = pre.crop
    if m.ndim != 3 or m.shape[0] != 3 or m.shape[1] < c or m.shape[2] < c:
        raise ValueError(f"mean_image must be 3xHxW with H, W >= crop {c}, got shape {m.shape}")
    top, left = (m.shape[1] - c) // 2, (m.shape[2] - c) // 2
    return m[:, top:top + c, left:left + c]


def preprocess(images, pre: Preprocess, mean_image=None) -> np.ndarray:
    """A batch ready for the network: float32 ``(N, 3, crop, crop)``.

    Parameters
    ----------
    images : image or sequence of images
        Each a path, a PIL image or an ``HxWx3`` uint8 RGB array (see :func:`load_image`); an
        ``NxHxWx3`` uint8 array is a batch.
    pre : Preprocess
        The zoo entry's settings (``entry.preprocess``).
    mean_image : array, optional
        The decoded mean image (``3xHxW``, network channel order and scale) when
        ``pre.mean_image`` is set; its centre ``crop x crop`` is subtracted.

    Returns
    -------
    numpy.ndarray
        float32, C-contiguous, ``(pixels[channel_order] * scale - mean) / std``.

    Examples
    --------
    >>> import numpy as np
    >>> from qcnn.zoo import get_entry
    >>> x = preprocess(np.full((300, 400, 3), 128, np.uint8), get_entry("squeezenet1_1").preprocess)
    >>> x.shape, x.dtype
    ((1, 3, 224, 224), dtype('float32'))
    """
    if isinstance(images, (str, os.PathLike, Image.Image)):
        images = [images]
    elif isinstance(images, np.ndarray) and images.ndim == 3:
        images = [images]
    images = list(images)
    if not images:
        raise ValueError("preprocess: no images given")
    mean = _mean_array(pre, mean_image)
    out = np.empty((len(images), 3, pre.crop, pre.crop), np.float32)
    for i, src in enumerate(images):
        pixels = _resize_crop(load_image(src, min_side=pre.resize), pre)
        if pre.channel_order == "BGR":
            pixels = pixels[:, :, ::-1]
        out[i] = pixels.transpose(2, 0, 1)
    out *= np.float32(pre.scale)
    out -= mean
    if pre.std is not None:
        out /= np.asarray(pre.std, np.float32).reshape(3, 1, 1)
    return out
