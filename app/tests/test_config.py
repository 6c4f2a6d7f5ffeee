from __future__ import annotations

import logging

import pytest

from segserve import create_app
from segserve.config import Settings
from segserve.errors import ConfigError, StartupError


def test_defaults():
    s = Settings.from_mapping({"WEIGHTS_PATH": "/w.pth"})
    assert (s.device, s.torch_threads, s.input_size, s.backend) == ("auto", 1, 520, "torch")
    assert s.max_image_bytes == 10 * 1024 * 1024
    assert s.max_pixels == 24_000_000  # a 6000x4000 photo
    assert s.max_json_bytes == 32 * 1024 * 1024
    assert s.metrics_port is None
    assert s.weights_sha256 is None and s.arch is None


def test_strings_from_the_environment_are_parsed():
    s = Settings.from_mapping(
        {
            "WEIGHTS_PATH": "/w.pth",
            "TORCH_THREADS": "2",
            "MAX_PIXELS": " 1000 ",
            "MAX_JSON_BYTES": "5000",
            "METRICS_PORT": " 9100 ",
            "WEIGHTS_SHA256": "AB" * 32,
            "DEVICE": "CUDA:1",
            "ARCH": "",
        }
    )
    assert (s.torch_threads, s.max_pixels, s.device, s.arch) == (2, 1000, "cuda:1", None)
    assert s.weights_sha256 == "ab" * 32
    assert (s.max_json_bytes, s.metrics_port) == (5000, 9100)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("WEIGHTS_PATH", None),
        ("WEIGHTS_PATH", "  "),
        ("WEIGHTS_SHA256", "abc"),
        ("ARCH", "resnet50"),
        ("DEVICE", "gpu"),
        ("DEVICE", "cuda:x"),
        ("TORCH_THREADS", "0"),
        ("TORCH_THREADS", "two"),
        ("TORCH_THREADS", 1.5),
        ("MAX_IMAGE_BYTES", "-1"),
        ("MAX_PIXELS", "lots"),
        ("INPUT_SIZE", "8"),
        ("INPUT_SIZE", True),
        ("BACKEND", "tensorflow"),
        ("MAX_JSON_BYTES", "0"),
        ("MAX_JSON_BYTES", "32M"),
        ("METRICS_PORT", "0"),
        ("METRICS_PORT", "65536"),
        ("METRICS_PORT", "http"),
    ],
)
def test_invalid_values_name_the_variable(key, value):
    values = {"WEIGHTS_PATH": "/w.pth", key: value}
    with pytest.raises(ConfigError, match=f"SEGSERVE_{key}"):
        Settings.from_mapping(values)


def test_create_app_reads_the_environment(monkeypatch, weights_file):
    monkeypatch.setenv("SEGSERVE_WEIGHTS_PATH", str(weights_file))
    monkeypatch.setenv("SEGSERVE_INPUT_SIZE", "64")
    monkeypatch.setenv("SEGSERVE_DEVICE", "cpu")
    monkeypatch.setenv("SEGSERVE_MAX_IMAGE_BYTES", "123456")
    app = create_app()
    assert app.extensions["segserve"].settings.input_size == 64
    assert app.config["MAX_CONTENT_LENGTH"] == 123456


def test_all_digit_sha256_from_the_environment_stays_text(monkeypatch, weights_file, caplog):
    # Flask's default JSON decoding of env values would make this an int.
    monkeypatch.setenv("SEGSERVE_WEIGHTS_PATH", str(weights_file))
    monkeypatch.setenv("SEGSERVE_WEIGHTS_SHA256", "1" * 64)
    with pytest.raises(StartupError, match="expected " + "1" * 64):
        create_app()


def test_missing_weights_path_in_the_environment(monkeypatch, caplog):
    monkeypatch.delenv("SEGSERVE_WEIGHTS_PATH", raising=False)
    with caplog.at_level(logging.ERROR, logger="segserve"), pytest.raises(StartupError):
        create_app()
    assert "refusing to start: SEGSERVE_WEIGHTS_PATH is required" in caplog.text


def test_unknown_settings_are_reported(settings, caplog):
    with caplog.at_level(logging.WARNING, logger="segserve"):
        create_app({**settings, "WIEGHTS_PATH": "/typo"})
    assert "ignoring unknown setting SEGSERVE_WIEGHTS_PATH" in caplog.text
