"""Hostile traffic: what one client with one host and a socket can do to the fleet.

Each case runs `attack.py` (this scenario's files/) on the `attacker` host, a client like any
other (not exempt from the per-address limits), while `loadgen.py` on the `outsider` host
measures a normal client; each adds its numbers to tests/results/faults.md. conftest.py
runs this module first, on the fleet as converged.
"""

from __future__ import annotations

import base64
import json
import re
import struct
import time
import zlib
from collections import Counter
from pathlib import Path

import pytest
from fleetlib import (
    APP_HOSTS,
    CONNECT_PROBE,
    DEATH,
    address,
    address6,
    fleet_host,
    master_pid,
    sh,
    wait_ready,
)
from fleetvars import (
    DROPIN_DIR,
    HEALTH_PORT,
    MAX_JSON_BYTES,
    METRICS_PORT,
    MODELS,
    PRIVATE_PORTS,
    STATUS_PATH,
    UNIT,
    model_unit,
)
from imagelib import png_chunk
from loadlib import Load, brief

testinfra_hosts = ["outsider"]

ATTACK_SRC = Path(__file__).resolve().parent.parent / "files" / "attack.py"
ATTACK = "/usr/local/bin/segserve-attack"


@pytest.fixture(scope="module")
def attacker():
    host = fleet_host("attacker")
    payload = base64.b64encode(ATTACK_SRC.read_bytes()).decode()
    sh(host, f"echo {payload} | base64 -d > {ATTACK} && chmod 0755 {ATTACK}")
    return host


def attack(host, command, out):
    sh(host, f"{ATTACK} {command} --out {out}")
    return json.loads(host.file(out).content_string)


def test_large_headers_cannot_take_app_hosts_out(client, attacker, lb, report):
    """One burst of requests with about 30 KB of headers and URI, then normal traffic."""
    burst = attack(attacker, f"big-headers {lb}", "/tmp/attack-headers.json")
    load = Load(client, "after-big-headers", lb, duration=8).result()
    shapes = {a["shape"]: a["status"] for a in burst["answers"]}
    report.add(
        "A1. Large headers",
        "A burst of requests with about 30 KB of headers and URI from the attacker host gets a"
        " 4xx from nginx and marks no app host failed: the normal client's next 8 s lose"
        " nothing.",
        load,
        [f"attack statuses: {burst['statuses']}"]
        + [f"{shape}: {status}" for shape, status in shapes.items()],
    )
    assert all(a["status"].startswith("4") for a in burst["answers"]), burst["answers"]
    assert all('"error"' in a["head"] for a in burst["answers"]), "not a JSON error"
    assert load["failed"] == 0, brief(load)


def test_slow_clients_cannot_starve_others(client, attacker, lb, report):
    """200 trickled uploads and 50 trickled headers from one address, under normal load."""
    baseline = Load(client, "before-slow", lb, duration=10).result()
    out = "/tmp/attack-slow.json"
    sh(
        attacker,
        f"rm -f {out}; setsid nohup {ATTACK} slow {lb} --duration 30 --out {out}"
        " >/tmp/attack-slow.log 2>&1 </dev/null &",
    )
    time.sleep(4)
    load = Load(client, "during-slow", lb, duration=20).result()
    for _ in range(90):
        if attacker.file(out).exists:
            break
        time.sleep(1)
    held = json.loads(attacker.file(out).content_string)
    share = load["succeeded"] / max(1, load["sent"])
    p99, before = load["latency_ok"]["p99_ms"], baseline["latency_ok"]["p99_ms"]
    report.add(
        "A2. Slow clients",
        "One address trickles 200 uploads and 50 request headers (one byte a second, each"
        " reopened when closed) for 30 s: the normal client keeps >= 99% success and its p99"
        " within 2x of its p99 without the attack.",
        load,
        [
            f"without the attack: {brief(baseline)}",
            f"during: success {share:.2%}, p99 {p99:.0f} ms against {before:.0f} ms"
            f" ({p99 / max(before, 1):.2f}x)",
            f"the attacker's connections ended: {held['connections']}",
        ],
    )
    assert share >= 0.99, brief(load)
    assert p99 <= 2 * before, (p99, before)


def one_bit_png(width, height):
    """A black 1-bit PNG: a few KB on the wire for millions of pixels."""
    row = b"\0" + b"\0" * ((width + 7) // 8)
    data = zlib.compress(row * height, 9)
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", data)
        + png_chunk(b"IEND", b"")
    )


def curl_post(host, url, path, accept):
    """POST a file; return (status, body bytes, the first bytes of the body)."""
    out = sh(
        host,
        f"curl -sS -o /tmp/answer.bin -w '%{{http_code}} %{{size_download}}' -H 'Accept: {accept}'"
        f" -H 'Content-Type: image/png' --data-binary @{path} {url}",
    ).split()
    head = sh(host, "head -c 300 /tmp/answer.bin | base64 -w0")
    return int(out[0]), int(out[1]), base64.b64decode(head).decode(errors="replace")


def test_amplifying_images_get_bounded_answers(client, attacker, lb, report):
    facts, answers = [], []
    for width, height in ((6320, 6320), (4500, 4500)):
        image = one_bit_png(width, height)
        path = f"/tmp/bit-{width}.png"
        sh(attacker, f"echo {base64.b64encode(image).decode()} | base64 -d > {path}")
        for accept in ("application/json", "image/png"):
            status, size, head = curl_post(attacker, f"http://{lb}/v1/segment", path, accept)
            answers.append((width, accept, status, size))
            shown = "a PNG mask" if head.startswith("\ufffdPNG") else repr(head[:160])
            facts.append(
                f"{len(image)}-byte 1-bit PNG {width}x{height}, Accept {accept}: {status},"
                f" {size} bytes, {shown}"
            )
            assert size <= MAX_JSON_BYTES, facts[-1]
            assert status in (200, 413, 422), facts[-1]
            if status == 422:
                assert "json_too_large" in head and "image/png" in head, head
    report.add(
        "A3. Small requests, huge answers",
        f"1-bit PNGs of a few KB: every answer is at most {MAX_JSON_BYTES} bytes, or a clear"
        " error that says to ask for PNG or send a smaller image.",
        None,
        facts,
    )


def test_worker_over_its_memory_bound_is_replaced(client, lb, report):
    app = fleet_host("app1")
    props = dict(
        line.split("=", 1)
        for line in sh(app, f"systemctl show -p MemoryMax -p MemoryHigh -p OOMPolicy {UNIT}")
        .strip()
        .splitlines()
    )
    assert props["OOMPolicy"] == "continue", props
    assert props["MemoryMax"] not in ("infinity", ""), props
    # For the case: a bound just above what app1's service holds now, so that one large
    # (but accepted) image pushes its worker over it: decoded to RGB alone it needs 69 MB.
    current = int(sh(app, f"systemctl show -p MemoryCurrent --value {UNIT}").strip())
    dropin = f"{DROPIN_DIR}/50-fault-memory.conf"
    bound = current + 64 * 2**20
    image = one_bit_png(4800, 4800)
    sh(app, f"echo {base64.b64encode(image).decode()} | base64 -d > /tmp/big.png")
    master = master_pid(app)
    since = time.time()
    sh(
        app,
        f"mkdir -p {DROPIN_DIR} && printf '[Service]\\nMemoryMax={bound}\\nMemoryHigh=infinity\\n'"
        f" > {dropin} && systemctl daemon-reload",
    )
    try:
        limit = sh(app, f"systemctl show -p MemoryMax --value {UNIT}").strip()
        load = Load(client, "memory", lb, duration=20)
        time.sleep(3)
        status = app.run(
            f"curl -sS -o /dev/null -w '%{{http_code}}' -H 'Accept: image/png'"
            f" -H 'Content-Type: image/png' --data-binary @/tmp/big.png"
            f" http://127.0.0.1:{HEALTH_PORT}/v1/segment"
        ).stdout.strip()
        result = load.result()
        wait_ready(app)
        journal = sh(app, f"journalctl -u {UNIT} --since @{int(since)} --no-pager -o cat")
        deaths = [line for line in journal.splitlines() if DEATH.search(line)]
        state = sh(app, f"systemctl show -p ActiveState --value {UNIT}").strip()
    finally:
        sh(app, f"rm -f {dropin} && systemctl daemon-reload")
    report.add(
        "A4. A worker over its memory bound",
        "The unit is bounded (MemoryMax from the workers, OOMPolicy=continue); a worker pushed"
        " over it is killed alone, the master respawns it and the host keeps serving.",
        result,
        [
            f"unit as deployed: {props}",
            f"bound for the case: MemoryMax={limit} (the service held {current} bytes)",
            f"23-megapixel 1-bit PNG to app1 directly: {status or 'connection cut'}",
            f"uWSGI journal: {deaths[:3]}",
            f"unit {state}; master {'unchanged' if master_pid(app) == master else 'REPLACED'}",
        ],
    )
    assert deaths and any("signal 9" in line for line in deaths), journal[-2000:]
    assert state == "active" and master_pid(app) == master
    assert result["failed"] == 0, brief(result)


NOT_PUBLIC = [
    ("GET", "/metrics"),
    ("GET", "/metrics/"),
    ("GET", "//metrics"),
    ("GET", "/v1/../metrics"),
    ("GET", "/%6detrics"),
    ("GET", "/"),
    ("GET", "/index.html"),
    ("GET", "/v1/segment/../../metrics"),
    ("POST", "/metrics"),
    ("GET", "/v1/segment"),
    ("DELETE", "/v1/model"),
    ("GET", "/v1/model/"),
    ("GET", "/uwsgi"),
    ("GET", STATUS_PATH),
]


def test_only_the_api_is_public(client, attacker, lb, report):
    facts = []
    for method, path in NOT_PUBLIC:
        code = sh(
            attacker,
            f"curl -sS --path-as-is -o /tmp/np.json -w '%{{http_code}}' -X {method}"
            f" 'http://{lb}{path}'",
        )
        body = attacker.file("/tmp/np.json").content_string
        facts.append(f"{method} {path}: {code}")
        assert code in ("404", "405"), (method, path, code, body[:200])
        assert '"error"' in body, (method, path, body[:200])
    headers = sh(attacker, f"curl -sS -D - -o /tmp/model.json http://{lb}/v1/model")
    model = json.loads(attacker.file("/tmp/model.json").content_string)
    text = json.dumps(model)
    facts.append(f"GET /v1/model: fields {sorted(model)}")
    assert "/opt/" not in text and "torch_version" not in text, model
    assert not re.search(r"(?im)^x-segserve-worker:", headers), headers
    monitor = fleet_host("monitor1")
    for name in APP_HOSTS:
        url = f"http://{address(name)}:{METRICS_PORT}/metrics"
        text = sh(monitor, f"curl -sS -m 10 {url}")
        assert "segserve_" in text, text[:300]
        refused = attacker.run(f"curl -sS -m 5 -o /dev/null {url}")
        assert refused.rc != 0, f"the attacker read {url}"
        facts.append(
            f"{name}: metrics on {address(name)}:{METRICS_PORT} answer monitor1, refuse"
            " the attacker"
        )
    report.add(
        "A5. What is public",
        "Only the API passes nginx: every other path is a JSON 404/405 from the attacker"
        " host; /v1/model shows no paths, versions or pids; each app host's metrics answer the"
        " monitoring host on its private address and nobody else.",
        None,
        facts,
    )


def test_uwsgi_port_closed_from_the_first_deploy(client, attacker, report):
    """The outsider's prober (prepare.yml) has tried the private ports since before the
    first converge, through the idempotence run; then both families are probed once more."""
    state = json.loads(sh(client, "cat /var/lib/port-prober.state"))
    accepted = client.run("cat /var/log/port-prober.log").stdout.strip().splitlines()
    sh(client, "touch /run/port-prober.stop")
    facts = [
        f"prober on outsider since prepare: {state['attempts']} attempts, accepted"
        f" {len(accepted)}: {accepted[:3]}"
    ]
    probe = CONNECT_PROBE
    for name in APP_HOSTS:
        for target in (address(name), address6(name)):
            for port in PRIVATE_PORTS:
                result = attacker.run(f"{probe} {target} {port}")
                assert result.rc != 0, f"attacker reached {target}:{port}"
                facts.append(f"attacker -> [{target}]:{port}: refused")
        for model in MODELS:
            unit = sh(
                fleet_host(name),
                "systemctl show -p IPAddressAllow -p IPAddressDeny -p After"
                f" {model_unit(model['name'])}",
            )
            assert "nftables.service" in unit, unit
            assert re.search(r"IPAddressDeny=.*(0\.0\.0\.0/0|any|::/0)", unit), unit
            assert address("lb1") in unit, unit
        facts.append(f"{name}: " + " ".join(ln for ln in unit.splitlines() if ln.startswith("IP")))
    report.add(
        "A6. The uwsgi port",
        "From a host outside lb, every model's uwsgi and metrics ports refuse IPv4 and IPv6,"
        " from the first deploy on (a prober ran through converge and idempotence); each"
        " model's unit has its own IP allow-list and starts after the firewall.",
        None,
        facts,
    )
    assert state["attempts"] > 100, state
    assert not accepted, accepted


def test_ipv6_clients_are_limited_per_64(attacker, report):
    """Three addresses of one /64 share one rate-limit bucket (burst 20 at 10 r/s)."""
    base = address6("attacker").rsplit(":", 1)[0]
    extra = [f"{base}:a1", f"{base}:a2"]
    for addr in extra:
        attacker.run(f"ip -6 addr add {addr}/64 dev eth0 nodad")
    sources = [address6("attacker"), *extra]
    lb6 = address6("lb1")
    codes = Counter()
    try:
        for source in sources:
            out = sh(
                attacker,
                f"for i in $(seq 15); do curl -sg --interface {source} -o /dev/null"
                f" -w '%{{http_code}}\\n' 'http://[{lb6}]/healthz?n='$i & done; wait",
            )
            codes.update(out.split())
    finally:
        for addr in extra:
            attacker.run(f"ip -6 addr del {addr}/64 dev eth0")
    report.add(
        "A7. IPv6 per /64",
        "Requests from three addresses of one IPv6 /64 share one rate limit: 45 at once get"
        " 429 past the burst of 20, as from one address.",
        None,
        [f"45 requests, 15 from each of {sources}: {dict(codes)}"],
    )
    assert codes["429"] >= 15, codes
