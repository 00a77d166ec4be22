"""Label Studio's brush RLE: a mask as the run-length packed bytes of its RGBA bitmap.

The layout is thi.ng's rle-pack, which Label Studio's editor writes and reads: a bit stream,
most significant bit first, of

* a header: the number of values (32 bits), the word size - 1 (5 bits) and four run-length
  widths - 1 (4 bits each);
* chunks: a flag bit (1: one word repeated, 0: literal words), 2 bits choosing one of the four
  widths, the run length - 1 in that many bits, then one word (repeat) or that many (literal).

The values are the (H, W, 4) RGBA bitmap in row order; a mask pixel is 255 in every channel
(0/1 would draw invisibly in the editor), and it is read back from the alpha channel (> 127).
This module writes repeat chunks only and reads both kinds. Written here (numpy, no Python
loop per pixel) rather than taken from label-studio-sdk, whose dependencies pin numpy below
2.3 (through opencv); tests/test_review_brush.py checks it against the SDK's codec, run in
Label Studio's own environment.
"""

from __future__ import annotations

import numpy as np

WORD_BITS = 8
RUN_BITS = (3, 4, 8, 16)
"""The four run-length widths we write (the SDK's choice): a run of up to 2**16 values per chunk."""


def _bits(values: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """The fields ``values`` (each ``widths`` bits wide, most significant first) as one bit array."""
    widths = widths.astype(np.int64)
    total = int(widths.sum())
    starts = np.cumsum(widths) - widths
    within = np.arange(total, dtype=np.int64) - np.repeat(starts, widths)
    shift = np.repeat(widths, widths) - 1 - within
    return ((np.repeat(values.astype(np.int64), widths) >> shift) & 1).astype(np.uint8)


def encode(mask: np.ndarray) -> list[int]:
    """(H, W) bool mask -> Label Studio brush RLE (a list of byte values)."""
    flat = np.repeat(np.asarray(mask, bool).ravel().astype(np.uint8) * 255, 4)
    n = flat.size
    if n == 0:
        raise ValueError("an empty mask has no brush RLE")
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate([[0], edges])
    lengths = np.diff(np.concatenate([starts, [n]]))
    words = flat[starts]
    longest = 1 << RUN_BITS[-1]
    pieces = (lengths + longest - 1) // longest  # runs longer than a chunk holds are split
    words = np.repeat(words, pieces)
    chunk = np.full(int(pieces.sum()), longest, np.int64)
    last = np.cumsum(pieces) - 1
    chunk[last] = lengths - (pieces - 1) * longest
    size_class = np.searchsorted(np.asarray([1 << b for b in RUN_BITS]), chunk)  # smallest width that fits
    run_bits = np.asarray(RUN_BITS)[size_class]
    fields = np.stack([np.ones_like(chunk), size_class, chunk - 1, words.astype(np.int64)], axis=1).ravel()
    widths = np.stack([np.ones_like(chunk), np.full_like(chunk, 2), run_bits, np.full_like(chunk, WORD_BITS)], 1)
    header = _bits(
        np.asarray([n, WORD_BITS - 1, *(b - 1 for b in RUN_BITS)]),
        np.asarray([32, 5, 4, 4, 4, 4]),
    )
    stream = np.concatenate([header, _bits(fields, widths.ravel())])
    return np.packbits(stream).tolist()  # packbits pads the last byte with zeros


class _Reader:
    def __init__(self, data: list[int] | bytes) -> None:
        self.bits = np.unpackbits(np.asarray(bytearray(data), np.uint8))
        self.at = 0

    def read(self, width: int) -> int:
        if self.at + width > self.bits.size:
            raise ValueError("brush RLE ends inside a chunk")
        chunk = self.bits[self.at : self.at + width]
        self.at += width
        return int(chunk.astype(np.int64) @ (1 << np.arange(width - 1, -1, -1, dtype=np.int64)))

    def words(self, count: int, width: int) -> np.ndarray:
        if self.at + count * width > self.bits.size:
            raise ValueError("brush RLE ends inside a literal chunk")
        block = self.bits[self.at : self.at + count * width].reshape(count, width).astype(np.int64)
        self.at += count * width
        return block @ (1 << np.arange(width - 1, -1, -1, dtype=np.int64))


def decode_values(data: list[int] | bytes) -> np.ndarray:
    """Brush RLE -> the flat array of values it packs (any word size, both chunk kinds)."""
    reader = _Reader(data)
    n = reader.read(32)
    word = reader.read(5) + 1
    sizes = [reader.read(4) + 1 for _ in range(4)]
    out = np.zeros(n, np.int64)
    i = 0
    while i < n:
        repeat = reader.read(1)
        j = min(n, i + 1 + reader.read(sizes[reader.read(2)]))
        if repeat:
            out[i:j] = reader.read(word)
        else:
            out[i:j] = reader.words(j - i, word)
        i = j
    return out


def decode(data: list[int] | bytes, height: int, width: int) -> np.ndarray:
    """Brush RLE of an (H, W) image -> bool mask from its alpha channel."""
    values = decode_values(data)
    if values.size != height * width * 4:
        raise ValueError(f"brush RLE holds {values.size} values, a {width}x{height} RGBA bitmap {height * width * 4}")
    return values.reshape(height, width, 4)[:, :, 3] > 127
