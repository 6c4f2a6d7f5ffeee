from __future__ import annotations

import io
import json
import logging
from dataclasses import replace

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from segserve import create_app, samples

import photos
from conftest import INPUT_SIZE

GOOD = photos.good_images()
JPEG = GOOD["jpeg"][0]


def error_of(response) -> tuple[int, str, str]:
    body = response.get_json()
    assert response.content_type == "application/json"
    assert set(body) == {"error", "detail"}
    return response.status_code, body["error"], body["detail"]


def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_readyz(client):
    assert client.get("/readyz").status_code == 200


def test_model_describes_weights(client, weights_sha):
    info = client.get("/v1/model").get_json()
    assert info["arch"] == "lraspp_mobilenet_v3_large"
    assert info["pretrained"] is False
    assert "UNTRAINED" in info["warning"]
    assert info["weights_sha256"] == weights_sha
    assert info["device"] == "cpu"
    assert info["backend"] == "torch"
    assert info["input_size"] == INPUT_SIZE
    assert info["classes"]["15"] == "person"
    assert list(info["classes"]) == [str(i) for i in range(21)]


def test_model_is_public_and_shows_no_host_details(client, weights_file):
    response = client.get("/v1/model")
    # What a client needs, and nothing else: no paths, library versions, pids or settings.
    assert set(response.get_json()) == {
        "name",
        "app_version",
        "arch",
        "backend",
        "precision",
        "device",
        "input_size",
        "classes",
        "pretrained",
        "weights_sha256",
        "warning",
    }
    text = response.get_data(as_text=True)
    assert str(weights_file.parent) not in text and weights_file.name not in text
    assert torch.__version__ not in text


def test_build_info_is_on_metrics(client):
    from importlib.metadata import version

    text = client.get("/metrics").get_data(as_text=True)
    lines = [line for line in text.splitlines() if line.startswith("segserve_build_info{")]
    wanted = (
        f'app_version="{version("segserve")}"',
        'backend="torch"',
        'device="cpu"',
        f'onnxruntime="{version("onnxruntime")}"',
        f'torch="{torch.__version__}"',
        f'torchvision="{torchvision.__version__}"',
    )
    assert any(all(label in line for label in wanted) for line in lines), lines
    assert all(line.endswith("} 1.0") for line in lines), lines


def test_model_reports_the_installed_app_version(client):
    from importlib.metadata import version

    assert client.get("/v1/model").get_json()["app_version"] == version("segserve")


@pytest.mark.parametrize("name", sorted(GOOD))
def test_segment_json_for_every_format(client, name):
    data, (width, height) = GOOD[name]
    response = client.post("/v1/segment", data=data, content_type="application/octet-stream")
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert (body["width"], body["height"]) == (width, height)
    mask = np.array(body["mask"])
    assert mask.shape == (height, width)
    present = {str(v) for v in np.unique(mask)}
    assert set(body["classes"]) == present
    assert all(0 <= int(k) < 21 for k in body["classes"])


def test_segment_png(client):
    data, (width, height) = GOOD["png"]
    response = client.post(
        "/v1/segment", data=data, headers={"Content-Type": "image/png", "Accept": "image/png"}
    )
    assert response.status_code == 200
    assert response.content_type == "image/png"
    mask = Image.open(io.BytesIO(response.data))
    assert mask.mode == "L" and mask.size == (width, height)
    values = sorted(int(v) for v in np.unique(np.asarray(mask)))
    assert response.headers["X-Segserve-Classes"] == ",".join(map(str, values))
    assert response.headers["X-Segserve-Size"] == f"{width}x{height}"


def test_png_and_json_masks_agree(client):
    as_json = client.post("/v1/segment", data=JPEG, content_type="image/jpeg").get_json()
    as_png = client.post(
        "/v1/segment", data=JPEG, headers={"Content-Type": "image/jpeg", "Accept": "image/*"}
    )
    png_mask = np.asarray(Image.open(io.BytesIO(as_png.data)))
    assert np.array_equal(np.array(as_json["mask"], dtype=np.uint8), png_mask)


@pytest.mark.parametrize("path", ["/v1/segment", "/infer"])
def test_a_json_answer_counts_the_masks_ids_once(client, monkeypatch, path):
    """The classes (header and body) and the JSON length check read one count of the mask."""
    from segserve import images

    calls = []
    count = images.id_counts
    monkeypatch.setattr(images, "id_counts", lambda mask: calls.append(mask.shape) or count(mask))
    response = client.post(path, data=JPEG, content_type="image/jpeg")
    assert response.status_code == 200, response.data[:200]
    assert response.headers["X-Segserve-Classes"]
    assert len(calls) == 1, calls


def test_json_is_the_default_for_any_accept(client):
    response = client.post(
        "/v1/segment", data=JPEG, headers={"Content-Type": "image/jpeg", "Accept": "*/*"}
    )
    assert response.content_type == "application/json"


def test_exif_orientation_is_applied(client):
    data, (width, height) = GOOD["exif-rotated-jpeg"]
    assert height > width  # coffee.jpg is landscape; orientation 6 makes it portrait
    body = client.post("/v1/segment", data=data, content_type="image/jpeg").get_json()
    assert (body["width"], body["height"]) == (width, height)
    assert len(body["mask"]) == height and len(body["mask"][0]) == width


def test_large_jpeg_is_answered_at_full_size(client):
    big = photos.photo().resize((2048, 1364))
    body = client.post(
        "/v1/segment", data=photos.encode(big, "JPEG"), content_type="image/jpeg"
    ).get_json()
    assert (body["width"], body["height"]) == (2048, 1364)


def test_server_timing_header(client):
    response = client.post("/v1/segment", data=JPEG, content_type="image/jpeg")
    timing = response.headers["Server-Timing"]
    for stage in ("decode", "preprocess", "inference", "encode"):
        assert f"{stage};dur=" in timing


def test_no_response_tells_the_worker_pid(client):
    responses = [
        client.post("/v1/segment", data=JPEG, content_type="image/jpeg"),
        client.post("/infer", data=JPEG),
        client.post("/v1/segment", data=b""),
        client.get("/healthz"),
        client.get("/v1/model"),
        client.get("/no/such/thing"),
    ]
    for response in responses:
        assert "X-Segserve-Worker" not in response.headers, response.request.path


def test_multipart_upload(client):
    response = client.post(
        "/v1/segment",
        data={"image": (io.BytesIO(JPEG), "photo.jpg", "image/jpeg")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 200
    assert response.get_json()["width"] == GOOD["jpeg"][1][0]


def test_multipart_without_image_field(client):
    response = client.post(
        "/v1/segment",
        data={"file": (io.BytesIO(JPEG), "photo.jpg", "image/jpeg")},
        content_type="multipart/form-data",
    )
    assert error_of(response)[:2] == (400, "missing_image_field")


def test_missing_content_type_is_taken_as_raw_bytes(client):
    assert client.post("/v1/segment", data=JPEG).status_code == 200


def test_infer_seed_contract(client):
    data, (width, height) = GOOD["png"]
    # The seeds' clients send raw bytes with whatever Content-Type their tool picks.
    response = client.post("/infer", data=data, content_type="application/x-www-form-urlencoded")
    assert response.status_code == 200
    mask = response.get_json()
    assert isinstance(mask, list) and len(mask) == height and len(mask[0]) == width
    assert all(isinstance(v, int) for v in mask[0])


def test_infer_errors_are_json_too(client):
    assert error_of(client.post("/infer", data=b""))[:2] == (400, "empty_body")


@pytest.mark.parametrize(
    ("data", "content_type", "status", "code"),
    [
        (b"", "image/jpeg", 400, "empty_body"),
        (b"this is plain text, not an image", "image/jpeg", 400, "not_an_image"),
        (b"<html><body>hello</body></html>", "application/octet-stream", 400, "not_an_image"),
        (photos.truncated_jpeg(), "image/jpeg", 400, "corrupt_image"),
        (JPEG[:200], "image/jpeg", 400, "corrupt_image"),
        (
            photos.encode(photos.photo().resize((64, 64)), "ICO"),
            "image/x-icon",
            415,
            "unsupported_image_format",
        ),
        (photos.heic_like(), "image/heic", 415, "unsupported_image_format"),
        (JPEG, "text/plain", 415, "unsupported_media_type"),
        (JPEG, "application/json", 415, "unsupported_media_type"),
        (JPEG, "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
        (photos.bomb_png(), "image/png", 413, "too_many_pixels"),
    ],
    ids=[
        "empty",
        "text",
        "html",
        "truncated",
        "header-only",
        "ico",
        "heic",
        "text-type",
        "json-type",
        "form-type",
        "bomb",
    ],
)
def test_bad_inputs(client, data, content_type, status, code):
    response = client.post("/v1/segment", data=data, content_type=content_type)
    got_status, got_code, detail = error_of(response)
    assert (got_status, got_code) == (status, code), detail
    assert "Traceback" not in detail
    # The worker is still fine afterwards.
    assert client.post("/v1/segment", data=JPEG, content_type="image/jpeg").status_code == 200


def test_too_many_bytes(small_app):
    client = small_app.test_client()
    big = photos.encode(photos.photo(), "PNG")
    assert len(big) > 20_000
    status, code, _ = error_of(client.post("/v1/segment", data=big, content_type="image/png"))
    assert (status, code) == (413, "too_large")
    multipart = client.post(
        "/v1/segment",
        data={"image": (io.BytesIO(big), "big.png", "image/png")},
        content_type="multipart/form-data",
    )
    assert error_of(multipart)[:2] == (413, "too_large")


@pytest.mark.parametrize("size", [(400, 300), (512, 512)], ids=["warn-band", "error-band"])
def test_too_many_pixels(small_app, size):
    # 120,000 pixels is in the band where Pillow only warns (limit < n <= 2 x limit); 262,144
    # is past twice the limit, where Pillow raises. Both must be 413.
    client = small_app.test_client()
    data = photos.encode(Image.new("L", size), "PNG")
    assert len(data) < 20_000
    status, code, _ = error_of(client.post("/v1/segment", data=data, content_type="image/png"))
    assert (status, code) == (413, "too_many_pixels")


@pytest.mark.parametrize("path", ["/v1/segment", "/infer", "/readyz", "/v1/model"])
def test_not_ready_is_503(app, client, monkeypatch, path):
    monkeypatch.setattr(app.extensions["segserve"], "ready", False)
    if path in ("/v1/segment", "/infer"):
        response = client.post(path, data=JPEG, content_type="image/jpeg")
    else:
        response = client.get(path)
    assert error_of(response)[:2] == (503, "not_ready")
    assert client.get("/healthz").status_code == 200


def test_unknown_route_is_json_404(client):
    assert error_of(client.get("/no/such/thing"))[:2] == (404, "not_found")


def test_wrong_method_is_json_405(client):
    response = client.get("/v1/segment")
    assert error_of(response)[:2] == (405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]
    assert error_of(client.post("/healthz"))[0] == 405


def test_internal_error_hides_the_traceback(app, client, monkeypatch, caplog):
    def boom(batch):
        raise RuntimeError("secret internal state")

    monkeypatch.setattr(app.extensions["segserve"], "infer", boom)
    with caplog.at_level(logging.ERROR, logger="segserve"):
        response = client.post("/v1/segment", data=JPEG, content_type="image/jpeg")
    status, code, detail = error_of(response)
    assert (status, code) == (500, "internal_error")
    assert "secret" not in response.get_data(as_text=True)
    assert "Traceback" not in response.get_data(as_text=True)
    # ...but the log has it.
    assert any("secret internal state" in (r.exc_text or "") for r in caplog.records)


def test_logged_request_values_are_escaped(app, client, monkeypatch, caplog):
    # nginx decodes %0D%0A into the path it passes on: unescaped, the path would end the log
    # line and start a forged one.
    def boom():
        raise RuntimeError("boom")

    monkeypatch.setitem(app.before_request_funcs, None, [boom, *app.before_request_funcs[None]])
    path = "/v1/segment\r\nJan 01 00:00:00 app1 sshd[1]: Accepted password for root"
    with caplog.at_level(logging.ERROR, logger="segserve"):
        response = client.get(
            "/", environ_overrides={"PATH_INFO": path, "REQUEST_METHOD": "GET\n\x1b[2J"}
        )
    assert error_of(response)[:2] == (500, "internal_error")
    (record,) = [r for r in caplog.records if r.getMessage().startswith("unhandled error")]
    message = record.getMessage()
    assert "\n" not in message and "\r" not in message and "\x1b" not in message
    assert "/v1/segment\\r\\nJan 01" in message and "GET\\n\\x1b[2J" in message


def test_logged_request_values_are_cut(app, client, monkeypatch, caplog):
    def boom():
        raise RuntimeError("boom")

    monkeypatch.setitem(app.before_request_funcs, None, [boom, *app.before_request_funcs[None]])
    with caplog.at_level(logging.ERROR, logger="segserve"):
        client.get("/" + "a" * 5000)
    (record,) = [r for r in caplog.records if r.getMessage().startswith("unhandled error")]
    assert len(record.getMessage()) < 700


def test_metrics(client):
    client.post("/v1/segment", data=JPEG, content_type="image/jpeg")
    client.post("/v1/segment", data=b"", content_type="image/jpeg")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    text = response.get_data(as_text=True)
    for stage in ("decode", "preprocess", "inference", "encode"):
        labels = f'device="cpu",le="0.005",model="default",stage="{stage}"'
        assert f"segserve_stage_seconds_bucket{{{labels}}}" in text
    assert 'segserve_requests_total{endpoint="/v1/segment",model="default",status="200"}' in text
    assert 'segserve_requests_total{endpoint="/v1/segment",model="default",status="400"}' in text
    assert "segserve_request_seconds_bucket" in text
    loads = (
        'segserve_model_loads_total{arch="lraspp_mobilenet_v3_large",device="cpu",model="default"'
    )
    assert loads in text


def test_unmatched_paths_share_one_metrics_label(client):
    client.get("/scanner/probe/1")
    client.get("/scanner/probe/2")
    text = client.get("/metrics").get_data(as_text=True)
    assert "/scanner/probe" not in text
    assert 'segserve_requests_total{endpoint="unmatched",model="default",status="404"}' in text


def test_sample_photos_are_packaged():
    assert set(samples.names()) == {"astronaut.jpg", "chelsea.jpg", "coffee.jpg"}
    assert samples.path().is_file()


def test_json_answer_is_valid_json_text(client):
    response = client.post("/v1/segment", data=JPEG, content_type="image/jpeg")
    json.loads(response.get_data(as_text=True))


# -- JSON answers are bounded (SEGSERVE_MAX_JSON_BYTES) ---------------------------------------


def _json_limit(app, monkeypatch, limit: int) -> None:
    handler = app.extensions["segserve"]
    monkeypatch.setattr(handler, "settings", replace(handler.settings, max_json_bytes=limit))


def _ids(value: int):
    """A postprocess that answers every pixel with one class id."""

    def postprocess(class_ids, decoded):
        return np.full((decoded.height, decoded.width), value, dtype=np.uint8)

    return postprocess


def test_json_too_large_is_refused_from_the_header(app, client, monkeypatch):
    # 100x80: no JSON mask of that size is under 2*100*80 + 2*80 + 1 = 16161 bytes.
    _json_limit(app, monkeypatch, 16_160)

    def no_inference(batch):
        raise AssertionError("the model ran")

    monkeypatch.setattr(app.extensions["segserve"], "infer", no_inference)
    # A header with too few pixel bytes: decoding it would be a 400 corrupt_image, so the 422
    # shows that nothing was decoded.
    header_only = photos.bomb_png(100, 80)
    response = client.post("/v1/segment", data=header_only, content_type="image/png")
    status, code, detail = error_of(response)
    assert (status, code) == (422, "json_too_large")
    assert "at least 16161 bytes" in detail and "16160" in detail
    assert "Accept: image/png" in detail
    status, code, detail = error_of(client.post("/infer", data=header_only))
    assert (status, code) == (422, "json_too_large")
    assert "smaller image" in detail
    # PNG answers are not bounded by it: the same header is decoded (and found truncated).
    as_png = client.post(
        "/v1/segment",
        data=header_only,
        headers={"Content-Type": "image/png", "Accept": "image/png"},
    )
    assert error_of(as_png)[:2] == (400, "corrupt_image")


def test_json_bound_from_the_header_is_exact_for_one_digit_ids(app, client, monkeypatch):
    monkeypatch.setattr(app.extensions["segserve"], "postprocess", _ids(7))
    data = photos.encode(Image.new("RGB", (100, 80)), "PNG")
    _json_limit(app, monkeypatch, 16_161)
    response = client.post("/infer", data=data)
    assert response.status_code == 200 and len(response.data) == 16_161
    _json_limit(app, monkeypatch, 16_160)
    response = client.post("/infer", data=data)
    assert response.status_code == 422
    assert error_of(response)[:2] == (422, "json_too_large")


def test_json_too_large_is_refused_after_inference(app, client, monkeypatch):
    # Two-digit ids: 24161 bytes of bare mask, past the limit though the header's lower
    # bound (16161) is not.
    monkeypatch.setattr(app.extensions["segserve"], "postprocess", _ids(20))
    data = photos.encode(Image.new("RGB", (100, 80)), "PNG")
    _json_limit(app, monkeypatch, 20_000)
    response = client.post("/infer", data=data)
    assert response.status_code == 422
    status, code, detail = error_of(response)
    assert (status, code) == (422, "json_too_large")
    assert "would be 24161 bytes" in detail and "20000" in detail
    status, code, detail = error_of(client.post("/v1/segment", data=data, content_type="image/png"))
    assert (status, code) == (422, "json_too_large") and "Accept: image/png" in detail
    as_png = client.post(
        "/v1/segment", data=data, headers={"Content-Type": "image/png", "Accept": "image/png"}
    )
    assert as_png.status_code == 200
    # The size is counted exactly: a limit of the answer's own length lets it through.
    _json_limit(app, monkeypatch, 10**9)
    full = client.post("/v1/segment", data=data, content_type="image/png")
    assert full.status_code == 200
    _json_limit(app, monkeypatch, len(full.data))
    assert client.post("/v1/segment", data=data, content_type="image/png").data == full.data
    _json_limit(app, monkeypatch, len(full.data) - 1)
    response = client.post("/v1/segment", data=data, content_type="image/png")
    assert error_of(response)[:2] == (422, "json_too_large")
    _json_limit(app, monkeypatch, 24_161)
    assert client.post("/infer", data=data).status_code == 200


# -- the metrics-only port (SEGSERVE_METRICS_PORT) --------------------------------------------

METRICS_PORT = 9100


@pytest.fixture(scope="module")
def metrics_port_app(settings):
    return create_app({**settings, "METRICS_PORT": str(METRICS_PORT)})


def _on_port(client, port: int | str, method: str, path: str):
    return client.open(
        path,
        method=method,
        data=JPEG,
        content_type="image/jpeg",
        environ_overrides={"SERVER_PORT": str(port)},
    )


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/segment"),
        ("POST", "/infer"),
        ("GET", "/v1/model"),
        ("GET", "/readyz"),
        ("POST", "/metrics"),
        ("DELETE", "/healthz"),
    ],
)
def test_metrics_port_serves_only_metrics_and_health(metrics_port_app, monkeypatch, method, path):
    def no_inference(batch):
        raise AssertionError("the model ran")

    monkeypatch.setattr(metrics_port_app.extensions["segserve"], "infer", no_inference)
    client = metrics_port_app.test_client()
    assert _on_port(client, METRICS_PORT, "GET", "/metrics").status_code == 200
    assert _on_port(client, METRICS_PORT, "GET", "/healthz").status_code == 200
    # The same answer as an unknown path: the port does not tell what exists elsewhere.
    assert error_of(_on_port(client, METRICS_PORT, method, path))[:2] == (404, "not_found")


def test_metrics_port_refusals_count_as_unmatched(metrics_port_app):
    client = metrics_port_app.test_client()

    def unmatched_404s() -> float:
        text = _on_port(client, METRICS_PORT, "GET", "/metrics").get_data(as_text=True)
        name = 'segserve_requests_total{endpoint="unmatched",model="default",status="404"} '
        return sum(float(line[len(name) :]) for line in text.splitlines() if line.startswith(name))

    before = unmatched_404s()
    _on_port(client, METRICS_PORT, "GET", "/v1/model")
    assert unmatched_404s() == before + 1
    text = _on_port(client, METRICS_PORT, "GET", "/metrics").get_data(as_text=True)
    assert 'segserve_requests_total{endpoint="/v1/model",model="default",status="404"}' not in text


@pytest.mark.parametrize("port", [80, 8002])
def test_other_ports_are_not_restricted(metrics_port_app, port):
    client = metrics_port_app.test_client()
    assert _on_port(client, METRICS_PORT, "POST", "/v1/segment").status_code == 404
    assert _on_port(client, port, "POST", "/v1/segment").status_code == 200
    assert _on_port(client, port, "GET", "/v1/model").status_code == 200
    assert _on_port(client, port, "GET", "/metrics").status_code == 200


def test_model_name_is_on_the_model_the_log_and_every_metric(settings, caplog):
    """The fleet routes by SEGSERVE_MODEL_NAME (nginx's /v1/models/<name>/): the worker says
    which model it is on /v1/model, in its ready line and on every series it writes."""
    with caplog.at_level("INFO", logger="segserve"):
        named = create_app({**settings, "MODEL_NAME": "fast-v2"})
    client = named.test_client()
    assert client.get("/v1/model").get_json()["name"] == "fast-v2"
    client.post("/v1/segment", data=JPEG, content_type="image/jpeg")
    text = client.get("/metrics").get_data(as_text=True)
    for family in ("segserve_requests_total", "segserve_stage_seconds_count"):
        assert any(
            line.startswith(family + "{") and 'model="fast-v2"' in line
            for line in text.splitlines()
        ), family
    assert any("model=fast-v2 " in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("bad", ["", "-lead", "has space", "a/b", "x" * 41, "ünï"])
def test_model_name_that_fits_no_url_is_refused(settings, bad):
    if bad == "":
        # An empty value is unset: the default name.
        assert create_app({**settings, "MODEL_NAME": bad}).extensions["segserve"]
        return
    from segserve.errors import ConfigError

    with pytest.raises(ConfigError, match="SEGSERVE_MODEL_NAME"):
        create_app({**settings, "MODEL_NAME": bad})
