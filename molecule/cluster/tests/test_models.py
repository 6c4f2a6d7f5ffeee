"""Several models on one fleet: the lab serves two (inventory/lab/group_vars/all/models.yml),
each its own uWSGI instance on both app hosts, routed by name through lb1. Model B's faults,
redeploy and removal under load on model A (the default) fail no request to A. The last case
puts B back as the inventory has it, for the modules that follow."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

from fleetlib import APP_HOSTS, INVENTORY, fleet_host, post, run_playbook, sh
from fleetvars import (
    DEFAULT_MODEL,
    MODELS,
    PROJECT,
    WEIGHTS_DIR,
    concrete_models,
    model_health_port,
    model_unit,
)
from loadlib import Load, brief

testinfra_hosts = ["outsider"]
SAMPLES = PROJECT / "app" / "src" / "segserve" / "samples"
OTHER = next(m["name"] for m in MODELS if m["name"] != DEFAULT_MODEL)


def get(lb, path):
    """GET from the controller through lb1: (status, headers, parsed JSON body)."""
    import http.client

    conn = http.client.HTTPConnection(lb, 80, timeout=30)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), json.loads(response.read())
    finally:
        conn.close()


def playbook(*args, models=None):
    extra = ["-e", json.dumps({"segserve_models": models})] if models is not None else []
    return run_playbook("-i", INVENTORY, *args, *extra).stdout


def master(app, name):
    return int(sh(app, f"systemctl show -p MainPID --value {model_unit(name)}").strip())


def wait_model_ready(app, name, timeout=240):
    port = model_health_port(name)
    result = app.run(
        f"for i in $(seq {timeout}); do curl -sf http://127.0.0.1:{port}/readyz >/dev/null"
        " && exit 0; sleep 1; done; exit 1"
    )
    assert result.rc == 0, f"{name} on {app.backend.host} not ready after {timeout} s"


def test_each_model_answers_by_name(lb, report):
    status, headers, listing = get(lb, "/v1/models")
    assert status == 200 and "X-Request-ID" in headers
    assert listing["default"] == DEFAULT_MODEL
    assert listing["models"] == [m["name"] for m in MODELS]
    photo = (SAMPLES / "chelsea.jpg").read_bytes()
    facts = []
    archs = set()
    for name in listing["models"]:
        status, _, info = get(lb, f"/v1/models/{name}")
        assert status == 200 and info["name"] == name, info
        archs.add(info["arch"])
        status, _, body, _ = post(
            lb,
            f"/v1/models/{name}/segment",
            photo,
            {"Content-Type": "image/jpeg", "Accept": "application/json"},
        )
        answer = json.loads(body)
        assert status == 200, answer
        assert (answer["width"], answer["height"]) == (451, 300)
        # Every class in the mask is one the model has, under the model's own name for it.
        assert answer["classes"] and all(
            info["classes"][cid] == label for cid, label in answer["classes"].items()
        ), (answer["classes"], info["classes"])
        facts.append(f"{name}: {info['arch']} on {info['backend']}, classes {answer['classes']}")
    assert len(archs) == len(MODELS), archs
    # The unnamed API is the default model's.
    status, _, info = get(lb, "/v1/model")
    assert info["name"] == DEFAULT_MODEL
    # The client asks a model by name, through nginx.
    client = subprocess.run(
        [
            str(Path(sys.executable).parent / "segserve-client"),
            str(SAMPLES / "astronaut.jpg"),
            "--url",
            f"http://{lb}",
            "--model",
            OTHER,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert client.returncode == 0 and "astronaut.jpg: 512x512" in client.stdout, client.stderr
    report.add("Models by name", "Each model answers at /v1/models/<name>/.", None, facts)


def test_an_unknown_model_is_a_json_404(lb):
    for method, path in (
        ("GET", "/v1/models/nosuchmodel"),
        ("POST", "/v1/models/nosuchmodel/segment"),
        ("POST", f"/v1/models/{DEFAULT_MODEL}/infer"),
    ):
        if method == "GET":
            status, headers, body = get(lb, path)
        else:
            status, headers, raw, _ = post(lb, path, b"x", {"Content-Type": "image/jpeg"})
            body = json.loads(raw)
        assert status == 404 and body["error"] == "unknown_model", (path, body)
        assert headers["Content-Type"] == "application/json"


def test_model_b_faults_redeploy_and_removal_fail_no_request_to_a(client, lb, report, tmp_path):
    """Under load on the default model A: kill a worker of B, redeploy B with new weights,
    then remove B from the inventory. A's instances are never restarted and lose nothing."""
    apps = {name: fleet_host(name) for name in APP_HOSTS}
    a_masters = {name: master(app, DEFAULT_MODEL) for name, app in apps.items()}
    load = Load(client, "models", lb, duration=1500)
    time.sleep(3)
    facts = []

    # 1. A worker of B killed: its master respawns it; A does not notice.
    app1 = apps["app1"]
    b_worker = sh(app1, f"pgrep -P {master(app1, OTHER)} | head -n 1").strip()
    sh(app1, f"kill -KILL {b_worker}")
    wait_model_ready(app1, OTHER)
    facts.append(f"killed {OTHER}'s worker {b_worker} on app1; its master respawned it")

    # 2. B redeployed with new weights: only B's instances drain and restart.
    weights = tmp_path / "b.pth"
    arch = next(m["arch"] for m in MODELS if m["name"] == OTHER)
    seed = int(time.time()) % 100_000 + 1
    sha256 = subprocess.run(
        [
            str(Path(sys.executable).parent / "segserve-weights"),
            "init",
            "--arch",
            arch,
            "--seed",
            str(seed),
            str(weights),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    started = time.time()
    out = playbook(
        str(PROJECT / "playbooks" / "app.yml"),
        models=concrete_models(**{OTHER: {"weights_src": str(weights), "weights_sha256": sha256}}),
    )
    drained = re.findall(r"included: \S+/playbooks/tasks/drain\.yml for (\w+)", out)
    assert drained == list(APP_HOSTS), drained
    for name, app in apps.items():
        status, _, info = get(lb, f"/v1/models/{OTHER}")
        assert info["weights_sha256"] == sha256, info
        assert master(app, DEFAULT_MODEL) == a_masters[name], f"{DEFAULT_MODEL} restarted on {name}"
    facts.append(
        f"redeployed {OTHER} with weights {sha256[:12]}... in {time.time() - started:.0f} s,"
        f" drained from lb1 on {', '.join(drained)} in turn; {DEFAULT_MODEL}'s masters"
        " unchanged"
    )

    # 3. B removed from the inventory: its routes go, then its instances (weights stay).
    kept = {name: sh(app, f"ls {WEIGHTS_DIR}") for name, app in apps.items()}
    started = time.time()
    playbook(str(PROJECT / "site.yml"), models=concrete_models()[:1])
    status, _, body = get(lb, f"/v1/models/{OTHER}")
    assert status == 404 and body["error"] == "unknown_model", body
    for name, app in apps.items():
        assert not app.file(f"/etc/systemd/system/{model_unit(OTHER)}.service").exists
        assert not app.service(model_unit(OTHER)).is_running
        assert sh(app, f"ls {WEIGHTS_DIR}") == kept[name], "weights were removed"
        assert master(app, DEFAULT_MODEL) == a_masters[name], f"{DEFAULT_MODEL} restarted on {name}"
    facts.append(f"removed {OTHER} in {time.time() - started:.0f} s: its route is a JSON 404")

    time.sleep(3)
    result = load.result(stop=True)
    report.add(
        "Models: B's faults under load on A",
        f"Under load on {DEFAULT_MODEL} (the default model): a worker of {OTHER} killed, {OTHER}"
        " redeployed with new weights, then removed from the inventory. 0 requests to"
        f" {DEFAULT_MODEL} failed, and its instances never restarted.",
        result,
        facts,
    )
    assert result["failed"] == 0, brief(result)


def test_a_model_added_to_the_inventory_is_served(lb):
    """B back, as the inventory declares it: one run of site.yml serves it again."""
    playbook(str(PROJECT / "site.yml"))
    for app in (fleet_host(name) for name in APP_HOSTS):
        wait_model_ready(app, OTHER)
    status, _, info = get(lb, f"/v1/models/{OTHER}")
    assert status == 200 and info["name"] == OTHER
