#!/usr/bin/env python3
"""Write app/requirements-cpu.lock: the pins of app/requirements.lock that a CPU host serving
the converted model needs, with their hashes, and nothing else (no torch, no CUDA wheels).

What it needs is the closure of the app's dependencies and its `cpu` extra (app/pyproject.toml),
followed through the requirements of the distributions installed here (the bootstrap's
virtualenv holds every pin of the lock), markers evaluated for this interpreter with no extras.
A pin of the closure missing from the lock is an error: the lock must pin it first.

Usage: tools/lock_subset.py [--check]   (--check: exit 1 when the file is not what it would write)
"""

from __future__ import annotations

import re
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, requires
from pathlib import Path

from packaging.requirements import Requirement

APP = Path(__file__).resolve().parent.parent / "app"
LOCK = APP / "requirements.lock"
CPU_LOCK = APP / "requirements-cpu.lock"
EXTRA = "cpu"
PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)==")
HEADER = """\
# Written by tools/lock_subset.py from requirements.lock: do not edit (the role tests fail when
# it is stale). The pins, with their hashes, that a CPU host serving the converted model
# (onnxruntime or openvino) installs: the app's dependencies and its `cpu` extra, and what
# those require. No torch, torchvision or CUDA wheels: such a host never runs torch (the
# weights are converted on the controller). GPU hosts, and hosts pinned to the torch backend,
# install requirements.lock.
"""


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_entries(text: str) -> dict[str, str]:
    """{canonical name: the pin's whole entry, continuation lines included}; the comments
    between entries belong to the full lock's layout, not to a pin, and are left out."""
    entries: dict[str, str] = {}
    for entry in re.split(r"\n(?=[A-Za-z0-9])", text):
        pin = PIN.match(entry)
        if pin:
            lines = [
                ln for ln in entry.splitlines() if ln.strip() and not ln.lstrip().startswith("#")
            ]
            entries[canonical(pin.group(1))] = "\n".join(lines) + "\n"
    return entries


def roots() -> list[Requirement]:
    project = tomllib.loads((APP / "pyproject.toml").read_text())["project"]
    names = project["dependencies"] + project["optional-dependencies"][EXTRA]
    return [Requirement(r) for r in names]


def closure(start: list[Requirement]) -> set[str]:
    seen: set[str] = set()
    todo = [r for r in start if r.marker is None or r.marker.evaluate({"extra": ""})]
    while todo:
        req = todo.pop()
        name = canonical(req.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            needs = requires(req.name) or []
        except PackageNotFoundError:
            sys.exit(f"{req.name} is not installed here: run this in the bootstrap's .venv")
        for text in needs:
            sub = Requirement(text)
            if sub.marker is None or sub.marker.evaluate({"extra": ""}):
                todo.append(sub)
    return seen


def render() -> str:
    entries = lock_entries(LOCK.read_text())
    needed = closure(roots())
    missing = sorted(needed - entries.keys())
    if missing:
        sys.exit(f"{LOCK} pins none of {missing}: pin them there first")
    return HEADER + "".join(entries[name] for name in entries if name in needed)


def main() -> int:
    text = render()
    if sys.argv[1:] == ["--check"]:
        if CPU_LOCK.read_text() != text:
            print(f"{CPU_LOCK} is stale: run tools/lock_subset.py", file=sys.stderr)
            return 1
        return 0
    CPU_LOCK.write_text(text)
    print(f"wrote {CPU_LOCK}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
