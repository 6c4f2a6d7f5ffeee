"""segserve: image segmentation over HTTP (Flask + PyTorch, served by uWSGI).

The package root stays light on purpose: `segserve-client` and `segserve.samples` must not
pay for importing torch and Flask, so the application factory imports them only when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

    from flask import Flask

__all__ = ["create_app"]


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the Flask application; see `segserve.app.create_app`."""
    from segserve.app import create_app as _create_app

    return _create_app(config)
