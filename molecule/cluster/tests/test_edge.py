"""What nginx on lb1 shows a client: no version, a 413 before uWSGI, TLS with the lab's
certificate, and the per-address rate limit. Each case adds its facts to
tests/results/faults.md."""

from __future__ import annotations

import base64
import json
import re
from collections import Counter

from fleetlib import PHOTOS, fleet_host, log_mark, log_since, sh
from fleetvars import MAX_BODY_BYTES, TLS_CERT, TLS_PORT

testinfra_hosts = ["outsider"]


def test_nginx_hides_version_and_answers_413_before_uwsgi(client, lb, report):
    lb1 = fleet_host("lb1")
    headers = sh(client, f"curl -sS -D - -o /dev/null http://{lb}/healthz")
    server = re.search(r"(?im)^server: (.*)$", headers).group(1).strip()
    assert server == "nginx", server
    error = sh(client, f"curl -sS http://{lb}/no/such/page")
    assert not re.search(r"nginx/\d", error)
    sh(client, f"head -c {MAX_BODY_BYTES + 1} /dev/zero > /tmp/too-large.bin")
    mark = log_mark()
    out = sh(
        client,
        "curl -sS -D /tmp/413.h -o /tmp/413.json -w '%{http_code}' -H 'Content-Type: image/png'"
        f" --data-binary @/tmp/too-large.bin http://{lb}/v1/segment",
    )
    assert out == "413"
    body = json.loads(client.file("/tmp/413.json").content_string)
    assert body["error"] == "too_large"
    request_id = re.search(r"(?im)^x-request-id: (\S+)", client.file("/tmp/413.h").content_string)
    entry = next(e for e in log_since(mark) if e["request_id"] == request_id.group(1))
    assert entry["status"] == 413 and entry["upstream_addr"] == "", entry
    conf = sh(lb1, "nginx -T 2>/dev/null | grep -E 'server_tokens|client_max_body_size'")
    report.add(
        "nginx exposure",
        "nginx hides its version and answers 413 to an oversized body before uWSGI sees it.",
        None,
        [
            f"`Server: {server}`; error pages carry no version (`{' '.join(conf.split())}`)",
            f"{MAX_BODY_BYTES + 1}-byte body: 413 `{body['error']}`, access log upstream_addr empty"
            f" (request {request_id.group(1)[:8]}...)",
        ],
    )


def test_tls_with_the_self_signed_certificate(client, lb, report):
    cert = fleet_host("lb1").file(TLS_CERT).content_string
    payload = base64.b64encode(cert.encode()).decode()
    sh(client, f"echo {payload} | base64 -d > /tmp/lb1.crt")
    verified = sh(
        client,
        f"curl -sS --cacert /tmp/lb1.crt --resolve lb1:{TLS_PORT}:{lb} -o /tmp/tls.png"
        " -w '%{http_code} %{ssl_verify_result}' -H 'Content-Type: image/jpeg'"
        f" -H 'Accept: image/png' --data-binary @{PHOTOS}/coffee.jpg https://lb1:{TLS_PORT}/v1/segment",
    )
    assert verified == "200 0", verified
    old = client.run(
        f"curl -sS --cacert /tmp/lb1.crt --resolve lb1:{TLS_PORT}:{lb} --tls-max 1.1"
        f" https://lb1:{TLS_PORT}/healthz"
    )
    assert old.rc != 0, "TLS 1.1 must be refused"
    unknown = client.run(f"curl -sS --resolve lb1:{TLS_PORT}:{lb} https://lb1:{TLS_PORT}/healthz")
    assert unknown.rc != 0, "a client that does not trust the certificate must fail"
    report.add(
        "TLS",
        "HTTPS with the lab's self-signed certificate.",
        None,
        [
            "POST /v1/segment over HTTPS, certificate verified against lb1's own: 200",
            "TLS 1.1 refused; a client without the certificate refuses the connection",
        ],
    )


def test_rate_limit_still_applies_to_other_clients(client, report):
    # The scenario exempts its own network (host_vars/lb1); lb1's loopback is not exempt.
    codes = sh(
        fleet_host("lb1"),
        "curl -s --no-progress-meter --parallel --parallel-max 4 -o /dev/null -w '%{http_code}\\n'"
        " 'http://127.0.0.1/healthz?n=[1-40]'",
    ).split()
    counts = Counter(codes)
    assert counts["429"] > 0 and counts["200"] >= 20, counts
    report.add(
        "Rate limit",
        "The per-address limit (10 r/s, burst 20) still answers 429 to a non-exempt client.",
        None,
        [f"40 requests, 4 at a time, from lb1's loopback: {dict(counts)}"],
    )


def test_client_retries_through_the_limits(report):
    """segserve-client from a counted address, more images at once than nginx admits from
    one address: without retries some get nginx's 429; with them, every image is segmented."""
    lb1 = fleet_host("lb1")
    client = (
        "env PYTHONPATH=/srv/client python3 -m segserve.client --url http://127.0.0.1"
        f" --concurrency 20 {' '.join([f'{PHOTOS}/coffee.jpg'] * 30)}"
    )
    refused = lb1.run(f"timeout 300 {client} --retries 0")
    assert refused.rc == 1, refused.stderr
    summary = refused.stderr.strip().splitlines()[-1]
    assert "429 rate_limited" in summary, summary
    riding = lb1.run(f"timeout 600 {client} --retries 10")
    assert riding.rc == 0, riding.stderr
    lines = riding.stdout.strip().splitlines()
    retries = sum(int(m.group(1)) for m in map(re.compile(r", (\d+) retries").search, lines) if m)
    assert len(lines) == 30 and retries > 0, (retries, riding.stdout)
    report.add(
        "Client retries",
        "segserve-client honours nginx's 429 and its Retry-After: 30 images, 20 at a time, from"
        " lb1's loopback (rate limit 10 r/s burst 20, 16 in flight per address).",
        None,
        [
            f"--retries 0: {summary.removeprefix('segserve-client: ')}",
            f"--retries 10: all 30 segmented after {retries} retries in all",
        ],
    )
