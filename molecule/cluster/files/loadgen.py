#!/usr/bin/env python3
"""Steady load for the fault suite: POST images (or GET) to a URL and count every request.

Standard library only (it runs on the scenario's client host, which has no pip packages).
Closed loop (`--concurrency N`: N clients, each sends its next request when the last one is
answered) or open loop (`--rate R`: R requests a second whatever the answers, as a crowd of
independent clients would send them). Every request opens its own connection, so a
connection closed by the server between two requests cannot pass for a failure.

Writes one JSON object (to stdout, or to --out once finished; SIGTERM stops it early and
still writes it): sent, succeeded (2xx), failed (everything else, a connection error
or a timeout included), statuses, errors, latency (ms: max, p50, p99, over all requests and
per status), the 503/429 answers without a Retry-After header, and a per-second timeline.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import queue
import signal
import sys
import threading
import time
import urllib.parse

STOP = threading.Event()


def percentile(values: list[float], share: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def summary_of(latencies: list[float]) -> dict:
    return {
        "count": len(latencies),
        "max_ms": round(max(latencies, default=0.0) * 1000, 1),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 1),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
    }


class Target:
    def __init__(
        self,
        url: str,
        bodies: list[bytes],
        content_type: str,
        accept: str,
        timeout: float,
        method: str = "POST",
    ):
        parts = urllib.parse.urlsplit(url)
        self.method = method
        self.host = parts.hostname
        self.port = parts.port or 80
        self.path = parts.path or "/"
        self.bodies = itertools.cycle(bodies)
        self.lock = threading.Lock()
        self.headers = {"Content-Type": content_type, "Accept": accept, "Connection": "close"}
        self.timeout = timeout

    def body(self) -> bytes:
        with self.lock:
            return next(self.bodies)

    def send(self) -> tuple[int | None, str | None, bool]:
        """One request: (status or None, error name or None, has Retry-After)."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            if self.method == "GET":
                conn.request("GET", self.path, headers={"Connection": "close"})
            else:
                conn.request("POST", self.path, body=self.body(), headers=self.headers)
            response = conn.getresponse()
            response.read()
            return response.status, None, response.getheader("Retry-After") is not None
        except TimeoutError:
            return None, "timeout", False
        except OSError as exc:
            return None, type(exc).__name__, False
        except http.client.HTTPException as exc:
            return None, type(exc).__name__, False
        finally:
            conn.close()


class Recorder:
    def __init__(self, started: float):
        self.started = started
        self.lock = threading.Lock()
        self.records: list[tuple[float, int | None, str | None, float, bool]] = []

    def add(
        self,
        sent_at: float,
        status: int | None,
        error: str | None,
        latency: float,
        retry_after: bool,
    ):
        with self.lock:
            self.records.append((sent_at - self.started, status, error, latency, retry_after))

    def report(self, elapsed: float) -> dict:
        records = list(self.records)
        ok = [r for r in records if r[1] is not None and 200 <= r[1] < 300]
        statuses: dict[str, int] = {}
        errors: dict[str, int] = {}
        per_status: dict[str, list[float]] = {}
        for _, status, error, latency, _ in records:
            key = str(status) if status is not None else "error"
            statuses[key] = statuses.get(key, 0) + 1
            per_status.setdefault(key, []).append(latency)
            if error:
                errors[error] = errors.get(error, 0) + 1
        timeline = []
        for second in range(int(elapsed) + 1):
            bucket = [r for r in records if second <= r[0] < second + 1]
            if bucket:
                good = [r[3] for r in bucket if r[1] is not None and 200 <= r[1] < 300]
                timeline.append(
                    {
                        "t": second,
                        "sent": len(bucket),
                        "ok": len(good),
                        "p50_ms": round(percentile(good, 0.5) * 1000, 1),
                        "max_ms": round(max(good, default=0.0) * 1000, 1),
                    }
                )
        return {
            "sent": len(records),
            "succeeded": len(ok),
            "failed": len(records) - len(ok),
            "statuses": statuses,
            "errors": errors,
            "latency": summary_of([r[3] for r in records]),
            "latency_ok": summary_of([r[3] for r in ok]),
            "latency_by_status": {k: summary_of(v) for k, v in sorted(per_status.items())},
            "without_retry_after": sum(1 for r in records if r[1] in (429, 503) and not r[4]),
            "duration_s": round(elapsed, 2),
            "succeeded_per_s": round(len(ok) / elapsed, 2) if elapsed else 0.0,
            "timeline": timeline,
        }


def send_and_record(target: Target, recorder: Recorder) -> None:
    sent_at = time.monotonic()
    status, error, retry_after = target.send()
    recorder.add(sent_at, status, error, time.monotonic() - sent_at, retry_after)


def closed_loop(
    target: Target, recorder: Recorder, clients: int, deadline: float, count: int
) -> None:
    budget = itertools.count()
    budget_lock = threading.Lock()

    def client() -> None:
        while time.monotonic() < deadline and not STOP.is_set():
            if count:
                with budget_lock:
                    if next(budget) >= count:
                        return
            send_and_record(target, recorder)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def open_loop(
    target: Target, recorder: Recorder, rate: float, threads: int, deadline: float
) -> int:
    """Sends at `rate` a second from a pool of `threads`; returns the most requests that
    waited for a free thread at once (above 0, the offered rate fell behind for a while)."""
    work: queue.Queue = queue.Queue()
    backlog = 0

    def worker() -> None:
        while True:
            due = work.get()
            if due is None:
                return
            send_and_record(target, recorder)

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for thread in pool:
        thread.start()
    start = time.monotonic()
    for n in itertools.count():
        due = start + n / rate
        if due >= deadline or STOP.is_set():
            break
        pause = due - time.monotonic()
        if pause > 0 and STOP.wait(pause):
            break
        backlog = max(backlog, work.qsize())
        work.put(due)
    for _ in pool:
        work.put(None)
    for thread in pool:
        thread.join()
    return backlog


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="e.g. http://10.0.0.2/v1/segment")
    parser.add_argument("files", nargs="*", help="request bodies (POST), sent in turn")
    parser.add_argument("--method", choices=["POST", "GET"], default="POST")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--concurrency", type=int, default=2, help="closed loop: clients")
    mode.add_argument("--rate", type=float, help="open loop: requests a second")
    parser.add_argument("--threads", type=int, default=64, help="open loop: sending threads")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds")
    parser.add_argument("--count", type=int, default=0, help="closed loop: stop after N requests")
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds per request")
    parser.add_argument("--content-type", default="image/jpeg", help="POST only")
    parser.add_argument("--accept", default="image/png", help="POST only")
    parser.add_argument("--out", help="write the report to this file (atomically) at the end")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: STOP.set())

    bodies = []
    for name in args.files:
        with open(name, "rb") as handle:
            bodies.append(handle.read())
    if args.method == "POST" and not bodies:
        parser.error("POST needs at least one file to send")
    if args.method == "GET" and bodies:
        parser.error("GET sends no body: give no files")
    target = Target(args.url, bodies, args.content_type, args.accept, args.timeout, args.method)
    started = time.monotonic()
    recorder = Recorder(started)
    deadline = started + args.duration
    backlog = 0
    if args.rate:
        backlog = open_loop(target, recorder, args.rate, args.threads, deadline)
    else:
        closed_loop(target, recorder, args.concurrency, deadline, args.count)
    report = recorder.report(time.monotonic() - started)
    report["mode"] = (
        {"rate": args.rate, "threads": args.threads, "max_backlog": backlog}
        if args.rate
        else {"concurrency": args.concurrency}
    )
    if args.out:
        with open(args.out + ".tmp", "w") as handle:
            json.dump(report, handle)
        os.replace(args.out + ".tmp", args.out)
    else:
        json.dump(report, sys.stdout)
        sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
