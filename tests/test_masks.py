import io
import json

import numpy as np
import pytest
from PIL import Image

from ray_wsis.classes import voc_palette
from ray_wsis.masks import (
    decode_label_png,
    decode_rle,
    encode_label_png,
    encode_rle,
    encode_rles,
    instance_label_map,
    rle_area,
    rle_bbox,
)

# pycocotools' decode trips numpy 2's __array__(copy=) deprecation; ray_wsis.masks silences
# it at import, but pytest re-enables DeprecationWarnings per test.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SHAPES = [(1, 1), (7, 13), (13, 7), (32, 32)]


@pytest.mark.parametrize("shape", SHAPES)
def test_label_png_round_trip(shape):
    rng = np.random.default_rng(0)
    label = rng.integers(0, 256, size=shape, dtype=np.uint8)
    data = encode_label_png(label)
    out = decode_label_png(data)
    assert out.dtype == np.uint8 and out.shape == shape
    np.testing.assert_array_equal(out, label)


def test_label_png_is_palette_with_voc_colours():
    label = np.array([[0, 1, 2], [15, 20, 255]], dtype=np.uint8)
    image = Image.open(io.BytesIO(encode_label_png(label)))
    assert image.format == "PNG" and image.mode == "P"
    assert image.getpalette()[: 256 * 3] == voc_palette()
    np.testing.assert_array_equal(np.array(image), label)
    rgb = np.array(image.convert("RGB"))
    assert tuple(rgb[0, 1]) == (128, 0, 0)  # aeroplane red
    assert tuple(rgb[1, 2]) == (224, 224, 192)  # void


def test_decode_accepts_grayscale_png():
    label = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    buffer = io.BytesIO()
    Image.fromarray(label).save(buffer, format="PNG")
    np.testing.assert_array_equal(decode_label_png(buffer.getvalue()), label)


def test_label_png_errors():
    with pytest.raises(ValueError, match="label"):
        encode_label_png(np.zeros((2, 2, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="label"):
        encode_label_png(np.zeros((2, 2), dtype=np.int32))
    buffer = io.BytesIO()
    Image.new("RGB", (3, 2)).save(buffer, format="PNG")
    with pytest.raises(ValueError, match="data"):
        decode_label_png(buffer.getvalue())
    with pytest.raises(ValueError, match="data"):
        decode_label_png(b"not a png")


def _cases():
    rng = np.random.default_rng(1)
    yield np.zeros((5, 6), dtype=bool)  # empty
    yield np.ones((5, 6), dtype=bool)  # full
    yield np.ones((1, 1), dtype=bool)
    yield np.zeros((1, 1), dtype=bool)
    for shape in [(9, 4), (4, 9), (31, 17)]:
        yield rng.random(shape) < 0.4


@pytest.mark.parametrize("mask", list(_cases()))
def test_rle_round_trip_area_bbox(mask):
    rle = encode_rle(mask)
    assert rle["size"] == list(mask.shape) and isinstance(rle["counts"], str)
    json.dumps(rle)  # JSON friendly
    out = decode_rle(rle)
    assert out.dtype == np.bool_
    np.testing.assert_array_equal(out, mask)
    np.testing.assert_array_equal(decode_rle({"size": rle["size"], "counts": rle["counts"].encode()}), mask)
    assert rle_area(rle) == int(mask.sum())
    ys, xs = np.nonzero(mask)
    expected = (
        [0.0, 0.0, 0.0, 0.0]
        if ys.size == 0
        else [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
    )
    assert rle_bbox(rle) == expected


def test_encode_rles_matches_single_and_pycocotools():
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(2)
    masks = rng.random((4, 11, 23)) < 0.3
    masks[0] = False
    masks[1] = True
    rles = encode_rles(masks)
    assert len(rles) == 4
    for mask, rle in zip(masks, rles):
        assert rle == encode_rle(mask)
        np.testing.assert_array_equal(decode_rle(rle), mask)
        reference = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert rle["counts"] == reference["counts"].decode()
    assert encode_rles(np.zeros((0, 3, 4), dtype=bool)) == []


def test_decode_uncompressed_rle():
    mask = np.zeros((3, 4), dtype=bool)
    mask[1, 2] = True  # column-major position 2 * 3 + 1 = 7
    np.testing.assert_array_equal(decode_rle({"size": [3, 4], "counts": [7, 1, 4]}), mask)


def test_rle_errors():
    with pytest.raises(ValueError, match="mask"):
        encode_rle(np.zeros((2, 2, 2), dtype=bool))
    with pytest.raises(ValueError, match="mask"):
        encode_rle(np.zeros((2, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="masks"):
        encode_rles(np.zeros((2, 2), dtype=bool))
    with pytest.raises(ValueError, match="rle"):
        decode_rle({"counts": "abc"})
    with pytest.raises(ValueError, match="rle"):
        rle_area({"size": [2, 2], "counts": 3.5})


def test_instance_label_map_highest_score_wins():
    masks = np.zeros((3, 4, 5), dtype=bool)
    masks[0, :2, :] = True
    masks[1, 1:3, :] = True
    masks[2, :, 4] = True
    label = instance_label_map(masks, [0.5, 0.9, 0.1])
    expected = np.array(
        [
            [1, 1, 1, 1, 1],
            [2, 2, 2, 2, 2],
            [2, 2, 2, 2, 2],
            [0, 0, 0, 0, 3],
        ],
        dtype=np.uint8,
    )
    assert label.dtype == np.uint8
    np.testing.assert_array_equal(label, expected)


def test_instance_label_map_matches_painting_loop():
    rng = np.random.default_rng(3)
    masks = rng.random((30, 16, 20)) < 0.2
    scores = rng.random(30)
    painted = np.zeros((16, 20), dtype=np.uint8)
    for i in np.argsort(scores):  # lowest first, highest overwrites
        painted[masks[i]] = i + 1
    np.testing.assert_array_equal(instance_label_map(masks, scores), painted)


def test_instance_label_map_limits():
    assert instance_label_map(np.zeros((0, 3, 2), dtype=bool), []).shape == (3, 2)
    full = np.ones((254, 2, 2), dtype=bool)
    assert instance_label_map(full, np.arange(254.0)).max() == 254
    with pytest.raises(ValueError, match="masks"):
        instance_label_map(np.ones((255, 2, 2), dtype=bool), np.arange(255.0))
    with pytest.raises(ValueError, match="scores"):
        instance_label_map(np.ones((2, 2, 2), dtype=bool), [1.0])
    with pytest.raises(ValueError, match="scores"):
        instance_label_map(np.ones((1, 2, 2), dtype=bool), [np.nan])
    with pytest.raises(ValueError, match="masks"):
        instance_label_map(np.ones((2, 2), dtype=bool), [1.0])
