#!/usr/bin/env python3
"""What one hostile client with one host and a socket can send: the fault suite runs it on
the `attacker` host against lb1 while loadgen.py measures a normal client.

Standard library only. Subcommands:
  big-headers HOST   a burst of requests whose headers and URI add up to about 30 KB
  slow HOST          many uploads that trickle their body and many requests that trickle
                     their headers, each reopened when the server closes it, for --duration
Each writes one JSON object (to --out, or stdout) with the status of every answer (or the
error that ended the connection).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import threading
import time
from collections import Counter


def status_of(data: bytes) -> str:
    if not data:
        return "closed"
    line = data.split(b"\r\n", 1)[0].decode(errors="replace")
    parts = line.split()
    return parts[1] if len(parts) > 1 and parts[1].isdigit() else "garbled"


def exchange(host: str, port: int, request: bytes, timeout: float = 30.0) -> tuple[str, bytes]:
    """Send one request whole; return (status or error, the answer's first bytes)."""
    try:
        with socket.create_connection((host, port), timeout) as sock:
            sock.sendall(request)
            data = b""
            while len(data) < 65536:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError as exc:
        return f"error:{type(exc).__name__}", b""
    return status_of(data), data[:2048]


def big_header_requests(host: str) -> list[tuple[str, bytes]]:
    """Requests of about 30 KB of headers and URI, each shaped differently."""

    def request(method: str, target: str, headers: dict, body: bytes = b"") -> bytes:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if body:
            lines += ["Content-Type: image/jpeg", f"Content-Length: {len(body)}"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    filler = {f"X-Filler-{i}": "a" * 5000 for i in range(6)}
    return [
        ("6 x 5000-byte headers, GET /v1/model", request("GET", "/v1/model", filler)),
        (
            "7000-byte query and 4 x 5500-byte headers",
            request(
                "GET",
                "/v1/model?q=" + "b" * 7000,
                {f"X-Filler-{i}": "c" * 5500 for i in range(4)},
            ),
        ),
        (
            "POST /v1/segment with 6 x 5000-byte headers",
            request("POST", "/v1/segment", filler, body=b"\xff\xd8\xff" + b"\0" * 1000),
        ),
        (
            "7900-byte URI and 3 x 7900-byte headers",
            request(
                "GET", "/healthz?" + "d" * 7900, {f"X-Filler-{i}": "e" * 7900 for i in range(3)}
            ),
        ),
        ("one 30000-byte header", request("GET", "/v1/model", {"X-Filler": "f" * 30000})),
        (
            "600 x 50-byte headers",
            request("GET", "/v1/model", {f"X-{i}": "g" * 44 for i in range(600)}),
        ),
    ]


def big_headers(args) -> dict:
    answers = []
    for _ in range(args.rounds):
        for shape, request in big_header_requests(args.host):
            status, head = exchange(args.host, args.port, request)
            answers.append(
                {
                    "shape": shape,
                    "bytes": len(request),
                    "status": status,
                    "head": head[:300].decode(errors="replace"),
                }
            )
    return {"answers": answers, "statuses": dict(Counter(a["status"] for a in answers))}


def slow_one(
    host: str,
    port: int,
    kind: str,
    deadline: float,
    gap: float,
    results: Counter,
    lock: threading.Lock,
) -> None:
    """One connection after another until the deadline: each sends its headers (or its body)
    one byte every `gap` seconds, as slowly as the server lets it, and the next one opens
    `gap` seconds after the server closed the last."""
    while time.time() < deadline:
        if kind == "upload":
            head = (
                f"POST /v1/segment HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/jpeg\r\n"
                "Content-Length: 1000000\r\n\r\n"
            ).encode()
            trickle = b"\xff" * 1000000
        else:
            head = f"POST /v1/segment HTTP/1.1\r\nHost: {host}\r\n".encode()
            trickle = b"X-Slow: " + b"h" * 100000
        outcome = "held to the end"
        try:
            with socket.create_connection((host, port), 10) as sock:
                sock.settimeout(gap)
                sock.sendall(head)
                for byte in trickle:
                    if time.time() >= deadline:
                        break
                    sock.sendall(bytes([byte]))
                    try:
                        data = sock.recv(4096)
                    except TimeoutError:
                        continue
                    outcome = status_of(data)
                    break
        except OSError as exc:
            outcome = f"error:{type(exc).__name__}"
        with lock:
            results[f"{kind}:{outcome}"] += 1
        # Reopen at the attack's own pace: a slow client, not a flood (the rate limit
        # answers a flood).
        time.sleep(gap)


def slow(args) -> dict:
    results: Counter = Counter()
    lock = threading.Lock()
    deadline = time.time() + args.duration
    threads = [
        threading.Thread(
            target=slow_one,
            args=(args.host, args.port, kind, deadline, args.gap, results, lock),
            daemon=True,
        )
        for kind, count in (("upload", args.uploads), ("headers", args.headers))
        for _ in range(count)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(args.duration + 30)
    return {
        "connections": dict(results),
        "uploads": args.uploads,
        "headers": args.headers,
        "duration_s": args.duration,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("big-headers")
    one.add_argument("--rounds", type=int, default=1)
    two = sub.add_parser("slow")
    two.add_argument("--uploads", type=int, default=200)
    two.add_argument("--headers", type=int, default=50)
    two.add_argument("--duration", type=float, default=25.0)
    two.add_argument("--gap", type=float, default=1.0, help="seconds between two bytes")
    for command in (one, two):
        command.add_argument("host")
        command.add_argument("--port", type=int, default=80)
        command.add_argument("--out")
    args = parser.parse_args()
    report = big_headers(args) if args.command == "big-headers" else slow(args)
    if args.out:
        with open(args.out + ".tmp", "w") as handle:
            json.dump(report, handle)
        os.replace(args.out + ".tmp", args.out)
    else:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
