"""The uwsgi_app role's CUDA smoke test (files/cuda_smoke.py) fails with the reason on a host
whose GPUs torch cannot use. Here torch is the CUDA build and there is no driver, as on a GPU
host whose driver did not load; the passing path needs a GPU (bench/gpu/check runs it there)."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from preflight import ROOT

SMOKE = ROOT / "roles/uwsgi_app/files/cuda_smoke.py"


def test_a_host_whose_gpus_torch_cannot_see_fails_the_smoke_test():
    run = subprocess.run(
        [sys.executable, str(SMOKE), "2"], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert run.stdout.startswith("CUDA smoke test failed: torch "), run.stdout
    assert "sees no GPU: check nvidia-smi" in run.stdout, run.stdout


STAND_IN = """#!/bin/sh
# Stands in for the virtualenv's python: reads the program, says who runs it and with what.
echo "user=$(id -un) group=$(id -gn) cwd=$(pwd) args=$* program=$(head -n 1 | tr -d '"\\')"
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="runuser needs root, as the role has on a host")
def test_the_role_runs_the_smoke_test_as_the_service_user():
    """tasks/cuda_smoke.yml on a GPU host serving torch: the service's python, as the
    service's user and group (nobody here), the program on stdin, the host's GPU count."""
    from preflight import run_tasks

    # World-readable: the service's user must reach the stand-in, as it reaches the virtualenv.
    venv = Path(tempfile.mkdtemp(prefix="segserve-smoke-"))
    try:
        venv.chmod(0o755)
        (venv / "bin").mkdir(mode=0o755)
        (venv / "bin" / "python").write_text(STAND_IN)
        (venv / "bin" / "python").chmod(0o755)
        (venv / "play").mkdir()
        run = run_tasks(
            venv / "play",
            "uwsgi_app",
            "cuda_smoke.yml",
            {
                "uwsgi_app_venv": str(venv),
                "uwsgi_app_user": "nobody",
                "uwsgi_app_group": "nogroup",
                "uwsgi_app_gpu_count": 8,
                "uwsgi_app_device": "cuda",
                "uwsgi_app_backend": "torch",
            },
        )
    finally:
        shutil.rmtree(venv)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert (
        "user=nobody group=nogroup cwd=/ args=-I - 8 program=CUDA smoke test, run by" in run.stdout
    ), run.stdout[-3000:]
