"""A whole app host fails under load: its service stopped, then its container restarted.
Each case runs `loadgen.py` (this scenario's files/) on the `outsider` host against lb1
while the fault happens, waits for the host to serve again, and adds its numbers to
tests/results/faults.md."""

from __future__ import annotations

import subprocess
import time

from fleetlib import (
    address,
    epoch,
    fleet_host,
    log_mark,
    log_since,
    retried,
    served_by,
    sh,
    wait_ready,
)
from fleetvars import UNIT, UWSGI_PORT
from loadlib import Load, brief

testinfra_hosts = ["outsider"]


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
    firewall = app.run(f"nft list table inet {UNIT}")
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
