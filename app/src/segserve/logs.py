"""The service's log: one JSON object per line on stderr (the journal under systemd), or the
same records as plain text (SEGSERVE_LOG_FORMAT=text) for a person at a terminal.

Every record names the model and the uWSGI worker that wrote it; one written while a request
is served also carries the request id nginx sent (X-Request-ID, the `request_id` of nginx's
access log), so a request can be followed from nginx to the worker that served it. A
request's own record ("request") adds its method, route, status, duration and stage timings.

    {"time":"2026-12-03T07:40:01.123Z","level":"INFO","message":"request","model":"default",
     "worker":2,"pid":4242,"request_id":"9f0c...","method":"POST","endpoint":"/v1/segment",
     "status":200,"ms":212.4,"stages_ms":{"decode":1.2,...},"bytes_in":68424,"bytes_out":2523}
"""

from __future__ import annotations

import json
import logging
import sys
import time

FORMATS = ("json", "text")
# The longest client-controlled value (request id, path) a record keeps.
VALUE_CHARS = 200

log = logging.getLogger("segserve")

# Set once the settings are read; every record carries them.
_context: dict[str, object] = {}


def configure(fmt: str) -> None:
    """Send the `segserve` logger to stderr in `fmt` ("json" or "text"; anything else is
    taken as "json": the settings refuse it a moment later, and that refusal is logged).
    Leaves alone a configuration the embedding application (or pytest) made itself."""
    if log.handlers and not getattr(log.handlers[0], "segserve", False):
        return
    if not log.handlers and logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.segserve = True  # type: ignore[attr-defined]
    handler.setFormatter(TextFormatter() if fmt == "text" else JsonFormatter())
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False


def set_context(**fields: object) -> None:
    """Fields every later record of this process carries (model, worker)."""
    _context.update(fields)


def clip(value: object) -> str:
    """A client-controlled value cut to VALUE_CHARS characters."""
    text = str(value)
    return text if len(text) <= VALUE_CHARS else text[:VALUE_CHARS] + "..."


def record_fields(record: logging.LogRecord) -> dict[str, object]:
    """Everything a record says besides its time, level and message."""
    fields: dict[str, object] = dict(_context)
    fields["pid"] = record.process
    request_id = _request_id()
    if request_id:
        fields["request_id"] = request_id
    fields.update(getattr(record, "fields", {}))
    if record.exc_info:
        fields["exception"] = logging.Formatter().formatException(record.exc_info)
    return fields


def _request_id() -> str | None:
    """The X-Request-ID of the request being served, if any (nginx sets it)."""
    try:
        from flask import has_request_context, request
    except ImportError:  # the weights tool and the client log without Flask
        return None
    if not has_request_context():
        return None
    value = request.headers.get("X-Request-ID")
    return clip(value) if value else None


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        entry = {
            "time": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "message": record.getMessage(),
            **record_fields(record),
        }
        # ensure_ascii: a control character or a non-ASCII byte in a client's value is
        # escaped, so the record stays one line of plain ASCII.
        return json.dumps(entry, separators=(",", ":"), default=str)


class TextFormatter(logging.Formatter):
    """The same record as one line of text, its fields as key=value after the message (a
    traceback, if any, on the lines after it)."""

    def format(self, record: logging.LogRecord) -> str:
        fields = record_fields(record)
        exception = fields.pop("exception", None)
        pid = fields.pop("pid")
        extras = "".join(f" {k}={json.dumps(v, separators=(',', ':'))}" for k, v in fields.items())
        line = f"{self.formatTime(record)} segserve[{pid}] {record.levelname} "
        line += record.getMessage() + extras
        return f"{line}\n{exception}" if exception else line
