"""segserve-client's retries, concurrency and summary, against the real uWSGI server behind a
real HTTP front that refuses what a test says first, as nginx's limits do (429/503 with
Retry-After). The fleet's own nginx answers the client in molecule/cluster (test_edge.py)."""

from __future__ import annotations

import itertools
import json
import random
import threading
import time
import urllib.error
import urllib.request
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from test_client import run_client

from segserve import samples
from segserve.retry import RetryPolicy, parse_retry_after

pytestmark = pytest.mark.uwsgi


class Front:
    """Answers the first `refuse` POSTs with `status` (and a Retry-After, if given), then
    forwards everything to the real server; records when each POST came and how many were in
    flight at once."""

    def __init__(self, upstream: str, refuse: int, status: int, retry_after: str | None):
        self.upstream, self.refuse, self.status, self.retry_after = (
            upstream,
            refuse,
            status,
            retry_after,
        )
        self.posts: list[float] = []
        self.inflight = self.most_inflight = 0
        self.lock = threading.Lock()
        front = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self._forward(None)

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with front.lock:
                    front.posts.append(time.monotonic())
                    refused = len(front.posts) <= front.refuse
                    front.inflight += 1
                    front.most_inflight = max(front.most_inflight, front.inflight)
                try:
                    if refused:
                        self._refuse()
                    else:
                        self._forward(body)
                finally:
                    with front.lock:
                        front.inflight -= 1

            def _refuse(self):
                payload = json.dumps({"error": "slow_down", "detail": "refused by the test"})
                self.send_response(front.status)
                if front.retry_after is not None:
                    self.send_header("Retry-After", front.retry_after)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload.encode())

            def _forward(self, body):
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                request = urllib.request.Request(
                    front.upstream + self.path, data=body, headers=headers, method=self.command
                )
                try:
                    with urllib.request.urlopen(request, timeout=60) as answer:
                        status, answer_headers, data = answer.status, answer.headers, answer.read()
                except urllib.error.HTTPError as exc:
                    status, answer_headers, data = exc.code, exc.headers, exc.read()
                self.send_response(status)
                for name in ("Content-Type", "X-Segserve-Size", "X-Segserve-Classes"):
                    if answer_headers.get(name):
                        self.send_header(name, answer_headers[name])
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def front(uwsgi_server):
    made = []

    def make(refuse=0, status=429, retry_after="1"):
        made.append(Front(uwsgi_server.url, refuse, status, retry_after))
        return made[-1]

    yield make
    for each in made:
        each.close()


def test_a_429_is_retried_after_the_wait_the_server_asks(front):
    server = front(refuse=2, status=429, retry_after="1")
    result = run_client(str(samples.path("chelsea.jpg")), "--url", server.url, "--retries", "3")
    assert result.returncode == 0, result.stderr
    assert "chelsea.jpg: 451x300" in result.stdout and ", 2 retries" in result.stdout
    assert len(server.posts) == 3
    gaps = [b - a for a, b in itertools.pairwise(server.posts)]
    # At least the Retry-After; at most it plus the jitter (half of it), and slack for a
    # busy machine.
    assert all(1.0 <= gap < 5 for gap in gaps), gaps


def test_a_503_without_retry_after_backs_off(front):
    server = front(refuse=1, status=503, retry_after=None)
    result = run_client(str(samples.path("chelsea.jpg")), "--url", server.url)
    assert result.returncode == 0, result.stderr
    assert len(server.posts) == 2 and 0.5 <= server.posts[1] - server.posts[0] < 5


def test_retries_are_bounded_and_the_summary_says_what_failed(front):
    server = front(refuse=100, status=503, retry_after="0")
    result = run_client(
        str(samples.path("chelsea.jpg")),
        str(samples.path("coffee.jpg")),
        "--url",
        server.url,
        "--retries",
        "2",
    )
    assert result.returncode == 1
    assert len(server.posts) == 6, "each image: the first try and 2 retries"
    assert "HTTP 503 slow_down: refused by the test (after 2 retries)" in result.stderr
    assert "2 of 2 image(s) failed (503 slow_down: 2); 0 segmented, 4 retries" in result.stderr


def test_a_wait_beyond_max_wait_fails_at_once(front):
    server = front(refuse=100, status=429, retry_after="120")
    started = time.monotonic()
    result = run_client(str(samples.path("chelsea.jpg")), "--url", server.url, "--max-wait", "5")
    assert result.returncode == 1 and len(server.posts) == 1
    assert "retry after 120 s, more than --max-wait 5" in result.stderr
    assert time.monotonic() - started < 60


def test_an_error_that_will_not_change_is_not_retried(front, tmp_path):
    server = front()
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    result = run_client(str(text), "--url", server.url, "--retries", "3")
    assert result.returncode == 1 and len(server.posts) == 1
    assert "1 of 1 image(s) failed (400 not_an_image: 1)" in result.stderr


def test_concurrency_sends_images_at_once(front, tmp_path):
    server = front()
    photos = []
    for n in range(6):
        photo = tmp_path / f"photo{n}.jpg"
        photo.write_bytes(samples.path("coffee.jpg").read_bytes())
        photos.append(str(photo))
    result = run_client(*photos, "--url", server.url, "--concurrency", "3")
    assert result.returncode == 0, result.stderr
    assert sorted(line.split(":")[0] for line in result.stdout.splitlines()) == sorted(photos)
    assert len(server.posts) == 6 and server.most_inflight >= 2, server.most_inflight


def test_parse_retry_after():
    now = 1_800_000_000.0
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(formatdate(now + 7, usegmt=True), now=now) == pytest.approx(7)
    assert parse_retry_after(formatdate(now - 7, usegmt=True), now=now) == 0.0
    # asctime, one of the three HTTP-date forms, names no zone: it is GMT.
    asctime = time.asctime(time.gmtime(now + 7))
    assert parse_retry_after(asctime, now=now) == pytest.approx(7)
    for unreadable in (None, "", "soon", "-1", "1.5", "\u00b2", "9" * 40):
        assert parse_retry_after(unreadable) is None


@pytest.mark.parametrize("bad", ["-1", "nan", "inf", "99999"])
def test_max_wait_must_be_a_sane_number_of_seconds(bad):
    result = run_client(
        str(samples.path("chelsea.jpg")), "--url", "http://127.0.0.1:9", "--max-wait", bad
    )
    assert result.returncode == 2 and "--max-wait" in result.stderr


def test_waits_are_never_sooner_than_asked_and_never_past_the_bound():
    policy = RetryPolicy(retries=5, max_wait=4.0)
    rng = random.Random(0)
    for _ in range(200):
        assert 2.0 <= policy.wait(1, 2.0, rng) <= 3.0
        assert policy.wait(1, 4.0, rng) == 4.0
        assert 0.5 <= policy.wait(1, None, rng) <= 0.75
        assert 2.0 <= policy.wait(3, None, rng) <= 3.0
        assert policy.wait(5, None, rng) == 4.0  # 8 s of backoff, held to max_wait
    assert policy.wait(1, 4.5, rng) is None
    assert policy.wait(6, 1.0, rng) is None
