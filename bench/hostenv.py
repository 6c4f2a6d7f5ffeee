"""The service's settings on an app host, as the scripts that run beside it there read them.

scripts/bench copies this file into app1's bench folder next to ceiling.py and the LitServe
server, which import it, so that both load exactly what the service's workers load; lablib
parses the same file from this machine with parse_env.
"""

from __future__ import annotations

import os

ENV_FILE = "/etc/segserve/segserve.env"
PREFIX = "SEGSERVE_"
# A host serving the converted model has no weights file (its model is the artifact); the
# torch stacks and ceiling load this copy of the lab's, which lablib.read_env puts there.
BENCH_WEIGHTS = "/opt/segserve-bench/weights.pth"


def parse_env(text: str) -> dict[str, str]:
    """KEY=VALUE lines of a systemd environment file; blank lines and comments skipped."""
    env = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            env[key] = value
    return env


def read_env(path: str = ENV_FILE) -> dict[str, str]:
    with open(path) as fh:
        return parse_env(fh.read())


def use_thread_settings(env: dict[str, str]) -> None:
    """The workers' OpenMP/MKL thread counts, set before any runtime is imported (and so
    inherited by processes started after)."""
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[key] = env.get(key, "1")


def served_settings(
    env: dict[str, str], backend: str | None = None, precision: str | None = None
) -> dict[str, str]:
    """The service's settings (SEGSERVE_ names without the prefix), as served, or with another
    backend (and OpenVINO precision) forced."""
    mapping = {k.removeprefix(PREFIX): v for k, v in env.items() if k.startswith(PREFIX)}
    if backend:
        mapping["BACKEND"] = backend
        if backend == "torch":
            mapping.pop("ONNX_PATH", None)
            mapping.pop("ONNX_SHA256", None)
            mapping.setdefault("WEIGHTS_PATH", BENCH_WEIGHTS)
        # A choice record names the backend it chose: with another one forced it does not apply.
        mapping.pop("BACKEND_CHOICE", None)
        mapping["PRECISION"] = precision or "fp32"
    return mapping
