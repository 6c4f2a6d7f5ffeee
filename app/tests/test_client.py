"""segserve-client against a real server (the shared uWSGI one)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from PIL import Image

from segserve import samples
from segserve.overlay import voc_palette

pytestmark = pytest.mark.uwsgi

CLIENT = os.path.join(os.path.dirname(sys.executable), "segserve-client")


def run_client(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLIENT, *args], capture_output=True, text=True, timeout=180)


def size_of(path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def test_voc_palette():
    palette = voc_palette()
    assert palette[0] == (0, 0, 0)
    assert palette[8] == (64, 0, 0)  # cat
    assert palette[15] == (192, 128, 128)  # person


def test_several_images_with_overlays(uwsgi_server, tmp_path):
    images = [str(samples.path(n)) for n in samples.names()]
    result = run_client(*images, "--url", uwsgi_server.url, "--overlay", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3
    assert "astronaut.jpg: 512x512, classes: " in lines[0] and " ms" in lines[0]
    for name in samples.names():
        overlay = tmp_path / "out" / name.replace(".jpg", ".overlay.png")
        assert size_of(overlay) == size_of(samples.path(name))


def test_json_format_single_overlay_file(uwsgi_server, tmp_path):
    out = tmp_path / "cat.png"
    result = run_client(
        str(samples.path("chelsea.jpg")),
        "--url",
        uwsgi_server.url + "/",
        "--format",
        "json",
        "--overlay",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    assert "451x300" in result.stdout
    assert size_of(out) == (451, 300)


def test_failures_show_the_server_error(uwsgi_server, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    result = run_client(str(samples.path("coffee.jpg")), str(text), "--url", uwsgi_server.url)
    assert result.returncode == 1
    assert "coffee.jpg: 512x341" in result.stdout
    assert "notes.txt: HTTP 400 not_an_image:" in result.stderr


def test_unreachable_server(tmp_path):
    result = run_client(str(samples.path()), "--url", "http://127.0.0.1:9")
    assert result.returncode == 1
    assert "cannot reach http://127.0.0.1:9" in result.stderr


def test_model_option_asks_the_named_model():
    from segserve.client import endpoints

    assert endpoints("http://lb", None) == ("http://lb/v1/segment", "http://lb/v1/model")
    assert endpoints("http://lb", "deeplab") == (
        "http://lb/v1/models/deeplab/segment",
        "http://lb/v1/models/deeplab",
    )
    # A name is one path segment, whatever it holds.
    assert endpoints("http://lb", "a/../b")[0] == "http://lb/v1/models/a%2F..%2Fb/segment"


def test_model_option_against_a_server_without_that_route(uwsgi_server):
    """A single uWSGI server routes no names: the client sends where --model says and reports
    the server's JSON 404 (nginx answers these routes in a fleet)."""
    result = run_client(str(samples.path("chelsea.jpg")), "--url", uwsgi_server.url, "--model", "x")
    assert result.returncode == 1
    assert "HTTP 404 not_found" in result.stderr, result.stderr
