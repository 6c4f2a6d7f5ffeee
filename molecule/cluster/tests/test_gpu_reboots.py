"""GPU maintenance under load: playbooks/cuda.yml, run on the app hosts as GPU hosts (the cuda
role's test hooks stand in for the GPUs and for a new kernel module that DKMS built), reboots
each app container for real (`shutdown -r`; the scenario's restart policy brings it back, as
a machine comes back from a reboot), one host at a time: drained from lb1 first, back in
service only after /readyz. conftest.py runs this module last: the app hosts keep the fake
GPU facts it leaves."""

from __future__ import annotations

import json
import re
import subprocess
import time

from fleetlib import (
    APP_HOSTS,
    INVENTORY,
    fleet_host,
    log_mark,
    log_since,
    retried,
    run_playbook,
    served_by,
    sh,
)
from fleetvars import PROJECT
from loadlib import Load, brief

testinfra_hosts = ["outsider"]

# The driver the hosts pretend to run, and the newer module of its branch that DKMS "built":
# they differ, so the cuda role plans a reboot. The driver comes from Debian's non-free
# (branch 535 on bookworm): NVIDIA's repository is not reachable from the lab.
GPU_HOST_VARS = {
    "segserve_gpu_group": "app",
    "cuda_source": "distro",
    "cuda_driver_branch": "535",
    "cuda_torch_cuda_version": "12.2",
    "cuda_install_packages": False,
    "cuda_fake_gpus": [{"name": "NVIDIA H200", "memory_mib": 143771}],
    "cuda_fake_driver_version": "535.216.01",
    "cuda_fake_module_version": "535.247.01",
    # The lab's models keep serving on the CPU (no CUDA smoke test: there is no GPU).
    "uwsgi_app_device": "cpu",
}
REBOOT_TASK = "segserve.fleet.cuda : Reboot to load the NVIDIA kernel module"
READY_TASK = "segserve.fleet.uwsgi_app : Wait until the service answers ready"


def boot(name):
    """The container's restart count and its PID 1's start time: both change with a reboot."""
    count = subprocess.run(
        ["docker", "inspect", "-f", "{{.RestartCount}}", name],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return int(count), sh(fleet_host(name), "cut -d ' ' -f 22 /proc/1/stat").strip()


def steps(out):
    """(step, host) in the order the play made them: drain, reboot, ready, undrain."""
    found, task = [], ""
    for line in out.splitlines():
        if heading := re.match(r"TASK \[(.+?)\]", line):
            task = heading.group(1)
        elif included := re.match(r"included: \S+/playbooks/tasks/(un)?drain\.yml for (\w+)", line):
            found.append(("undrain" if included.group(1) else "drain", included.group(2)))
        elif done := re.match(r"(changed|ok): \[(\w+)\]", line):
            if task == REBOOT_TASK and done.group(1) == "changed":
                found.append(("reboot", done.group(2)))
            elif task == READY_TASK:
                found.append(("ready", done.group(2)))
    # A host's models each drain and come back: one step per host in a row.
    return [step for i, step in enumerate(found) if i == 0 or found[i - 1] != step]


def test_driver_reboots_roll_drained_and_lose_nothing(client, lb, report):
    before = {name: boot(name) for name in APP_HOSTS}
    mark = log_mark()
    load = Load(client, "gpu-reboots", lb, duration=1200)
    time.sleep(4)
    started = time.time()
    try:
        run = run_playbook(
            "-i",
            INVENTORY,
            str(PROJECT / "playbooks" / "cuda.yml"),
            "-e",
            json.dumps(GPU_HOST_VARS),
            timeout=1200,
            check=False,
        )
        finished = time.time()
        time.sleep(3)
    finally:
        result = load.result(stop=True)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    order = steps(run.stdout)
    entries = log_since(mark)
    after = {name: boot(name) for name in APP_HOSTS}
    report.add(
        "GPU driver maintenance: reboots roll",
        "playbooks/cuda.yml with a new kernel module on every app host (test hooks), under"
        " load: each host drained from lb1 (the lab's load balancer), rebooted (`shutdown -r`"
        " of its container), back after /readyz, one at a time. 0 failed, and no request"
        " reached a host going down.",
        result,
        [
            f"the play took {finished - started:.0f} s; its steps in order: "
            + ", ".join(f"{step} {host}" for step, host in order),
            "container restarts (before, after): "
            + ", ".join(f"{n} {before[n][0]} -> {after[n][0]}" for n in APP_HOSTS),
            f"requests nginx had to retry on the other host: {len(retried(entries))}",
        ],
    )
    expected = [
        (step, host) for host in APP_HOSTS for step in ("drain", "reboot", "ready", "undrain")
    ]
    assert order == expected, order
    for name in APP_HOSTS:
        assert after[name][0] == before[name][0] + 1, (name, before[name], after[name])
        assert after[name][1] != before[name][1], f"{name}'s PID 1 did not start again"
    # Drained before it went down: nginx never sent a request to a host rebooting, so it
    # never had to retry one elsewhere.
    assert retried(entries) == [], retried(entries)[:3]
    assert result["failed"] == 0, brief(result)
    back = Load(client, "gpu-reboots-after", lb, duration=8).result()
    assert back["failed"] == 0, brief(back)
    served = log_since(mark)
    for name in APP_HOSTS:
        assert served_by(served, name, after=finished), f"{name} not back in service"
