"""The fleet's model list is checked before anything changes: the list itself (names, ports,
hosts, keys) by the fleet's preflight, and each app host's room for its models (memory, one
virtualenv) by playbooks/app.yml's check step, which these tests run as the play runs it."""

import os
import sys
from pathlib import Path

import pytest
import yaml
from preflight import INVENTORY, ROOT, run_playbook, run_preflight

sys.path.insert(0, str(ROOT / "plugins" / "filter"))
sys.path.insert(0, str(ROOT / "app" / "src"))
from segserve_models import (  # noqa: E402
    segserve_model_instances,
    segserve_models_problems,
    segserve_models_resolve,
)

GROUPS = {"app": ["app1", "app2", "app3"], "gpu": ["app3"], "lb": ["lb1"]}
DEEPLAB = {"name": "deeplab", "port": 8011, "arch": "deeplabv3_mobilenet_v3_large"}


def problems(models):
    return " ".join(segserve_models_problems(models, GROUPS, "app", 8001))


@pytest.mark.parametrize(
    "models, message",
    [
        ([{"name": "a"}, {"name": "a", "port": 8011}], "Model name 'a' is given twice"),
        ([{"name": "A b"}], "segserve_models[0].name is 'A b'"),
        ([{"name": "a"}, {"name": "b"}], "model 'b' needs a port"),
        ([{"name": "a", "port": 8011}], "model 'a' is the default model"),
        ([{"name": "a"}, {"name": "b", "port": 8003}], "Models 'a' (ports 8001-8004) and 'b'"),
        ([{"name": "a", "weights": "x"}], "model 'a' has unknown keys ['weights']"),
        ([{"name": "a", "hosts": "tpu"}], "served by group 'tpu', which the inventory lacks"),
        ([{"name": "a", "hosts": ["lb1"]}], "lists hosts ['lb1'] that are not in the 'app' group"),
        ([], "segserve_models must be a list of at least one model"),
    ],
)
def test_a_wrong_model_list_is_named(models, message):
    assert message in problems(models)


def test_a_list_of_models_resolves_hosts_ports_and_instances():
    models = [{"name": "fast"}, {**DEEPLAB, "hosts": "gpu", "processes": 2}]
    assert problems(models) == ""
    resolved = segserve_models_resolve(models, GROUPS, "app")
    assert [(m["name"], m["default"], m["hosts"]) for m in resolved] == [
        ("fast", True, ["app1", "app2", "app3"]),
        ("deeplab", False, ["app3"]),
    ]
    base = {"arch": "lraspp_mobilenet_v3_large", "processes": 0, "backend": "auto"}
    app3 = segserve_model_instances(resolved, "app3", "segserve", 8001, base)
    assert [(i["instance"], i["port"], i["arch"], i["processes"]) for i in app3] == [
        ("segserve", 8001, "lraspp_mobilenet_v3_large", 0),
        ("segserve-deeplab", 8011, "deeplabv3_mobilenet_v3_large", 2),
    ]
    assert [i["name"] for i in segserve_model_instances(resolved, "app1", "s", 1, base)] == ["fast"]


def test_the_role_knows_the_architectures_the_app_serves():
    from segserve.models import ARCHS

    table = yaml.safe_load((ROOT / "roles/uwsgi_app/vars/main.yml").read_text())
    assert set(table["__uwsgi_app_worker_rss_mb"]) == set(ARCHS)


def test_the_fleet_preflight_refuses_a_wrong_list(tmp_path):
    run = run_preflight(tmp_path, "segserve", {"segserve_models": [{"name": "a"}, {"name": "a"}]})
    assert run.returncode != 0
    assert "Model name 'a' is given twice" in run.stdout, run.stdout[-2000:]


# playbooks/app.yml's own check step, for every model of localhost (the one app host).
CHECK_PLAY = """\
- name: Check the models of the app hosts as playbooks/app.yml does
  hosts: app
  gather_facts: true
  roles:
    - role: segserve.fleet.segserve
  tasks:
    - name: List the models this host serves
      ansible.builtin.include_role:
        name: segserve.fleet.uwsgi_app
        tasks_from: instances.yml
    - name: Check every model of this host before deploying any
      ansible.builtin.include_tasks:
        file: {tasks}/model.yml
      vars:
        __segserve_model_step: check
      loop: "{{{{ uwsgi_app_instances }}}}"
      loop_control:
        loop_var: __segserve_instance
"""


def run_check(tmp_path: Path, models: list, **extra) -> tuple[int, str]:
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"not read by the preflight")
    (tmp_path / "play.yml").write_text(CHECK_PLAY.format(tasks=ROOT / "playbooks" / "tasks"))
    (tmp_path / "hosts.yml").write_text(INVENTORY)
    for model in models[1:]:
        model.update(weights_src=str(weights), weights_sha256="1" * 64)
    run = run_playbook(
        tmp_path / "play.yml",
        tmp_path / "hosts.yml",
        {
            "segserve_models": models,
            "uwsgi_app_weights_src": str(weights),
            "uwsgi_app_weights_sha256": "0" * 64,
            **extra,
        },
    )
    return run.returncode, " ".join(run.stdout.split())


def test_a_host_whose_models_fit_passes(tmp_path):
    code, out = run_check(tmp_path, [{"name": "fast", "processes": 2}, {**DEEPLAB, "processes": 2}])
    assert code == 0, out[-2000:]


def memtotal_mb() -> int:
    """Ansible's memtotal_mb: /proc/meminfo's MemTotal in MiB."""
    meminfo = Path("/proc/meminfo").read_text().split()
    return int(meminfo[meminfo.index("MemTotal:") + 1]) // 1024


def test_a_host_without_room_for_its_models_is_refused_with_the_numbers(tmp_path):
    memory = memtotal_mb()
    # deeplab on onnxruntime/openvino: 346 MiB measured, 433 with the quarter more; enough
    # workers to pass this machine's memory.
    workers = memory // 433 + 1
    code, out = run_check(
        tmp_path, [{"name": "fast", "processes": 1}, {**DEEPLAB, "processes": workers}]
    )
    assert code != 0
    assert "localhost cannot hold its models:" in out, out[-2000:]
    assert "fast (lraspp_mobilenet_v3_large, onnxruntime/openvino) 1 workers x 342 MiB" in out
    assert (
        f"deeplab (deeplabv3_mobilenet_v3_large, onnxruntime/openvino) {workers} workers x 433 MiB"
        in out
    )
    assert "kept for the system (uwsgi_app_memory_reserved_mb)" in out


def test_a_host_mixing_torch_and_converted_models_is_refused(tmp_path):
    code, out = run_check(
        tmp_path,
        [{"name": "fast", "processes": 1}, {**DEEPLAB, "processes": 1, "backend": "torch"}],
    )
    assert code != 0
    assert "would serve torch for deeplab and the converted model for fast" in out, out[-2000:]


def test_models_sharing_a_port_on_a_host_are_refused(tmp_path):
    # A metrics port set for the whole group would be every model's: refused before a
    # second instance fails to bind it.
    code, out = run_check(
        tmp_path,
        [{"name": "fast", "processes": 1}, {**DEEPLAB, "processes": 1}],
        uwsgi_app_metrics_port=9100,
    )
    assert code != 0
    assert "localhost's models would share ports: fast [8001, 8002, 8004, 9100]" in out, out[-2000:]


# A GPU host serving torch: one lraspp worker on CUDA needs 1008 MiB of its GPU (806 measured,
# a quarter more), one deeplab worker 1055; each GPU keeps 1024 MiB for other programs.
GPU_HOST = {"uwsgi_app_backend": "torch", "uwsgi_app_device": "cuda", "cuda_gpu_count": 1}


def test_computed_workers_per_gpu_share_the_gpu_between_the_hosts_models(tmp_path):
    # Room for one worker of each model, not for two of either: each model's computed share
    # is half the GPU (with the cores alone, each would take two on a 2-core host).
    assert len(os.sched_getaffinity(0)) >= 2, "needs 2 cores to mean anything"
    code, out = run_check(
        tmp_path, [{"name": "fast"}, DEEPLAB], cuda_gpu_memory_mib=[1024 + 2 * 1055 + 1], **GPU_HOST
    )
    assert code == 0, out[-2000:]


def test_a_gpu_without_room_for_its_models_workers_is_refused_with_the_numbers(tmp_path):
    code, out = run_check(
        tmp_path,
        [{"name": "fast", "processes": 1}, {**DEEPLAB, "processes": 1}],
        cuda_gpu_memory_mib=[1024 + 1008],
        **GPU_HOST,
    )
    assert code != 0
    assert "localhost's GPUs cannot hold its models' workers:" in out, out[-2000:]
    assert "fast (lraspp_mobilenet_v3_large) 1 workers on one GPU x 1008 MiB = 1008 MiB;" in out
    assert "deeplab (deeplabv3_mobilenet_v3_large) 1 workers on one GPU x 1055 MiB" in out
    assert "together 2063 MiB, but its smallest GPU has 2032 MiB" in out
    assert "so 1008 MiB" in out


def test_computed_workers_per_gpu_fit_the_hosts_memory(tmp_path):
    # Host memory for one CUDA lraspp worker (1148 MiB measured, 1435 with the quarter more)
    # and its master (64), not for two: one worker, where the cores alone would give two.
    assert len(os.sched_getaffinity(0)) >= 2, "needs 2 cores to mean anything"
    memory = memtotal_mb()
    code, out = run_check(
        tmp_path,
        [{"name": "fast"}],
        cuda_gpu_memory_mib=[143771],
        uwsgi_app_memory_reserved_mb=memory - (1435 + 64 + 100),
        **GPU_HOST,
    )
    assert code == 0, out[-2000:]


@pytest.mark.parametrize("setting", [{}, {"uwsgi_app_processes_per_gpu": 2}])
def test_gpus_of_unknown_memory_need_a_set_workers_per_gpu(tmp_path, setting):
    code, out = run_check(
        tmp_path, [{"name": "fast"}], cuda_gpu_memory_mib=[], **GPU_HOST, **setting
    )
    if setting:
        assert code == 0, out[-2000:]
    else:
        assert code != 0
        assert "serves torch on 1 GPU(s) of unknown memory" in out, out[-2000:]


@pytest.mark.parametrize("memory", [["80GB"], 81559, "81559", [0]])
def test_gpu_memory_that_is_not_a_list_of_mib_is_refused(tmp_path, memory):
    code, out = run_check(tmp_path, [{"name": "fast"}], cuda_gpu_memory_mib=memory, **GPU_HOST)
    assert code != 0
    assert "uwsgi_app_gpu_memory_mib a list of each GPU's MiB as whole numbers" in out, out[-2000:]


def test_the_role_knows_a_cuda_workers_memory_for_every_architecture():
    from segserve.models import ARCHS

    table = yaml.safe_load((ROOT / "roles/uwsgi_app/vars/main.yml").read_text())
    assert set(table["__uwsgi_app_cuda_worker_mb"]) == set(ARCHS)


@pytest.mark.parametrize(
    "setting",
    [
        {"uwsgi_app_processes_per_gpu": -1},
        {"uwsgi_app_gpu_memory_reserved_mb": -1},
        {"uwsgi_app_max_requests": -1},
        {"uwsgi_app_max_requests_delta": -5},
        {"uwsgi_app_reload_on_rss_mb": -1},
        {"uwsgi_app_worker_reload_mercy_s": -1},
    ],
)
def test_a_negative_worker_setting_is_refused_by_name(tmp_path, setting):
    code, out = run_check(tmp_path, [{"name": "fast"}], **setting)
    assert code != 0
    (name,) = setting
    assert "must be >= 0" in out and name in out, out[-2000:]
