"""The uwsgi_app role's CUDA smoke test (files/cuda_smoke.py) fails with the reason on a host
whose GPUs torch cannot use. Here torch is the CUDA build and there is no driver, as on a GPU
host whose driver did not load; the passing path needs a GPU (bench/gpu/check runs it there)."""

import subprocess
import sys

from preflight import ROOT

SMOKE = ROOT / "roles/uwsgi_app/files/cuda_smoke.py"


def test_a_host_whose_gpus_torch_cannot_see_fails_the_smoke_test():
    run = subprocess.run(
        [sys.executable, str(SMOKE), "2"], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert run.stdout.startswith("CUDA smoke test failed: torch "), run.stdout
    assert "sees no GPU: check nvidia-smi" in run.stdout, run.stdout
