"""Every bad or unusual image a user may pass: converted correctly, or refused with one line naming the file."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from liftkit.data.image_io import list_images, load_image
from liftkit.errors import ImageLoadError
from tests.conftest import ASSETS


def _png_with_header_size(path, width, height):
    """A valid 1x1 PNG whose IHDR claims width x height (PIL reads the size without decoding)."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8  # after the signature: length(4) type(4) data(13) crc(4)
    data[ihdr + 8: ihdr + 16] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr + 4: ihdr + 8 + 13])) & 0xFFFFFFFF
    data[ihdr + 21: ihdr + 25] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))
    return path


def test_sample_loads_as_rgb():
    img = load_image(ASSETS / "sample.jpg")
    assert img.mode == "RGB" and img.size == (451, 300)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    with pytest.raises(ImageLoadError, match=r"empty\.jpg' is an empty file \(0 bytes\)"):
        load_image(p)


def test_truncated_jpeg(tmp_path):
    data = (ASSETS / "sample.jpg").read_bytes()
    p = tmp_path / "trunc.jpg"
    p.write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageLoadError, match=r"trunc\.jpg' is damaged or truncated"):
        load_image(p)


def test_not_an_image(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("hello, I am text")
    with pytest.raises(ImageLoadError, match=r"notes\.jpg' is not an image file"):
        load_image(p)


def test_missing_and_folder(tmp_path):
    with pytest.raises(ImageLoadError, match="does not exist"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageLoadError, match="is a folder"):
        load_image(tmp_path)


def test_cmyk_is_converted(tmp_path):
    p = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(p)  # pure red in CMYK
    img = load_image(p)
    r, g, b = np.asarray(img).reshape(-1, 3).mean(0)
    assert img.mode == "RGB" and img.size == (40, 30)
    assert r > 200 and g < 60 and b < 60


def test_16bit_is_scaled_not_clipped(tmp_path):
    p = tmp_path / "deep.png"
    arr = np.zeros((20, 30), dtype=np.uint16)
    arr[:, 10:20] = 32768
    arr[:, 20:] = 65535
    Image.fromarray(arr).save(p)
    assert Image.open(p).mode.startswith("I")
    out = np.asarray(load_image(p))
    assert out.shape == (20, 30, 3)
    assert out[0, 0, 0] == 0 and out[0, 15, 0] == 128 and out[0, 25, 0] == 255


def test_rgba_is_composited_on_white(tmp_path):
    p = tmp_path / "alpha.png"
    arr = np.zeros((10, 10, 4), dtype=np.uint8)
    arr[..., 0] = 255
    arr[:, 5:, 3] = 255  # left half transparent, right half opaque red
    Image.fromarray(arr, "RGBA").save(p)
    out = np.asarray(load_image(p))
    assert out[0, 0].tolist() == [255, 255, 255] and out[0, 9].tolist() == [255, 0, 0]


def test_exif_rotation_is_applied(tmp_path):
    p = tmp_path / "rotated.jpg"
    img = Image.new("RGB", (60, 20), (10, 200, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    img.save(p, exif=exif)
    assert Image.open(p).size == (60, 20)
    assert load_image(p).size == (20, 60)


def test_tiny_image_is_refused(tmp_path):
    p = tmp_path / "dot.png"
    Image.new("RGB", (1, 1)).save(p)
    with pytest.raises(ImageLoadError, match=r"dot\.png' is 1x1 px, smaller than the 14-px patch"):
        load_image(p, min_side=14)


def test_huge_image_is_refused_before_decoding(tmp_path):
    p = _png_with_header_size(tmp_path / "huge.png", 20000, 20000)
    with pytest.raises(ImageLoadError, match=r"huge\.png. is 400 MP, more than the 100 MP limit"):
        load_image(p)


def test_large_image_below_pil_limit_uses_our_limit(tmp_path):
    p = _png_with_header_size(tmp_path / "wide.png", 20000, 6000)
    with pytest.raises(ImageLoadError, match=r"wide\.png' is 20000x6000 px \(120 MP\), more than the 100 MP limit"):
        load_image(p)


def test_list_images_folder_glob_and_missing(tmp_path):
    (tmp_path / "a").mkdir()
    Image.new("RGB", (20, 20)).save(tmp_path / "a" / "x.png")
    Image.new("RGB", (20, 20)).save(tmp_path / "y.jpg")
    (tmp_path / "readme.txt").write_text("skip me")
    assert list_images([tmp_path]) == [tmp_path / "a" / "x.png", tmp_path / "y.jpg"]
    assert list_images([str(tmp_path / "*.jpg")]) == [tmp_path / "y.jpg"]
    assert list_images([tmp_path / "missing.png"]) == [tmp_path / "missing.png"]


def test_failure_report_format():
    from liftkit.errors import failure_report

    assert failure_report("2 of 3 image(s) failed", ["'a.jpg' is empty", "'b.png' is truncated"]) == (
        "error: 2 of 3 image(s) failed:\n  - 'a.jpg' is empty\n  - 'b.png' is truncated")
