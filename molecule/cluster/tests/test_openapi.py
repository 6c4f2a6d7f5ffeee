"""The OpenAPI document (app/src/segserve/openapi.json) against the fleet through nginx:
nginx serves it, and Schemathesis' requests generated from it, to every operation (the
routes under /v1/models too, which only nginx answers), all get the answers it documents."""

from __future__ import annotations

import json

import pytest
import requests
import schemathesis
from fleetvars import MODELS, PROJECT
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance

DOCUMENT = PROJECT / "app" / "src" / "segserve" / "openapi.json"
PHOTO = PROJECT / "app" / "src" / "segserve" / "samples" / "chelsea.jpg"
schema = schemathesis.openapi.from_path(str(DOCUMENT))


def test_nginx_serves_the_document(lb, report):
    answer = requests.get(f"http://{lb}/openapi.json", timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json() == json.loads(DOCUMENT.read_text())
    report.add(
        "OpenAPI",
        "GET /openapi.json through nginx is the repository's OpenAPI 3.1 document; Schemathesis"
        " checks every operation through nginx against it (test_openapi.py).",
        None,
        [f"{len(answer.content)} bytes, {len(answer.json()['paths'])} paths"],
    )


@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_answer_through_nginx_is_as_documented(case, lb):
    # As in app/tests/test_openapi.py: "the bytes are an image" is beyond a schema.
    case.call_and_validate(
        base_url=f"http://{lb}", timeout=60, excluded_checks=[positive_data_acceptance]
    )


@pytest.mark.parametrize("model", [m["name"] for m in MODELS])
def test_each_models_route_answers_a_photo_as_documented(lb, model):
    answer = requests.post(
        f"http://{lb}/v1/models/{model}/segment",
        data=PHOTO.read_bytes(),
        headers={"Content-Type": "image/jpeg", "Accept": "application/json"},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    schema["/v1/models/{name}/segment"]["POST"].validate_response(answer)
    listing = requests.get(f"http://{lb}/v1/models", timeout=30)
    schema["/v1/models"]["GET"].validate_response(listing)
