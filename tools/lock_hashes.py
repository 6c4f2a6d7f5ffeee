#!/usr/bin/env python3
"""Add pip's --hash lines to a requirements lock, for `pip install --require-hashes`.

For every `name==version` pin the lock gets the sha256 of every file of that exact version
on the package index (the wheels of all platforms and the sdist), as
`pip-compile --generate-hashes` writes them; comments, blank lines and order stay as they
are, and hashes already there are replaced. The index is read through its JSON simple API
(PEP 691), PyPI's by default. Re-running it on an unchanged index gives the same file.
Fails, changing nothing, when a pin has no files there.
Usage: tools/lock_hashes.py [LOCK] [--index-url URL]   (LOCK: app/requirements.lock)
"""

import argparse
import json
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path

DEFAULT_LOCK = Path(__file__).resolve().parent.parent / "app" / "requirements.lock"
DEFAULT_INDEX = "https://pypi.org/simple/"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;\\]+)")
SDIST = (".tar.gz", ".zip", ".tar.bz2", ".tar.xz", ".tgz", ".tar")


def canonical(name: str) -> str:
    """A project name as PEP 503 normalises it."""
    return re.sub(r"[-_.]+", "-", name).lower()


def name_and_version(filename: str) -> tuple[str, str] | None:
    """(project, version) of a wheel or sdist file name; None for any other kind of file."""
    if filename.endswith(".whl"):
        parts = filename[: -len(".whl")].split("-")
        return (parts[0], parts[1]) if len(parts) in (5, 6) else None
    for ext in SDIST:
        if filename.endswith(ext):
            name, _, version = filename[: -len(ext)].rpartition("-")
            return (name, version) if name else None
    return None


def file_hashes(index: str, name: str, version: str) -> list[str]:
    """The sorted sha256 of every file of name==version on the index."""
    request = urllib.request.Request(
        f"{index.rstrip('/')}/{canonical(name)}/",
        headers={"Accept": "application/vnd.pypi.simple.v1+json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            files = json.load(response)["files"]
    except urllib.error.HTTPError as error:
        if error.code != 404:
            raise
        files = []  # no such project
    want, found = (canonical(name), version.lower()), set()
    for entry in files:
        parsed = name_and_version(entry["filename"])
        sha256 = entry.get("hashes", {}).get("sha256")
        if sha256 and parsed and (canonical(parsed[0]), parsed[1].lower()) == want:
            found.add(sha256)
    return sorted(found)


def with_hashes(text: str, index: str) -> str:
    out, missing = [], []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("--hash="):
            continue  # a hash line this tool wrote before: replaced below
        pin = PIN.match(stripped)
        if not pin:
            out.append(line)
            continue
        if "#" in stripped:
            sys.exit(f"a comment after a pin would swallow its hash lines: {stripped}")
        requirement = re.split(r"\s+--hash=", stripped)[0].rstrip("\\ ")
        hashes = file_hashes(index, pin.group(1), pin.group(3))
        if not hashes:
            missing.append(requirement)
            continue
        out.append(requirement + " \\")
        out.extend(f"    --hash=sha256:{h} \\" for h in hashes)
        out[-1] = out[-1][: -len(" \\")]
    if missing:
        sys.exit(f"no files on {index} for: {', '.join(missing)} (nothing written)")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lock", nargs="?", type=Path, default=DEFAULT_LOCK)
    parser.add_argument("--index-url", default=DEFAULT_INDEX)
    args = parser.parse_args()
    args.lock.write_text(with_hashes(args.lock.read_text(), args.index_url))


if __name__ == "__main__":
    main()
