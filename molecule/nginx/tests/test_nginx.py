"""Behaviour of the nginx role, seen from the load balancer nginx-lb1 of scenario `nginx`.

Tests run in file order; the ones that make app hosts fail come last and wait for nginx to
put the hosts back in rotation.
"""

import re
import uuid

import pytest
from nginx_helpers import (
    ACCESS_LOG,
    API,
    APP_HOSTS,
    SITE_CONF,
    TLS_CERT,
    access_log,
    app_address,
    app_host,
    http,
    lb_address,
)

testinfra_hosts = ["nginx-lb1"]

BASE = API


def body_limit(host):
    return int(
        re.search(r"client_max_body_size (\d+);", host.file(SITE_CONF).content_string).group(1)
    )


def test_service_running_and_enabled(host):
    nginx = host.service("nginx")
    assert nginx.is_running
    assert nginx.is_enabled


def test_configuration_valid(host):
    result = host.run("nginx -t")
    assert result.rc == 0, result.stderr


def test_default_site_removed(host):
    assert not host.file("/etc/nginx/sites-enabled/default").exists


def test_listens_on_http_and_https(host):
    assert host.socket("tcp://0.0.0.0:80").is_listening
    assert host.socket("tcp://0.0.0.0:443").is_listening


def test_requests_reach_every_backend(host):
    backends = {http(host, f"{BASE}/v1/model?spread={i}").json()["backend"] for i in range(8)}
    assert backends == set(APP_HOSTS)
    upstreams = {
        entry["upstream_addr"]
        for entry in access_log(host)
        if entry["request"].startswith("GET /v1/model?spread=")
    }
    for name in APP_HOSTS:
        assert f"{app_address(name)}:8001" in upstreams


def test_access_log_is_json_with_upstream_fields(host):
    path = f"/v1/model?logged={uuid.uuid4().hex}"
    http(host, BASE + path)
    entry = next(e for e in access_log(host) if path in e["request"])
    for field in (
        "time",
        "remote_addr",
        "request",
        "status",
        "bytes",
        "request_time",
        "upstream_addr",
        "upstream_status",
        "upstream_connect_time",
        "upstream_response_time",
        "request_id",
        "model_upstream",
    ):
        assert field in entry, field
    assert entry["status"] == 200
    assert entry["upstream_status"] == "200"
    assert re.fullmatch(r"[0-9.]+:8001", entry["upstream_addr"])
    # The unnamed API is the default model's.
    assert entry["model_upstream"] == "segserve_model_default"


def test_request_id_reaches_app_client_and_log(host):
    path = f"/v1/model?traced={uuid.uuid4().hex}"
    response = http(host, BASE + path)
    request_id = response.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    assert response.json()["request_id"] == request_id
    entry = next(e for e in access_log(host) if path in e["request"])
    assert entry["request_id"] == request_id


def test_server_header_has_no_version(host):
    assert http(host, BASE + "/v1/model").headers["server"] == "nginx"


def test_body_at_limit_reaches_app(host):
    limit = body_limit(host)
    host.check_output(f"head -c {limit} /dev/zero > /tmp/payload-at-limit")
    response = http(host, BASE + "/v1/segment", "--data-binary", "@/tmp/payload-at-limit")
    assert response.status == 200
    assert response.json()["body_bytes"] == limit


def test_body_over_limit_is_json_413_from_nginx(host):
    limit = body_limit(host)
    marker = uuid.uuid4().hex
    host.check_output(f"head -c {limit + 1} /dev/zero > /tmp/payload-over-limit")
    response = http(
        host, f"{BASE}/v1/segment?probe={marker}", "--data-binary", "@/tmp/payload-over-limit"
    )
    assert response.status == 413
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"] == "too_large"
    assert str(limit) in response.json()["detail"]
    entry = next(e for e in access_log(host) if marker in e["request"])
    assert entry["upstream_addr"] == ""
    for name in APP_HOSTS:
        assert marker not in app_host(name).check_output("journalctl -u stub-app --no-pager")


def test_status_page_on_loopback_only(host):
    page = http(host, "http://127.0.0.1:8081/nginx_status")
    assert page.status == 200
    assert "Active connections" in page.body
    assert host.socket("tcp://127.0.0.1:8081").is_listening
    assert not host.socket("tcp://0.0.0.0:8081").is_listening
    assert host.run(f"curl -sS -m 5 http://{lb_address(host)}:8081/nginx_status").rc != 0


def test_drained_host_gets_no_traffic(host):
    drained = f"{app_address('nginx-app1')}:8002"
    assert re.search(rf"server {re.escape(drained)} .* down;", host.file(SITE_CONF).content_string)
    for i in range(6):
        assert http(host, f"{BASE}/v1/model?drain={i}").status == 200
    assert all(drained not in entry["upstream_addr"] for entry in access_log(host))


def test_tls_answers_with_self_signed_certificate(host):
    # Verified against the generated certificate: its names must include the inventory name.
    response = http(
        host,
        f"{API}/v1/model?tls",
        "--tlsv1.2",
    )
    assert response.status == 200
    assert response.json()["backend"] in APP_HOSTS


def test_rate_limit_answers_json_429(host):
    # 127.0.0.1 is exempt in this scenario (nginx_rate_limit_exempt); the lb's own network
    # address is not: 8 requests at once exceed 1 r/s with a burst of 2.
    script = (
        "rm -rf /tmp/rl && mkdir /tmp/rl && for i in $(seq 8); do"
        f" curl -s --resolve nginx-lb1:443:{lb_address(host)} --cacert {TLS_CERT}"
        f" -D /tmp/rl/$i.h -o /tmp/rl/$i.b {API}/v1/model?rl & done; wait;"
        " f=$(grep -l ' 429 ' /tmp/rl/*.h | head -n 1)"
        " && cat $f && printf '<<<body>>>' && cat ${f%.h}.b"
    )
    out = host.check_output(script)
    headers, body = out.split("<<<body>>>")
    assert "HTTP/1.1 429" in headers
    assert re.search(r"(?im)^content-type: application/json", headers)
    assert re.search(r"(?im)^retry-after: \d+", headers)
    assert '"error": "rate_limited"' in body


@pytest.mark.usefixtures("failures_recover")
def test_app_errors_pass_through_untouched(host):
    # Both app hosts answer 503 with their own body; nginx tries both and passes the last on.
    # Both count as failed for nginx_upstream_fail_timeout_s: failures_recover waits that out.
    response = http(host, BASE + "/v1/model?status=503")
    assert response.status == 503
    assert response.json()["error"] == "stub_error"


@pytest.mark.usefixtures("failures_recover")
def test_post_retried_on_next_host_after_503(host):
    # nginx-app2 answers ?flaky with 503 (molecule/nginx/files/stub-app.service).
    for _ in range(4):
        response = http(host, BASE + "/v1/segment?flaky", "--data-binary", "image-bytes")
        assert response.status == 200
        assert response.json()["backend"] == "nginx-app1"
    statuses = [
        e["upstream_status"]
        for e in access_log(host)
        if e["request"].startswith("POST /v1/segment?flaky")
    ]
    assert "503, 200" in statuses


@pytest.mark.parametrize("stopped_backends", [["nginx-app2"]], indirect=True)
def test_stopped_backend_requests_still_succeed(host, stopped_backends):
    for i in range(6):
        response = http(host, f"{BASE}/v1/segment?failover={i}", "--data-binary", "image-bytes")
        assert response.status == 200
        assert response.json()["backend"] == "nginx-app1"


@pytest.mark.parametrize("stopped_backends", [list(APP_HOSTS)], indirect=True)
def test_no_backend_is_json_502_with_retry_after(host, stopped_backends):
    response = http(host, BASE + "/v1/model?nobody")
    assert response.status == 502
    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["retry-after"]) > 0
    assert response.json()["error"] == "bad_gateway"


def test_access_log_file_is_the_configured_one(host):
    assert host.file(ACCESS_LOG).is_file
