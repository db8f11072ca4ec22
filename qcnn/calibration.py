"""Calibration images for the quantizer's error correction.

Two sources: images the user points to (a folder or a list of files: unlabelled photos are enough), and
a default that needs nothing from the user. See docs/calibration.md for the options measured.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from .preprocess import preprocess

__all__ = ["image_files", "calibration_batch", "synthetic_images", "identity", "describe"]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def image_files(source) -> list[Path]:
    """The image files of a folder (sorted, recursive) or of an explicit list of paths."""
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise ValueError(f"calibration folder {p} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            return files
        if p.is_file():
            return [p]
        raise FileNotFoundError(f"calibration source {p} does not exist")
    return [Path(f) for f in source]


def synthetic_images(n: int, size: int = 256, seed: int = 0) -> np.ndarray:
    """`n` procedural RGB images (uint8, n x size x size x 3) with natural-image statistics.

    Each is coloured 1/f noise (the power spectrum of natural photographs) plus a few random
    flat-coloured shapes with sharp edges; nothing is shipped or downloaded.
    """
    rng = np.random.default_rng(seed)
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    f[0, 0] = 1.0
    out = np.empty((n, size, size, 3), np.uint8)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        alpha = rng.uniform(0.8, 1.4)
        spec = (rng.standard_normal((3, size, size // 2 + 1))
                + 1j * rng.standard_normal((3, size, size // 2 + 1))) / f**alpha
        spec[:, 0, 0] = 0
        img = np.fft.irfft2(spec, s=(size, size), axes=(1, 2))
        mix = rng.standard_normal((3, 3)) * 0.3 + np.eye(3)  # correlated colour channels
        img = np.tensordot(mix, img, axes=1)
        img = (img - img.mean()) / (img.std() + 1e-8)
        img = img * rng.uniform(35, 65) + rng.uniform(80, 170, size=(3, 1, 1))
        for _ in range(rng.integers(2, 7)):
            cy, cx, r = rng.uniform(0, size, 2).tolist() + [rng.uniform(size / 16, size / 3)]
            mask = ((yy - cy) / r) ** 2 + ((xx - cx) / (r * rng.uniform(0.5, 2))) ** 2 < 1
            img[:, mask] = rng.uniform(0, 255, size=(3, 1))
        out[i] = np.clip(img, 0, 255).transpose(1, 2, 0).astype(np.uint8)
    return out


def calibration_batch(source, entry, mean_image=None, seed: int = 0, count: int | None = None) -> np.ndarray:
    """A float32 batch pre-processed for `entry`: from `source` (folder / files / batch) or synthetic."""
    if isinstance(source, np.ndarray) and source.dtype == np.float32 and source.ndim == 4:
        return source
    if source is None:
        n = count or entry.quantization.calibration.images
        return preprocess(synthetic_images(n, seed=seed), entry.preprocess, mean_image)
    files = image_files(source)
    if count:
        files = files[:count]
    return preprocess(files, entry.preprocess, mean_image)


def identity(source, entry) -> str:
    """What identifies the calibration data in the quantized file's cache key."""
    if source is None:
        c = entry.quantization.calibration
        return f"synthetic-v1:{c.images}:{c.seed}"
    if isinstance(source, np.ndarray):
        return "array:" + hashlib.sha256(np.ascontiguousarray(source).tobytes()).hexdigest()[:16]
    files = image_files(source)
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}:{st.st_size}:{int(st.st_mtime)}\n".encode())
    return f"files:{len(files)}:{h.hexdigest()[:16]}"


def describe(source) -> str:
    if source is None:
        return "synthetic images (the default; see docs/calibration.md)"
    if isinstance(source, np.ndarray):
        return f"a pre-processed batch of {len(source)} images"
    return f"{len(image_files(source))} images from {source if isinstance(source, (str, os.PathLike)) else 'a list'}"
