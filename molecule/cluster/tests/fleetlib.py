"""The fleet's hosts as the fault suite reaches them, and the helpers that look at one (the
service, its journal, lb1's access log). Every test module of the scenario and conftest.py
share it; the values the fleet is deployed with are in fleetvars.py."""

from __future__ import annotations

import datetime
import functools
import http.client
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import testinfra
from fleetvars import ACCESS_LOG, HEALTH_PORT, HTTP_PORT, PROJECT, STATS_PORT, UNIT

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
PHOTOS = "/srv/photos"
APP_HOSTS = ("app1", "app2")

# --- Hosts --------------------------------------------------------------------------------

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


def cpu_quota(share):
    """Set (or, with None, remove) a CFS quota on the app containers."""
    quota = str(int(share * 100_000)) if share else "-1"
    for name in APP_HOSTS:
        subprocess.run(
            ["docker", "update", "--cpu-period", "100000", "--cpu-quota", quota, name],
            check=True,
            capture_output=True,
        )


# --- Playbooks from the controller ---------------------------------------------------------

# The ansible-playbook of the virtualenv that runs the suite.
PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
# Molecule forces Ansible's colours on (ANSIBLE_FORCE_COLOR): tests read the plain text.
COLOUR = re.compile(r"\x1b\[[0-9;]*m")


def run_playbook(*args, timeout=900, check=True):
    """ansible-playbook ARGS (inventories included), from the project's directory so that its
    ansible.cfg applies; the finished process with its stdout and stderr as plain text. check:
    fail the test unless it succeeded (a caller with load running checks after stopping it)."""
    run = subprocess.run(
        [str(PLAYBOOK), *args], cwd=PROJECT, capture_output=True, text=True, timeout=timeout
    )
    run.stdout, run.stderr = COLOUR.sub("", run.stdout), COLOUR.sub("", run.stderr)
    if check:
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    return run


# --- The service on an app host -----------------------------------------------------------


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


# --- lb1: its access log and one request from the controller ------------------------------


def log_mark(path=ACCESS_LOG):
    """The lines lb1's log `path` has now, for lines_since or log_since."""
    return int(sh(fleet_host("lb1"), f"wc -l < {path}").strip())


def lines_since(mark, path):
    return sh(fleet_host("lb1"), f"tail -n +{mark + 1} {path}").splitlines()


def log_since(mark):
    """The access log's JSON entries after log_mark()."""
    return [json.loads(line) for line in lines_since(mark, ACCESS_LOG) if line.startswith("{")]


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
    """Requests that nginx sent to a second app host and that then succeeded. The public
    server's lines name the inner socket, never an app host: a retry there (a kept-alive
    connection closed by a reload) is no host's doing."""
    return [
        e
        for e in entries
        if ", " in e["upstream_addr"]
        and not e["upstream_addr"].startswith("unix:")
        and e["status"] == 200
    ]


def post(lb, path, body, headers, timeout=60.0):
    """One request from the controller: (status, headers, body, seconds)."""
    conn = http.client.HTTPConnection(lb, HTTP_PORT, timeout=timeout)
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
