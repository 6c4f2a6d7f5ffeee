"""The service's log records: one JSON object per line, each naming the model and the worker,
and a request's record carrying the X-Request-ID nginx sent and its stage timings."""

from __future__ import annotations

import io
import json
import logging

import pytest

from segserve import logs, samples


@pytest.fixture(params=["json"])
def captured(request, monkeypatch):
    """The segserve logger writing through the service's formatter into a buffer (pytest's
    own handlers keep configure() from replacing them: the uWSGI test covers configure())."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter() if request.param == "json" else logs.TextFormatter())
    logger = logging.getLogger("segserve")
    monkeypatch.setattr(logger, "handlers", [handler])
    monkeypatch.setattr(logger, "level", logging.INFO)
    monkeypatch.setattr(logs, "_context", {})
    return stream


def records(stream) -> list[dict]:
    lines = stream.getvalue().splitlines()
    return [json.loads(line) for line in lines]


def test_each_record_is_one_json_line_even_with_control_characters(captured):
    logs.set_context(model="roads", worker=3)
    log = logging.getLogger("segserve")
    log.warning("a value with a newline\nand a fake record: %s", '{"level":"INFO"}')
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    first, second = records(captured)
    assert first["level"] == "WARNING" and first["model"] == "roads" and first["worker"] == 3
    assert first["message"].startswith("a value with a newline\nand a fake record")
    assert second["level"] == "ERROR" and "ValueError: boom" in second["exception"]


@pytest.mark.parametrize("captured", ["text"], indirect=True)
def test_text_format(captured):
    logs.set_context(model="roads", worker=3)
    logging.getLogger("segserve").info("request", extra={"fields": {"status": 200}})
    line = captured.getvalue().strip()
    assert " INFO request " in line and 'model="roads" worker=3 status=200' in line


def test_a_request_record_through_the_app(captured, settings):
    from segserve import create_app

    app = create_app({**settings, "LOG_FORMAT": "json", "MODEL_NAME": "roads"})
    client = app.test_client()
    data = samples.path("chelsea.jpg").read_bytes()
    answer = client.post(
        "/v1/segment",
        data=data,
        headers={"Content-Type": "image/jpeg", "Accept": "image/png", "X-Request-ID": "abc-123"},
    )
    assert answer.status_code == 200
    client.get("/healthz")
    client.post("/nowhere%0Aforged", data=b"x", headers={"X-Request-ID": "x" * 500})
    requests = [r for r in records(captured) if r["message"] == "request"]
    segment, unmatched = requests  # the successful probe has no record
    assert segment["request_id"] == "abc-123" and segment["model"] == "roads"
    assert segment["endpoint"] == "/v1/segment" and segment["status"] == 200
    assert segment["bytes_in"] == len(data) and segment["bytes_out"] == len(answer.data)
    assert list(segment["stages_ms"]) == [
        "decode",
        "preprocess",
        "inference",
        "postprocess",
        "encode",
    ]
    assert segment["ms"] >= sum(segment["stages_ms"].values()) - 1
    assert unmatched["status"] == 404 and unmatched["path"] == "/nowhere\nforged"
    assert unmatched["request_id"] == "x" * logs.VALUE_CHARS + "..."


@pytest.mark.parametrize(
    ("which", "logged"), [("all", ["/v1/model", "/readyz"]), ("errors", ["/readyz"]), ("none", [])]
)
def test_which_requests_are_logged(captured, settings, which, logged):
    from segserve import create_app

    app = create_app({**settings, "LOG_REQUESTS": which})
    app.extensions["segserve"].ready = False  # /readyz answers 503 from here on
    client = app.test_client()
    client.get("/healthz")
    client.get("/readyz")
    app.extensions["segserve"].ready = True
    client.get("/v1/model")
    found = [r["endpoint"] for r in records(captured) if r["message"] == "request"]
    assert sorted(found) == sorted(logged)
