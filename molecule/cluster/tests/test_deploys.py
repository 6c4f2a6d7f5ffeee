"""Deploys on the running fleet: a redeploy that changes nothing, nginx reloads under load
(every drain and undrain is one), then a rolling deploy of a new app version and new weights
under load. conftest.py runs this module late (only the GPU reboots come after it): the
rolling deploy leaves the fleet on the new version and weights."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from fleetlib import (
    APP_HOSTS,
    INVENTORY,
    fleet_host,
    lines_since,
    log_mark,
    log_since,
    master_pid,
    retried,
    run_playbook,
    served_by,
    sh,
    wait_ready,
)
from fleetvars import (
    DEFAULT_MODEL,
    ERROR_LOG,
    HEALTH_PORT,
    PROJECT,
    RESTART_MARKER,
    VENV,
    concrete_models,
)
from loadlib import Load, brief

testinfra_hosts = ["outsider"]


def test_redeploy_drains_only_the_host_that_owes_a_restart(client):
    """A deploy that changes nothing drains and restarts nothing; a restart owed by an
    earlier run that failed after its changes (its marker in /run) is still made. It runs
    before the rolling deploy below (file order within this module, which conftest.py runs
    last), on the fleet as converged."""
    app1, app2 = fleet_host("app1"), fleet_host("app2")
    before = {name: master_pid(fleet_host(name)) for name in APP_HOSTS}
    sh(app1, f"touch {RESTART_MARKER}")
    out = run_playbook("-i", INVENTORY, str(PROJECT / "playbooks" / "app.yml"), timeout=600).stdout
    drained = re.findall(r"included: \S+/playbooks/tasks/drain\.yml for (\w+)", out)
    changed = re.findall(r"TASK \[([^\]]+)\][^\n]*\n(?:[^\n]*\n)?changed: \[(\w+)", out)
    assert drained == ["app1"], (drained, changed)
    assert master_pid(app1) != before["app1"], "app1 owed a restart and kept its master"
    assert master_pid(app2) == before["app2"], "app2 had nothing new and was restarted"
    assert not app1.file(RESTART_MARKER).exists
    assert re.search(r"app2\s+: ok=\d+\s+changed=0\s", out), out[-1500:]
    wait_ready(app1)


# Reloads of lb1 in a row, one every RELOAD_PAUSE_S: a deploy of two hosts with two models
# makes 8 (a drain and an undrain per model and host); many more give a race with the
# requests in flight a fair chance to show.
RELOADS = 60
RELOAD_PAUSE_S = 0.25
# Clients of the reload case: below nginx_inflight_limit (8), as in test_fuzz.py.
RELOAD_CLIENTS = 4


def test_load_balancer_reloads_cut_nothing(client, lb, report):
    """Every drain and undrain reloads nginx while it serves. Small requests at a high rate
    (GET /v1/model: through lb1's public and inner servers to an app host) across many
    reloads: none may fail.
    Each request opens its own connection to lb1 (loadgen.py): what a reload does to a
    client's own idle kept-alive connection is not what this checks."""
    lb1 = fleet_host("lb1")
    errors_mark = log_mark(ERROR_LOG)
    mark = log_mark()
    load = Load(client, "reloads", lb, duration=300, concurrency=RELOAD_CLIENTS, get="/v1/model")
    time.sleep(1)
    started = time.time()
    for _ in range(RELOADS):
        sh(lb1, "systemctl reload nginx")
        time.sleep(RELOAD_PAUSE_S)
    seconds = time.time() - started
    time.sleep(1)
    result = load.result(stop=True)
    errors = [
        line
        for line in lines_since(errors_mark, ERROR_LOG)
        if "[error]" in line and "limiting requests" not in line
    ]
    # The public server's lines name the inner socket; two of them: tried again on another
    # connection after a kept-alive one failed.
    again = [e for e in log_since(mark) if e["upstream_addr"].count("unix:") > 1]
    report.add(
        "Load balancer reloads",
        f"{RELOADS} reloads of nginx on lb1, one every {RELOAD_PAUSE_S} s, under {RELOAD_CLIENTS}"
        " clients"
        " of GET /v1/model (each request through lb1's public and inner servers to an app"
        " host): 0 failed.",
        result,
        [
            f"the reloads took {seconds:.0f} s",
            f"nginx error log lines meanwhile: {len(errors)}; requests the public server sent"
            f" again on another connection to the inner one: {len(again)}",
        ],
    )
    assert result["failed"] == 0, (brief(result), errors[-5:])
    # A load that hardly ran could not fail: at least one request per client and reload
    # (the lab answered about 1,000 a second here, on 2 cores).
    assert result["sent"] >= RELOAD_CLIENTS * RELOADS, brief(result)


def test_rolling_deploy_loses_nothing(client, lb, report, capacity, tmp_path):
    stamp = int(time.time())
    version = f"0.1.1.dev{stamp}"
    app_copy = tmp_path / "app"
    shutil.copytree(
        PROJECT / "app",
        app_copy,
        ignore=shutil.ignore_patterns("tests", "*.egg-info", "__pycache__", ".*cache"),
    )
    pyproject = app_copy / "pyproject.toml"
    pyproject.write_text(
        re.sub(r'(?m)^version = ".*"$', f'version = "{version}"', pyproject.read_text())
    )
    weights = tmp_path / "weights.pth"
    sha256 = subprocess.run(
        [
            str(Path(sys.executable).parent / "segserve-weights"),
            "init",
            "--seed",
            str(stamp % 100_000 + 1),
            str(weights),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    command = [
        "-i",
        INVENTORY,
        str(PROJECT / "playbooks" / "app.yml"),
        "-e",
        f"uwsgi_app_src={app_copy}",
        # New weights for the default model: its entry of the model list, as an operator
        # changes it (an -e uwsgi_app_weights_src would give every model those weights).
        "-e",
        json.dumps(
            {
                "segserve_models": concrete_models(
                    **{DEFAULT_MODEL: {"weights_src": str(weights), "weights_sha256": sha256}}
                )
            }
        ),
    ]
    mark = log_mark()
    # Each host restarts both models, and re-times their backends on its one core under load.
    load = Load(client, "rolling", lb, duration=1500)
    time.sleep(3)
    started = time.time()
    deploy = run_playbook(*command, timeout=1200, check=False)
    seconds = time.time() - started
    time.sleep(3)
    result = load.result(stop=True)
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-2000:]
    entries = log_since(mark)
    hosts = {}
    for name in APP_HOSTS:
        app = fleet_host(name)
        model = json.loads(sh(app, f"curl -sf http://127.0.0.1:{HEALTH_PORT}/v1/model"))
        installed = sh(
            app,
            f"{VENV}/bin/python -c"
            " 'import importlib.metadata as m; print(m.version(\"segserve\"))'",
        ).strip()
        hosts[name] = (installed, model["weights_sha256"])
    report.add(
        "3. Rolling deploy",
        "`playbooks/app.yml` with a new app version and new weights, one host at a time, each"
        " drained from lb1 and put back after /readyz: 0 failed, every host on the new version.",
        result,
        [
            f"deploy of {version} with weights {sha256[:12]}... took {seconds:.0f} s",
            "after: "
            + ", ".join(f"{n} runs {v} with weights {s[:12]}..." for n, (v, s) in hosts.items()),
            f"requests cut and retried on the other host: {len(retried(entries))} (the drain"
            " waits for the host's requests in flight)",
            f"served by app1 / app2 during the load: {len(served_by(entries, 'app1'))} /"
            f" {len(served_by(entries, 'app2'))}",
        ],
    )
    assert result["failed"] == 0, brief(result)
    assert all(h == (version, sha256) for h in hosts.values()), hosts
