"""A CPU host serving the converted model has no torch (app/requirements-cpu.lock): the
service, under real uWSGI with the role's options, and `segserve-weights choose-backend` must
run where importing torch or torchvision fails. Here torch is installed (the tests convert
with it), so these processes get a sitecustomize that makes both imports fail, as on such a
host; the artifact is the only model file they are given."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import urllib.request

import numpy as np
import pytest
from PIL import Image

from segserve import samples

from conftest import UwsgiServer

pytest.importorskip("onnxruntime")

BLOCKER = """\
import sys
# As on a CPU host with requirements-cpu.lock: neither is installed.
for name in ("torch", "torchvision"):
    sys.modules[name] = None
"""


@pytest.fixture(scope="module")
def no_torch(tmp_path_factory) -> dict[str, str]:
    """Environment variables under which a Python process cannot import torch."""
    site = tmp_path_factory.mktemp("no-torch")
    (site / "sitecustomize.py").write_text(BLOCKER)
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path}


def test_the_blocker_blocks(no_torch):
    """Without this, the tests below would prove nothing."""
    run = subprocess.run(
        [sys.executable, "-c", "import torch"],
        env={**os.environ, **no_torch},
        capture_output=True,
        text=True,
    )
    assert run.returncode != 0 and "ModuleNotFoundError" in run.stderr, run.stderr


@pytest.mark.uwsgi
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_uwsgi_serves_the_artifact_without_torch(backend, converted, no_torch, tmp_path):
    if backend == "openvino":
        pytest.importorskip("openvino")
    path, sha, _, meta = converted
    server = UwsgiServer(
        None,
        tmp_path,
        SEGSERVE_BACKEND=backend,
        SEGSERVE_ONNX_PATH=str(path),
        SEGSERVE_ONNX_SHA256=sha,
        SEGSERVE_WEIGHTS_SHA256=meta["source_weights_sha256"],
        SEGSERVE_INPUT_SIZE="96",
        **no_torch,
    )
    try:
        server.wait_ready()
        with urllib.request.urlopen(f"{server.url}/v1/model", timeout=10) as response:
            model = json.load(response)
        assert model["backend"] == backend
        assert model["weights_sha256"] == meta["source_weights_sha256"]
        assert model["arch"] == meta["arch"] and len(model["classes"]) == 21
        assert model["pretrained"] is False and "UNTRAINED" in model["warning"]
        with open(samples.path("astronaut.jpg"), "rb") as f:
            photo = f.read()
        request = urllib.request.Request(
            f"{server.url}/v1/segment",
            data=photo,
            headers={"Content-Type": "image/jpeg", "Accept": "image/png"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            mask = np.asarray(Image.open(io.BytesIO(response.read())))
        assert mask.shape == (512, 512) and len(np.unique(mask)) > 1
    finally:
        server.stop()
    assert "ModuleNotFoundError" not in server.log(), server.log()


def test_an_artifact_of_other_weights_is_refused_without_torch(converted, no_torch, tmp_path):
    path, sha, _, _ = converted
    code = (
        "from segserve import create_app\n"
        f"create_app({{'BACKEND': 'onnxruntime', 'DEVICE': 'cpu', 'ONNX_PATH': {str(path)!r}, "
        f"'WEIGHTS_SHA256': {'0' * 64!r}}})\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **no_torch},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0
    assert "was converted from weights sha256" in run.stderr, run.stderr
    assert "ModuleNotFoundError" not in run.stderr, run.stderr
