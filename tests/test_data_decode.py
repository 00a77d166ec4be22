"""decode_image on every kind of file a real dataset holds, each made here with PIL."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
from PIL import Image, ImageFile

from ray_wsis.classes import voc_palette
from ray_wsis.data.decode import ImageDecodeError, decode_image, decode_label_png, resize_long_side


def encode(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def gradient_rgb(height: int = 48, width: int = 64) -> Image.Image:
    ys, xs = np.mgrid[0:height, 0:width]
    array = np.stack([xs * 4 % 256, ys * 5 % 256, (xs + ys) % 256], axis=-1).astype(np.uint8)
    return Image.fromarray(array)


def test_rgb_png_round_trips_exactly():
    img = gradient_rgb()
    out = decode_image(encode(img))
    assert out.dtype == np.uint8 and out.shape == (48, 64, 3)
    np.testing.assert_array_equal(out, np.asarray(img))


def test_empty_file():
    with pytest.raises(ImageDecodeError, match="empty file") as info:
        decode_image(b"", source="a.jpg")
    assert info.value.reason == "empty file" and "a.jpg" in str(info.value)


def test_text_bytes_are_not_an_image():
    with pytest.raises(ImageDecodeError, match="not an image"):
        decode_image(b"hello, this is a text file\n" * 10)


def test_truncated_jpeg():
    data = encode(gradient_rgb(256, 256), "JPEG", quality=90)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    with pytest.raises(ImageDecodeError, match="truncated or corrupt image"):
        decode_image(data[: len(data) // 2])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_truncated_png():
    data = encode(gradient_rgb(256, 256))
    with pytest.raises(ImageDecodeError, match="truncated or corrupt image"):
        decode_image(data[: len(data) // 2])


def test_grayscale_modes():
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
    out = decode_image(encode(Image.fromarray(gray)))
    assert out.shape == (8, 8, 3)
    np.testing.assert_array_equal(out[..., 0], gray)
    np.testing.assert_array_equal(out[..., 2], gray)
    la = Image.merge("LA", [Image.fromarray(gray), Image.fromarray(np.full((8, 8), 255, np.uint8))])
    np.testing.assert_array_equal(decode_image(encode(la))[..., 1], gray)


def test_rgba_is_composited_on_black():
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[0, :, 3] = 255
    rgba[1, :, 3] = 0
    rgba[2, :, 3] = 128
    out = decode_image(encode(Image.fromarray(rgba)))
    assert out.shape == (4, 4, 3)
    np.testing.assert_array_equal(out[0, 0], (200, 100, 50))
    np.testing.assert_array_equal(out[1, 0], (0, 0, 0))
    np.testing.assert_array_equal(out[2, 0], (100, 50, 25))


def test_palette_with_and_without_transparency():
    indices = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    img = Image.fromarray(indices).convert("P")
    img.putpalette(voc_palette())
    out = decode_image(encode(img))
    np.testing.assert_array_equal(out[0, 1], (128, 0, 0))
    np.testing.assert_array_equal(out[1, 0], (0, 128, 0))
    out_t = decode_image(encode(img, transparency=1))
    np.testing.assert_array_equal(out_t[0, 1], (0, 0, 0))
    np.testing.assert_array_equal(out_t[1, 0], (0, 128, 0))


def test_cmyk_jpeg():
    cmyk = Image.new("CMYK", (16, 12), (0, 255, 255, 0))  # pure red in CMYK
    out = decode_image(encode(cmyk, "JPEG", quality=95))
    assert out.shape == (12, 16, 3)
    r, g, b = out[6, 8].astype(int)
    assert r > 200 and g < 60 and b < 60


@pytest.mark.parametrize("mode, dtype", [("I;16", "<u2"), ("I;16B", ">u2"), ("I", "<i4")])
def test_16_bit_scaled_not_clipped(mode, dtype):
    values = np.array([[0, 255, 256, 32768, 65535]])
    img = Image.frombytes(mode, (5, 1), values.astype(dtype).tobytes())
    out = decode_image(encode(img, "TIFF"))  # TIFF keeps each of these modes as is
    np.testing.assert_array_equal(out[0, :, 0], [0, 0, 1, 128, 255])


def test_16_bit_png_file_decodes_as_8_bit():
    values = np.full((3, 5), 65535, dtype=np.uint16)
    values[1] = 32768
    out = decode_image(encode(Image.fromarray(values)))
    assert out.dtype == np.uint8 and out.shape == (3, 5, 3)
    assert out[0, 0, 0] == 255 and out[1, 0, 0] == 128


def test_one_bit_image():
    bits = np.zeros((5, 7), dtype=bool)
    bits[2, 3] = True
    out = decode_image(encode(Image.fromarray(bits)))
    assert out[2, 3].tolist() == [255, 255, 255] and out[0, 0].tolist() == [0, 0, 0]


def test_float_image():
    values = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    out = decode_image(encode(Image.fromarray(values), "TIFF"))
    np.testing.assert_array_equal(out[0, :, 0], [0, 128, 255])


def test_exif_orientation_is_applied():
    img = gradient_rgb(20, 40)  # landscape as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = decode_image(encode(img, "JPEG", quality=95, exif=exif.tobytes()))
    assert out.shape == (40, 20, 3)


def test_one_pixel_image():
    out = decode_image(encode(Image.new("RGB", (1, 1), (1, 2, 3))))
    assert out.shape == (1, 1, 3) and out[0, 0].tolist() == [1, 2, 3]


def test_large_image_is_not_rejected():
    out = decode_image(encode(Image.new("RGB", (6000, 4000), (10, 20, 30)), compress_level=1))
    assert out.shape == (4000, 6000, 3)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a size in its header and holds no pixels: a decompression bomb's shape."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_before_decoding():
    with pytest.raises(ImageDecodeError, match="too large"):
        decode_image(png_header_only(20000, 20000))  # 400 megapixels
    with pytest.raises(ImageDecodeError, match="truncated or corrupt"):
        decode_image(png_header_only(100, 100))  # a sane size, but no pixel data


def test_error_pickles_with_reason():
    error = pickle.loads(pickle.dumps(ImageDecodeError("empty file", "s3://b/x.jpg")))
    assert error.reason == "empty file" and error.source == "s3://b/x.jpg"


def test_resize_long_side():
    image = np.zeros((300, 600, 3), dtype=np.uint8)
    assert resize_long_side(image, 200).shape == (100, 200, 3)
    assert resize_long_side(image, 600) is image
    assert resize_long_side(np.zeros((1, 900, 3), np.uint8), 300).shape == (1, 300, 3)


def test_decode_label_png_keeps_raw_palette_indices():
    labels = np.array([[0, 1, 255], [15, 20, 0]], dtype=np.uint8)
    img = Image.fromarray(labels).convert("P")
    img.putpalette(voc_palette())
    np.testing.assert_array_equal(decode_label_png(encode(img)), labels)
    np.testing.assert_array_equal(decode_label_png(encode(img.convert("RGB"))), labels)
    np.testing.assert_array_equal(decode_label_png(encode(Image.fromarray(labels))), labels)
