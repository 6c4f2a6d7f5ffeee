"""The hosts install app/requirements.lock with hash checking: every pin carries its files'
sha256 (tools/lock_hashes.py), the role's pip call passes --require-hashes, and the lab's
wheelhouse holds exactly the bytes the lock names. No network needed."""

import hashlib
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import jinja2
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
LOCK = REPO / "app" / "requirements.lock"
INSTALL = REPO / "roles" / "uwsgi_app" / "tasks" / "install.yml"
WHEELHOUSE = Path(os.environ.get("SEGSERVE_LAB_DIR", REPO / ".lab")) / "wheelhouse"
PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")


def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def pins():
    """{canonical name: (version, {sha256, ...})} from the lock's requirement lines."""
    found = {}
    for line in LOCK.read_text().replace("\\\n", " ").splitlines():
        pin = PIN.match(line.strip())
        if pin:
            hashes = set(re.findall(r"--hash=sha256:([0-9a-f]{64})\b", line))
            found[canonical(pin.group(1))] = (pin.group(2), hashes)
    return found


def task(tasks, name):
    for item in tasks:
        if item.get("name") == name:
            return item
        found = task(item.get("block", []), name)
        if found:
            return found
    return None


def test_every_pin_has_a_hash():
    locked = pins()
    assert len(locked) > 40, "the lock's pins were not found"
    unhashed = sorted(name for name, (_, hashes) in locked.items() if not hashes)
    assert not unhashed, f"pins without --hash=sha256 (run tools/lock_hashes.py): {unhashed}"


def test_the_requirements_are_installed_with_require_hashes():
    pip = task(yaml.safe_load(INSTALL.read_text()), "Install the pinned requirements with pip")
    assert pip, "task 'Install the pinned requirements with pip' not found"
    module = pip["ansible.builtin.pip"]
    assert module["requirements"].endswith("/requirements.lock")
    args = jinja2.Environment().from_string(module["extra_args"])
    assert "--require-hashes" in args.render(__uwsgi_app_pip_args=["--no-input"]).split()
    assert "no_log" in pip, "an index URL with credentials must stay out of the log"


def wheels():
    return sorted(WHEELHOUSE.glob("*.whl")) if WHEELHOUSE.is_dir() else []


@pytest.mark.parametrize("wheel", wheels() or [None], ids=lambda w: w.name if w else "none")
def test_the_wheelhouse_serves_the_locked_bytes(wheel):
    if wheel is None:
        pytest.skip(f"no wheels in {WHEELHOUSE} (scripts/lab wheelhouse makes them)")
    name, version = wheel.name.split("-")[:2]
    locked = pins()
    assert canonical(name) in locked, f"{wheel.name}: not in the lock, which must pin it"
    if version.lower() != locked[canonical(name)][0].lower():
        pytest.skip(f"{wheel.name}: left from an earlier pin, not installed")
    hashes = locked[canonical(name)][1]
    assert hashes, f"{wheel.name}: its pin has no --hash lines to check it against"
    digest = hashlib.sha256()
    with wheel.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    assert digest.hexdigest() in hashes, (
        f"{wheel.name} has sha256 {digest.hexdigest()}, not one the lock names: "
        "the wheelhouse's source serves other bytes than the index the lock was made from"
    )


def test_the_torch_floor_has_the_weights_only_fix():
    """torch.load(weights_only=True) could still run code before 2.6 (CVE-2025-32434)."""
    project = tomllib.loads((REPO / "app" / "pyproject.toml").read_text())["project"]
    torch_extra = project["optional-dependencies"]["torch"]
    torch = next(d for d in torch_extra if d.startswith("torch") and "vision" not in d)
    floor = re.search(r">=\s*([0-9.]+)", torch)
    assert floor, torch
    assert tuple(int(p) for p in floor.group(1).split(".")[:2]) >= (2, 6), torch


CPU_LOCK = REPO / "app" / "requirements-cpu.lock"


def test_the_cpu_lock_is_written_from_the_lock():
    """requirements-cpu.lock is tools/lock_subset.py's output: the full lock's own entries
    (hashes included) for what the app and its `cpu` extra need, never an edited copy."""
    run = subprocess.run(
        [sys.executable, str(REPO / "tools" / "lock_subset.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr


def test_the_cpu_lock_has_no_torch_and_every_pin_the_service_needs():
    cpu = {
        canonical(m.group(1))
        for m in re.finditer(r"(?m)^([A-Za-z0-9][A-Za-z0-9._-]*)==", CPU_LOCK.read_text())
    }
    assert not cpu & {"torch", "torchvision", "triton", "onnx", "sympy"}, cpu
    assert not [n for n in cpu if n.startswith(("nvidia", "cuda"))], cpu
    assert {"flask", "pillow", "numpy", "pyuwsgi", "onnxruntime", "openvino"} <= cpu
    assert cpu <= set(pins()), "every pin comes from the full lock"
