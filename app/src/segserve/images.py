"""Decoding untrusted image bytes, and encoding class-id masks.

Every way an upload can be wrong ends here as a ServiceError with a fitting status, so that no
input reaches the model half-decoded and no input can exhaust a worker's memory: the pixel
count is checked from the header, before any pixel is decoded. The format is told from the
body's first bytes, and only that format's parser ever reads it.
"""

from __future__ import annotations

import importlib
import io
import re
import struct
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import orjson
from PIL import Image, UnidentifiedImageError

from segserve.errors import BadImage, TooLarge, UnsupportedMediaType

# Formats a photo arrives in (Pillow's JPEG opener also returns phone cameras' multi-picture
# JPEGs, format "MPO"). Others that Pillow can read (ICO, PSD, EPS which runs Ghostscript, ...)
# are refused: they are not photos, and each extra parser is extra attack surface.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")

# The format is told from the body's first bytes, and Pillow is asked to open that one format
# only: no other plugin's parser ever sees an upload. Each format's plugin is imported here,
# on first use, because Image.open imports every plugin Pillow has (Image.init(), about 40,
# Ghostscript's EPS among them) as soon as it is asked for a format that no imported plugin
# registered. The JPEG plugin imports the MPO one itself when a JPEG turns out to be an MPO.
_PLUGINS = {
    "JPEG": "PIL.JpegImagePlugin",
    "PNG": "PIL.PngImagePlugin",
    "WEBP": "PIL.WebPImagePlugin",
    "BMP": "PIL.BmpImagePlugin",
    "GIF": "PIL.GifImagePlugin",
    "TIFF": "PIL.TiffImagePlugin",
}
# Prefix -> format: each is the format's own signature (Pillow's openers check the same).
# Classic TIFF only: BigTIFF (64-bit offsets, for files over 4 GiB) is no photo upload.
_ACCEPTED_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
# Signatures of image formats that are refused, so that a phone's HEIC photo or an icon is
# told "format not accepted" (415) rather than "not an image" (400). Matched here, never by
# opening the bytes with Pillow. TGA has no signature at its start and is not sniffed.
_REFUSED_MAGIC = (
    (b"%PDF", "PDF"),
    (b"%!PS", "EPS"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),  # DOS EPS binary header
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\x00\x00\x02\x00", "CUR"),
    (b"8BPS", "PSD"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),  # bare codestream
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"),
    (b"\xff\x0a", "JPEG XL"),  # bare codestream
    (b"II+\x00", "BigTIFF"),
    (b"MM\x00+", "BigTIFF"),
    (b"II\xbc", "JPEG XR"),
    (b"qoif", "QOI"),
    (b"DDS ", "DDS"),
    (b"icns", "ICNS"),
    (b"gimp xcf", "XCF"),
    (b"\x76\x2f\x31\x01", "OpenEXR"),
    (b"\xd7\xcd\xc6\x9a", "WMF"),
)
# ISO base media files (HEIF, AVIF, but also MP4 videos) say what they are in an ftyp box.
_HEIC_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs"}
_AVIF_BRANDS = {b"avif", b"avis"}
_HEIF_BRANDS = {b"mif1", b"msf1"}
# Netpbm (PBM, PGM, PPM, PAM, PFM): "P", a type character, whitespace.
_NETPBM = re.compile(rb"P[1-7Ff]\s")

# EXIF orientation -> the transpose that shows the image upright (as ImageOps.exif_transpose).
_ORIENTATION = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@dataclass
class DecodedImage:
    image: Image.Image  # RGB, upright; may be smaller than (width, height), see decode_image
    width: int  # the upright size of the uploaded image: the mask is returned at this size
    height: int
    format: str


def decode_image(
    data: bytes,
    *,
    max_pixels: int,
    draft_size: int | None = None,
    check_size: Callable[[int, int], None] | None = None,
) -> DecodedImage:
    """Decode, orient upright and convert to RGB.

    `draft_size`: JPEGs may be decoded at 1/2, 1/4 or 1/8 scale (the decoder's DCT scaling)
    while both sides stay at least this large. The model sees the image resized to about that
    size anyway, and a 12-megapixel photo then decodes several times faster.

    `check_size(width, height)` is called with the size the header states, before any pixel
    is decoded, and raises a ServiceError to refuse the image. That size is before EXIF
    orientation: Pillow decodes a PNG's pixels to look for an EXIF chunk stored after them.
    """
    if not data:
        raise BadImage("the request body is empty: send the image bytes", code="empty_body")
    fmt = identify(data)
    importlib.import_module(_PLUGINS[fmt])
    with warnings.catch_warnings():
        # Pillow warns (rather than fails) between its limit and twice that; both are errors
        # here. Its limit (Image.MAX_IMAGE_PIXELS) is set from the same setting at start.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=[fmt])
        except UnidentifiedImageError:
            # The signature matched, so this is no other format: its header is broken.
            raise BadImage(
                f"the body starts like a {fmt} image, but its header cannot be read",
                code="corrupt_image",
            ) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _too_many_pixels(str(exc)) from None
        except Exception as exc:
            raise BadImage(f"cannot read the image header: {exc}", code="corrupt_image") from None

        width, height = image.size
        if width * height > max_pixels:
            raise _too_many_pixels(f"{width}x{height} is {width * height} pixels")
        if width < 1 or height < 1:
            raise BadImage(f"the image has no pixels ({width}x{height})", code="corrupt_image")
        if check_size is not None:
            check_size(width, height)
        fmt = image.format or fmt

        try:
            orientation = int(image.getexif().get(_ORIENTATION, 1))
        except Exception:
            # Broken EXIF is common in the wild and does not make the pixels unusable.
            orientation = 1
        if draft_size is not None and fmt in ("JPEG", "MPO"):
            image.draft("RGB", (draft_size, draft_size))
        try:
            image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _too_many_pixels(str(exc)) from None
        except MemoryError:
            raise
        except Exception as exc:
            # Truncated files raise OSError; malformed ones anything from ValueError to
            # struct.error depending on the plugin. All mean the same to the client.
            raise BadImage(
                f"the {fmt} image is truncated or corrupt: {exc}", code="corrupt_image"
            ) from None

    if orientation in _TRANSPOSE:
        image = image.transpose(_TRANSPOSE[orientation])
        if orientation >= 5:
            width, height = height, width
    return DecodedImage(image=to_rgb(image), width=width, height=height, format=fmt)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB, as a photo viewer would show it."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        # 16-bit and float grey: Pillow's own convert clips at 255, turning most of a 16-bit
        # image white. Scale the range down instead.
        values = np.asarray(image, dtype=np.float32)
        if mode == "F":
            top = 1.0 if values.size and float(np.nanmax(values)) <= 1.0 else 255.0
        else:
            top = 65535.0 if values.size and float(values.max()) > 255 else 255.0
        grey = np.clip(np.nan_to_num(values) * (255.0 / top), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Transparent areas show as white, as on most pages the image would be viewed on.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def resized_size(width: int, height: int, short_side: int, max_long_side: int) -> tuple[int, int]:
    """The size torchvision's segmentation presets resize to: the short side becomes
    `short_side` and the long side keeps the aspect ratio (truncated, as torchvision does).

    The long side is capped at `max_long_side` (torchvision's `max_size`): a 1 x 100000 image
    would otherwise become a 520 x 52 million tensor and take the worker down.
    """
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = short_side, int(short_side * long / short)
    if new_long > max_long_side:
        new_short, new_long = max(1, int(max_long_side * new_short / new_long)), max_long_side
    return (new_short, new_long) if width <= height else (new_long, new_short)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def encode_png(mask: np.ndarray) -> bytes:
    """An 8-bit greyscale PNG whose pixel values are the class ids.

    Written directly (PNG specification, ISO/IEC 15948): every scanline with filter type 0
    (none) and the image data deflated with zlib's run-length strategy. A mask is long runs
    of equal values, which that strategy encodes as well as a filtered, fully searched deflate,
    while Pillow's encoder spends most of its time choosing a filter for every row: about 3x
    faster and smaller (bench/results/backends.md, PNG encode)."""
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    height, width = mask.shape
    scanlines = np.zeros((height, width + 1), dtype=np.uint8)
    scanlines[:, 1:] = mask
    deflate = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    data = deflate.compress(scanlines) + deflate.flush()  # the array itself: no bytes copy
    # IHDR: width, height, bit depth 8, colour type 0 (greyscale), deflate, adaptive
    # filtering method 0, no interlace.
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        _PNG_SIGNATURE
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", data)
        + _png_chunk(b"IEND", b"")
    )


def id_counts(mask: np.ndarray) -> np.ndarray:
    """How many pixels of an 8-bit mask hold each id: 256 int64 counts.

    A mask of a few regions is counted by its runs (a run starts at the first pixel and at
    each pixel unlike the one before): each run adds its length to its id once. Counting every
    pixel is slowest on exactly such masks: a run adds to one bin over and over, each addition
    waiting for the one before (a one-class 520x520 mask: 0.55 ms with PIL's histogram, 0.04
    ms by runs; bench/mask_ids.py). A noisy mask, with runs nearly everywhere, goes to PIL's
    histogram, which is fast when consecutive bins differ."""
    flat = np.ascontiguousarray(mask, dtype=np.uint8).reshape(-1)
    if flat.size == 0:
        return np.zeros(256, dtype=np.int64)
    changes = flat[1:] != flat[:-1]
    if np.count_nonzero(changes) > flat.size // 8:
        return np.asarray(Image.fromarray(flat.reshape(1, -1)).histogram(), dtype=np.int64)
    starts = np.flatnonzero(changes) + 1
    bounds = np.concatenate(([0], starts, [flat.size]))
    # Float weights, exact for any pixel count an image can have (below 2**53).
    lengths = np.diff(bounds).astype(np.float64)
    return np.bincount(flat[bounds[:-1]], weights=lengths, minlength=256).astype(np.int64)


def ids_present(mask: np.ndarray) -> list[int]:
    """The distinct ids of an 8-bit mask, ascending."""
    return np.flatnonzero(id_counts(mask)).tolist()


def mask_to_json(mask: np.ndarray) -> bytes:
    """`json.dumps(mask.tolist(), separators=(",", ":"))` for a uint8 mask, the same bytes,
    written by orjson straight from the array: no Python int per pixel is ever built
    (bench/results/inprocess.md measures it beside the standard library).
    """
    # orjson reads only C-contiguous arrays; a mask turned by EXIF orientation is a view.
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    return orjson.dumps(mask, option=orjson.OPT_SERIALIZE_NUMPY)


def json_mask_min_bytes(width: int, height: int) -> int:
    """The fewest bytes `mask_to_json` can produce for a mask of this size, either way up.

    A mask of h rows of w ids (w, h >= 1) is "[" + h rows joined by "," + "]", a row being
    "[" + w ids joined by "," + "]": 1 + h * (w + 2) bytes besides the digits, and every id
    has at least one digit. That is 2wh + 2h + 1, reached when every id is below 10; EXIF
    orientation may swap w and h, so the smaller side stands in for h.
    """
    return 2 * width * height + 2 * min(width, height) + 1


# Digits of each possible uint8 class id, for json_mask_bytes.
_ID_DIGITS = np.array([1] * 10 + [2] * 90 + [3] * 156, dtype=np.int64)


def json_mask_bytes(mask: np.ndarray, counts: np.ndarray | None = None) -> int:
    """Exactly `len(mask_to_json(mask))`, from a count of the ids: no text is built. `counts`:
    the mask's id_counts, where the caller has them already."""
    height, width = mask.shape
    if height == 0:
        return 2
    if width == 0:
        return 3 * height + 1  # "[" + h "[]" joined by "," + "]"
    counts = id_counts(mask) if counts is None else counts
    return 1 + height * (width + 2) + int(counts @ _ID_DIGITS)


def identify(data: bytes) -> str:
    """The accepted format the body's signature names, or the error that refuses it."""
    for magic, fmt in _ACCEPTED_MAGIC:
        if data.startswith(magic):
            return fmt
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    refused = _refused_format(data)
    if refused is not None:
        raise UnsupportedMediaType(
            f"{refused} images are not accepted; send one of: {', '.join(ACCEPTED_FORMATS)}",
            code="unsupported_image_format",
        )
    raise BadImage(
        f"the body is not an image in a known format (accepted: {', '.join(ACCEPTED_FORMATS)})",
        code="not_an_image",
    )


def _too_many_pixels(detail: str) -> TooLarge:
    return TooLarge(f"the image has too many pixels: {detail}", code="too_many_pixels")


def _refused_format(data: bytes) -> str | None:
    for magic, fmt in _REFUSED_MAGIC:
        if data.startswith(magic):
            return fmt
    if data[4:8] == b"ftyp":
        brands = {data[8:12]}
        # The compatible brands follow the major brand and its version, to the box's end.
        box_end = min(int.from_bytes(data[:4], "big"), 256)
        brands.update(data[i : i + 4] for i in range(16, box_end - 3, 4))
        if brands & _AVIF_BRANDS:
            return "AVIF"
        if brands & _HEIC_BRANDS:
            return "HEIC"
        if brands & _HEIF_BRANDS:
            return "HEIF"
        return None  # an MP4 video or the like
    if _NETPBM.match(data):
        return "PPM"
    if data[40:44] == b" EMF":
        return "EMF"
    if b"<svg" in data[:1024].lower():
        return "SVG"
    return None
