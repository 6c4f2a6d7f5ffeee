"""Photos shipped with the package, for demos and tests (sources and licences: README.md)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

DEFAULT = "astronaut.jpg"


def names() -> list[str]:
    return sorted(p.name for p in resources.files(__name__).iterdir() if p.name.endswith(".jpg"))


def path(name: str = DEFAULT) -> Path:
    """The file path of a sample photo (the package is installed as files, not zipped)."""
    if name not in names():
        raise FileNotFoundError(f"no sample {name!r}; samples: {', '.join(names())}")
    return Path(str(resources.files(__name__).joinpath(name)))
