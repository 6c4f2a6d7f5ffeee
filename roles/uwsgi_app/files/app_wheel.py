#!/usr/bin/env python3
"""The app as a wheel on the controller: what the hosts install, built once per source.

Usage: app_wheel.py SRC CACHE_DIR

SRC is a built wheel (segserve-*.whl), used as it is, or the app's source directory. A source
directory is packed reproducibly first (sorted names, zeroed times and owners, no caches or
tests), so the same source always has the same digest; the wheel is built from exactly that
pack, once, into CACHE_DIR/app-<digest>/, and found there by every later run. The build uses
this Python's own setuptools (--no-build-isolation) and no index: nothing is downloaded.

Prints one JSON object on stdout: the wheel's path, its sha256 (what a host records as its
installed app) and its file name. Errors are one line on stderr and exit status 1.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SKIP_PARTS = {"__pycache__", ".pytest_cache", ".ruff_cache", "build", "dist", "tests"}


def wanted(path: Path, root: Path) -> bool:
    rel = path.relative_to(root)
    if any(part in SKIP_PARTS or part.endswith(".egg-info") for part in rel.parts):
        return False
    return path.suffix not in {".pyc", ".pyo"}


def pack(src: Path) -> bytes:
    """The source directory as an uncompressed tar whose bytes depend on the files alone."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(p for p in src.rglob("*") if wanted(p, src)):
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(src)))
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            info.mode = 0o755 if info.isdir() else 0o644
            if info.isfile():
                with path.open("rb") as fh:
                    tar.addfile(info, fh)
            elif info.isdir():
                tar.addfile(info)
    return buf.getvalue()


def build(src: Path, cache: Path) -> Path:
    """The wheel of this source, from the cache or built now."""
    packed = pack(src)
    digest = hashlib.sha256(packed).hexdigest()
    home = cache / f"app-{digest[:32]}"
    built = sorted(home.glob("*.whl")) if home.is_dir() else []
    if len(built) == 1:
        return built[0]
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".app-build-") as tmp:
        tree, out = Path(tmp) / "src", Path(tmp) / "wheel"
        with tarfile.open(fileobj=io.BytesIO(packed)) as tar:
            tar.extractall(tree, filter="data")
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "--no-build-isolation",
                "--no-index",
                "--disable-pip-version-check",
                "-q",
                "-w",
                str(out),
                str(tree),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "SOURCE_DATE_EPOCH": "315532800", "PIP_NO_CACHE_DIR": "1"},
        )
        wheels = sorted(out.glob("*.whl")) if out.is_dir() else []
        if run.returncode != 0 or len(wheels) != 1:
            last = (run.stderr.strip() or run.stdout.strip()).splitlines()[-3:]
            sys.exit(
                f"app_wheel.py: could not build a wheel of {src} with {sys.executable}"
                f" (it needs setuptools, as in app/pyproject.toml): {' / '.join(last)}"
            )
        shutil.rmtree(home, ignore_errors=True)
        staged = Path(tmp) / "done"
        staged.mkdir()
        shutil.move(str(wheels[0]), staged / wheels[0].name)
        os.replace(staged, home)
    return home / wheels[0].name


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        sys.exit(__doc__)
    src, cache = Path(argv[1]).expanduser().resolve(), Path(argv[2]).expanduser()
    if src.is_file() and src.suffix == ".whl":
        wheel = src
    elif src.is_dir() and (src / "pyproject.toml").is_file():
        wheel = build(src, cache)
    else:
        sys.exit(
            f"app_wheel.py: {argv[1]} is neither a wheel (*.whl) nor a source directory with a"
            " pyproject.toml"
        )
    sha256 = hashlib.sha256(wheel.read_bytes()).hexdigest()
    print(json.dumps({"path": str(wheel), "sha256": sha256, "name": wheel.name}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
