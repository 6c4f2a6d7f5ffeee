"""One GPU per worker (segserve.gpus): the spread, the binding, and the refusal to start on a
GPU host whose GPUs torch cannot see. These machines have no GPU: the mapping is shown with
real uWSGI workers, and the refusal with the real CUDA build of torch and no driver."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from segserve import create_app, gpus
from segserve.errors import StartupError

from conftest import VENV_BIN, UwsgiServer, free_port


def driver_dir(tmp_path: Path, count: int) -> Path:
    """What the NVIDIA driver shows under /proc/driver/nvidia/gpus: a directory per GPU."""
    root = tmp_path / "gpus"
    root.mkdir()
    for index in range(count):
        (root / f"0000:{0x18 + index:02x}:00.0").mkdir()
    return root


def test_workers_spread_evenly_over_the_gpus():
    # An 8-GPU server with 2 workers per GPU: 16 workers, 2 on each GPU.
    host = [str(i) for i in range(8)]
    chosen = Counter(gpus.gpu_for_worker(worker, host) for worker in range(1, 17))
    assert chosen == {gpu: 2 for gpu in host}
    # Consecutive workers land on different GPUs, so a half-started host already uses them all.
    assert [gpus.gpu_for_worker(w, host) for w in range(1, 9)] == host


def test_a_worker_sees_only_its_gpu(tmp_path):
    env: dict[str, str] = {}
    placed = gpus.place("cuda", 4, worker=3, environ=env, driver_gpus=tmp_path / "none")
    assert (placed.torch_device, placed.label) == ("cuda:0", "cuda:2")
    # Numbered as nvidia-smi numbers them, not CUDA's default fastest-first order.
    assert env == {"CUDA_VISIBLE_DEVICES": "2", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


def test_auto_counts_the_gpus_the_driver_lists(tmp_path):
    env: dict[str, str] = {}
    placed = gpus.place("auto", 0, worker=4, environ=env, driver_gpus=driver_dir(tmp_path, 2))
    assert placed.label == "cuda:1" and env["CUDA_VISIBLE_DEVICES"] == "1"


def test_auto_is_the_cpu_where_the_driver_lists_no_gpu(tmp_path):
    env: dict[str, str] = {}
    assert gpus.place("auto", 0, environ=env, driver_gpus=driver_dir(tmp_path, 0)).label == "cpu"
    assert env == {}


@pytest.mark.parametrize("hidden", ["", "-1", "NoDevFiles"])
def test_a_visible_list_naming_no_gpu_means_the_cpu_for_auto(tmp_path, hidden):
    env = {"CUDA_VISIBLE_DEVICES": hidden}
    assert gpus.place("auto", 8, environ=env, driver_gpus=driver_dir(tmp_path, 8)).label == "cpu"


def test_an_operators_visible_list_is_what_the_workers_share(tmp_path):
    env = {"CUDA_VISIBLE_DEVICES": "4,5"}
    placed = gpus.place("cuda", 8, worker=2, environ=env, driver_gpus=driver_dir(tmp_path, 8))
    assert placed.label == "cuda:5" and env["CUDA_VISIBLE_DEVICES"] == "5"
    assert placed.host_gpus == ("4", "5")


def test_a_pinned_gpu_takes_every_worker(tmp_path):
    for worker in (1, 2, 7):
        env: dict[str, str] = {}
        placed = gpus.place("cuda:3", 8, worker=worker, environ=env, driver_gpus=tmp_path)
        assert placed.label == "cuda:3" and env["CUDA_VISIBLE_DEVICES"] == "3"


def test_a_pinned_gpu_the_host_lacks_is_refused(tmp_path):
    with pytest.raises(StartupError, match="SEGSERVE_DEVICE=cuda:9 but this host's GPUs are 0, 1"):
        gpus.place("cuda:9", 2, environ={}, driver_gpus=tmp_path)


def test_cuda_on_a_host_without_gpus_is_refused(tmp_path):
    with pytest.raises(StartupError, match="SEGSERVE_DEVICE=cuda but this host has no GPU"):
        gpus.place("cuda", 0, environ={}, driver_gpus=driver_dir(tmp_path, 0))


def test_a_gpu_host_whose_gpus_torch_cannot_see_refuses_to_start(settings, monkeypatch):
    # Here torch is a CUDA build and no driver is loaded, as on a GPU host whose driver broke:
    # the worker must refuse, never serve on the CPU. (set, then delete: monkeypatch restores
    # the variables to absent afterwards.)
    for name in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER"):
        monkeypatch.setenv(name, "-")
        monkeypatch.delenv(name)
    with pytest.raises(StartupError, match="GPU cuda:0 of this host's GPUs .0, 1.*torch sees no"):
        create_app({**settings, "DEVICE": "cuda", "GPU_COUNT": 2})


def test_uwsgi_refuses_to_serve_on_the_cpu_when_its_gpus_are_missing(weights_file, tmp_path):
    # The role's uWSGI options (app/uwsgi.ini): need-app makes the refusal end the instance,
    # which the role's readiness wait reports with this line from the journal.
    server = UwsgiServer(weights_file, tmp_path, SEGSERVE_DEVICE="cuda", SEGSERVE_GPU_COUNT="2")
    try:
        with pytest.raises(RuntimeError, match="uWSGI exited"):
            server.wait_ready(timeout=120)
    finally:
        server.stop()
    # Whichever worker loads first refuses (both would): worker 1 with GPU 0 or 2 with GPU 1.
    refusal = r"refusing to start: worker (1 was given GPU cuda:0|2 was given GPU cuda:1) of "
    text = server.log()
    assert re.search(refusal + r"this host's GPUs \(0, 1\), but torch sees no", text), text


# A stand-in for the app that records where each worker was placed, so the mapping can be
# seen in real uWSGI workers (their worker ids, lazy-apps, respawns) without a GPU.
PLACEMENT_APP = """\
import json, os
from segserve import gpus

placed = gpus.place("cuda", 3)
record = {"worker": gpus.worker_id(), "pid": os.getpid(), "label": placed.label,
          "visible": os.environ["CUDA_VISIBLE_DEVICES"]}
with open(os.path.join(os.environ["PLACEMENTS"], f"{os.getpid()}.json"), "w") as out:
    json.dump(record, out)


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
"""


def read_placements(folder: Path, count: int, timeout: float = 60) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = [json.loads(p.read_text() or "null") for p in folder.glob("*.json")]
        if len(records) >= count and all(records):
            return records
        time.sleep(0.2)
    raise AssertionError(f"{len(list(folder.glob('*.json')))} of {count} workers recorded")


def test_uwsgi_workers_take_the_gpus_in_turn_and_keep_them_across_respawns(tmp_path):
    script = tmp_path / "placement.py"
    script.write_text(textwrap.dedent(PLACEMENT_APP))
    placements = tmp_path / "placements"
    placements.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUDA_")}
    proc = subprocess.Popen(
        [
            str(VENV_BIN / "uwsgi"), "--master", "--lazy-apps", "--need-app", "--processes", "6",
            "--http-socket", f"127.0.0.1:{free_port()}", "--wsgi-file", str(script),
        ],
        env={**env, "PLACEMENTS": str(placements)},
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        first = read_placements(placements, 6)
        by_worker = {r["worker"]: r for r in first}
        assert sorted(by_worker) == [1, 2, 3, 4, 5, 6]
        for worker, record in by_worker.items():
            gpu = str((worker - 1) % 3)
            assert (record["visible"], record["label"]) == (gpu, f"cuda:{gpu}")
        # Kill worker 5 as harakiri or the OOM killer would: its respawn gets GPU 1 again.
        os.kill(by_worker[5]["pid"], signal.SIGKILL)
        respawned = [r for r in read_placements(placements, 7) if r["pid"] not in
                     {p["pid"] for p in first}]  # fmt: skip
        assert [(r["worker"], r["label"]) for r in respawned] == [(5, "cuda:1")]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
