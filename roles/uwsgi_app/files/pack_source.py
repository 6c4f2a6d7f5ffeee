#!/usr/bin/env python3
"""Pack a Python project directory into a reproducible .tar.gz.

The same source always gives the same bytes (sorted names, zeroed times and owners, no
caches), so its sha256, printed on stdout, is the version of the code.
Usage: pack_source.py SRC_DIR OUT.tar.gz
"""

import gzip
import hashlib
import io
import sys
import tarfile
from pathlib import Path

SKIP_PARTS = {"__pycache__", ".pytest_cache", ".ruff_cache", "build", "dist", "tests"}


def wanted(path: Path, root: Path) -> bool:
    rel = path.relative_to(root)
    if any(part in SKIP_PARTS or part.endswith(".egg-info") for part in rel.parts):
        return False
    return path.suffix not in {".pyc", ".pyo"}


def pack(src: Path, out: Path) -> str:
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
    with out.open("wb") as fh, gzip.GzipFile(fileobj=fh, mode="wb", mtime=0, filename="") as gz:
        gz.write(buf.getvalue())
    return hashlib.sha256(out.read_bytes()).hexdigest()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    print(pack(Path(sys.argv[1]).resolve(), Path(sys.argv[2])))
