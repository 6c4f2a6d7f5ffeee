"""The GPU check's measuring part (bench/gpu/check sets up its Python path and runs it).

Starts segserve under uWSGI with app/uwsgi.ini (the role's options), SEGSERVE_DEVICE=cuda and
the role's layout (GPUs x uwsgi_app_processes_per_gpu workers), checks each worker took its
own GPU, loads it with real photos at two concurrencies, then loads other workers-per-GPU
layouts once each, and writes bench/results/gpu.md (or $OUT/gpu.md) after each layout.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ROLE_DEFAULTS = ROOT / "roles/uwsgi_app/defaults/main.yml"
READY_TIMEOUT_S = 180
# --cpu: a rehearsal of the whole check on a machine without a GPU (the plumbing, not the
# figures), so that scarce GPU time is not spent finding a typo.
CPU_REHEARSAL = False
STAGES = ("decode", "preprocess", "inference", "postprocess", "encode")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def smi(*query: str) -> list[list[str]]:
    if CPU_REHEARSAL:
        return []
    out = subprocess.run(
        ["nvidia-smi", *query, "--format=csv,noheader,nounits"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    return [[field.strip() for field in line.split(",")] for line in out.splitlines() if line]


def role_workers_per_gpu(gpus: int) -> int:
    """Workers per GPU as the uwsgi_app role gives them: uwsgi_app_processes_per_gpu from its
    defaults, or where that is 0 (computed), this machine's cores shared by its GPUs
    (roles/uwsgi_app/vars/main.yml; its GPU-memory cap binds only on GPUs far smaller than
    this check's workers need)."""
    found = re.search(r"^uwsgi_app_processes_per_gpu: (\d+)$", ROLE_DEFAULTS.read_text(), re.M)
    if not found:
        raise SystemExit(f"uwsgi_app_processes_per_gpu not found in {ROLE_DEFAULTS}")
    return int(found.group(1)) or max(1, len(os.sched_getaffinity(0)) // gpus)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def photos() -> list[bytes]:
    """The packaged sample photos as JPEG, and one at 1920x1280 (a camera-sized decode)."""
    from PIL import Image

    from segserve import samples

    images = []
    for name in ("astronaut.jpg", "chelsea.jpg", "coffee.jpg"):
        images.append(samples.path(name).read_bytes())
    with Image.open(samples.path("coffee.jpg")) as img:
        big = io.BytesIO()
        img.convert("RGB").resize((1920, 1280)).save(big, format="JPEG", quality=90)
    images.append(big.getvalue())
    return images


def start(args, gpus: int, workers: int) -> tuple[subprocess.Popen, str, str, Path]:
    from segserve import weights as weights_mod

    work = Path(args.work)
    weights = work / "weights.pth"
    if not weights.exists():
        # The bench's test device: masks of many classes, so encode costs what a real mask
        # costs.
        weights_mod.save(
            weights_mod.init_payload("lraspp_mobilenet_v3_large", 0, varied_masks=True), weights
        )
    # Each layout its own metrics directory and log: /metrics sums the files it finds.
    metrics = work / f"metrics-{workers}"
    metrics.mkdir()
    port, stats = free_port(), free_port()
    env = {
        **os.environ,
        "SEGSERVE_WEIGHTS_PATH": str(weights),
        "SEGSERVE_DEVICE": "cpu" if CPU_REHEARSAL else "cuda",
        "SEGSERVE_GPU_COUNT": str(gpus),
        "SEGSERVE_TORCH_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics),
    }
    log = work / f"uwsgi-{workers}.log"
    proc = subprocess.Popen(
        [
            args.uwsgi, "--ini", str(ROOT / "app/uwsgi.ini"),
            "--http-socket", f"127.0.0.1:{port}", "--processes", str(workers),
            "--stats", f"127.0.0.1:{stats}", "--stats-http",
        ],
        env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    return proc, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{stats}", log


def wait_ready(proc, log: Path, workers: int) -> list[dict]:
    """Every worker's `ready:` line: its slot and its device."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        ready = re.findall(r"ready: worker=(\d+) .*?device=(\S+)", text)
        if len(ready) >= workers:
            return [{"worker": int(w), "device": d} for w, d in ready]
        if proc.poll() is not None or "refusing to start" in text:
            raise SystemExit(f"uWSGI did not start:\n{text[-4000:]}")
        time.sleep(1)
    raise SystemExit(f"not all {workers} workers ready after {READY_TIMEOUT_S}s")


def post(url: str, body: bytes) -> tuple[float, dict[str, float]]:
    request = urllib.request.Request(
        f"{url}/v1/segment", data=body, method="POST",
        headers={"Content-Type": "image/jpeg", "Accept": "image/png"},
    )  # fmt: skip
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as response:
        response.read()
        timing = response.headers.get("Server-Timing", "")
    elapsed = time.perf_counter() - started
    stages = {k: float(v) / 1000 for k, v in re.findall(r"(\w+);dur=([\d.]+)", timing)}
    return elapsed, stages


class GpuSampler(threading.Thread):
    """nvidia-smi once a second: utilisation and memory per GPU, memory per process."""

    def __init__(self):
        super().__init__(daemon=True)
        self.util: dict[str, list[float]] = {}
        self.proc_mem: dict[str, float] = {}
        self.stopping = threading.Event()

    def run(self):
        while not self.stopping.wait(1.0):
            for index, util, _mem in smi("--query-gpu=index,utilization.gpu,memory.used"):
                self.util.setdefault(index, []).append(float(util))
            for pid, used in smi("--query-compute-apps=pid,used_memory"):
                self.proc_mem[pid] = max(self.proc_mem.get(pid, 0.0), float(used))


def load(url: str, images: list[bytes], concurrency: int, seconds: int) -> dict:
    sampler = GpuSampler()
    sampler.start()
    deadline = time.monotonic() + seconds
    results: list[tuple[float, dict[str, float]]] = []

    def client(i: int):
        n = i
        while time.monotonic() < deadline:
            results.append(post(url, images[n % len(images)]))
            n += 1

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(client, range(concurrency)))
    wall = time.perf_counter() - started
    sampler.stopping.set()
    sampler.join()
    latencies = sorted(r[0] for r in results)
    stage_sums = {s: sum(r[1].get(s, 0.0) for r in results) for s in STAGES}
    app_total = sum(stage_sums.values()) or 1.0
    return {
        "concurrency": concurrency,
        "requests": len(results),
        "images_per_s": len(results) / wall,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "gpu_util": {k: statistics.mean(v) for k, v in sampler.util.items() if v},
        "proc_mem_mib": sampler.proc_mem,
        "stage_share": {s: stage_sums[s] / app_total for s in STAGES},
    }


def worker_pids(stats_url: str) -> dict[str, int]:
    with urllib.request.urlopen(stats_url, timeout=10) as response:
        stats = json.load(response)
    return {str(w["pid"]): w["id"] for w in stats["workers"]}


def driver_view() -> dict:
    """What the cuda role's detection and verify tasks read on this machine, read the same
    way (roles/cuda/tasks/detect.yml, verify.yml), so a real GPU host checks their parsing."""
    pci = []
    for dev in sorted(Path("/sys/bus/pci/devices").glob("*")):
        try:
            if (dev / "vendor").read_text().strip() == "0x10de":
                pci.append(f"{dev.name} {(dev / 'device').read_text().strip()} "
                           f"{(dev / 'class').read_text().strip()}")  # fmt: skip
        except OSError:
            continue
    try:
        module = Path("/sys/module/nvidia/version").read_text().strip()
    except OSError:
        module = "none"
    from segserve import gpus as gpus_mod

    return {
        "pci": pci,
        # detect.yml: class 0x0300/0x0302 are GPUs, 0x0680 an NVSwitch.
        "pci_gpus": sum(1 for line in pci if re.search(r" 0x030[02]", line)),
        "pci_nvswitches": sum(1 for line in pci if " 0x0680" in line),
        "module": module,
        "driver_gpus": gpus_mod.driver_gpu_count(),
        "smi": smi_rows("--query-gpu=index,name,memory.total,driver_version,compute_cap"),
    }


def smi_rows(query: str) -> list[str]:
    """nvidia-smi's rows, or its error as the one row: a report, not a reason to stop."""
    try:
        return [", ".join(row) for row in smi(query)]
    except (OSError, subprocess.SubprocessError) as error:
        return [f"nvidia-smi failed: {error}"]


def worker_of(placed: dict) -> int:
    return placed["worker"]


def phase_row(ph: dict) -> str:
    util = ", ".join(f"{k}: {v:.0f}" for k, v in sorted(ph["gpu_util"].items()))
    cpu = 1 - ph["stage_share"]["inference"]
    return (
        f"{ph['concurrency']} | {ph['requests']} | {ph['images_per_s']:.1f} | "
        f"{ph['p50_ms']:.1f} | {ph['p99_ms']:.1f} | {util} | {cpu:.0%} |"
    )


def report(machine: dict, main: dict, sweep: list[dict]) -> str:
    view = machine["driver_view"]
    lines = [
        "# GPU check: segserve under uWSGI on CUDA",
        "",
        f"Written by `bench/gpu/check` on {time.strftime('%Y-%m-%d', time.gmtime())}.",
        f"Machine: {machine['gpus']}; driver {machine['driver']}; torch {machine['torch']} "
        f"(CUDA {machine['cuda']}); {machine['cpus']} CPU cores ({machine['cpu']}).",
        f"Layout: {main['workers']} workers (GPUs x {machine['per_gpu']}, "
        "`uwsgi_app_processes_per_gpu`), one torch thread each, app/uwsgi.ini (the role's "
        "options), lazy-apps; 520 short side; PNG masks; the bench's multi-class test weights "
        "(untrained: speed only, no accuracy).",
        "CUDA smoke test (roles/uwsgi_app/files/cuda_smoke.py): "
        f"`{machine.get('smoke', 'not run')}`",
        "",
        "## What the cuda role reads here (its detection, read the same way)",
        "",
        f"- NVIDIA PCI devices (address, device, class): {'; '.join(view['pci']) or 'none'}",
        f"- GPUs by PCI class: {view['pci_gpus']}; NVSwitches: {view['pci_nvswitches']}",
        f"- loaded module (/sys/module/nvidia/version): {view['module']}",
        f"- GPUs the driver lists (/proc/driver/nvidia/gpus, `SEGSERVE_DEVICE=auto`): "
        f"{view['driver_gpus']}",
        f"- nvidia-smi (index, name, MiB, driver, compute capability): "
        f"{'; '.join(view['smi']) or 'none'}",
        "",
        "## Worker placement (from each worker's `ready:` line)",
        "",
        "| worker | device |",
        "| --- | --- |",
        *(f"| {p['worker']} | {p['device']} |" for p in sorted(main["placed"], key=worker_of)),
        "",
        "## Load (closed loop, 3 sample photos and one 1920x1280 JPEG in turn)",
        "",
        "| concurrency | requests | images/s | p50 ms | p99 ms | GPU util % (per GPU) | "
        "CPU stages share |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *(f"| {phase_row(ph)}" for ph in main["phases"]),
    ]
    last = main["phases"][-1]
    lines += [
        "",
        "CPU stages share: decode + preprocess + postprocess + encode over the app's whole "
        "time per request (Server-Timing); the rest is inference on the GPU.",
        "",
        "| stage | share of app time (last phase) |",
        "| --- | --- |",
        *(f"| {s} | {last['stage_share'][s]:.1%} |" for s in STAGES),
        "",
        "## GPU memory per worker (peak, nvidia-smi)",
        "",
        "| worker | pid | MiB |",
        "| --- | --- | --- |",
    ]
    mem = {pid: mib for ph in main["phases"] for pid, mib in ph["proc_mem_mib"].items()}
    for pid, mib in sorted(mem.items(), key=lambda kv: main["pids"].get(kv[0], 0)):
        lines.append(f"| {main['pids'].get(pid, '?')} | {pid} | {mib:.0f} |")
    if sweep:
        lines += [
            "",
            "## Workers per GPU (other layouts, same run: is the role's default right here?)",
            "",
            "| workers per GPU | concurrency | requests | images/s | p50 ms | p99 ms | "
            "GPU util % | CPU stages share |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
            *(f"| {run['per_gpu']} | {phase_row(ph)}" for run in [main, *sweep]
              for ph in run["phases"][-1:]),
        ]  # fmt: skip
    return "\n".join(lines) + "\n"


def run_layout(args, gpus: int, per_gpu: int, concurrencies, seconds: int, images) -> dict:
    """Start uWSGI with GPUs x per_gpu workers, check their placement, load it, stop it."""
    workers = gpus * per_gpu
    proc, url, stats_url, log = start(args, gpus, workers)
    try:
        placed = wait_ready(proc, log, workers)
        expected = {
            w: "cpu" if CPU_REHEARSAL else f"cuda:{(w - 1) % gpus}" for w in range(1, workers + 1)
        }
        wrong = [p for p in placed if expected[p["worker"]] != p["device"]]
        if wrong:
            raise SystemExit(f"workers on the wrong GPU: {wrong} (expected {expected})")
        for body in images:  # warm every worker's kernels for each image size
            for _ in range(workers):
                post(url, body)
        phases = [load(url, images, c * workers, seconds) for c in concurrencies]
        pids = worker_pids(stats_url)
    except BaseException:
        # The log travels back with the report: the reason is in it.
        (Path(args.out) / f"gpu-uwsgi-{workers}.log").write_bytes(log.read_bytes()[-200_000:])
        raise
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return {"per_gpu": per_gpu, "workers": workers, "placed": placed, "pids": pids,
            "phases": phases}  # fmt: skip


def layouts(text: str) -> list[int]:
    """--sweep: workers per GPU, comma-separated, each at least 1; '' for none."""
    counts = [n.strip() for n in text.split(",") if n.strip()]
    if not all(n.isdigit() and int(n) >= 1 for n in counts):
        raise argparse.ArgumentTypeError(f"{text!r}: give workers per GPU, e.g. 2,8")
    return [int(n) for n in counts]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", required=True)
    parser.add_argument("--uwsgi", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument(
        "--sweep", default="2,8", type=layouts,
        help="other workers-per-GPU layouts to load once each (concurrency 2 x workers) for "
        "half the seconds; '' for none",
    )  # fmt: skip
    parser.add_argument("--cpu", action="store_true", help="rehearse without a GPU")
    args = parser.parse_args()
    global CPU_REHEARSAL
    CPU_REHEARSAL = args.cpu
    sweep = args.sweep
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = smi("--query-gpu=index,name,driver_version") or [["0", "no GPU (CPU rehearsal)", "-"]]
    gpus = len(rows)
    per_gpu = role_workers_per_gpu(gpus)
    import torch

    machine = {
        "gpus": f"{gpus} x {rows[0][1]}", "driver": rows[0][2], "torch": torch.__version__,
        "cuda": torch.version.cuda, "cpus": os.cpu_count(), "cpu": cpu_model(),
        "per_gpu": per_gpu, "driver_view": driver_view(),
    }  # fmt: skip
    # The role's CUDA smoke test first: every GPU seen, a computation right on each.
    if not CPU_REHEARSAL:
        smoke = subprocess.run(
            [sys.executable, str(ROOT / "roles/uwsgi_app/files/cuda_smoke.py"), str(gpus)],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        if smoke.returncode != 0:
            raise SystemExit(smoke.stdout + smoke.stderr)
        machine["smoke"] = smoke.stdout.strip()
    images = photos()
    main_run = run_layout(args, gpus, per_gpu, (1, 2), args.seconds, images)
    runs = []

    def write() -> None:
        text = report(machine, main_run, runs)
        (out / "gpu.md").write_text(text)
        data = {"machine": machine, "layouts": [main_run, *runs]}
        (out / "gpu.json").write_text(json.dumps(data, indent=1))
        print(text, flush=True)

    write()  # the role's layout reported before the others can fail
    for n in sweep:
        runs.append(run_layout(args, gpus, n, (2,), max(1, args.seconds // 2), images))
        write()


if __name__ == "__main__":
    main()
