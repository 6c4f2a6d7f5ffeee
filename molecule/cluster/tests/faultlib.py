"""The fault suite's library: the fleet's hosts, the load generator, the access log and the
report. The test modules (test_attacks.py, test_faults.py) and conftest.py share it."""

from __future__ import annotations

import datetime
import functools
import http.client
import json
import os
import platform
import re
import struct
import subprocess
import time
import zlib
from pathlib import Path

import testinfra
import yaml

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
PROJECT = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
REPORT = PROJECT / "tests" / "results" / "faults.md"
LOADGEN_SRC = Path(__file__).resolve().parent.parent / "files" / "loadgen.py"
LOADGEN = "/usr/local/bin/segserve-loadgen"
PHOTOS = "/srv/photos"
APP_HOSTS = ("app1", "app2")
# Ports and names as the roles default them (the lab's group_vars keep them).
UWSGI_DEFAULTS = yaml.safe_load((PROJECT / "roles/uwsgi_app/defaults/main.yml").read_text())
NGINX_DEFAULTS = yaml.safe_load((PROJECT / "roles/nginx/defaults/main.yml").read_text())
UWSGI_PORT = UWSGI_DEFAULTS["uwsgi_app_port"]
HEALTH_PORT = UWSGI_DEFAULTS["uwsgi_app_health_port"]
STATS_PORT = UWSGI_DEFAULTS["uwsgi_app_stats_port"]
ACCESS_LOG = "/var/log/nginx/segserve_access.log"
SITE = "/etc/nginx/conf.d/segserve.conf"
UNIT = "segserve"
DROPIN_DIR = f"/run/systemd/system/{UNIT}.service.d"
# A TCP connection from a host to ADDRESS PORT (the arguments that follow): exit status 0
# when it opens, a traceback naming the error (refused, timed out) when not.
CONNECT_PROBE = (
    'python3 -c "import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 5)"'
)
# uWSGI's own words for a worker that died rather than finished (a recycle says neither).
DEATH = re.compile(r"DAMN !|HARAKIRI ON WORKER|killed by signal|[Ss]egmentation fault")


@functools.cache
def fleet_host(name):
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}")


@functools.cache
def address(name):
    """The host's IPv4 address on the scenario's network."""
    return next(a for a in fleet_host(name).interface("eth0").addresses if ":" not in a)


@functools.cache
def address6(name):
    """The host's global IPv6 address on the scenario's network (not its link-local one)."""
    return next(
        a
        for a in fleet_host(name).interface("eth0").addresses
        if ":" in a and not a.lower().startswith("fe80")
    )


def sh(host, command, timeout=None):
    """Run a shell command on a host; return its stdout (raises on a non-zero status)."""
    return host.check_output(command if timeout is None else f"timeout {timeout} {command}")


def wait_ready(app, timeout=240):
    result = app.run(
        f"for i in $(seq {timeout}); do curl -sf http://127.0.0.1:{HEALTH_PORT}/readyz >/dev/null"
        " && exit 0; sleep 1; done; exit 1"
    )
    assert result.rc == 0, f"{app.backend.host} not ready after {timeout} s"


def uwsgi_stats(app):
    return json.loads(sh(app, f"curl -sf http://127.0.0.1:{STATS_PORT}/"))


def master_pid(app):
    return int(sh(app, f"systemctl show -p MainPID --value {UNIT}").strip())


def deaths_since(app, since):
    """uWSGI journal lines since `since` (epoch) that tell of a worker that died."""
    journal = sh(app, f"journalctl -u {UNIT} --since @{int(since)} --no-pager -o cat")
    return [line for line in journal.splitlines() if DEATH.search(line)]


def log_mark():
    return int(sh(fleet_host("lb1"), f"wc -l < {ACCESS_LOG}").strip())


def log_since(mark):
    text = sh(fleet_host("lb1"), f"tail -n +{mark + 1} {ACCESS_LOG}")
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def epoch(entry):
    return datetime.datetime.fromisoformat(entry["time"]).timestamp()


def served_by(entries, name, after=0.0):
    """Requests answered 200 by app host `name` (its address is the last one tried)."""
    target = f"{address(name)}:"
    return [
        e
        for e in entries
        if e["status"] == 200
        and e["upstream_addr"].split(", ")[-1].startswith(target)
        and epoch(e) >= after
    ]


def retried(entries):
    """Requests that nginx sent to a second app host and that then succeeded."""
    return [e for e in entries if ", " in e["upstream_addr"] and e["status"] == 200]


class Load:
    """loadgen.py running in the background on the client host."""

    def __init__(self, client, name, lb, *, duration, concurrency=2, rate=None, threads=64):
        self.client = client
        self.out = f"/tmp/load-{name}.json"
        self.duration = duration
        mode = f"--rate {rate} --threads {threads}" if rate else f"--concurrency {concurrency}"
        self.pid = int(
            sh(
                client,
                f"rm -f {self.out}; setsid nohup python3 {LOADGEN} http://{lb}/v1/segment"
                f" {PHOTOS}/*.jpg {mode} --duration {duration} --timeout 90 --out {self.out}"
                f" >/tmp/load-{name}.log 2>&1 </dev/null & echo $!",
            ).strip()
        )
        self.started = time.time()

    def result(self, stop=False):
        if stop:
            self.client.run(f"kill -TERM {self.pid}")
        deadline = time.time() + (0 if stop else self.duration) + 120
        while time.time() < deadline:
            if self.client.file(self.out).exists:
                return json.loads(self.client.file(self.out).content_string)
            time.sleep(1)
        raise AssertionError(f"the load generator wrote no report ({self.out})")


def brief(result):
    return (
        f"sent {result['sent']}, succeeded {result['succeeded']}, failed {result['failed']}, "
        f"statuses {result['statuses']}, latency max {result['latency']['max_ms']:.0f} ms "
        f"(p50 {result['latency']['p50_ms']:.0f}, p99 {result['latency']['p99_ms']:.0f})"
    )


class Report:
    """The suite's numbers, written to tests/results/faults.md at the end of the session."""

    def __init__(self):
        self.started = time.time()
        self.rows = []
        self.details = []

    def add(self, case, promise, result=None, facts=()):
        load = result or {}
        self.rows.append(
            (
                case,
                promise,
                load.get("sent", ""),
                load.get("succeeded", ""),
                load.get("failed", ""),
                f"{load['latency']['max_ms']:.0f}" if load else "",
            )
        )
        lines = [f"### {case}", "", promise, ""]
        if load:
            lines.append(f"- load: {brief(load)}")
        lines += [f"- {fact}" for fact in facts]
        self.details.append("\n".join(lines) + "\n")

    def write(self, failed):
        cpu = next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor() or "unknown",
        )
        minutes = (time.time() - self.started) / 60
        outcome = "every test passed" if not failed else f"{failed} test(s) FAILED"
        head = [
            "# Fault suite: results",
            "",
            "Written by `molecule/cluster/tests/test_faults.py` at the end of its run; commit it",
            "as it comes out.",
            "",
            f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
            f"- machine: {os.cpu_count()} cores (nproc {len(os.sched_getaffinity(0))}), {cpu};"
            " the lab's containers share them (app hosts pinned to one core each)",
            "- command: `molecule test -s cluster` (or `molecule verify -s cluster` on a"
            " converged cluster)",
            f"- fault suite run time: {minutes:.1f} min; outcome: {outcome}",
            "- load: `loadgen.py` on the `outsider` host, POSTing the three sample photos"
            " (PNG masks back) to lb1; latencies in ms, measured at the client",
            "",
            "| case | promise | sent | succeeded | failed | max latency (ms) |",
            "| --- | --- | ---: | ---: | ---: | ---: |",
        ]
        head += [f"| {' | '.join(str(c) for c in row)} |" for row in self.rows]
        REPORT.parent.mkdir(parents=True, exist_ok=True)
        REPORT.write_text("\n".join(head) + "\n\n## Details\n\n" + "\n".join(self.details))


def post(lb, path, body, headers, timeout=60.0):
    """One request from the controller: (status, headers, body, seconds)."""
    conn = http.client.HTTPConnection(lb, 80, timeout=timeout)
    started = time.monotonic()
    try:
        conn.request("POST", path, body=body, headers={"Connection": "close", **headers})
        response = conn.getresponse()
        return (
            response.status,
            dict(response.getheaders()),
            response.read(),
            time.monotonic() - started,
        )
    finally:
        conn.close()


def cpu_quota(share):
    """Set (or, with None, remove) a CFS quota on the app containers."""
    quota = str(int(share * 100_000)) if share else "-1"
    for name in APP_HOSTS:
        subprocess.run(
            ["docker", "update", "--cpu-period", "100000", "--cpu-quota", quota, name],
            check=True,
            capture_output=True,
        )


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png(width, height):
    """A tiny PNG whose header declares `width` x `height` (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )
