"""Backends: the onnxruntime conversion, its equivalence check, and the refusal of a
mismatched artifact; the torch backend's options and class-id reduction."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from segserve import create_app, gate, weights_cli
from segserve import weights as w
from segserve.backends import class_ids, read_onnx_metadata
from segserve.config import Settings
from segserve.errors import ConfigError, StartupError

from conftest import INPUT_SIZE
from photos import encode, photo

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def ort_settings(varied_weights, converted):
    return {
        "WEIGHTS_PATH": str(varied_weights),
        "DEVICE": "cpu",
        "TORCH_THREADS": 1,
        "INPUT_SIZE": INPUT_SIZE,
        "BACKEND": "onnxruntime",
        "ONNX_PATH": str(converted[0]),
    }


@pytest.fixture(scope="module")
def ort_app(ort_settings):
    return create_app(ort_settings)


@pytest.fixture(scope="module")
def torch_app(ort_settings):
    return create_app({**ort_settings, "BACKEND": "torch"})


# -- the torch backend ----------------------------------------------------------------------


def test_class_ids_equal_argmax_including_ties():
    logits = torch.randn(2, 21, 17, 23)
    logits[:, 5] = logits[:, 9]  # exact ties: the first maximum wins, as with argmax
    logits[0, :, 0, 0] = 0.0
    expected = logits.argmax(dim=1).to(torch.uint8)
    assert torch.equal(class_ids(logits), expected)


# -- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"BACKEND": "onnxruntime"}, "SEGSERVE_BACKEND=onnxruntime needs SEGSERVE_ONNX_PATH"),
        (
            {"BACKEND": "onnxruntime", "ONNX_PATH": "/m.onnx", "DEVICE": "cuda"},
            "runs on the CPU",
        ),
        ({"ONNX_SHA256": "xyz"}, "SEGSERVE_ONNX_SHA256 must be 64 hex digits"),
    ],
)
def test_backend_settings_are_checked(values, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_mapping({"WEIGHTS_PATH": "/w.pth", **values})


# -- conversion and equivalence --------------------------------------------------------------


def test_varied_masks_weights_are_not_uniform(torch_app):
    # What makes the equivalence check meaningful: many classes per mask.
    client = torch_app.test_client()
    for name in ("astronaut.jpg", "chelsea.jpg", "coffee.jpg"):
        response = client.post("/v1/segment", data=encode(photo(name), "PNG"))
        assert len(response.headers["X-Segserve-Classes"].split(",")) >= 5


def test_conversion_records_its_provenance(converted, varied_weights):
    out, sha, figures, meta = converted
    assert sha == w.file_sha256(out)
    recorded = read_onnx_metadata(out)
    assert recorded == meta
    assert recorded["format"] == "segserve-onnx/1"
    assert recorded["source_weights_sha256"] == w.file_sha256(varied_weights)
    assert recorded["arch"] == "lraspp_mobilenet_v3_large"
    assert recorded["checked_input_size"] == str(INPUT_SIZE)
    assert recorded["agreement_forced"] == "false"
    assert recorded["gate"] == gate.GATE_VERSION
    images = json.loads(recorded["equivalence_images"])
    assert len(images) >= 8
    assert {i["name"] for i in images} >= {"astronaut.jpg", "chelsea.jpg", "coffee.jpg"}


def test_conversion_agrees_with_eager(converted):
    figures = converted[2]
    assert figures.passes, figures.table()
    assert figures.decided_flips == 0
    assert figures.min_image_agreement >= 0.9999
    assert figures.max_abs_logit_diff < 1e-3
    assert min(i.classes for i in figures.images) >= 5
    # The gate's depth is the graph's: recorded, so that a host applies the same bound.
    assert figures.depth == int(converted[3]["rounding_depth"]) == 66


def _failing(*args, **kwargs):
    """A gate result with decided pixels changed: what a wrong graph gives."""
    image = gate.ImageGate("x.jpg", "96x96", 9216, 900, 100, 800, 0.01, 0.5, 7)
    return gate.GateResult("fp32", 66, 0.01, [image])


def test_cli_refuses_to_write_when_the_gate_fails(varied_weights, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gate, "evaluate", _failing)
    out = tmp_path / "low.onnx"
    code = weights_cli.main(["export-onnx", "--input-size", "64", str(varied_weights), str(out)])
    assert code == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "fails the agreement gate" in captured.err
    assert "800 decided pixels changed class" in captured.err
    assert "1 images have more than 1.00% of their pixels changed" in captured.err
    assert len(captured.err.strip().splitlines()) == 1
    assert not out.exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".segserve-onnx-")]


def test_forced_artifact_is_recorded_and_warned(
    varied_weights, tmp_path, monkeypatch, capsys, caplog
):
    monkeypatch.setattr(gate, "evaluate", _failing)
    out = tmp_path / "forced.onnx"
    args = ["export-onnx", "--force", "--input-size", "64", str(varied_weights), str(out)]
    assert weights_cli.main(args) == 0
    assert "FORCED past the gate: 800 decided pixels" in capsys.readouterr().err
    meta = read_onnx_metadata(out)
    assert meta["agreement_forced"] == "true"
    assert meta["decided_flips"] == "800"
    monkeypatch.undo()
    settings = {
        "WEIGHTS_PATH": str(varied_weights),
        "DEVICE": "cpu",
        "INPUT_SIZE": 64,
        "BACKEND": "onnxruntime",
        "ONNX_PATH": str(out),
    }
    with caplog.at_level(logging.WARNING, logger="segserve"):
        app = create_app(settings)
    assert "written with --force past its agreement gate" in caplog.text
    equivalence = app.extensions["segserve"].backend.describe()["equivalence"]
    assert equivalence["forced"] is True


def test_cli_export_onnx(varied_weights, tmp_path):
    out = tmp_path / "cli.onnx"
    cli = os.path.join(os.path.dirname(sys.executable), "segserve-weights")
    args = [cli, "export-onnx", "--if-changed", "--input-size", "64", str(varied_weights), str(out)]
    first = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert first.stdout == w.file_sha256(out) + "\n"
    assert "overall" in first.stderr and "pixel agreement with eager float32" in first.stderr
    again = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout == first.stdout
    assert "is up to date" in again.stderr
    info = subprocess.run([cli, "info", "--json", str(out)], capture_output=True, text=True)
    meta = json.loads(info.stdout)
    assert meta["source_weights_sha256"] == w.file_sha256(varied_weights)
    assert len(meta["equivalence_images"]) == 12


def test_cli_export_onnx_if_changed_skips_torch_and_rechecks_inputs(varied_weights, tmp_path):
    out = tmp_path / "cli.onnx"
    cli = os.path.join(os.path.dirname(sys.executable), "segserve-weights")
    base = ["export-onnx", "--if-changed", "--input-size", "64"]
    paths = [str(varied_weights), str(out)]
    first = subprocess.run([cli, *base, *paths], capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    # The up-to-date answer must not import torch: that import is most of a re-run's cost.
    probe = (
        "import sys; from segserve.weights_cli import main; rc = main(sys.argv[1:]); "
        "sys.exit(rc if 'torch' not in sys.modules else 99)"
    )
    again = subprocess.run(
        [sys.executable, "-c", probe, *base, *paths], capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr
    assert "is up to date" in again.stderr and again.stdout == first.stdout
    # A digest that does not match the weights file is an error, never "up to date".
    wrong = subprocess.run(
        [cli, *base, "--sha256", "0" * 64, *paths], capture_output=True, text=True, timeout=300
    )
    assert wrong.returncode == 1
    assert "sha256 mismatch" in wrong.stderr and "up to date" not in wrong.stderr
    # Another threshold is another check: the artifact is converted again.
    other = subprocess.run(
        [cli, *base, "--threshold", "0.9", *paths], capture_output=True, text=True, timeout=300
    )
    assert other.returncode == 0, other.stderr
    assert "up to date" not in other.stderr and "pixel agreement" in other.stderr


# -- serving with onnxruntime ---------------------------------------------------------------


def test_model_states_backend_and_agreement(ort_app, converted):
    response = ort_app.test_client().get("/v1/model")
    assert response.get_json()["backend"] == "onnxruntime"
    # The artifact's path, sha256 and figures are for operators (the start-up log), not for
    # the public /v1/model.
    assert "backend_details" not in response.get_json()
    assert str(converted[0]) not in response.get_data(as_text=True)
    details = ort_app.extensions["segserve"].backend.describe()
    assert details["onnx_sha256"] == converted[1]
    assert details["intra_op_threads"] == 1 and details["inter_op_threads"] == 1
    assert details["equivalence"]["pixel_agreement"] >= 0.995
    assert len(details["equivalence"]["images"]) == 12


@pytest.mark.parametrize("name", ["astronaut.jpg", "chelsea.jpg", "coffee.jpg"])
def test_onnxruntime_masks_match_torch(ort_app, torch_app, name):
    data = encode(photo(name), "JPEG", quality=90)
    ours = ort_app.test_client().post("/v1/segment", data=data, headers={"Accept": "image/png"})
    theirs = torch_app.test_client().post("/v1/segment", data=data, headers={"Accept": "image/png"})
    assert ours.status_code == theirs.status_code == 200
    a = np.asarray(Image.open(io.BytesIO(ours.data)))
    b = np.asarray(Image.open(io.BytesIO(theirs.data)))
    assert (a == b).mean() >= 0.995
    assert len(np.unique(b)) >= 5


def test_mismatched_artifact_is_refused(ort_settings, weights_file, caplog):
    # The artifact was converted from the varied weights; these are other weights.
    with caplog.at_level(logging.ERROR, logger="segserve"), pytest.raises(StartupError):
        create_app({**ort_settings, "WEIGHTS_PATH": str(weights_file)})
    line = next(r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    assert line.startswith("refusing to start: onnx artifact mismatch: ")
    assert (
        f"was converted from weights sha256 {w.file_sha256(ort_settings['WEIGHTS_PATH'])}" in line
    )
    assert "\n" not in line


def test_onnx_sha256_mismatch_is_refused(ort_settings):
    with pytest.raises(StartupError, match="onnx sha256 mismatch: file .* expected 0{64}"):
        create_app({**ort_settings, "ONNX_SHA256": "0" * 64})


def test_onnx_sha256_match_is_accepted(ort_settings, converted):
    app = create_app({**ort_settings, "ONNX_SHA256": converted[1].upper()})
    assert app.extensions["segserve"].ready


def test_missing_or_foreign_artifact_is_refused(ort_settings, tmp_path, converted):
    with pytest.raises(StartupError, match="onnx artifact not found"):
        create_app({**ort_settings, "ONNX_PATH": str(tmp_path / "none.onnx")})
    import onnx

    plain = onnx.load(converted[0])
    del plain.metadata_props[:]
    onnx.save(plain, tmp_path / "plain.onnx")
    with pytest.raises(StartupError, match="is not a segserve onnx artifact"):
        create_app({**ort_settings, "ONNX_PATH": str(tmp_path / "plain.onnx")})
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(StartupError, match="cannot load onnx artifact"):
        create_app({**ort_settings, "ONNX_PATH": str(tmp_path / "junk.onnx")})


def test_torch_backend_does_not_import_onnxruntime(weights_file):
    code = (
        "import sys; from segserve import create_app; "
        f"create_app({{'WEIGHTS_PATH': {str(weights_file)!r}, 'DEVICE': 'cpu', "
        "'INPUT_SIZE': 64}); "
        "assert 'onnxruntime' not in sys.modules and 'onnx' not in sys.modules"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
