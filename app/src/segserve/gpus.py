"""One GPU per worker: which of the host's GPUs this uWSGI worker uses, bound before CUDA starts.

With `SEGSERVE_DEVICE=cuda` (or `auto` on a host whose driver lists GPUs), worker k of a
uWSGI instance (k = 1, 2, ...) takes GPU (k - 1) mod G of the host's G GPUs, so the
N x workers-per-GPU workers the role starts spread evenly, and a worker respawned in slot k
(after harakiri or max-requests) gets the same GPU back. The worker sees only its GPU:
`CUDA_VISIBLE_DEVICES` is set to it in the worker before CUDA initialises (lazy-apps loads
the app after fork, and nothing touches CUDA in the master), so no worker opens a context
or allocates memory on another worker's GPU, and torch calls it cuda:0. The device the
service reports (`/v1/model`, the log line, the metrics' `device` label) is the host's
numbering, `cuda:3`, in PCI bus order (`CUDA_DEVICE_ORDER=PCI_BUS_ID`, as nvidia-smi counts).

One uWSGI instance per host keeps one port, one harakiri and one upstream entry per host;
an instance per GPU would multiply those by the GPU count for nothing a worker slot cannot
already say.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from segserve.config import DEVICE, GPU_COUNT
from segserve.errors import StartupError

# One directory per GPU the NVIDIA driver has bound (its PCI address); read without CUDA.
DRIVER_GPUS = Path("/proc/driver/nvidia/gpus")
VISIBLE = "CUDA_VISIBLE_DEVICES"


@dataclass(frozen=True)
class Placement:
    # What torch is given ("cpu", or "cuda:0": the one GPU this worker sees).
    torch_device: str
    # What the service reports: "cpu", or the GPU in the host's numbering ("cuda:3").
    label: str
    # The host's GPUs the worker chose from (empty on the CPU).
    host_gpus: tuple[str, ...] = ()


def worker_id() -> int:
    """This process's uWSGI worker slot (1, 2, ...); 1 outside uWSGI (tests, a shell)."""
    try:
        import uwsgi  # only importable inside a uWSGI process
    except ImportError:
        return 1
    return max(1, uwsgi.worker_id())


def driver_gpu_count(driver_gpus: Path = DRIVER_GPUS) -> int:
    """GPUs the NVIDIA driver lists on this host; 0 without the driver."""
    try:
        return sum(1 for entry in driver_gpus.iterdir() if entry.is_dir())
    except OSError:
        return 0


def host_gpus(
    gpu_count: int, environ: dict[str, str], driver_gpus: Path = DRIVER_GPUS
) -> list[str]:
    """The GPUs this instance may use, by the host's numbering: those an operator listed in
    CUDA_VISIBLE_DEVICES (for the whole instance), else the host's `gpu_count` (the cuda
    role's fact), else as many as the driver lists."""
    listed = environ.get(VISIBLE)
    if listed is not None:
        # CUDA reads the list up to its first entry that names no GPU ("-1", "NoDevFiles":
        # common ways to hide them all).
        gpus = []
        for entry in (gpu.strip() for gpu in listed.split(",")):
            if not re.fullmatch(r"\d+|(GPU|MIG)-[0-9A-Za-z/-]+", entry):
                break
            gpus.append(entry)
        return gpus
    count = gpu_count or driver_gpu_count(driver_gpus)
    return [str(index) for index in range(count)]


def gpu_for_worker(worker: int, gpus: list[str]) -> str:
    """Worker slot `worker` (1-based) takes the GPUs in turn: an even spread."""
    return gpus[(worker - 1) % len(gpus)]


def place(
    device: str,
    gpu_count: int,
    *,
    worker: int | None = None,
    environ: dict[str, str] | None = None,
    driver_gpus: Path = DRIVER_GPUS,
) -> Placement:
    """Choose this worker's device and, for a GPU, make it the only one the process sees.

    `environ` is changed in place (os.environ by default): call this before anything
    initialises CUDA in the process."""
    env = os.environ if environ is None else environ
    if device == "cpu":
        return Placement("cpu", "cpu")
    gpus = host_gpus(gpu_count, env, driver_gpus)
    # No GPU here, or a CUDA_VISIBLE_DEVICES naming none ("", "-1"): `auto` means the CPU.
    if device == "auto" and not gpus:
        return Placement("cpu", "cpu")
    if not gpus:
        raise StartupError(
            f"{DEVICE.env}={device} but this host has no GPU: the NVIDIA driver lists none "
            f"under {driver_gpus}, {GPU_COUNT.env} is 0 and {VISIBLE} is empty; install the "
            f"driver (the cuda role) or set {DEVICE.env}=cpu"
        )
    _refuse_if_cuda_started()
    if device.startswith("cuda:"):
        index = device.partition(":")[2]
        if index not in gpus:
            raise StartupError(f"{DEVICE.env}={device} but this host's GPUs are {', '.join(gpus)}")
        chosen = index
    else:
        chosen = gpu_for_worker(worker or worker_id(), gpus)
    env[VISIBLE] = chosen
    # nvidia-smi counts in PCI bus order; CUDA's default order is fastest first.
    env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    return Placement("cuda:0", f"cuda:{chosen}", tuple(gpus))


def check_visible(placement: Placement) -> None:
    """After placing: torch must see exactly the chosen GPU, or the worker refuses to start
    (never silently on the CPU)."""
    if placement.torch_device == "cpu":
        return
    import torch

    if not torch.cuda.is_available() or torch.cuda.device_count() < 1:
        build = torch.version.cuda
        why = (
            f"this torch ({torch.__version__}) is a CPU-only build"
            if build is None
            else f"torch (CUDA {build}) cannot use it: check nvidia-smi, the driver version "
            "and that the device nodes (/dev/nvidia*) exist"
        )
        raise StartupError(
            f"worker {worker_id()} was given GPU {placement.label} of this host's GPUs "
            f"({', '.join(placement.host_gpus)}), but torch sees no CUDA device: {why}"
        )


def _refuse_if_cuda_started() -> None:
    torch = _torch_if_imported()
    if torch is not None and torch.cuda.is_initialized():
        raise StartupError(
            f"CUDA was initialised in this process before the worker chose its GPU, so "
            f"{VISIBLE} can no longer take effect: load the app with lazy-apps and touch "
            "no CUDA in the uWSGI master"
        )


def _torch_if_imported():
    # Only a torch already imported can have started CUDA; importing it here would not.
    return sys.modules.get("torch")
