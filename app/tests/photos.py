"""Real encoded images for the tests, made with Pillow from the packaged sample photos."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

from segserve import samples


def photo(name: str = "coffee.jpg") -> Image.Image:
    with Image.open(samples.path(name)) as image:
        return image.convert("RGB")


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def exif_rotated_jpeg(orientation: int = 6) -> bytes:
    """coffee.jpg (wider than tall) stored sideways with an EXIF orientation tag."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(photo(), "JPEG", quality=90, exif=exif)


def png16() -> bytes:
    grey = np.asarray(photo().convert("L"), dtype=np.uint16) * 257
    return encode(Image.fromarray(grey), "PNG")


def truncated_jpeg() -> bytes:
    data = encode(photo(), "JPEG", quality=90)
    return data[: len(data) // 2]


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A small, valid-looking PNG whose header claims a huge size: a decompression bomb as
    far as any decoder that trusts the header is concerned."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def heic_like() -> bytes:
    """The start of an HEIC file (ftyp box), which Pillow cannot identify."""
    return struct.pack(">I", 24) + b"ftypheic" + b"\0\0\0\0" + b"mif1heic" + b"\0" * 64


# name -> (bytes, expected upright (width, height))
def good_images() -> dict[str, tuple[bytes, tuple[int, int]]]:
    rgb = photo()
    size = rgb.size
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(size))
    return {
        "jpeg": (encode(rgb, "JPEG", quality=90), size),
        "png": (encode(rgb, "PNG"), size),
        "webp": (encode(rgb, "WEBP", quality=80), size),
        "bmp": (encode(rgb, "BMP"), size),
        "gif": (encode(rgb.convert("P"), "GIF"), size),
        "tiff": (encode(rgb, "TIFF"), size),
        "grayscale-png": (encode(rgb.convert("L"), "PNG"), size),
        "grayscale-jpeg": (encode(rgb.convert("L"), "JPEG"), size),
        "palette-png": (encode(rgb.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"), size),
        "rgba-png": (encode(rgba, "PNG"), size),
        "cmyk-jpeg": (encode(rgb.convert("CMYK"), "JPEG", quality=90), size),
        "16bit-png": (png16(), size),
        "exif-rotated-jpeg": (exif_rotated_jpeg(), (size[1], size[0])),
    }
