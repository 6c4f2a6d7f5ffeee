"""The JSON mask encoders the served one (orjson, `segserve.images.mask_to_json`) is compared
with in bench/inprocess.py: the standard library, and the numpy digit layout the service used
before it. Kept here only as the benchmark's baseline; both give the same bytes as orjson.
"""

from __future__ import annotations

import json

import numpy as np

_DIGITS = np.frombuffer(b"0123456789", dtype=np.uint8)
_ROWS_PER_CHUNK_PIXELS = 1 << 20


def stdlib_json(mask: np.ndarray) -> bytes:
    """The definition: `json.dumps(mask.tolist())` without spaces."""
    return json.dumps(mask.tolist(), separators=(",", ":")).encode()


def numpy_digits(mask: np.ndarray) -> bytes:
    """Each id's three digits laid out with numpy, the unused leading ones then dropped."""
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    height, width = mask.shape
    if height == 0:
        return b"[]"
    if width == 0:
        return b"[" + b",".join([b"[]"] * height) + b"]"
    rows_per_chunk = max(1, _ROWS_PER_CHUNK_PIXELS // width)
    pieces = []
    for start in range(0, height, rows_per_chunk):
        values = mask[start : start + rows_per_chunk]
        n = values.shape[0]
        # Per row: "[" then, per value, up to three digits and a separator, then ",".
        chars = np.empty((n, 2 + 4 * width), dtype=np.uint8)
        keep = np.ones_like(chars, dtype=bool)
        chars[:, 0] = ord("[")
        cells = chars[:, 1:-1].reshape(n, width, 4)
        cells[..., 0] = _DIGITS[values // 100]
        cells[..., 1] = _DIGITS[(values // 10) % 10]
        cells[..., 2] = _DIGITS[values % 10]
        cells[..., 3] = ord(",")
        cells[:, -1, 3] = ord("]")
        kept = keep[:, 1:-1].reshape(n, width, 4)
        kept[..., 0] = values >= 100
        kept[..., 1] = values >= 10
        chars[:, -1] = ord(",")
        if start + n == height:
            keep[-1, -1] = False
        pieces.append(chars[keep].tobytes())
    return b"[" + b"".join(pieces) + b"]"
