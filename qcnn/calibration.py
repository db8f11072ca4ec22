"""Calibration images for the quantizer's error correction.

Error correction fits each layer's codebooks to the float network's responses on a few hundred
unlabelled images (the labels are never used). Two sources:

- images the user points to: a folder (searched recursively) or a list of files; ordinary photos
  are enough, and they should resemble what the model will see;
- nothing: the default, :func:`photo_crops`, collages of random crops of five public-domain / CC0
  photos that ship with qcnn (``qcnn/data/calibration-*.jpg``, 310 kB; sources in
  ``qcnn/data/calibration.LICENSE``). Nothing is downloaded.

:func:`synthetic_images` (procedural images with natural-image statistics) is kept as an option:
pass ``synthetic_images(128)`` as the calibration array. docs/calibration.md compares the options
measured on SqueezeNet 1.1 (white noise, two synthetic generators, the shipped photos, 200 real
photos, no error correction) and explains the choice of the default.
"""

from __future__ import annotations

import functools
import hashlib
import os
from importlib import resources
from pathlib import Path

import numpy as np

from .preprocess import preprocess

__all__ = ["IMAGE_SUFFIXES", "PHOTOS", "image_files", "calibration_batch", "photo_crops",
           "synthetic_images", "identity", "describe"]

#: File suffixes taken from a calibration folder (case-insensitive).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})

# Bump when photo_crops changes its output: part of the quantized file's cache key.
DEFAULT_VERSION = 2

#: The shipped calibration photos (in qcnn/data), public domain or CC0.
PHOTOS = ("calibration-astronaut.jpg", "calibration-chelsea.jpg", "calibration-coffee.jpg",
          "calibration-rocket.jpg", "calibration-hubble.jpg")


def image_files(source) -> list[Path]:
    """The image files of a folder (sorted, recursive), of one file, or of a list of paths.

    Parameters
    ----------
    source : str, path, or sequence of paths

    Returns
    -------
    list of Path

    Raises
    ------
    FileNotFoundError
        The folder, the file or a listed file does not exist.
    ValueError
        The folder holds no image files, or the list is empty.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> for n in ("b.jpg", "a.PNG", "notes.txt"):
    ...     _ = (d / n).write_bytes(b"")
    >>> [p.name for p in image_files(d)]
    ['a.PNG', 'b.jpg']
    """
    if isinstance(source, (str, os.PathLike)):
        p = Path(source).expanduser()
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES
                           and f.is_file())
            if not files:
                raise ValueError(f"calibration folder {p} holds no images "
                                 f"({', '.join(sorted(IMAGE_SUFFIXES))}); point --calibration "
                                 "at a folder of ordinary photos")
            return files
        if p.is_file():
            return [p]
        raise FileNotFoundError(f"calibration source {p} does not exist")
    files = [Path(f).expanduser() for f in source]
    if not files:
        raise ValueError("the calibration list of images is empty")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} calibration images do not exist, e.g. "
                                f"{missing[:3]}")
    return files


def _pink_noise(rng, shape, alpha: float) -> np.ndarray:
    """Gaussian noise fields with amplitude spectrum 1/f^alpha, zero mean, unit std each."""
    *lead, size = shape
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    f[0, 0] = 1.0
    spec = (rng.standard_normal((*lead, size, size // 2 + 1))
            + 1j * rng.standard_normal((*lead, size, size // 2 + 1))) / f**alpha
    spec[..., 0, 0] = 0
    img = np.fft.irfft2(spec, s=(size, size), axes=(-2, -1))
    return img / (img.std(axis=(-2, -1), keepdims=True) + 1e-12)


# opponent colour axes (luminance, red-green, yellow-blue) -> RGB
_OPPONENT = np.array([[1.0, 1.0, 1.0], [0.5, -0.5, 0.0], [0.25, 0.25, -0.5]]).T


def synthetic_images(n: int, size: int = 256, seed: int = 0) -> np.ndarray:
    """`n` procedural RGB images (uint8, ``n x size x size x 3``) with natural-image statistics.

    Each image is a "dead leaves" scene: a background of 1/f^alpha noise (alpha drawn in
    0.8..1.3 per image: the amplitude spectrum of natural photographs) with an illumination
    gradient, then 4-12 overlapping ellipses and rectangles (objects with sharp edges and
    occlusions), each with a flat colour plus its own finer 1/f texture. Colour follows the
    opponent axes of photographs: a strong luminance signal plus weaker, smoother red-green and
    yellow-blue signals, so the channels are correlated as in real photos. Deterministic for a
    given `seed`; nothing is shipped or downloaded.

    Parameters
    ----------
    n : int
        Number of images.
    size : int
        Side in pixels (pre-processing then resizes and crops as the entry says).
    seed : int

    Returns
    -------
    ndarray, (n, size, size, 3) uint8

    Examples
    --------
    >>> x = synthetic_images(2, size=64, seed=0)
    >>> x.shape, x.dtype, bool((x == synthetic_images(2, size=64, seed=0)).all())
    ((2, 64, 64, 3), dtype('uint8'), True)
    """
    if n < 1 or size < 8:
        raise ValueError(f"synthetic_images: need n >= 1 and size >= 8, got n={n}, size={size}")
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size, 3), np.uint8)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        alpha = rng.uniform(0.8, 1.3)
        # opponent channels: luminance, then two smoother, weaker chroma signals
        opp = _pink_noise(rng, (3, size), alpha)
        opp[1:] = _pink_noise(rng, (2, size), alpha + 0.4) * rng.uniform(0.2, 0.6, (2, 1, 1))
        opp[0] += rng.uniform(-1.5, 1.5) * (yy - 0.5) + rng.uniform(-0.7, 0.7) * (xx - 0.5)
        tex = _pink_noise(rng, (1, size), alpha + 0.2)[0]
        for _ in range(rng.integers(4, 13)):
            cy, cx = rng.uniform(0, 1, 2)
            ry, rx = rng.uniform(0.04, 0.35, 2)
            if rng.random() < 0.6:
                mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
            else:
                mask = (np.abs(yy - cy) < ry) & (np.abs(xx - cx) < rx)
            colour = rng.standard_normal(3) * np.array([1.0, 0.6, 0.6])
            opp[:, mask] = (colour[:, None]
                            + np.array([0.5, 0.1, 0.1])[:, None] * rng.uniform(0.3, 1.2)
                            * tex[mask][None, :])
        img = np.tensordot(_OPPONENT, opp, axes=1)  # (3, size, size) RGB
        img = img * rng.uniform(30, 55) + rng.uniform(90, 150) + rng.uniform(-15, 15, (3, 1, 1))
        out[i] = np.clip(img, 0, 255).transpose(1, 2, 0).astype(np.uint8)
    return out


@functools.lru_cache(maxsize=1)
def _photos() -> tuple:
    from PIL import Image

    out = []
    for name in PHOTOS:
        with (resources.files("qcnn") / "data" / name).open("rb") as f:
            out.append(Image.open(f).convert("RGB"))
    return tuple(out)


def photo_crops(n: int, size: int = 256, seed: int = 0, photos=None) -> np.ndarray:
    """`n` collages of the shipped calibration photos (uint8, ``n x size x size x 3``).

    Each image is a "dead leaves" collage: a background crop, then 6-14 overlapping ellipses and
    rectangles, each filled with another crop. A crop is a square of 15-100% of a random photo's
    shorter side at a random position, mirrored half of the time, resized to ``size``. Real
    textures, colours and edges, in more arrangements than five photos hold (on SqueezeNet 1.1
    this beat plain crops of the same photos: docs/calibration.md). Deterministic for a given
    `seed`.

    Parameters
    ----------
    n : int
        Number of images.
    size : int
        Side in pixels (pre-processing then resizes and crops as the entry says).
    seed : int
    photos : list of PIL images, optional
        Other photos to cut from (default: the five shipped with qcnn).

    Returns
    -------
    ndarray, (n, size, size, 3) uint8

    Examples
    --------
    >>> x = photo_crops(3, size=64)
    >>> x.shape, x.dtype
    ((3, 64, 64, 3), dtype('uint8'))
    """
    from PIL import Image

    if n < 1 or size < 8:
        raise ValueError(f"photo_crops: need n >= 1 and size >= 8, got n={n}, size={size}")
    photos = _photos() if photos is None else list(photos)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size

    def crop():
        p = photos[rng.integers(len(photos))]
        w, h = p.size
        side = int(min(w, h) * rng.uniform(0.15, 1.0))
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        a = np.asarray(p.crop((x, y, x + side, y + side))
                       .resize((size, size), Image.Resampling.BILINEAR))
        return a[:, ::-1] if rng.random() < 0.5 else a

    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        img = crop().copy()
        for _ in range(rng.integers(6, 15)):
            cy, cx = rng.uniform(0, 1, 2)
            ry, rx = rng.uniform(0.05, 0.4, 2)
            if rng.random() < 0.5:
                mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
            else:
                mask = (np.abs(yy - cy) < ry) & (np.abs(xx - cx) < rx)
            img[mask] = crop()[mask]
        out[i] = img
    return out


def _spread(files: list[Path], count: int | None) -> list[Path]:
    """`count` files spread evenly over the sorted list (all of them when count is None)."""
    if not count or count >= len(files):
        return files
    idx = np.linspace(0, len(files) - 1, count).round().astype(int)
    return [files[i] for i in idx]


def calibration_batch(source, entry, mean_image=None, seed: int = 0,
                      count: int | None = None) -> np.ndarray:
    """The calibration batch, pre-processed for `entry` (float32 NCHW).

    Parameters
    ----------
    source : None, str, path, list of paths, or ndarray
        None: :func:`photo_crops` (``count`` or the entry's ``quantization.calibration.images``
        of them); a folder, a file or a list of image files;
        an ``NxHxWx3`` uint8 array of images; or a float32 NCHW batch already pre-processed
        (returned as is).
    entry : ZooEntry
        Its pre-processing is applied.
    mean_image : ndarray, optional
        The entry's decoded mean image, when its pre-processing subtracts one.
    seed : int
        Seeds the synthetic images.
    count : int, optional
        At most this many images (from a folder or list: spread evenly over the sorted files).

    Returns
    -------
    ndarray, (N, 3, crop, crop) float32

    Examples
    --------
    >>> from qcnn.zoo import get_entry
    >>> calibration_batch(None, get_entry("squeezenet1_1"), count=2).shape
    (2, 3, 224, 224)
    """
    if isinstance(source, np.ndarray):
        if source.dtype == np.float32 and source.ndim == 4:
            crop = entry.preprocess.crop
            if source.shape[1] != 3 or source.shape[2:] != (crop, crop):
                raise ValueError(f"a pre-processed calibration batch must be (N, 3, {crop}, "
                                 f"{crop}) for {entry.name!r}, got {source.shape}")
            return source[:count] if count else source
        if source.dtype == np.uint8 and source.ndim == 4 and source.shape[3] == 3:
            return preprocess(source[:count] if count else source, entry.preprocess, mean_image)
        raise ValueError(f"a calibration array must be float32 (N, 3, H, W) pre-processed or "
                         f"uint8 (N, H, W, 3) images, got {source.dtype} {source.shape}")
    if source is None:
        n = count or entry.quantization.calibration.images
        return preprocess(photo_crops(n, seed=seed), entry.preprocess, mean_image)
    return preprocess(_spread(image_files(source), count), entry.preprocess, mean_image)


def identity(source, entry) -> str:
    """What identifies the calibration data in the quantized file's cache key.

    The default photo crops are named by version, count and seed; arrays by a hash of their
    bytes; files by their paths, sizes and modification times (so editing a calibration folder
    makes a new quantized file).

    Examples
    --------
    >>> from qcnn.zoo import get_entry
    >>> identity(None, get_entry("squeezenet1_1"))
    'photos-v2:128:0'
    """
    if source is None:
        c = entry.quantization.calibration
        return f"photos-v{DEFAULT_VERSION}:{c.images}:{c.seed}"
    if isinstance(source, np.ndarray):
        return "array:" + hashlib.sha256(np.ascontiguousarray(source).tobytes()).hexdigest()[:16]
    files = image_files(source)
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}:{st.st_size}:{int(st.st_mtime)}\n".encode())
    return f"files:{len(files)}:{h.hexdigest()[:16]}"


def describe(source) -> str:
    """The calibration source in words, for progress messages and the file's metadata.

    Examples
    --------
    >>> describe(None)
    'collages of the 5 photos shipped with qcnn (the default; see docs/calibration.md)'
    """
    if source is None:
        return (f"collages of the {len(PHOTOS)} photos shipped with qcnn (the default; see "
                "docs/calibration.md)")
    if isinstance(source, np.ndarray):
        return f"an array of {len(source)} images"
    where = source if isinstance(source, (str, os.PathLike)) else "a list"
    return f"{len(image_files(source))} images from {where}"
