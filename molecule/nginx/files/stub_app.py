"""A stand-in for the segmentation service behind nginx in the molecule scenario `nginx`.

Served by Debian's uWSGI (uwsgi protocol). Every answer is JSON naming the backend, so tests
can tell which app host answered:

  any path        200 {"backend", "method", "path", "body_bytes", "request_id"}
  /status/<code>  answers <code> with an app-style error body
  /flaky          503 on the host named in STUB_FLAKY_HOST, 200 elsewhere
"""

import json
import os
import socket

HOSTNAME = socket.gethostname()
FLAKY_HOST = os.environ.get("STUB_FLAKY_HOST", "")


def application(environ, start_response):
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    path = environ.get("PATH_INFO", "/")
    answer = {
        "backend": HOSTNAME,
        "method": environ.get("REQUEST_METHOD"),
        "path": path,
        "body_bytes": len(body),
        "request_id": environ.get("HTTP_X_REQUEST_ID", ""),
    }
    status = "200 OK"
    if path.startswith("/status/"):
        code = int(path.rsplit("/", 1)[1])
        status = f"{code} Stub"
        answer = {
            "error": "stub_error",
            "detail": f"{HOSTNAME} answered {code}",
            "backend": HOSTNAME,
        }
    elif path == "/flaky" and HOSTNAME == FLAKY_HOST:
        status = "503 Service Unavailable"
        answer = {"error": "not_ready", "detail": f"{HOSTNAME} is not ready", "backend": HOSTNAME}
    payload = json.dumps(answer).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))]
    )
    return [payload]
