"""Faults, bad input and a locked-down fleet, each proven on the running cluster.

A host or a worker fails, a deploy rolls, a client sends garbage: no good request is lost,
and nobody reaches what they should not. Each fault case runs `loadgen.py` (this
scenario's files/) on the `outsider` host against lb1 while the fault happens, and every
test adds its numbers to tests/results/faults.md, written when the session ends.

The tests run in file order (each takes the `client` fixture, so pytest keeps them in one
group); the rolling deploy is last because it leaves the fleet on a new app version and
new weights.
"""

from __future__ import annotations

import base64
import concurrent.futures
import http.client
import io
import json
import re
import shutil
import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from faultlib import (
    APP_HOSTS,
    CONNECT_PROBE,
    DROPIN_DIR,
    HEALTH_PORT,
    INVENTORY,
    PHOTOS,
    PROJECT,
    SITE,
    UNIT,
    UWSGI_PORT,
    Load,
    address,
    brief,
    cpu_quota,
    deaths_since,
    epoch,
    fleet_host,
    huge_png,
    log_mark,
    log_since,
    master_pid,
    post,
    retried,
    served_by,
    sh,
    uwsgi_stats,
    wait_ready,
)
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from PIL import Image

testinfra_hosts = ["outsider"]

FUZZ_REQUESTS = 10_000
FUZZ_BATCH = 20
FUZZ_CLIENTS = 4


# --- Security -----------------------------------------------------------------------------


def test_service_runs_as_unprivileged_user_without_login_shell(client, report):
    facts = []
    for name in APP_HOSTS:
        app = fleet_host(name)
        users = set(sh(app, "ps -o user= -C uwsgi").split())
        assert users == {"segserve"}, (name, users)
        passwd = app.user("segserve")
        assert passwd.shell in ("/usr/sbin/nologin", "/bin/false"), passwd.shell
        assert passwd.uid != 0
        shadow = sh(app, "getent shadow segserve").split(":")[1]
        assert shadow.startswith(("!", "*")), "the service user must have no password"
        facts.append(
            f"{name}: every uwsgi process runs as `segserve` (uid {passwd.uid}), shell"
            f" `{passwd.shell}`, password field `{shadow}`"
        )
    report.add(
        "Service user", "The service runs as a non-root user with no login shell.", None, facts
    )


# Documented in roles/uwsgi_app/README.md: the unit's exposure on a CPU host stays at or below.
EXPOSURE_TARGET = 1.5


def test_systemd_exposure_within_target(client, report):
    facts = []
    for name in APP_HOSTS:
        out = sh(fleet_host(name), f"systemd-analyze security {UNIT}.service --no-pager")
        match = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", out)
        assert match, out[-500:]
        level = float(match.group(1))
        facts.append(f"{name}: `systemd-analyze security` exposure {level} {match.group(2)}")
        assert level <= EXPOSURE_TARGET, (name, level)
    report.add(
        "systemd sandbox",
        f"`systemd-analyze security` on the unit: exposure at or below {EXPOSURE_TARGET}.",
        None,
        facts,
    )


def test_uwsgi_port_refuses_every_host_outside_lb(client, report):
    probe = CONNECT_PROBE
    facts = []
    for source, name in (("outsider", client), ("app2", fleet_host("app2"))):
        for target in APP_HOSTS:
            if source == target:
                continue
            result = name.run(f"{probe} {address(target)} {UWSGI_PORT}")
            assert result.rc != 0 and "ConnectionRefusedError" in result.stderr, (source, target)
            facts.append(f"{source} -> {target}:{UWSGI_PORT} refused (TCP reset from nftables)")
    lb1 = fleet_host("lb1")
    for target in APP_HOSTS:
        assert lb1.run(f"{probe} {address(target)} {UWSGI_PORT}").rc == 0
    facts.append(f"lb1 -> app1:{UWSGI_PORT} and app2:{UWSGI_PORT} accepted")
    report.add("uwsgi port", "Only `lb` hosts reach the uwsgi port of an app host.", None, facts)


def test_wrong_weights_sha256_stops_the_service(client, report):
    app = fleet_host("app2")
    env_file = "/run/segserve-fault-sha256.env"
    since = time.time()
    sh(
        app,
        f"mkdir -p {DROPIN_DIR} && echo SEGSERVE_WEIGHTS_SHA256={'0' * 64} > {env_file}"
        f" && printf '[Service]\\nEnvironmentFile={env_file}\\n'"
        f" > {DROPIN_DIR}/50-fault-sha256.conf"
        " && systemctl daemon-reload",
    )
    try:
        app.run(f"timeout 120 systemctl restart {UNIT}")
        refusal = ""
        for _ in range(60):
            journal = sh(app, f"journalctl -u {UNIT} --since @{int(since)} --no-pager -o cat")
            refusal = next((ln for ln in journal.splitlines() if "refusing to start" in ln), "")
            if refusal:
                break
            time.sleep(1)
        assert "refusing to start" in refusal and "sha256" in refusal, journal[-2000:]
        ready = app.run(f"curl -sf http://127.0.0.1:{HEALTH_PORT}/readyz")
        assert ready.rc != 0, "the service answered ready with the wrong weights digest"
        state = sh(app, f"systemctl show -p ActiveState -p SubState -p NRestarts {UNIT}")
    finally:
        sh(
            app,
            f"rm -f {DROPIN_DIR}/50-fault-sha256.conf {env_file} && systemctl daemon-reload"
            f" && systemctl reset-failed {UNIT}; systemctl restart {UNIT}",
        )
    wait_ready(app)
    report.add(
        "Wrong weights digest",
        "A weights file with another sha256 stops the service from starting, with a clear log"
        " line.",
        None,
        [
            f"app2 with SEGSERVE_WEIGHTS_SHA256=000...0: `{refusal.strip()[:240]}`",
            "unit state while refused: " + " ".join(state.split()),
            "readyz never answered; restored and ready again afterwards",
        ],
    )


def test_nginx_hides_version_and_answers_413_before_uwsgi(client, lb, report):
    lb1 = fleet_host("lb1")
    headers = sh(client, f"curl -sS -D - -o /dev/null http://{lb}/healthz")
    server = re.search(r"(?im)^server: (.*)$", headers).group(1).strip()
    assert server == "nginx", server
    error = sh(client, f"curl -sS http://{lb}/no/such/page")
    assert not re.search(r"nginx/\d", error)
    sh(client, "head -c 10485761 /dev/zero > /tmp/too-large.bin")
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
            f"10485761-byte body: 413 `{body['error']}`, access log upstream_addr empty"
            f" (request {request_id.group(1)[:8]}...)",
        ],
    )


def test_tls_with_the_self_signed_certificate(client, lb, report):
    cert = fleet_host("lb1").file("/etc/nginx/tls/segserve.crt").content_string
    payload = base64.b64encode(cert.encode()).decode()
    sh(client, f"echo {payload} | base64 -d > /tmp/lb1.crt")
    verified = sh(
        client,
        f"curl -sS --cacert /tmp/lb1.crt --resolve lb1:443:{lb} -o /tmp/tls.png"
        " -w '%{http_code} %{ssl_verify_result}' -H 'Content-Type: image/jpeg'"
        f" -H 'Accept: image/png' --data-binary @{PHOTOS}/coffee.jpg https://lb1/v1/segment",
    )
    assert verified == "200 0", verified
    old = client.run(
        f"curl -sS --cacert /tmp/lb1.crt --resolve lb1:443:{lb} --tls-max 1.1 https://lb1/healthz"
    )
    assert old.rc != 0, "TLS 1.1 must be refused"
    unknown = client.run(f"curl -sS --resolve lb1:443:{lb} https://lb1/healthz")
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


# --- Faults under load --------------------------------------------------------------------


def test_worker_sigkill_is_respawned_without_failures(client, lb, report, capacity):
    app = fleet_host("app1")
    mark, since = log_mark(), time.time()
    load = Load(client, "sigkill", lb, duration=25)
    time.sleep(4)
    killed = []
    for _ in range(3):
        busy = []
        for _ in range(50):
            busy = [w["pid"] for w in uwsgi_stats(app)["workers"] if w["status"] == "busy"]
            if busy:
                break
            time.sleep(0.1)
        assert busy, "app1's worker was never busy under load"
        sh(app, f"kill -KILL {busy[0]}")
        killed.append((busy[0], time.time()))
        wait_ready(app)
        if retried(log_since(mark)):
            break
        time.sleep(2)
    respawned = time.time() - killed[-1][1]
    result = load.result()
    entries = log_since(mark)
    journal = sh(app, f"journalctl -u {UNIT} --since @{int(since)} --no-pager -o cat")
    report.add(
        "1. SIGKILL of a uWSGI worker",
        "The master respawns the worker; its request in flight is retried on the other host;"
        " 0 failed.",
        result,
        [
            f"killed worker pid(s) {[pid for pid, _ in killed]} on app1 while busy; ready again"
            f" {respawned:.1f} s after the last kill",
            "requests retried on the other host (upstream_addr lists two):"
            f" {len(retried(entries))}",
            f"respawns logged: {journal.count('Respawned uWSGI worker')}",
        ],
    )
    for pid, _ in killed:
        assert f"(pid: {pid}) died, killed by signal 9" in journal
    assert retried(entries), "no request was retried: the kill found no request in flight"
    assert result["failed"] == 0, brief(result)


def test_stopped_app_host_loses_nothing_and_rejoins(client, lb, report, capacity):
    app = fleet_host("app2")
    mark = log_mark()
    load = Load(client, "stop", lb, duration=30)
    time.sleep(4)
    sh(app, f"systemctl stop {UNIT}")
    stopped = time.time()
    time.sleep(6)
    sh(app, f"systemctl start {UNIT}")
    wait_ready(app)
    ready = time.time()
    result = load.result()
    entries = log_since(mark)
    back = served_by(entries, "app2", after=ready)
    while not back and time.time() < ready + 60:
        Load(client, "stop-rejoin", lb, duration=5).result()
        back = served_by(log_since(mark), "app2", after=ready)
    report.add(
        "2. Service stopped on one app host",
        "nginx sends the requests to the other host: 0 failed; started again, the host is back"
        " in rotation.",
        result,
        [
            f"app2 stopped for {ready - stopped:.0f} s (stop, 6 s, start, until /readyz)",
            f"requests retried on app1 after a refused or cut connection: {len(retried(entries))}",
            "app2 answered again "
            + (f"{epoch(back[0]) - ready:.1f} s after it was ready" if back else "NEVER"),
        ],
    )
    assert result["failed"] == 0, brief(result)
    assert back, "app2 never served again after its restart"


POISON_SIDE = 4800


def poison_image(width=POISON_SIDE, height=POISON_SIDE, run=8):
    """A valid BMP (23 megapixels, under the fleet's pixel limit, in 6 MB, run-length encoded
    in runs of 8 pixels) whose decoding, full-size mask and PNG encoding take about a second
    of one core: several times a harakiri of 3 s at the case's CPU quota."""
    palette = b"".join(struct.pack("<BBBB", i, i, i, 0) for i in range(256))
    row = bytearray()
    for i, start in enumerate(range(0, width, run)):
        row += bytes((min(run, width - start), i % 256))
    data = bytes(row + b"\0\0") * height + b"\0\1"
    offset = 14 + 40 + len(palette)
    head = struct.pack("<2sIHHI", b"BM", offset + len(data), 0, 0, offset)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(data), 2835, 2835, 256, 0)
    return head + info + palette + data


HARAKIRI_S = 3
# nginx's retry window for the case, one second below the harakiri as the fleet sets it.
RETRY_WINDOW_S = HARAKIRI_S - 1
# CPU quota of each app host during the case (CFS, of one core): the poison request then
# needs several times the harakiri, beyond uWSGI's one-second resolution and the second of
# grace it gives a worker before SIGKILL, while normal requests still take well under 1 s.
CASE_CPU_QUOTA = 0.3


def test_request_outliving_harakiri_gets_json_5xx(client, lb, report, capacity):
    lb1 = fleet_host("lb1")
    dropin = f"{DROPIN_DIR}/50-fault-harakiri.conf"
    exec_start = sh(fleet_host("app1"), f"systemctl show -p ExecStart --value {UNIT}")
    argv = re.search(r"argv\[\]=([^;]+);", exec_start).group(1).strip()
    # For this case only: harakiri lowered on both app hosts (one at a time, so one always
    # serves) and nginx's retry window with it, as the fleet ties them (validate.yml).
    try:
        for name in APP_HOSTS:
            app = fleet_host(name)
            sh(
                app,
                f"mkdir -p {DROPIN_DIR} && printf '[Service]\\nExecStart=\\nExecStart={argv}"
                f" --harakiri {HARAKIRI_S}\\n' > {dropin} && systemctl daemon-reload"
                f" && systemctl restart {UNIT}",
            )
            wait_ready(app)
        sh(
            lb1,
            f"cp {SITE} /root/segserve.conf.before-harakiri-case && sed -i -E"
            " 's/uwsgi_next_upstream_timeout [0-9]+s;/uwsgi_next_upstream_timeout"
            f" {RETRY_WINDOW_S}s;/' {SITE} && nginx -t && systemctl reload nginx",
        )
        time.sleep(1)
        poison = poison_image()
        cpu_quota(CASE_CPU_QUOTA)
        since = time.time()
        load = Load(client, "harakiri", lb, duration=25)
        time.sleep(5)
        status, headers, body, seconds = post(
            lb, "/v1/segment", poison, {"Content-Type": "image/bmp", "Accept": "image/png"}
        )
        result = load.result()
        cpu_quota(None)
        kills = {name: deaths_since(fleet_host(name), since) for name in APP_HOSTS}
        for name in APP_HOSTS:
            wait_ready(fleet_host(name))
    finally:
        cpu_quota(None)
        for name in APP_HOSTS:
            app = fleet_host(name)
            sh(app, f"rm -f {dropin} && systemctl daemon-reload && systemctl restart {UNIT}")
            wait_ready(app)
        sh(
            lb1,
            f"cp /root/segserve.conf.before-harakiri-case {SITE} && nginx -t"
            " && systemctl reload nginx && rm /root/segserve.conf.before-harakiri-case",
        )
    harakiri_pids = {
        re.search(r"\(pid: (\d+)", line).group(1)
        for lines in kills.values()
        for line in lines
        if "HARAKIRI ON" in line
    }
    report.add(
        "4. A request that outlives harakiri",
        f"harakiri {HARAKIRI_S} s and retry window {RETRY_WINDOW_S} s for the case, app hosts at"
        f" {CASE_CPU_QUOTA:.0%} of a core: the worker is killed and respawned, the client gets a"
        " JSON 5xx in time, other requests are unaffected.",
        result,
        [
            f"poison request ({len(poison)}-byte BMP, {POISON_SIDE}x{POISON_SIDE}, PNG mask):"
            f" {status}"
            f" {body[:200].decode(errors='replace').strip()} in {seconds:.1f} s,"
            f" Retry-After {headers.get('Retry-After')}",
            f"workers killed by harakiri: {len(harakiri_pids)} (the poison is not retried on the"
            " other host: nginx retries only within its retry window)",
        ],
    )
    assert status in (502, 504), (status, body[:200])
    assert json.loads(body)["error"] in ("bad_gateway", "upstream_timeout")
    assert RETRY_WINDOW_S <= seconds < HARAKIRI_S + 6, seconds
    assert len(harakiri_pids) == 1, kills
    assert result["failed"] == 0, brief(result)


def test_overload_gets_fast_503_and_recovers(client, lb, report, capacity):
    before = Load(client, "overload-before", lb, duration=8).result()
    masters = {name: master_pid(fleet_host(name)) for name in APP_HOSTS}
    since = time.time()
    rate = round(4 * capacity, 1)
    burst = Load(client, "overload", lb, duration=15, rate=rate, threads=96).result()
    after = Load(client, "overload-after", lb, duration=8).result()
    rejected = burst["latency_by_status"].get("503", {"count": 0, "max_ms": 0.0, "p99_ms": 0.0})
    served = burst["latency_by_status"].get("200", {"count": 0, "max_ms": 0.0, "p99_ms": 0.0})
    report.add(
        "5. Overload at 4x capacity",
        "A bounded queue (nginx_inflight_limit 8): the excess gets a fast 503 with Retry-After,"
        " not a timeout; afterwards latency is back to normal with no restart.",
        burst,
        [
            f"offered {rate} requests/s for 15 s ({burst['sent']} sent) against a capacity of"
            f" {capacity:.1f}/s; client thread backlog {burst['mode']['max_backlog']}",
            f"served 200: {served['count']} ({burst['succeeded_per_s']:.1f}/s), max"
            f" {served['max_ms']:.0f} ms, p99 {served['p99_ms']:.0f} ms",
            f"rejected 503: {rejected['count']}, max {rejected['max_ms']:.0f} ms,"
            f" p99 {rejected['p99_ms']:.0f} ms; without Retry-After:"
            f" {burst['without_retry_after']}; connection errors or timeouts:"
            f" {burst['statuses'].get('error', 0)}",
            f"before the burst: p50 {before['latency_ok']['p50_ms']:.0f} ms; after:"
            f" p50 {after['latency_ok']['p50_ms']:.0f} ms ({brief(after)})",
            "uWSGI masters unchanged (no restart), no worker died",
        ],
    )
    assert set(burst["statuses"]) <= {"200", "503"}, burst["statuses"]
    assert rejected["count"] > 0, "4x capacity was never rejected: no bounded queue"
    assert burst["without_retry_after"] == 0
    assert rejected["p99_ms"] < 1000, rejected
    assert served["max_ms"] < 10_000, served
    assert before["failed"] == 0 and after["failed"] == 0, (brief(before), brief(after))
    assert after["latency_ok"]["p50_ms"] <= 2 * before["latency_ok"]["p50_ms"] + 100
    assert {name: master_pid(fleet_host(name)) for name in APP_HOSTS} == masters
    assert not any(deaths_since(fleet_host(name), since) for name in APP_HOSTS)


# --- Bad input ----------------------------------------------------------------------------


def seed_bodies():
    """Small real images to mutate: JPEG and PNG encodings of the sample photos."""
    seeds = []
    for path in sorted((PROJECT / "app" / "src" / "segserve" / "samples").glob("*.jpg")):
        image = Image.open(path).convert("RGB")
        for size, fmt in (((160, 120), "JPEG"), ((96, 64), "PNG")):
            buffer = io.BytesIO()
            image.resize(size).save(buffer, fmt)
            seeds.append((fmt.lower(), buffer.getvalue()))
    return seeds


CONTENT_TYPES = [
    "image/jpeg",
    "image/png",
    "image/webp",
    "application/octet-stream",
    "image/x-nonsense",
    "text/plain",
    "application/json",
    "multipart/form-data",
    "multipart/form-data; boundary=",
    "",
]


class FuzzRequest(tuple):
    """(path, body, headers, mutation), shown short in hypothesis' reports."""

    def __repr__(self):
        path, body, headers, op = self
        return f"FuzzRequest({path} {op} {len(body)} bytes {headers} {body[:32]!r}...)"


@st.composite
def fuzz_request(draw, seeds):
    kind, body = seeds[draw(st.integers(0, len(seeds) - 1))]
    data = bytearray(body)
    op = draw(st.sampled_from(["flip", "truncate", "splice", "header", "dims", "garbage", "empty"]))
    if op == "flip":
        for position in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=64)):
            data[position] ^= 1 << draw(st.integers(0, 7))
    elif op == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif op == "splice":
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(min_size=1, max_size=256))
    elif op == "header":
        at = draw(st.integers(0, min(63, len(data) - 1)))
        patch = draw(st.binary(min_size=1, max_size=16))
        data[at : at + len(patch)] = patch
    elif op == "dims":
        side = draw(st.sampled_from([0, 1, 65535, 100_000, 2**31 - 1]))
        data = bytearray(huge_png(side, draw(st.sampled_from([1, 7000, 100_000]))))
    elif op == "garbage":
        data = bytearray(draw(st.binary(min_size=1, max_size=4096)))
    else:
        data = bytearray()
    envelope = draw(st.sampled_from(["raw", "raw", "multipart"]))
    headers = {
        "Accept": draw(st.sampled_from(["application/json", "image/png", "*/*", "text/html"]))
    }
    if envelope == "multipart":
        boundary = "fuzz" + draw(st.text("abcdef0123456789", min_size=1, max_size=12))
        field = draw(st.sampled_from(["image", "image", "file", ""]))
        filename = draw(st.sampled_from(["a.jpg", "", "../../etc/passwd", "x" * 300]))
        part = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"'
            f"\r\nContent-Type: image/{kind}\r\n\r\n"
        ).encode()
        closing = draw(st.sampled_from([f"\r\n--{boundary}--\r\n", "", f"\r\n--{boundary}"]))
        data = bytearray(part + bytes(data) + closing.encode())
        declared = draw(st.sampled_from([boundary, boundary + "x", ""]))
        headers["Content-Type"] = f"multipart/form-data; boundary={declared}"
    else:
        content_type = draw(st.sampled_from(CONTENT_TYPES))
        if content_type:
            headers["Content-Type"] = content_type
    path = draw(st.sampled_from(["/v1/segment", "/v1/segment", "/v1/segment", "/infer"]))
    return FuzzRequest((path, bytes(data), headers, op))


def test_fuzz_through_nginx_no_5xx_no_worker_death(client, lb, report, capacity):
    seeds = seed_bodies()
    statuses: Counter = Counter()
    ops: Counter = Counter()
    since = time.time()
    masters = {name: master_pid(fleet_host(name)) for name in APP_HOSTS}
    # 4 at a time: below nginx_inflight_limit (8) even while nginx still holds the slots of
    # requests it has just answered.
    pool = concurrent.futures.ThreadPoolExecutor(FUZZ_CLIENTS)

    def send(request):
        path, body, headers, _ = request
        try:
            return post(lb, path, body, headers)[0]
        except (OSError, http.client.HTTPException) as exc:
            return f"error:{type(exc).__name__}"

    @settings(
        max_examples=FUZZ_REQUESTS // FUZZ_BATCH,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(fuzz_request(seeds), min_size=FUZZ_BATCH, max_size=FUZZ_BATCH))
    def batch(requests):
        answers = list(pool.map(send, requests))
        statuses.update(str(a) for a in answers)
        ops.update(r[3] for r in requests)
        bad = [
            (r[0], r[2], r[3], a)
            for r, a in zip(requests, answers, strict=True)
            if not isinstance(a, int) or a >= 500
        ]
        assert not bad, bad

    started = time.monotonic()
    try:
        batch()
    finally:
        pool.shutdown()
    seconds = time.monotonic() - started
    deaths = {name: deaths_since(fleet_host(name), since) for name in APP_HOSTS}
    sent = sum(statuses.values())
    report.add(
        "Fuzz",
        f"{sent} mutated images and bodies (hypothesis, derandomized) through nginx: 0 answers"
        " 5xx, 0 worker deaths.",
        None,
        [
            f"sent {sent} in {seconds:.0f} s from the controller, {FUZZ_CLIENTS} at a time;"
            f" statuses {dict(sorted(statuses.items()))}",
            f"mutations: {dict(sorted(ops.items()))}",
            "worker deaths (uWSGI journal: DAMN, HARAKIRI, killed by signal, segfault):"
            f" {sum(len(v) for v in deaths.values())}; uWSGI masters unchanged",
        ],
    )
    assert sent >= FUZZ_REQUESTS
    assert not any(key.startswith(("5", "error")) for key in statuses), statuses
    assert not any(deaths.values()), deaths
    assert {name: master_pid(fleet_host(name)) for name in APP_HOSTS} == masters


# --- Host restart and rolling deploy -------------------------------------------------------


def test_restarted_app_host_comes_back_by_itself(client, lb, report, capacity):
    app = fleet_host("app2")
    before = address("app2")
    mark = log_mark()
    load = Load(client, "restart", lb, duration=40)
    time.sleep(4)
    began = time.time()
    restart = subprocess.run(["docker", "restart", "app2"], capture_output=True, text=True)
    assert restart.returncode == 0, restart.stderr
    restarted = time.time()
    wait_ready(app)
    ready = time.time()
    result = load.result()
    back = served_by(log_since(mark), "app2", after=ready)
    while not back and time.time() < ready + 60:
        Load(client, "restart-rejoin", lb, duration=5).result()
        back = served_by(log_since(mark), "app2", after=ready)
    after = sh(app, "ip -4 -o addr show eth0").split()[3].split("/")[0]
    enabled = sh(app, f"systemctl is-enabled {UNIT}").strip()
    firewall = app.run("nft list table inet segserve")
    report.add(
        "6. App host restarted",
        "`docker restart` of app2 under load: the unit comes back by itself and rejoins.",
        result,
        [
            f"`docker restart` took {restarted - began:.0f} s; ready {ready - restarted:.0f} s"
            f" after it returned; unit {enabled},"
            " firewall table loaded at boot",
            "app2 answered again "
            + (f"{epoch(back[0]) - ready:.1f} s after it was ready" if back else "NEVER"),
        ],
    )
    assert after == before, (before, after)
    assert enabled == "enabled"
    assert firewall.rc == 0 and str(UWSGI_PORT) in firewall.stdout
    assert back, "app2 never served again after the restart"
    assert result["failed"] == 0, brief(result)


def test_redeploy_drains_only_the_host_that_owes_a_restart(client):
    """A deploy that changes nothing drains and restarts nothing; a restart owed by an
    earlier run that failed after its changes (its marker in /run) is still made. It runs
    before the rolling deploy below, on the fleet as converged (asking for `client`, like
    the tests around it, keeps pytest from moving it to the end)."""
    app1, app2 = fleet_host("app1"), fleet_host("app2")
    before = {name: master_pid(fleet_host(name)) for name in APP_HOSTS}
    sh(app1, f"touch /run/{UNIT}-restart-pending")
    deploy = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i",
            INVENTORY,
            str(PROJECT / "playbooks" / "app.yml"),
        ],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-2000:]
    # Molecule forces Ansible's colours on (ANSIBLE_FORCE_COLOR): read the plain text.
    out = re.sub(r"\x1b\[[0-9;]*m", "", deploy.stdout)
    drained = re.findall(r"included: \S+/playbooks/tasks/drain\.yml for (\w+)", out)
    changed = re.findall(r"TASK \[([^\]]+)\][^\n]*\n(?:[^\n]*\n)?changed: \[(\w+)", out)
    assert drained == ["app1"], (drained, changed)
    assert master_pid(app1) != before["app1"], "app1 owed a restart and kept its master"
    assert master_pid(app2) == before["app2"], "app2 had nothing new and was restarted"
    assert not app1.file(f"/run/{UNIT}-restart-pending").exists
    assert re.search(r"app2\s+: ok=\d+\s+changed=0\s", out), out[-1500:]
    wait_ready(app1)


def test_rolling_deploy_loses_nothing(client, lb, report, capacity, tmp_path):
    stamp = int(time.time())
    version = f"0.1.1.dev{stamp}"
    app_copy = tmp_path / "app"
    shutil.copytree(
        PROJECT / "app",
        app_copy,
        ignore=shutil.ignore_patterns("tests", "*.egg-info", "__pycache__", ".*cache"),
    )
    pyproject = app_copy / "pyproject.toml"
    pyproject.write_text(
        re.sub(r'(?m)^version = ".*"$', f'version = "{version}"', pyproject.read_text())
    )
    weights = tmp_path / "weights.pth"
    sha256 = subprocess.run(
        [
            str(Path(sys.executable).parent / "segserve-weights"),
            "init",
            "--seed",
            str(stamp % 100_000 + 1),
            str(weights),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    command = [
        str(Path(sys.executable).parent / "ansible-playbook"),
        "-i",
        INVENTORY,
        str(PROJECT / "playbooks" / "app.yml"),
        "-e",
        f"uwsgi_app_src={app_copy}",
        "-e",
        f"uwsgi_app_weights_src={weights}",
        "-e",
        f"uwsgi_app_weights_sha256={sha256}",
    ]
    mark = log_mark()
    load = Load(client, "rolling", lb, duration=900)
    time.sleep(3)
    started = time.time()
    deploy = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, timeout=600)
    seconds = time.time() - started
    time.sleep(3)
    result = load.result(stop=True)
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-2000:]
    entries = log_since(mark)
    hosts = {}
    for name in APP_HOSTS:
        app = fleet_host(name)
        model = json.loads(sh(app, f"curl -sf http://127.0.0.1:{HEALTH_PORT}/v1/model"))
        installed = sh(
            app,
            "/opt/segserve/venv/bin/python -c"
            " 'import importlib.metadata as m; print(m.version(\"segserve\"))'",
        ).strip()
        hosts[name] = (installed, model["weights_sha256"])
    report.add(
        "3. Rolling deploy",
        "`playbooks/app.yml` with a new app version and new weights, one host at a time, each"
        " drained from lb1 and put back after /readyz: 0 failed, every host on the new version.",
        result,
        [
            f"deploy of {version} with weights {sha256[:12]}... took {seconds:.0f} s",
            "after: "
            + ", ".join(f"{n} runs {v} with weights {s[:12]}..." for n, (v, s) in hosts.items()),
            f"requests cut and retried on the other host: {len(retried(entries))} (the drain"
            " waits for the host's requests in flight)",
            f"served by app1 / app2 during the load: {len(served_by(entries, 'app1'))} /"
            f" {len(served_by(entries, 'app2'))}",
        ],
    )
    assert result["failed"] == 0, brief(result)
    assert all(h == (version, sha256) for h in hosts.values()), hosts
