"""The service under real uWSGI: 2 worker processes, lazy-apps, real HTTP."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from segserve import samples

import photos
from conftest import UwsgiServer, free_port, uwsgi_command, uwsgi_env

pytestmark = pytest.mark.uwsgi

GOOD = photos.good_images()
BAD = {
    "empty": (b"", 400),
    "text": (b"hello, this is not an image", 400),
    "truncated": (photos.truncated_jpeg(), 400),
    "ico": (photos.encode(photos.photo().resize((32, 32)), "ICO"), 415),
    "bomb": (photos.bomb_png(), 413),
    # Over the server's own limit, under uWSGI's limit-post (see conftest.APP_LIMIT).
    "oversized": (b"\xff\xd8\xff" + b"\0" * (9 * 1024 * 1024), 413),
}


def metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    match = re.search(rf"^{re.escape(name)}\{{{re.escape(wanted)}\}} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def test_ready_and_model(uwsgi_server):
    response = requests.get(f"{uwsgi_server.url}/v1/model", timeout=10)
    info = response.json()
    assert info["pretrained"] is False and info["device"] == "cpu"
    assert info["input_size"] == 520
    assert "X-Segserve-Worker" not in response.headers


@pytest.mark.parametrize("name", sorted(GOOD))
def test_real_images(uwsgi_server, name):
    data, (width, height) = GOOD[name]
    response = requests.post(
        f"{uwsgi_server.url}/v1/segment",
        data=data,
        headers={"Content-Type": "application/octet-stream", "Accept": "image/png"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.headers["X-Segserve-Size"] == f"{width}x{height}"


@pytest.mark.parametrize("name", sorted(BAD))
def test_malformed_bodies(uwsgi_server, name):
    data, status = BAD[name]
    response = requests.post(
        f"{uwsgi_server.url}/v1/segment",
        data=data,
        headers={"Content-Type": "image/jpeg"},
        timeout=60,
    )
    assert response.status_code == status
    body = response.json()
    assert set(body) == {"error", "detail"}


def test_multipart_and_infer(uwsgi_server):
    photo = samples.path("chelsea.jpg")
    with open(photo, "rb") as fh:
        response = requests.post(
            f"{uwsgi_server.url}/v1/segment",
            files={"image": ("c.jpg", fh, "image/jpeg")},
            timeout=60,
        )
    assert response.status_code == 200 and response.json()["width"] == 451
    mask = requests.post(f"{uwsgi_server.url}/infer", data=photo.read_bytes(), timeout=60).json()
    assert len(mask) == 300 and len(mask[0]) == 451


def test_json_404_and_405(uwsgi_server):
    assert requests.get(f"{uwsgi_server.url}/nope", timeout=10).json()["error"] == "not_found"
    response = requests.get(f"{uwsgi_server.url}/v1/segment", timeout=10)
    assert response.status_code == 405 and response.json()["error"] == "method_not_allowed"


def test_both_workers_serve_and_metrics_add_up(uwsgi_server):
    url = uwsgi_server.url
    data = samples.path("astronaut.jpg").read_bytes()

    def served_per_worker():
        workers = requests.get(uwsgi_server.stats_url, timeout=10).json()["workers"]
        return {w["id"]: w["requests"] for w in workers}

    # uWSGI counts a request once its worker is done with it, which may be just after the
    # client has the answer: the count is read before the first request of the window (the
    # metrics below, then the 16 images) and awaited after the last.
    served_before = served_per_worker()
    before = requests.get(f"{url}/metrics", timeout=10).text

    def post(_):
        response = requests.post(
            f"{url}/v1/segment",
            data=data,
            headers={"Content-Type": "image/jpeg", "Accept": "image/png"},
            timeout=60,
        )
        assert response.status_code == 200

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(post, range(16)))
    # No response names its worker; uWSGI's stats server counts each worker's requests.
    deadline = time.monotonic() + 5
    while True:
        served = {k: v - served_before[k] for k, v in served_per_worker().items()}
        if sum(served.values()) >= 17 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert sum(served.values()) >= 17 and all(served.values()), served

    after = requests.get(f"{url}/metrics", timeout=10).text
    # Whichever worker answers /metrics reports the sum over both.
    served = "/v1/segment"
    delta = metric(
        after, "segserve_requests_total", model="default", endpoint=served, status="200"
    ) - metric(before, "segserve_requests_total", model="default", endpoint=served, status="200")
    assert delta == 16
    for stage in ("decode", "preprocess", "inference", "encode"):
        assert (
            metric(
                after, "segserve_stage_seconds_count", model="default", stage=stage, device="cpu"
            )
            >= 16
        )
    assert (
        metric(
            after,
            "segserve_model_loads_total",
            model="default",
            arch="lraspp_mobilenet_v3_large",
            pretrained="false",
            device="cpu",
        )
        == 2
    )
    # One series whichever worker answers (multiprocess mode "max"): no pid label.
    info = [line for line in after.splitlines() if line.startswith("segserve_build_info{")]
    assert len(info) == 1 and info[0].endswith(" 1.0"), info
    assert 'backend="torch"' in info[0] and "pid=" not in info[0]


def test_log_is_json_and_names_the_request(uwsgi_server):
    """Each worker's log is one JSON object per line, on the process's stderr as under
    systemd; a request's record carries the X-Request-ID it came with and its stage timings."""
    request_id = "test-log-0f3a"
    answer = requests.post(
        f"{uwsgi_server.url}/v1/segment",
        data=samples.path("coffee.jpg").read_bytes(),
        headers={"Content-Type": "image/jpeg", "Accept": "image/png", "X-Request-ID": request_id},
        timeout=60,
    )
    assert answer.status_code == 200
    deadline = time.monotonic() + 10
    while request_id not in uwsgi_server.log() and time.monotonic() < deadline:
        time.sleep(0.2)
    app_lines = [line for line in uwsgi_server.log().splitlines() if line.startswith("{")]
    records = [json.loads(line) for line in app_lines]
    assert not re.search(r"segserve\[\d+\]", uwsgi_server.log()), "a record in text format"
    ready = [r for r in records if r["message"].startswith("ready: ")]
    assert {r["worker"] for r in ready} == {1, 2} and all(r["model"] == "default" for r in ready)
    (mine,) = [r for r in records if r.get("request_id") == request_id]
    assert mine["message"] == "request" and mine["status"] == 200 and mine["worker"] in (1, 2)
    assert mine["endpoint"] == "/v1/segment" and mine["stages_ms"]["inference"] > 0


def test_zz_stops_cleanly_and_no_worker_died(uwsgi_server):
    # Named to run last in this module: it stops the shared server.
    assert uwsgi_server.stop() == 0
    log = uwsgi_server.log()
    for sign in ("DAMN", "Respawned", "Segmentation Fault", "HARAKIRI", "Traceback"):
        assert sign not in log, f"{sign!r} in the uWSGI log:\n{log[-3000:]}"
    assert log.count("WSGI app 0 (mountpoint='') ready") == 2
    assert "goodbye to uWSGI" in log


def test_wrong_sha256_exits_non_zero(weights_file, tmp_path):
    result = subprocess.run(
        uwsgi_command(0),
        env=uwsgi_env(weights_file, None, SEGSERVE_WEIGHTS_SHA256="0" * 64),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "refusing to start: weights sha256 mismatch: file " in output
    assert f"expected {'0' * 64}" in output


def test_metrics_port_is_the_http_sockets_own(weights_file, tmp_path):
    # Two http-sockets, as the role runs them: uWSGI sets SERVER_PORT to the port of the socket
    # a request came in on, and the app answers only /metrics and /healthz on the metrics one.
    # One worker: ready then means every worker is, and stopping cannot cut a start short.
    monitoring = free_port()
    server = UwsgiServer(
        weights_file,
        tmp_path,
        ("--processes", "1", "--http-socket", f"127.0.0.1:{monitoring}"),
        SEGSERVE_METRICS_PORT=str(monitoring),
    )
    try:
        server.wait_ready()
        metrics_url = f"http://127.0.0.1:{monitoring}"
        assert requests.get(f"{metrics_url}/metrics", timeout=10).status_code == 200
        assert requests.get(f"{metrics_url}/healthz", timeout=10).status_code == 200
        for method, path in (("GET", "/v1/model"), ("POST", "/v1/segment"), ("POST", "/infer")):
            response = requests.request(
                method, f"{metrics_url}{path}", data=GOOD["jpeg"][0], timeout=60
            )
            assert response.status_code == 404 and response.json()["error"] == "not_found"
        assert requests.get(f"{server.url}/v1/model", timeout=10).status_code == 200
    finally:
        returncode = server.stop()
    assert returncode == 0, server.log()[-3000:]


def test_metrics_carry_the_masters_counts(weights_file, tmp_path):
    """/metrics adds what only uWSGI's master knows, read from its stats server: a worker
    killed by harakiri (here a client that sends half its body, straight to uWSGI with no
    nginx in front) and one killed by a signal are both counted, which no code in the dead
    worker could have done."""
    stats_port = free_port()
    server = UwsgiServer(
        weights_file,
        tmp_path,
        ("--processes", "1", "--harakiri", "2", "--stats", f"127.0.0.1:{stats_port}",
         "--stats-http"),
        SEGSERVE_UWSGI_STATS_PORT=str(stats_port),
    )  # fmt: skip

    def scrape(name: str, **labels: str) -> float:
        text = requests.get(f"{server.url}/metrics", timeout=10).text
        return metric(text, name, model="default", **labels)

    def worker_pid() -> int:
        stats = requests.get(f"http://127.0.0.1:{stats_port}", timeout=10).json()
        return stats["workers"][0]["pid"]

    def respawned(count: int) -> None:
        deadline = time.monotonic() + 120
        while scrape("segserve_uwsgi_worker_respawns_total") < count:
            assert time.monotonic() < deadline, server.log()[-3000:]
            time.sleep(0.5)
        server.wait_ready()

    try:
        server.wait_ready()
        assert scrape("segserve_uwsgi_stats_up") == 1
        assert scrape("segserve_uwsgi_workers") == 1
        assert scrape("segserve_uwsgi_worker_respawns_total") == 0
        assert scrape("segserve_uwsgi_harakiri_total") == 0
        # app/uwsgi.ini's max-requests, as uWSGI itself read it.
        assert scrape("segserve_uwsgi_max_requests") == 5000

        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as client:
            client.sendall(
                b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                b"Content-Length: 100000\r\n\r\n" + GOOD["jpeg"][0][:1000]
            )
            respawned(1)
        assert scrape("segserve_uwsgi_harakiri_total") == 1

        os.kill(worker_pid(), signal.SIGKILL)
        respawned(2)
        assert scrape("segserve_uwsgi_harakiri_total") == 1
        assert scrape("segserve_uwsgi_workers_busy") >= 0
    finally:
        server.stop()
