"""The OpenAPI document (src/segserve/openapi.json) against the live service: Schemathesis
generates requests from it for every operation the app serves, well-formed and not, sends
them to the real uWSGI server, and checks every answer: no 5xx, and every status, content
type, header and body as the document says. The routes only nginx answers (/v1/models...)
are checked through nginx in molecule/cluster (tests/test_openapi.py)."""

from __future__ import annotations

import importlib.resources
import json

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance

from segserve import samples

DOCUMENT = importlib.resources.files("segserve").joinpath("openapi.json")
schema = schemathesis.openapi.from_path(str(DOCUMENT)).exclude(path_regex="^/v1/models")

pytestmark = pytest.mark.uwsgi


def test_the_service_serves_the_document(uwsgi_server):
    answer = requests.get(f"{uwsgi_server.url}/openapi.json", timeout=30)
    assert answer.status_code == 200 and answer.headers["Content-Type"] == "application/json"
    assert answer.json() == json.loads(DOCUMENT.read_text())
    assert answer.json()["openapi"].startswith("3.1.")


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_answer_is_as_documented(case, uwsgi_server):
    # Every other check runs. This one expects each body the schema allows to be accepted,
    # but "the bytes are an image" is beyond what a schema can say: random bytes that fit
    # the schema are rightly refused with a documented 400.
    case.call_and_validate(
        base_url=uwsgi_server.url, timeout=60, excluded_checks=[positive_data_acceptance]
    )


@pytest.mark.parametrize(
    ("path", "accept"),
    [("/v1/segment", "application/json"), ("/v1/segment", "image/png"), ("/infer", None)],
)
def test_a_real_photo_is_answered_as_documented(uwsgi_server, path, accept):
    """Generated bodies are almost never images; a real photo reaches the 200 answers."""
    headers = {"Content-Type": "image/jpeg", **({"Accept": accept} if accept else {})}
    answer = requests.post(
        uwsgi_server.url + path,
        data=samples.path("chelsea.jpg").read_bytes(),
        headers=headers,
        timeout=60,
    )
    assert answer.status_code == 200
    schema[path]["POST"].validate_response(answer)
