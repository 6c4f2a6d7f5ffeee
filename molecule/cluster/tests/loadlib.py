"""The load generator on the client host and the suite's report (tests/results/faults.md).
Every test module of the scenario and conftest.py share it."""

from __future__ import annotations

import datetime
import json
import os
import platform
import time
from pathlib import Path

from fleetlib import PHOTOS, sh
from fleetvars import PROJECT

REPORT = PROJECT / "tests" / "results" / "faults.md"
LOADGEN_SRC = Path(__file__).resolve().parent.parent / "files" / "loadgen.py"
LOADGEN = "/usr/local/bin/segserve-loadgen"


class Load:
    """loadgen.py running in the background on the client host."""

    def __init__(
        self,
        client,
        name,
        lb,
        *,
        duration,
        concurrency=2,
        rate=None,
        threads=64,
        get=None,
    ):
        """POSTs the sample photos to /v1/segment, or GETs the path `get` (no body)."""
        self.client = client
        self.out = f"/tmp/load-{name}.json"
        self.duration = duration
        mode = f"--rate {rate} --threads {threads}" if rate else f"--concurrency {concurrency}"
        what = f"{get} --method GET" if get else f"/v1/segment {PHOTOS}/*.jpg"
        self.pid = int(
            sh(
                client,
                f"rm -f {self.out}; setsid nohup python3 {LOADGEN} http://{lb}{what}"
                f" {mode} --duration {duration} --timeout 90 --out {self.out}"
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
            "Written by the fault suite (`molecule/cluster/tests/`, its modules in the order",
            "conftest.py lists them) at the end of its run; commit it as it comes out.",
            "",
            f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
            f"- machine: {os.cpu_count()} cores (nproc {len(os.sched_getaffinity(0))}), {cpu};"
            " the lab's containers share them (app hosts pinned to one core each)",
            "- command: `molecule test -s cluster` (or `molecule verify -s cluster` on a"
            " converged cluster)",
            f"- fault suite run time: {minutes:.1f} min; outcome: {outcome}",
            "- load: `loadgen.py` on the `outsider` host, POSTing the three sample photos"
            " (PNG masks back) to lb1, unless the case says otherwise; latencies in ms,"
            " measured at the client",
            "",
            "| case | promise | sent | succeeded | failed | max latency (ms) |",
            "| --- | --- | ---: | ---: | ---: | ---: |",
        ]
        head += [f"| {' | '.join(str(c) for c in row)} |" for row in self.rows]
        REPORT.parent.mkdir(parents=True, exist_ok=True)
        REPORT.write_text("\n".join(head) + "\n\n## Details\n\n" + "\n".join(self.details))
