"""The whole fleet: real photos through nginx to both app hosts, failover, firewall.

Tests run on the `outsider` host, a client that is in no group of the fleet, and look at
the other hosts through testinfra's Ansible backend.
"""

import json
import time

import pytest
from fleetlib import APP_HOSTS, PHOTOS, address, fleet_host, sh
from fleetvars import ACCESS_LOG, DEFAULT_MODEL, HEALTH_PORT, UNIT, UWSGI_PORT

testinfra_hosts = ["outsider"]


@pytest.fixture(scope="module")
def lb_url():
    return f"http://{address('lb1')}"


@pytest.fixture(scope="module")
def photos(host):
    names = host.check_output(f"ls {PHOTOS}/*.jpg").split()
    assert len(names) >= 2, names
    return names


def post_image(host, url, image, accept="application/json", out="/tmp/out"):
    """POST an image through nginx; returns (status, response path)."""
    status = host.check_output(
        f"curl -sS --max-time 60 -o {out} -w '%{{http_code}}' "
        f"-H 'Content-Type: image/jpeg' -H 'Accept: {accept}' "
        f"--data-binary @{image} {url}/v1/segment"
    )
    return int(status), out


def image_size(host, path):
    # The client has no Pillow: read width and height from the PNG header (IHDR).
    return host.check_output(
        "python3 -c \"import struct,sys; d=open(sys.argv[1],'rb').read(); "
        "print(*struct.unpack('>II', d[16:24]))\" " + path
    )


def test_json_masks_for_real_photos(host, lb_url, photos):
    for photo in photos:
        status, out = post_image(host, lb_url, photo)
        assert status == 200, host.file(out).content_string
        body = json.loads(host.file(out).content_string)
        assert len(body["mask"]) == body["height"]
        assert all(len(row) == body["width"] for row in body["mask"])
        present = {v for row in body["mask"] for v in row}
        assert present <= {int(k) for k in body["classes"]}
        assert present <= set(range(21))


def test_png_mask_has_the_photo_size(host, lb_url, photos):
    status, out = post_image(host, lb_url, photos[0], accept="image/png", out="/tmp/mask.png")
    assert status == 200
    assert host.check_output(f"head -c 8 {out} | od -An -c").split()[1:4] == ["P", "N", "G"]
    json_status, json_out = post_image(host, lb_url, photos[0])
    body = json.loads(host.file(json_out).content_string)
    assert image_size(host, out).split() == [str(body["width"]), str(body["height"])]


def test_both_app_hosts_served(host, lb_url, photos):
    for _ in range(8):
        status, _ = post_image(host, lb_url, photos[0], accept="image/png")
        assert status == 200
    log = fleet_host("lb1").file(ACCESS_LOG).content_string
    upstreams = {json.loads(line).get("upstream_addr", "") for line in log.splitlines() if line}
    for app in ("app1", "app2"):
        assert any(address(app) in u for u in upstreams), (app, upstreams)


def test_one_request_followed_from_nginx_to_the_worker(host, lb_url, photos):
    """The id in the answer's X-Request-ID is in nginx's access log, with the app host that
    served it, and in that host's journal, in the JSON record of the worker that did."""
    headers = host.check_output(
        f"curl -sS --max-time 60 -o /dev/null -D - -H 'Content-Type: image/jpeg'"
        f" -H 'Accept: image/png' --data-binary @{photos[0]} {lb_url}/v1/segment"
    )
    request_id = next(
        line.split(":", 1)[1].strip()
        for line in headers.splitlines()
        if line.lower().startswith("x-request-id:")
    )
    access = sh(fleet_host("lb1"), f"grep -F '\"{request_id}\"' {ACCESS_LOG}")
    (served,) = [e for e in map(json.loads, access.splitlines()) if e["upstream_addr"]]
    assert served["status"] == 200, served
    app = next(a for a in APP_HOSTS if served["upstream_addr"].startswith(f"{address(a)}:"))
    deadline = time.monotonic() + 15
    while True:
        journal = sh(fleet_host(app), f"journalctl -u {UNIT} -o cat --no-pager -n 2000")
        mine = [
            json.loads(line)
            for line in journal.splitlines()
            if line.startswith("{") and request_id in line
        ]
        if mine or time.monotonic() > deadline:
            break
        time.sleep(1)
    (record,) = mine
    assert record["message"] == "request" and record["request_id"] == request_id
    assert record["model"] == DEFAULT_MODEL and record["worker"] >= 1 and record["status"] == 200
    assert record["endpoint"] == "/v1/segment" and record["stages_ms"]["inference"] > 0


def test_bad_input_is_a_json_400_through_nginx(host, lb_url):
    out = host.run(
        f"curl -sS -w '\\n%{{http_code}}' -H 'Content-Type: image/jpeg' "
        f"--data-binary 'definitely not a jpeg' {lb_url}/v1/segment"
    ).stdout.rsplit("\n", 1)
    assert out[1] == "400"
    assert json.loads(out[0])["error"]


def test_requests_succeed_with_one_app_host_stopped(host, lb_url, photos):
    app1 = fleet_host("app1")
    app1.run(f"systemctl stop {UNIT}")
    try:
        for _ in range(6):
            status, _ = post_image(host, lb_url, photos[0], accept="image/png")
            assert status == 200
    finally:
        app1.run(f"systemctl start {UNIT}")
    ready = app1.run(
        f"for i in $(seq 120); do curl -sf http://127.0.0.1:{HEALTH_PORT}/readyz && exit 0;"
        " sleep 1; done; exit 1"
    )
    assert ready.rc == 0


def test_uwsgi_port_refuses_non_lb_host(host):
    app1 = address("app1")
    result = host.run(
        f"python3 -c \"import socket; socket.create_connection(('{app1}', {UWSGI_PORT}), 5)\""
    )
    assert result.rc != 0
    assert "ConnectionRefusedError" in result.stderr


def test_uwsgi_port_accepts_the_load_balancer(host):
    lb1 = fleet_host("lb1")
    connect = lb1.run(
        f"python3 -c \"import socket; socket.create_connection(('{address('app1')}', {UWSGI_PORT}),"
        ' 5)"'
    )
    assert connect.rc == 0, connect.stderr
