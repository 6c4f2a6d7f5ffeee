"""What nginx refuses a hostile client before any app host sees it, seen from nginx-lb1.

Runs after test_nginx.py (file order) on the same converged scenario.
"""

import base64
import re
import uuid

from nginx_helpers import (
    API,
    APP_HOSTS,
    SITE_CONF,
    TLS_CERT,
    access_log,
    app_host,
    http,
    lb_address,
)

testinfra_hosts = ["nginx-lb1"]


def test_plain_http_only_redirects_to_https(host):
    response = http(host, "http://127.0.0.1/v1/segment?x=1", "--data-binary", "image")
    assert response.status == 308
    assert response.headers["location"] == "https://127.0.0.1/v1/segment?x=1"


def test_https_answers_carry_hsts(host):
    for url in (f"{API}/v1/model", f"{API}/nope"):
        hsts = http(host, url).headers["strict-transport-security"]
        assert re.fullmatch(r"max-age=\d{7,}", hsts), hsts


def test_only_the_api_reaches_the_app_hosts(host):
    marker = uuid.uuid4().hex
    cases = [
        ("GET", f"/metrics?{marker}", 404, "not_found"),
        ("GET", f"/?{marker}", 404, "not_found"),
        ("GET", f"/v1/model/?{marker}", 404, "not_found"),
        ("GET", f"/v1/segment?{marker}", 405, "method_not_allowed"),
        ("POST", f"/v1/model?{marker}", 405, "method_not_allowed"),
        ("DELETE", f"/infer?{marker}", 405, "method_not_allowed"),
    ]
    for method, path, status, error in cases:
        response = http(host, API + path, "-X", method, "--path-as-is")
        assert (response.status, response.json()["error"]) == (status, error), (method, path)
    for name in APP_HOSTS:
        assert marker not in app_host(name).check_output("journalctl -u stub-app --no-pager")


def test_a_405_names_the_methods_allowed(host):
    # RFC 9110 15.5.6: a 405 carries Allow. TRACE is refused before any location is chosen.
    cases = [
        ("GET", "/v1/segment", "POST"),
        ("PUT", "/infer?x=1", "POST"),
        ("POST", "/v1/model", "GET, HEAD"),
        ("TRACE", "/healthz", "GET, HEAD"),
        ("DELETE", "/openapi.json", "GET, HEAD"),
        ("POST", "/v1/models", "GET, HEAD"),
    ]
    for method, path, allowed in cases:
        response = http(host, API + path, "-X", method)
        assert response.status == 405, (method, path, response.status)
        assert response.headers.get("allow") == allowed, (method, path, response.headers)


def test_app_sees_only_the_headers_it_reads(host):
    response = http(
        host,
        f"{API}/v1/segment",
        "--data-binary",
        "image",
        "-H",
        "Cookie: session=secret",
        "-H",
        "Authorization: Bearer secret",
        "-H",
        "X-Forwarded-For: 6.6.6.6",
        "-H",
        "Accept: image/png",
    )
    variables = set(response.json()["variables"])
    assert {"HTTP_ACCEPT", "HTTP_X_REQUEST_ID", "CONTENT_LENGTH"} <= variables, variables
    assert not variables & {"HTTP_COOKIE", "HTTP_AUTHORIZATION", "HTTP_X_FORWARDED_FOR"}


def test_oversized_headers_and_uri_are_json_4xx_from_nginx(host):
    size = int(
        re.search(
            r"large_client_header_buffers \d+ (\d+);", host.file(SITE_CONF).content_string
        ).group(1)
    )
    marker = uuid.uuid4().hex
    big_header = http(host, f"{API}/v1/model?{marker}", "-H", "X-Big: " + "a" * size)
    assert big_header.status == 400
    assert big_header.json()["error"] == "header_too_large"
    long_uri = http(host, f"{API}/v1/model?{marker}&" + "b" * size)
    assert long_uri.status == 414
    assert long_uri.json()["error"] == "uri_too_long"
    assert not [e for e in access_log(host) if marker in e["request"] and e["upstream_addr"]]


def test_per_address_inflight_limit_counts_uploads_in_progress(host):
    # The lb's own network address is not exempt here; the scenario allows it 2 requests at
    # once (nginx_per_address_inflight_limit): the third of three slow ones is refused.
    script = (
        "sleep 3; rm -rf /tmp/pa && mkdir /tmp/pa && for i in 1 2 3; do"
        f" curl -s --resolve nginx-lb1:443:{lb_address(host)} --cacert {TLS_CERT}"
        f" -o /tmp/pa/$i.b -w '%{{http_code}}\\n' '{API}/v1/model?sleep=2&pa=$i' & done; wait"
    )
    codes = sorted(host.check_output(script).split())
    assert codes == ["200", "200", "429"], codes
    log = host.check_output("tail -n 50 /var/log/nginx/error.log")
    assert 'limiting connections by zone "segserve_inflight_per_address"' in log, log[-2000:]


KEY_SERVER = "/etc/nginx/conf.d/zz-test-client-key.conf"

# Client addresses and the /64 (or IPv4 address) they are counted as.
CLIENT_KEYS = {
    "192.0.2.7": "192.0.2.7",
    "2001:db8:1:2:3:4:5:6": "2001:db8:1:2",
    "2001:db8:1:2::9": "2001:db8:1:2",
    "2001:db8::1": "2001:db8:0:0",
    "2001:db8:0:0:1::": "2001:db8:0:0",
    "2001:db8:0:5::1": "2001:db8:0:5",
    "2001:db8:7::": "2001:db8:7:0",
    "2001::2:3:4:5:6": "2001:0:0:2",
    "2001::": "2001:0:0:0",
    "::1:2:3:4:5:6": "0:0:1:2",
    "::2:3:4:5:6": "0:0:0:2",
    "::1": "0:0:0:0",
}


def test_ipv6_clients_are_counted_per_64(host):
    # A test-only server that believes X-Forwarded-For from loopback shows the key the site's
    # limits count each client address by ($segserve_client, from the site's own map).
    server = (
        "server { listen 127.0.0.1:8099; set_real_ip_from 127.0.0.1;"
        ' real_ip_header X-Forwarded-For; location / { return 200 "$segserve_client\\n"; } }\n'
    )
    payload = base64.b64encode(server.encode()).decode()
    host.check_output(
        f"echo {payload} | base64 -d > {KEY_SERVER} && nginx -t && systemctl reload nginx"
        " && sleep 1"
    )
    try:
        seen = {
            client: host.check_output(
                f"curl -sS -H 'X-Forwarded-For: {client}' http://127.0.0.1:8099/"
            ).strip()
            for client in CLIENT_KEYS
        }
    finally:
        host.check_output(f"rm -f {KEY_SERVER} && nginx -t && systemctl reload nginx")
    assert seen == CLIENT_KEYS


def test_tls_offers_only_forward_secret_suites_and_no_tls_below_1_2(host):
    suites = host.check_output("openssl ciphers -tls1_2 'ALL:COMPLEMENTOFALL:@SECLEVEL=0'").split(
        ":"
    )
    accepted = []
    for suite in suites:
        probe = host.run(
            "echo | timeout 5 openssl s_client -connect 127.0.0.1:443 -tls1_2"
            f" -cipher '{suite}:@SECLEVEL=0' -servername nginx-lb1 2>&1"
        )
        if probe.rc == 0 and "Cipher is " in probe.stdout and "(NONE)" not in probe.stdout:
            accepted.append(suite)
    assert accepted, "no TLS 1.2 suite at all"
    assert all(s.startswith(("ECDHE-", "DHE-")) for s in accepted), accepted
    for old in ("-tls1", "-tls1_1"):
        probe = host.run(
            f"echo | timeout 5 openssl s_client -connect 127.0.0.1:443 {old}"
            " -cipher 'DEFAULT:@SECLEVEL=0' 2>&1"
        )
        assert probe.rc != 0, (old, probe.stdout[-500:])
