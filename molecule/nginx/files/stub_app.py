"""A stand-in for the segmentation service behind nginx in the molecule scenario `nginx`.

Served by Debian's uWSGI (uwsgi protocol). nginx passes on only the public API's paths, so the
tests steer the stub with the query string. Every answer is JSON naming the backend, so tests
can tell which app host answered:

  any API path      200 {"backend", "method", "path", "query", "body_bytes", "request_id",
                         "variables": the names of the request's variables}
  ?status=<code>    answers <code> with an app-style error body
  ?flaky            503 on the host named in STUB_FLAKY_HOST, 200 elsewhere
  ?sleep=<s>        answers after <s> seconds
"""

import json
import os
import socket
import time
from urllib.parse import parse_qs

HOSTNAME = socket.gethostname()
FLAKY_HOST = os.environ.get("STUB_FLAKY_HOST", "")


def application(environ, start_response):
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    answer = {
        "backend": HOSTNAME,
        "method": environ.get("REQUEST_METHOD"),
        "path": environ.get("PATH_INFO", "/"),
        "query": environ.get("QUERY_STRING", ""),
        "body_bytes": len(body),
        "request_id": environ.get("HTTP_X_REQUEST_ID", ""),
        "variables": sorted(k for k in environ if k.isupper() and not k.startswith("UWSGI")),
    }
    status = "200 OK"
    if "sleep" in query:
        time.sleep(float(query["sleep"][0]))
    if "status" in query:
        code = int(query["status"][0])
        status = f"{code} Stub"
        answer = {
            "error": "stub_error",
            "detail": f"{HOSTNAME} answered {code}",
            "backend": HOSTNAME,
        }
    elif "flaky" in query and HOSTNAME == FLAKY_HOST:
        status = "503 Service Unavailable"
        answer = {"error": "not_ready", "detail": f"{HOSTNAME} is not ready", "backend": HOSTNAME}
    payload = json.dumps(answer).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))]
    )
    return [payload]
