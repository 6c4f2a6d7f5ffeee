#!/usr/bin/env python3
"""Try to open TCP connections to ports that must stay closed to this host, for as long as a
deploy runs: the fault suite starts it before the scenario's first converge, so that a port
open for even a moment (a service started before its firewall rules are loaded) is caught.

Standard library only. Every `--interval` seconds it tries each ADDRESS:PORT once (IPv4 and
IPv6 alike: `[fd00::1]:8001`) and appends one JSON line per accepted connection to --log;
--state holds the attempt count and the time of the last round. It stops by itself after
--duration seconds, or when --stop-file exists.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import time


def parse(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    return host.strip("[]"), int(port)


def accepted(host: str, port: int, timeout: float) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((host, port))
        except OSError:
            return False
        return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="+", help="ADDRESS:PORT or [ADDRESS]:PORT")
    parser.add_argument("--log", required=True)
    parser.add_argument("--state", required=True)
    parser.add_argument("--stop-file", required=True)
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--duration", type=float, default=3600.0)
    args = parser.parse_args()
    targets = [parse(t) for t in args.targets]
    deadline = time.time() + args.duration
    attempts = 0
    while time.time() < deadline and not os.path.exists(args.stop_file):
        for host, port in targets:
            attempts += 1
            if accepted(host, port, timeout=args.interval):
                with open(args.log, "a") as log:
                    log.write(json.dumps({"time": time.time(), "target": f"{host}:{port}"}) + "\n")
        with open(args.state + ".tmp", "w") as state:
            json.dump({"attempts": attempts, "last": time.time()}, state)
        os.replace(args.state + ".tmp", args.state)
        time.sleep(args.interval)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
