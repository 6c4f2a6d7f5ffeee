"""Prometheus metrics, correct across uWSGI worker processes.

With PROMETHEUS_MULTIPROC_DIR set (the systemd unit points it at a fresh per-start runtime
directory), prometheus_client keeps each process's values in files there and /metrics, served
by whichever worker, sums them all. Without it, one process's own registry is exported. The
variable is read when prometheus_client is first imported, so it must be in the environment
before the worker starts; with uWSGI's lazy-apps that is before the app is loaded.
Counters and histograms sum correctly across processes with no mode to choose. The one gauge,
segserve_build_info, is an info-style constant 1 whose labels carry the versions; it uses
mode "max", see BUILD_INFO.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

# From 5 ms (decode of a small PNG) to 20 s (a huge image on a busy CPU); the 0.1-0.5 s band
# where a 520x520 CPU inference lands is finer.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0)

# The stages of a request, in order: the metric's labels and the Server-Timing names.
STAGES = ("decode", "preprocess", "inference", "postprocess", "encode")


class StageTimings(dict):
    """Seconds per stage of one request (stage name -> seconds), in the order they ran."""

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r}: one of {', '.join(STAGES)}")
        started = time.perf_counter()
        yield
        self[name] = time.perf_counter() - started


STAGE_SECONDS = Histogram(
    "segserve_stage_seconds",
    "Time spent per request in each processing stage, by the worker's device.",
    ["model", "stage", "device"],
    buckets=_BUCKETS,
)
REQUESTS = Counter(
    "segserve_requests",
    "HTTP requests answered, by endpoint and status code.",
    ["model", "endpoint", "status"],
)
REQUEST_SECONDS = Histogram(
    "segserve_request_seconds",
    "Time from the request reaching the app to the response leaving it, by the worker's device.",
    ["model", "endpoint", "device"],
    buckets=_BUCKETS,
)
MODEL_LOADS = Counter(
    "segserve_model_loads",
    "Models loaded (one per worker start; more than the worker count means respawns).",
    ["model", "arch", "pretrained", "device"],
)

# Every worker sets the same labels to 1, and "max" renders that as one series of value 1
# whichever worker answers, and with no pid label. "liveall" would render one series per
# worker, with its pid, and keep those of dead workers unless the master called
# mark_process_dead for each (a worker killed by harakiri or the OOM killer runs no code of
# its own, and uWSGI's master runs none of the app's). Prometheus' Info type is not supported in
# multiprocess mode, hence the gauge. A worker respawned after an upgrade on disk adds a
# series with the new versions beside the old one, which is what an operator wants to see.
BUILD_INFO = Gauge(
    "segserve_build_info",
    "Versions of what serves (always 1): app, libraries, backend, device.",
    [
        "model",
        "app_version",
        "torch",
        "torchvision",
        "onnxruntime",
        "openvino",
        "backend",
        "precision",
        "device",
    ],
    multiprocess_mode="max",
)


def observe_stages(timings: dict[str, float], model: str, device: str) -> None:
    for stage, seconds in timings.items():
        STAGE_SECONDS.labels(model, stage, device).observe(seconds)


def render() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
