"""Errors that map to an HTTP status and a JSON body {"error": code, "detail": text}."""

from __future__ import annotations


class ServiceError(Exception):
    """An error a client caused or can act on; `code` is short and stable, `detail` is prose."""

    status = 400
    code = "bad_request"

    def __init__(self, detail: str, *, code: str | None = None, status: int | None = None):
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status


class BadImage(ServiceError):
    status = 400
    code = "bad_image"


class TooLarge(ServiceError):
    status = 413
    code = "too_large"


class UnsupportedMediaType(ServiceError):
    status = 415
    code = "unsupported_media_type"


class JsonTooLarge(ServiceError):
    """The request is fine, but its answer as JSON would be larger than the service sends.
    422 rather than 413: the body was within limits; the same image as PNG would be answered."""

    status = 422
    code = "json_too_large"


class NotReady(ServiceError):
    status = 503
    code = "not_ready"


class StartupError(RuntimeError):
    """The service must not start: bad settings, missing or mismatched weights."""


class ConfigError(StartupError):
    """A setting is missing or invalid; the message names the environment variable."""
