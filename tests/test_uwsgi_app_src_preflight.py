"""The uwsgi_app preflight takes the app as a built wheel with its lock files beside it, or as
its source directory, and refuses anything else with a message that says what to give."""

import shutil

import pytest
from preflight import ROOT, run_uwsgi_app_preflight

REFUSAL = "uwsgi_app_src must name the app on the controller: a built wheel"


def wheel_dir(tmp_path, locks=True):
    dist = tmp_path / "dist"
    dist.mkdir()
    wheel = dist / "segserve-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"not read by the preflight")
    if locks:
        for lock in ("requirements.lock", "requirements-cpu.lock"):
            shutil.copy(ROOT / "app" / lock, dist / lock)
    return wheel


def test_a_wheel_with_its_locks_beside_it_passes(tmp_path):
    run = run_uwsgi_app_preflight(tmp_path, uwsgi_app_src=str(wheel_dir(tmp_path)))
    assert run.returncode == 0, run.stdout[-2000:]


@pytest.mark.parametrize(
    "src",
    [
        "",  # a playbook outside this repository that sets nothing
        "/nonexistent/segserve-0.1.0-py3-none-any.whl",
        "/nonexistent/app",
        str(ROOT / "app" / "src"),  # a directory, but not a project (no pyproject.toml)
        "wheel without locks",
    ],
)
def test_anything_else_is_refused_with_what_to_give(tmp_path, src):
    if src == "wheel without locks":
        src = str(wheel_dir(tmp_path, locks=False))
    run = run_uwsgi_app_preflight(tmp_path, uwsgi_app_src=src)
    assert run.returncode != 0
    assert REFUSAL in " ".join(run.stdout.split()), run.stdout[-2000:]
