"""The seed-style colour overlay: a photo with each found class tinted in its Pascal VOC colour.

Pillow is imported only when an overlay is drawn: the client needs nothing but the standard
library to send images.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from segserve.client import Answer


def voc_palette(n: int = 256) -> list[tuple[int, int, int]]:
    """The Pascal VOC colour map: class id bits spread over the high bits of R, G and B."""
    colours = []
    for index in range(n):
        r = g = b = 0
        value = index
        for shift in range(7, -1, -1):
            r |= (value & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        colours.append((r, g, b))
    return colours


def write_overlay(image_path: Path, answer: Answer, out: Path, alpha: float = 0.5) -> None:
    import io

    from PIL import Image, ImageOps

    with Image.open(image_path) as original:
        photo = ImageOps.exif_transpose(original).convert("RGB")
    if answer.fmt == "png":
        with Image.open(io.BytesIO(answer.body)) as png:
            mask = png.convert("L")
    else:
        rows = json.loads(answer.body)["mask"]
        mask = Image.new("L", (answer.width, answer.height))
        mask.putdata([v for row in rows for v in row])
    if mask.size != photo.size:
        # The server answers at the upright size of what it received; match it just in case
        # the local decoder disagrees about orientation.
        photo = photo.resize(mask.size)
    colour = mask.copy()
    colour.putpalette([c for rgb in voc_palette() for c in rgb])
    blended = Image.blend(photo, colour.convert("RGB"), alpha)
    # Background (class 0) stays as the photo; only found objects are tinted.
    foreground = mask.point(lambda v: 255 if v else 0)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.composite(blended, photo, foreground).save(out, format="PNG")
