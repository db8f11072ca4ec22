"""Image decoding (modes, EXIF, bombs, truncation) and pre-processing against NumPy references."""

import dataclasses
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from qcnn.preprocess import load_image, preprocess
from qcnn.zoo import Preprocess, WeightsFile, get_entry

TORCHVISION = get_entry("squeezenet1_1").preprocess
CAFFE = get_entry("alexnet").preprocess


def _rgb(im):
    assert im.mode == "RGB"
    return np.asarray(im).astype(int)


# ---- decoding every mode ------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".png", ".tiff"])
def test_gray_and_bilevel(tmp_path, suffix):
    g = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(g, "L").save(tmp_path / f"l{suffix}")
    assert (_rgb(load_image(tmp_path / f"l{suffix}")) == g[..., None]).all()
    bits = Image.fromarray(g > 127).convert("1")
    bits.save(tmp_path / f"b{suffix}")
    assert (_rgb(load_image(tmp_path / f"b{suffix}")) == np.where(g > 127, 255, 0)[..., None]).all()


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    v = np.array([[0, 257, 32768, 65535], [100 * 257, 1000, 65000, 128]], np.uint16)
    Image.fromarray(v).save(tmp_path / "g16.png")
    got = _rgb(load_image(tmp_path / "g16.png"))
    want = np.round(v / 65535 * 255).astype(int)
    assert (got == want[..., None]).all()
    assert got[0, 3, 0] == 255 and got[1, 0, 0] == 100  # clipping would give 255 for both


def test_alpha_is_composited_on_white(tmp_path):
    a = np.zeros((2, 3, 4), np.uint8)
    a[0, 0] = (200, 100, 0, 255)    # opaque
    a[0, 1] = (0, 0, 0, 0)          # transparent black -> white
    a[0, 2] = (0, 0, 0, 128)        # half black -> mid grey
    a[1, :] = (255, 0, 0, 64)       # quarter red -> pink
    Image.fromarray(a, "RGBA").save(tmp_path / "rgba.png")
    got = _rgb(load_image(tmp_path / "rgba.png"))
    alpha = a[..., 3:] / 255.0
    want = a[..., :3] * alpha + 255 * (1 - alpha)
    assert np.abs(got - want).max() <= 1
    la = Image.fromarray(a[..., [0, 3]], "LA")
    got_la = _rgb(load_image(la))
    want_la = a[..., 0] * alpha[..., 0] + 255 * (1 - alpha[..., 0])
    assert np.abs(got_la[..., 0] - want_la).max() <= 1


def test_palette_with_and_without_transparency(tmp_path):
    p = Image.new("P", (4, 1))
    p.putpalette([10, 20, 30, 200, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    p.putdata([0, 1, 2, 1])
    p.save(tmp_path / "p.png")
    assert _rgb(load_image(tmp_path / "p.png"))[0].tolist() == [
        [10, 20, 30], [200, 0, 0], [0, 0, 255], [200, 0, 0]]
    p.save(tmp_path / "pt.png", transparency=1)
    assert _rgb(load_image(tmp_path / "pt.png"))[0].tolist() == [
        [10, 20, 30], [255, 255, 255], [0, 0, 255], [255, 255, 255]]


def test_cmyk_jpeg(tmp_path):
    c = Image.new("CMYK", (16, 16), (255, 0, 0, 0))  # pure cyan
    c.save(tmp_path / "c.jpg", quality=100)
    got = _rgb(load_image(tmp_path / "c.jpg"))
    assert np.abs(got - [0, 255, 255]).max() <= 3


def test_array_and_pil_inputs():
    a = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert (_rgb(load_image(a)) == a).all()
    assert (_rgb(load_image(Image.fromarray(a))) == a).all()
    with pytest.raises(ValueError, match=r"HxWx3 uint8.*\(5, 7\)"):
        load_image(a[..., 0])
    with pytest.raises(ValueError, match="float32"):
        load_image(a.astype(np.float32))
    with pytest.raises(TypeError, match="bytes"):
        load_image(b"not a path")


def test_exif_orientation_is_applied(tmp_path):
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20] = (255, 0, 0)  # stored left half red
    a[:, 20:] = (0, 0, 255)  # stored right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # the viewer must rotate 90 degrees clockwise
    Image.fromarray(a).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    im = load_image(tmp_path / "rot.jpg")
    assert im.size == (20, 40)  # now portrait
    got = _rgb(im)
    assert got[2, 10, 0] > 200 and got[2, 10, 2] < 60   # top is red (was left)
    assert got[37, 10, 2] > 200 and got[37, 10, 0] < 60  # bottom is blue
    with Image.open(tmp_path / "rot.jpg") as opened:  # an opened PIL image is turned too
        assert load_image(opened).size == (20, 40)


# ---- bad files ----------------------------------------------------------------------------------

def _png_header_only(path, width, height):
    """A tiny PNG claiming a huge size: what a decompression bomb looks like to a reader."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


def test_decompression_bombs_are_refused_with_the_file_name(tmp_path):
    huge = _png_header_only(tmp_path / "huge.png", 30000, 30000)  # over Pillow's hard limit
    with pytest.raises(ValueError, match="huge.png.*decompression bomb"):
        load_image(huge)
    big = _png_header_only(tmp_path / "big.png", 12000, 10000)  # between Pillow's two limits
    with pytest.raises(ValueError, match=r"big.png: 12000x10000 = 120,000,000 pixels.*exceeds"):
        load_image(big)
    Image.new("RGB", (100, 100)).save(tmp_path / "small.png")
    with pytest.raises(ValueError, match="small.png.*exceeds the limit of 5,000"):
        load_image(tmp_path / "small.png", max_pixels=5000)


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_file(tmp_path, suffix):
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    f = tmp_path / f"cut{suffix}"
    Image.fromarray(noise).save(f)
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(ValueError, match=f"cut\\{suffix}: truncated or corrupt"):
        load_image(f)


def test_not_an_image_and_missing(tmp_path):
    (tmp_path / "notes.jpg").write_text("hello")
    with pytest.raises(ValueError, match="notes.jpg is not an image"):
        load_image(tmp_path / "notes.jpg")
    with pytest.raises(FileNotFoundError, match="absent.jpg"):
        load_image(tmp_path / "absent.jpg")
    with pytest.raises(ValueError, match="is a folder"):
        load_image(tmp_path)


# ---- big photos are reduced early ---------------------------------------------------------------

def _photo(w, h):
    """A smooth synthetic photo (gradients and rings): JPEG-friendly, not flat."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.sqrt((x - w / 3) ** 2 + (y - h / 2) ** 2)
    img = np.stack([x / w * 255, y / h * 255, 127 + 120 * np.sin(r / 37)], -1)
    return img.astype(np.uint8)


@pytest.mark.parametrize("suffix, decoded", [(".jpg", (1000, 750)), (".png", (1000, 750))])
def test_big_photo_is_decoded_small_and_preprocesses_alike(tmp_path, suffix, decoded):
    w, h = (4000, 3000) if suffix == ".jpg" else (2000, 1500)
    f = tmp_path / f"photo{suffix}"
    Image.fromarray(_photo(w, h)).save(f)
    im = load_image(f, min_side=256)
    assert im.size == decoded  # JPEG draft at 1/4, PNG reduce(2): at least 2 x 256 kept
    assert load_image(f).size == (w, h)
    fast = preprocess(f, TORCHVISION)
    with Image.open(f) as full:  # a PIL image is never drafted: the full-resolution path
        slow = preprocess(full, TORCHVISION)
    diff = np.abs(fast - slow) * 0.225 * 255  # back to 8-bit levels
    assert diff.mean() < 0.5 and diff.max() <= 4


# ---- pre-processing -----------------------------------------------------------------------------

def test_constant_image_channel_order_scale_mean_std():
    a = np.empty((300, 400, 3), np.uint8)
    a[:] = (10, 20, 30)
    x = preprocess(a, TORCHVISION)
    assert x.shape == (1, 3, 224, 224) and x.dtype == np.float32 and x.flags.c_contiguous
    want = (np.array([10, 20, 30]) / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(x[0, :, 100, 100], want, rtol=1e-5)
    y = preprocess([a, a], CAFFE)  # BGR, 0..255, pixel mean, 227 crop
    assert y.shape == (2, 3, 227, 227)
    np.testing.assert_allclose(y[1, :, 0, 0], np.array([30, 20, 10]) - np.array(CAFFE.mean),
                               rtol=1e-6)


def test_crop_window_without_resize():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (300, 256, 3), dtype=np.uint8)  # shorter side already 256
    x = preprocess(a, dataclasses.replace(TORCHVISION, std=None, mean=(0.0, 0.0, 0.0), scale=1.0))
    np.testing.assert_array_equal(x[0], a[38:262, 16:240].transpose(2, 0, 1))
    s = np.zeros((256, 256, 3), np.uint8)
    s[14, 14] = 255  # the first pixel of Caffe's 227 centre crop
    z = preprocess(s, dataclasses.replace(CAFFE, mean=(0.0, 0.0, 0.0)))
    assert z[0, :, 0, 0].tolist() == [255, 255, 255] and z.sum() == 3 * 255


def test_square_mode_ignores_aspect():
    a = np.zeros((100, 400, 3), np.uint8)
    a[:, :200] = 255  # left half white: after a square resize, columns < 128 are white
    x = preprocess(a, dataclasses.replace(CAFFE, mean=(0.0, 0.0, 0.0)))
    row = x[0, 0, 100]
    assert (row[: 128 - 14 - 2] == 255).all() and (row[128 - 14 + 2:] == 0).all()


def test_mean_image_centre_crop():
    pre = dataclasses.replace(CAFFE, mean_image=WeightsFile(urls=("https://x.org/m.binaryproto",)))
    a = np.full((256, 256, 3), 100, np.uint8)
    with pytest.raises(ValueError, match="m.binaryproto.*mean_image=.*pixel mean"):
        preprocess(a, pre)
    m = np.arange(3 * 256 * 256, dtype=np.float32).reshape(1, 3, 256, 256)
    x = preprocess(a, pre, mean_image=m)
    np.testing.assert_allclose(x[0], 100 - m[0, :, 14:241, 14:241])
    with pytest.raises(ValueError, match="3xHxW with H, W >= crop 227"):
        preprocess(a, pre, mean_image=m[0, :, :200, :200])


def test_batch_of_mixed_sources(tmp_path):
    a = _photo(320, 240)
    Image.fromarray(a).save(tmp_path / "a.png")
    x = preprocess([tmp_path / "a.png", str(tmp_path / "a.png"), Image.fromarray(a), a],
                   TORCHVISION)
    assert x.shape == (4, 3, 224, 224)
    for i in range(1, 4):
        np.testing.assert_array_equal(x[i], x[0])
    with pytest.raises(ValueError, match="no images"):
        preprocess([], TORCHVISION)


def test_preprocess_validation():
    with pytest.raises(ValueError, match="crop 300 is larger"):
        Preprocess(256, "shorter", 300, "RGB", 1.0, (0.0, 0.0, 0.0))


# ---- against a direct NumPy implementation on a real photo --------------------------------------

def _triangle_resize_axis(a, out, axis):
    """Antialiased bilinear (triangle filter, support scaled when shrinking) along one axis."""
    n = a.shape[axis]
    scale = n / out
    fs = max(scale, 1.0)
    m = np.zeros((out, n))
    for i in range(out):
        centre = (i + 0.5) * scale
        lo, hi = max(int(centre - fs + 0.5), 0), min(int(centre + fs + 0.5), n)
        j = np.arange(lo, hi)
        wts = np.maximum(0.0, 1.0 - np.abs((j + 0.5 - centre) / fs))
        m[i, lo:hi] = wts / wts.sum()
    return np.moveaxis(np.tensordot(m, np.moveaxis(a, axis, 0), axes=1), 0, axis)


def _reference(path):
    with Image.open(path) as im:
        a = np.asarray(im.convert("RGB"), np.float64)
    h, w = a.shape[:2]
    nh, nw = (int(256 * h / w), 256) if w <= h else (256, int(256 * w / h))
    for n, axis in ((nw, 1), (nh, 0)):  # horizontal pass, then vertical, each kept in 8 bits
        a = np.clip(np.round(_triangle_resize_axis(a, n, axis)), 0, 255)
    top, left = (nh - 224) // 2, (nw - 224) // 2
    a = a[top:top + 224, left:left + 224] / 255.0
    a = (a - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    return a.transpose(2, 0, 1)


@pytest.mark.shared
def test_real_photo_matches_numpy_reference(shared_data):
    files = sorted((shared_data / "images" / "imagenet-sample").glob("*.JPEG"))[:2]
    files += sorted((shared_data / "images" / "val10").glob("*.BMP"))[:1]
    assert files
    x = preprocess(files, get_entry("squeezenet1_1").preprocess)
    for got, f in zip(x, files, strict=True):
        want = _reference(f)
        diff = np.abs(got - want) * 0.229 * 255  # in 8-bit levels
        assert diff.max() < 1.1 and diff.mean() < 0.02, (f, diff.max(), diff.mean())
