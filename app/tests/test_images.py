from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms._presets import SemanticSegmentation

from segserve import images
from segserve.errors import BadImage, TooLarge, UnsupportedMediaType
from segserve.images import decode_image, mask_to_json, resized_size, to_rgb

import photos


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (7, 3), (96, 128), (0, 4), (4, 0)], ids=str)
def test_mask_to_json_matches_json_dumps(shape):
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 256, size=shape, dtype=np.uint8)
    expected = json.dumps(mask.tolist(), separators=(",", ":")).encode()
    assert mask_to_json(mask) == expected


def test_mask_to_json_across_chunks(monkeypatch):
    monkeypatch.setattr(images, "_ROWS_PER_CHUNK_PIXELS", 50)
    mask = np.random.default_rng(1).integers(0, 21, size=(37, 11), dtype=np.uint8)
    assert json.loads(mask_to_json(mask)) == mask.tolist()


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
    assert torch.allclose(ours, theirs, atol=1e-5)


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
