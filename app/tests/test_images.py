from __future__ import annotations

import io
import json
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms._presets import SemanticSegmentation

from segserve import images
from segserve.errors import BadImage, TooLarge, UnsupportedMediaType
from segserve.images import (
    decode_image,
    encode_png,
    json_mask_bytes,
    json_mask_min_bytes,
    mask_to_json,
    resized_size,
    to_rgb,
)

import photos


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (7, 3), (96, 128), (0, 4), (4, 0)], ids=str)
def test_mask_to_json_matches_json_dumps(shape):
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 256, size=shape, dtype=np.uint8)
    expected = json.dumps(mask.tolist(), separators=(",", ":")).encode()
    assert mask_to_json(mask) == expected


@pytest.mark.parametrize(
    "turn", [np.transpose, np.rot90, lambda m: m[:, ::2]], ids=["transpose", "rot90", "strided"]
)
def test_mask_to_json_of_a_view(turn):
    # A mask turned by EXIF orientation is a strided view, not a C-contiguous array.
    mask = turn(np.random.default_rng(1).integers(0, 21, size=(37, 12), dtype=np.uint8))
    assert mask_to_json(mask) == json.dumps(mask.tolist(), separators=(",", ":")).encode()


@pytest.mark.parametrize(
    "shape", [(1, 1), (3, 7), (7, 3), (96, 128), (0, 4), (4, 0), (0, 0)], ids=str
)
@pytest.mark.parametrize("top", [10, 100, 256])
def test_json_mask_bytes_is_the_encoded_length(shape, top):
    mask = np.random.default_rng(top).integers(0, top, size=shape, dtype=np.uint8)
    assert json_mask_bytes(mask) == len(mask_to_json(mask))


def test_json_mask_bytes_of_a_mask_of_regions_is_the_encoded_length():
    """Regions are counted by their runs, noise pixel by pixel: both must give the length."""
    mask = np.full((300, 200), 7, np.uint8)
    mask[40:120, 10:190] = 255
    mask[200:, :50] = 42
    mask[0, 0], mask[-1, -1] = 3, 0
    for case in (mask, mask.T, mask[::-1, ::2]):
        assert json_mask_bytes(case) == len(mask_to_json(case)), case.shape


@pytest.mark.parametrize("size", [(1, 1), (5, 3), (3, 5), (520, 781)], ids=str)
def test_json_mask_min_bytes_is_the_smallest_either_way_up(size):
    width, height = size
    upright = len(mask_to_json(np.zeros((height, width), dtype=np.uint8)))
    turned = len(mask_to_json(np.zeros((width, height), dtype=np.uint8)))
    assert json_mask_min_bytes(width, height) == min(upright, turned)
    # Any other id only adds digits.
    assert json_mask_min_bytes(width, height) < len(
        mask_to_json(np.full((height, width), 12, dtype=np.uint8))
    )


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((451, 300), (781, 520)),  # landscape: short side to 520, long side truncated
        ((300, 451), (520, 781)),
        ((520, 520), (520, 520)),
        ((100, 50), (1040, 520)),  # upscaled, as torchvision does
        ((100_000, 10), (2080, 1)),  # extreme aspect: long side capped, short side kept >= 1
    ],
)
def test_resized_size(size, expected):
    assert resized_size(*size, 520, 2080) == expected


def test_preprocess_matches_torchvision_preset(app):
    handler = app.extensions["segserve"]
    image = photos.photo("chelsea.jpg")
    decoded = images.DecodedImage(image, image.width, image.height, "JPEG")
    ours = handler.preprocess(decoded)
    preset = SemanticSegmentation(resize_size=handler.settings.input_size)
    theirs = preset(image).unsqueeze(0)
    assert ours.shape == theirs.shape
    assert torch.allclose(torch.from_numpy(ours), theirs, atol=1e-5)


def test_normalise_table_gives_the_bits_of_the_arithmetic():
    """The lookup table stands for torch's float32 operations per pixel: every one of the 256
    levels of every channel must give exactly the bits that (v / 255 - mean) / std gives."""
    from segserve.handler import MEAN, NORMALISE, STD, to_batch

    levels = torch.arange(256, dtype=torch.uint8)
    pixels = torch.stack([levels] * 3).float().div_(255.0)
    expected = pixels.sub_(torch.tensor(MEAN).view(3, 1)).div_(torch.tensor(STD).view(3, 1))
    assert np.array_equal(NORMALISE, expected.numpy())
    # And to_batch reads the table by channel: an image holding every level in each channel.
    ramp = np.stack([np.arange(256, dtype=np.uint8)] * 3, axis=-1).reshape(16, 16, 3)
    batch = to_batch(Image.fromarray(ramp), 16)
    assert np.array_equal(batch[0].reshape(3, 256), expected.numpy())


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "1", "YCbCr", "I;16", "I", "F"])
def test_to_rgb_any_mode(mode):
    image = photos.photo().convert(mode) if mode not in ("I;16", "I", "F") else None
    if mode == "I;16":
        image = Image.fromarray(np.full((4, 5), 32896, dtype=np.uint16))
    elif mode == "I":
        image = Image.fromarray(np.full((4, 5), 32896, dtype=np.int32))
    elif mode == "F":
        image = Image.fromarray(np.full((4, 5), 0.5, dtype=np.float32))
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and rgb.size == image.size
    if mode in ("I;16", "I", "F"):
        # Mid-grey stays mid-grey rather than clipping to white.
        assert 126 <= rgb.getpixel((0, 0))[0] <= 129


def test_transparent_pixels_become_white():
    clear = Image.new("RGBA", (3, 3), (10, 20, 30, 0))
    assert to_rgb(clear).getpixel((1, 1)) == (255, 255, 255)
    palette = Image.new("P", (3, 3), 0)
    palette.info["transparency"] = 0
    assert to_rgb(palette).getpixel((0, 0)) == (255, 255, 255)


def test_big_jpeg_is_decoded_at_reduced_scale_but_reports_full_size():
    big = photos.photo().resize((2400, 1600))
    decoded = decode_image(photos.encode(big, "JPEG"), max_pixels=10**8, draft_size=96)
    assert (decoded.width, decoded.height) == (2400, 1600)
    assert decoded.image.width < 2400 and min(decoded.image.size) >= 96


def test_exif_rotation_swaps_the_size():
    decoded = decode_image(photos.exif_rotated_jpeg(6), max_pixels=10**8)
    source = photos.photo().size
    assert (decoded.width, decoded.height) == (source[1], source[0])
    assert decoded.image.size == (source[1], source[0])


def test_pillows_own_bomb_warning_is_an_error(monkeypatch):
    # Between Pillow's limit and twice that it only warns; that must still refuse.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    data = photos.encode(Image.new("L", (40, 40)), "PNG")
    with pytest.raises(TooLarge):
        decode_image(data, max_pixels=10**9)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", BadImage),
        (b"GIF89a", BadImage),
        (photos.encode(Image.new("RGB", (8, 8)), "ICO"), UnsupportedMediaType),
        (photos.encode(Image.new("RGB", (8, 8)), "PPM"), UnsupportedMediaType),
        (b"%PDF-1.4 something", UnsupportedMediaType),
        (photos.bomb_png(), TooLarge),
    ],
    ids=["empty", "gif-header-only", "ico", "ppm", "pdf", "bomb"],
)
def test_decode_errors(data, error):
    with pytest.raises(error):
        decode_image(data, max_pixels=40_000_000)


# -- formats are told from their signature, and Pillow opens only that one ------------------


def _avif_like() -> bytes:
    return struct.pack(">I", 28) + b"ftypavif" + b"\0\0\0\0" + b"avifmif1miaf" + b"\0" * 64


REFUSED = {
    "ico": photos.encode(Image.new("RGB", (8, 8)), "ICO"),
    "ppm": photos.encode(Image.new("RGB", (8, 8)), "PPM"),
    "pgm": b"P5\n8 8\n255\n" + b"\0" * 64,
    "heic": photos.heic_like(),
    "avif": _avif_like(),
    "pdf": b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj",
    "svg": b'<?xml version="1.0"?>\n<SVG xmlns="http://www.w3.org/2000/svg" width="8">',
    "psd": b"8BPS\x00\x01" + b"\0" * 64,
    "eps": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n",
    "dos-eps": b"\xc5\xd0\xd3\xc6" + b"\x1e\0\0\0" + b"\0" * 64,
    "jpeg2000": b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\0" * 64,
    "j2k": b"\xff\x4f\xff\x51" + b"\0" * 64,
    "bigtiff": b"II+\x00\x08\x00\x00\x00" + b"\0" * 64,
}
NOT_IMAGES = {
    "text": b"hello, this is not an image",
    "html": b"<html><body>hello</body></html>",
    "wav": b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\0" * 64,
    "mp4": struct.pack(">I", 24) + b"ftypisom" + b"\0\0\x02\x00" + b"isomiso2" + b"\0" * 64,
    "zeros": b"\0" * 100,
}


@pytest.fixture
def pillow_never_opens(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("Pillow was asked to open the body")

    monkeypatch.setattr(images.Image, "open", refuse)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_formats_are_told_from_their_signature(pillow_never_opens, name):
    with pytest.raises(UnsupportedMediaType) as caught:
        decode_image(REFUSED[name], max_pixels=10**8)
    assert caught.value.code == "unsupported_image_format"


@pytest.mark.parametrize("name", sorted(NOT_IMAGES))
def test_bodies_without_a_signature_are_not_images(pillow_never_opens, name):
    with pytest.raises(BadImage) as caught:
        decode_image(NOT_IMAGES[name], max_pixels=10**8)
    assert caught.value.code == "not_an_image"


@pytest.mark.parametrize(
    "data",
    [
        b"GIF89a",
        b"\x89PNG\r\n\x1a\n" + b"\0" * 40,
        b"\xff\xd8\xff" + b"\0" * 40,
        b"RIFF\0\0\0\0WEBP" + b"\0" * 40,
        b"MM\x00*" + b"\0" * 40,
    ],
    ids=["gif", "png", "jpeg", "webp", "tiff"],
)
def test_a_signature_with_a_broken_header_is_corrupt(data):
    # Only the format the signature names is tried: its failure is a corrupt header, not
    # "no known format".
    with pytest.raises(BadImage) as caught:
        decode_image(data, max_pixels=10**8)
    assert caught.value.code == "corrupt_image"


def _mpo() -> bytes:
    first = photos.photo().resize((64, 48))
    return photos.encode(first, "MPO", save_all=True, append_images=[first.rotate(180)])


# Run in a fresh interpreter: which plugin modules a decode imports can only be seen from a
# clean start (this process imported many for the tests' own images).
_PROBE = r"""
import json, sys
from pathlib import Path
from PIL import Image
from segserve import images
from segserve.errors import ServiceError

def plugins():
    return sorted(m for m in sys.modules if m.startswith("PIL.") and m.endswith("ImagePlugin"))

out = {"at_import": plugins()}
for stage in ("refused", "not_tiff", "rest"):
    for path in sorted(Path(sys.argv[1], stage).iterdir()):
        try:
            out[path.name] = images.decode_image(path.read_bytes(), max_pixels=10**8).format
        except ServiceError as exc:
            out[path.name] = exc.code
    out["after_" + stage] = plugins()
out["initialized"] = Image._initialized
print(json.dumps(out))
"""


def test_only_the_accepted_formats_plugins_are_ever_imported(tmp_path):
    good = photos.good_images()
    bodies = {
        "refused": {**REFUSED, **NOT_IMAGES},
        "not_tiff": {
            **{name: good[name][0] for name in ("jpeg", "png", "gif", "bmp", "webp")},
            "gif-header-only": b"GIF89a",
        },
        "rest": {"tiff": good["tiff"][0], "mpo": _mpo(), "exif-jpeg": photos.exif_rotated_jpeg()},
    }
    for stage, named in bodies.items():
        (tmp_path / stage).mkdir()
        for name, data in named.items():
            (tmp_path / stage / name).write_bytes(data)
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)

    assert out["at_import"] == []
    assert {out[name] for name in REFUSED} == {"unsupported_image_format"}
    assert {out[name] for name in NOT_IMAGES} == {"not_an_image"}
    # No body without an accepted signature reached Pillow: not one plugin was imported.
    assert out["after_refused"] == []
    for name in ("jpeg", "png", "gif", "bmp", "webp"):
        assert out[name] == name.upper()
    assert out["gif-header-only"] == "corrupt_image"
    assert "PIL.TiffImagePlugin" not in out["after_not_tiff"]
    assert (out["tiff"], out["mpo"], out["exif-jpeg"]) == ("TIFF", "MPO", "JPEG")
    # Image.init() (every plugin Pillow has) never ran. Image.open's preinit() imports BMP,
    # GIF, JPEG, PNG and PPM on any open: PPM is imported, registered and never consulted,
    # since Image.open is told the one format. The JPEG plugin imports MPO's for an MPO.
    accepted = {
        "PIL.BmpImagePlugin",
        "PIL.GifImagePlugin",
        "PIL.JpegImagePlugin",
        "PIL.PngImagePlugin",
        "PIL.TiffImagePlugin",
        "PIL.WebPImagePlugin",
    }
    assert set(out["after_rest"]) == accepted | {"PIL.PpmImagePlugin", "PIL.MpoImagePlugin"}
    assert out["initialized"] < 2


@pytest.mark.parametrize("shape", [(1, 1), (1, 700), (700, 1), (520, 520), (37, 1951)])
def test_png_mask_decodes_to_the_same_class_ids(shape):
    """The service writes PNG itself: any decoder must read back exactly the mask, every
    chunk's CRC checked (verify), greyscale 8-bit."""
    rng = np.random.default_rng(sum(shape))
    runs = np.repeat(rng.integers(0, 21, size=shape[0] * shape[1] // 7 + 1), 7)
    mask = runs[: shape[0] * shape[1]].reshape(shape).astype(np.uint8)
    mask.flat[:: max(1, mask.size // 5)] = 255  # the largest value too
    data = encode_png(mask)
    with Image.open(io.BytesIO(data)) as image:
        image.verify()
    with Image.open(io.BytesIO(data)) as image:
        assert (image.format, image.mode, image.size) == ("PNG", "L", (shape[1], shape[0]))
        assert np.array_equal(np.asarray(image), mask)


def test_ids_present_counts_ids_found_only_where_a_run_starts_or_at_either_end():
    """A mask of a few regions takes the run-start path: an id that is only the first pixel,
    only the last pixel, or one lone pixel inside a region is still found; so are 0 and 255."""
    from segserve.images import ids_present

    mask = np.full((40, 30), 7, np.uint8)
    mask[10:20, 5:25] = 255
    mask[0, 0] = 3  # only the first pixel
    mask[-1, -1] = 0  # only the last pixel
    mask[15, 12] = 42  # one pixel inside the 255 region
    for case in (mask, mask.T, mask[::-1], np.array([[9]], np.uint8), np.zeros((0, 4), np.uint8)):
        assert ids_present(case) == [int(v) for v in np.unique(case)], case.shape


def test_classes_present_is_every_id_in_the_mask_once():
    """The X-Segserve-Classes header and a JSON answer's classes: exactly the ids in the mask,
    ascending, for any 8-bit mask (the highest id and a strided view included)."""
    from segserve.handler import Result

    rng = np.random.default_rng(3)
    full = rng.choice(np.array([0, 4, 20, 255], dtype=np.uint8), size=(61, 47))
    for mask in (full, full[::2, 1::3], np.zeros((5, 7), np.uint8)):
        result = Result(mask=mask, width=mask.shape[1], height=mask.shape[0])
        expected = [int(v) for v in np.unique(mask)]
        assert result.classes_present() == expected
        assert result.classes_present() == expected  # asked twice (header and body)
