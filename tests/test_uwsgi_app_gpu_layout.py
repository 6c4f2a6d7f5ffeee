"""On a GPU host the uwsgi_app role starts GPUs x uwsgi_app_processes_per_gpu workers and tells
the app the host's GPU count (the cuda role's cuda_gpu_count fact), from which each worker
takes its own GPU (app/README.md, GPU hosts). Workers per GPU are computed by default: the
host's cores shared by its GPUs, within the smallest GPU's memory. Rendered on the controller
into tmp_path, as tasks/configure.yml renders them on a host."""

import os
import re

from preflight import render_uwsgi_app_instances

DEVICES = {"spread": "auto", "pinned": "cuda:3", "cpu": "cpu"}


def rendered(tmp_path, name):
    env = (tmp_path / name / "segserve.env").read_text()
    ini = (tmp_path / name / "uwsgi.ini").read_text()
    settings = dict(re.findall(r"^(SEGSERVE_[A-Z_]+)=(.*)$", env, re.M))
    return settings, int(re.search(r"^processes = (\d+)$", ini, re.M).group(1))


CORES = len(os.sched_getaffinity(0))


def render(tmp_path, layouts: dict[str, dict]) -> None:
    """layouts: name -> device, gpus, memory (MiB per GPU, [] unknown), per_gpu (0 computes)."""
    instances = {}
    for name, lay in layouts.items():
        lay = {"gpus": 8, "memory": [], "per_gpu": 2, **lay}
        instances[name] = {
            "cuda_gpu_count": lay["gpus"],
            "cuda_gpu_memory_mib": lay["memory"],
            "uwsgi_app_processes_per_gpu": lay["per_gpu"],
            "uwsgi_app_device": lay["device"],
        }
    run = render_uwsgi_app_instances(tmp_path, instances)
    assert run.returncode == 0, run.stdout[-3000:]


def test_an_8_gpu_host_gets_one_gpu_per_worker(tmp_path):
    render(tmp_path, {name: {"device": device} for name, device in DEVICES.items()})
    # auto on a GPU host: 8 GPUs x 2 workers, each worker its own GPU by its slot.
    settings, processes = rendered(tmp_path, "spread")
    assert processes == 16
    assert (settings["SEGSERVE_DEVICE"], settings["SEGSERVE_GPU_COUNT"]) == ("auto", "8")
    # uwsgi_app_backend auto serves torch on a GPU host, with nothing to choose.
    assert (settings["SEGSERVE_BACKEND"], settings["SEGSERVE_PRECISION"]) == ("torch", "fp32")
    assert "SEGSERVE_BACKEND_CHOICE" not in settings
    # Every worker on GPU 3: one GPU's share of workers, not eight GPUs' worth.
    settings, processes = rendered(tmp_path, "pinned")
    assert processes == 2 and settings["SEGSERVE_DEVICE"] == "cuda:3"
    # The CPU on a GPU host: one worker per core (torch threads 1), as on a CPU host.
    settings, processes = rendered(tmp_path, "cpu")
    assert processes == len(os.sched_getaffinity(0)) and settings["SEGSERVE_DEVICE"] == "cpu"
    # There auto chooses among the CPU backends, timed with that layout: the record's name
    # says so, and the service is told where it is.
    assert re.search(
        rf"-w{processes}t1h-[0-9a-f]{{16}}\.choice\.json$", settings["SEGSERVE_BACKEND_CHOICE"]
    )
    assert settings["SEGSERVE_ONNX_PATH"].endswith(".onnx")


def test_computed_workers_per_gpu_follow_the_cores_within_the_gpus_memory(tmp_path):
    # One lraspp worker on CUDA: 806 MiB measured, 1008 with the quarter more; 1024 kept free.
    render(
        tmp_path,
        {
            "one_gpu": {"device": "cuda", "gpus": 1, "memory": [143771], "per_gpu": 0},
            "small_gpu": {"device": "cuda", "gpus": 1, "memory": [1024 + 1008], "per_gpu": 0},
            "more_gpus_than_cores": {
                "device": "cuda", "gpus": CORES + 1, "memory": [81559] * (CORES + 1),
                "per_gpu": 0,
            },
            "pinned": {"device": "cuda:0", "gpus": 1, "memory": [143771], "per_gpu": 0},
        },
    )  # fmt: skip
    # One worker per core on a host's only GPU.
    assert rendered(tmp_path, "one_gpu")[1] == CORES
    assert rendered(tmp_path, "pinned")[1] == CORES
    # A GPU with room for one worker gets one, however many cores the host has.
    assert rendered(tmp_path, "small_gpu")[1] == 1
    # Every GPU gets a worker even when the cores are fewer.
    settings, processes = rendered(tmp_path, "more_gpus_than_cores")
    assert processes == CORES + 1 and settings["SEGSERVE_GPU_COUNT"] == str(CORES + 1)
