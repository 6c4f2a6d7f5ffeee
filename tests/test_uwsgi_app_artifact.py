"""A converted model built elsewhere (uwsgi_app_onnx_src) is checked on the controller in the
plan, before any host is drained for it: one made from other weights, or at another input
size, stops the play with what it holds and what the host needs; the right one passes."""

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from preflight import run_tasks

TOOL = Path(sys.executable).parent / "segserve-weights"
INPUT_SIZE = 64  # small: the conversion's gate runs 12 photos at this size


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """(path, its sha256, the weights' sha256): lab-style weights converted here."""
    where = tmp_path_factory.mktemp("artifact")
    weights_sha = subprocess.run(
        [str(TOOL), "init", str(where / "w.pth")], check=True, capture_output=True, text=True
    ).stdout.strip()
    sha = subprocess.run(
        [str(TOOL), "export-onnx", "--input-size", str(INPUT_SIZE), str(where / "w.pth"),
         str(where / "w.onnx")],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    assert sha == hashlib.sha256((where / "w.onnx").read_bytes()).hexdigest()
    return where / "w.onnx", sha, weights_sha


def plan(tmp_path, artifact, **extra):
    path, sha, weights_sha = artifact
    values = {
        "uwsgi_app_home": str(tmp_path / "home"),
        "uwsgi_app_weights_src": str(path.with_suffix(".pth")),
        "uwsgi_app_weights_sha256": weights_sha,
        "uwsgi_app_onnx_src": str(path),
        "uwsgi_app_onnx_sha256": sha,
        "uwsgi_app_input_size": INPUT_SIZE,
        "__uwsgi_app_restart_marker": str(tmp_path / "restart-pending"),
        **extra,
    }
    return run_tasks(tmp_path, "uwsgi_app", "plan.yml", values, gather_facts=True)


def test_the_right_model_passes(tmp_path, artifact):
    run = plan(tmp_path, artifact)
    assert run.returncode == 0, run.stdout[-3000:]
    assert "a new converted model" in run.stdout


def test_a_model_of_other_weights_is_refused(tmp_path, artifact):
    run = plan(tmp_path, artifact, uwsgi_app_weights_sha256="0" * 64)
    assert run.returncode != 0
    assert f"was converted from weights {artifact[2]}" in run.stdout, run.stdout[-3000:]
    assert "Check the given converted model is one this host can serve" in run.stdout


def test_a_model_checked_at_another_input_size_is_refused(tmp_path, artifact):
    run = plan(tmp_path, artifact, uwsgi_app_input_size=INPUT_SIZE * 2)
    assert run.returncode != 0
    assert f"at input size {INPUT_SIZE}" in run.stdout, run.stdout[-3000:]
