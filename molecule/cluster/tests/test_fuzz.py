"""Bad input: mutated images and bodies (hypothesis, derandomized) through nginx, from the
controller. No answer is a 5xx and no worker dies; the numbers go to
tests/results/faults.md."""

from __future__ import annotations

import concurrent.futures
import http.client
import io
import time
from collections import Counter

from fleetlib import APP_HOSTS, deaths_since, fleet_host, master_pid, post
from fleetvars import PROJECT
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from imagelib import huge_png
from PIL import Image

testinfra_hosts = ["outsider"]

FUZZ_REQUESTS = 10_000
FUZZ_BATCH = 20
FUZZ_CLIENTS = 4


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
