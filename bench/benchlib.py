"""Pieces the benchmarks share: a multi-process rate, the CPU flags line, the report writer."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable
from pathlib import Path


def spawn_rate(worker: Callable, args: tuple, procs: int, n: int) -> float:
    """Requests per second of `procs` processes, each calling worker(*args, barrier, results).

    The worker warms up, waits at the barrier, runs `n` requests and puts (start, end) on
    `results`. Processes are spawned, not forked: each starts clean and builds its own model
    after start, as a uWSGI worker with lazy-apps does (a fork after torch ran threads can hang).
    """
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(procs)
    results = ctx.Queue()
    workers = [ctx.Process(target=worker, args=(*args, barrier, results)) for _ in range(procs)]
    for w in workers:
        w.start()
    spans = [results.get() for _ in workers]
    for w in workers:
        w.join()
    return procs * n / (max(end for _, end in spans) - min(start for start, _ in spans))


def write_report(out: str | Path, lines: list[str]) -> int:
    """Write the markdown report, echo it, and return the exit status."""
    text = "\n".join(lines)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text)
    print(text)
    return 0


def cpu_flags() -> str:
    """The flags of /proc/cpuinfo that bfloat16 and int8 kernels use, or 'none of them'."""
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(
                (line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []
            )
    except OSError:
        return "unknown"
    return ", ".join(f for f in wanted if f in flags) or "none of them"
