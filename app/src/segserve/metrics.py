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

import json
import os
import time
import urllib.request
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
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
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


class UwsgiStats:
    """What only uWSGI's master knows, read from its stats server when /metrics is scraped:
    the workers and how many are busy, worker respawns, harakiri kills and the listen queues.
    A worker killed by harakiri, the OOM killer or a crash runs no code of its own, so no
    counter of the app could count it; the master counts every one.

    uWSGI counts a worker's first spawn in its respawn_count; respawns here leave it out, so
    a fresh master reports 0 and Prometheus reads a restart of the service as a counter
    reset. max-requests recycling respawns workers too: its value is exported beside, so a
    rule can tell planned recycling from deaths (roles/prometheus' rules do); an instance
    with max-requests 0 (a lone worker, never recycled by count) exports none.
    """

    def __init__(self, port: int, model: str, timeout_s: float = 2.0):
        self.url = f"http://127.0.0.1:{port}/"
        self.model = model
        self.timeout_s = timeout_s

    def collect(self):
        up = GaugeMetricFamily(
            "segserve_uwsgi_stats_up",
            "1 if uWSGI's stats server answered this scrape, else 0.",
            labels=["model"],
        )
        try:
            with urllib.request.urlopen(self.url, timeout=self.timeout_s) as answer:
                stats = json.load(answer)
        except (OSError, ValueError):
            up.add_metric([self.model], 0)
            yield up
            return
        up.add_metric([self.model], 1)
        yield up
        workers = stats.get("workers", [])
        labels = [self.model]
        yield _gauge("segserve_uwsgi_workers", "Worker processes uWSGI runs.", labels,
                     len(workers))  # fmt: skip
        yield _gauge(
            "segserve_uwsgi_workers_busy", "Workers in a request now.", labels,
            sum(1 for w in workers if w.get("status") == "busy"),
        )  # fmt: skip
        respawns = sum(max(int(w.get("respawn_count", 0)) - 1, 0) for w in workers)
        yield _counter(
            "segserve_uwsgi_worker_respawns",
            "Workers respawned since the master started (deaths, harakiri, max-requests and "
            "reload-on-rss recycling).", labels, respawns,
        )  # fmt: skip
        yield _counter(
            "segserve_uwsgi_harakiri",
            "Workers killed by harakiri since the master started.", labels,
            sum(int(w.get("harakiri_count", 0)) for w in workers),
        )  # fmt: skip
        queue = GaugeMetricFamily(
            "segserve_uwsgi_listen_queue",
            "Connections waiting in a socket's listen queue for a free worker.",
            labels=["model", "socket"],
        )
        for socket in stats.get("sockets", []):
            queue.add_metric([self.model, str(socket.get("name", ""))], socket.get("queue", 0))
        yield queue
        yield _counter(
            "segserve_uwsgi_listen_queue_errors",
            "Connections refused because the listen queue was full.", labels,
            stats.get("listen_queue_errors", 0),
        )  # fmt: skip
        max_requests = _uwsgi_option("max-requests")
        if max_requests:
            yield _gauge(
                "segserve_uwsgi_max_requests",
                "Requests after which uWSGI recycles a worker (max-requests).", labels,
                max_requests,
            )  # fmt: skip


def _gauge(name: str, documentation: str, labels: list[str], value: float):
    family = GaugeMetricFamily(name, documentation, labels=["model"])
    family.add_metric(labels, value)
    return family


def _counter(name: str, documentation: str, labels: list[str], value: float):
    family = CounterMetricFamily(name, documentation, labels=["model"])
    family.add_metric(labels, value)
    return family


def _uwsgi_option(name: str) -> int:
    """An integer option of the running uWSGI (0 when not under uWSGI or not set)."""
    try:
        import uwsgi  # only importable inside a uWSGI worker
    except ImportError:
        return 0
    value = uwsgi.opt.get(name)
    if isinstance(value, list):  # an option given twice: the last one counts
        value = value[-1]
    try:
        return int(value.decode() if isinstance(value, bytes) else value)
    except (TypeError, ValueError):
        return 0


def render(model: str = "default", uwsgi_stats_port: int | None = None) -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    else:
        registry = CollectorRegistry()
        registry.register(_ProcessRegistry())
    if uwsgi_stats_port is not None:
        registry.register(UwsgiStats(uwsgi_stats_port, model))
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _ProcessRegistry:
    """This process's own metrics (the default registry), inside a registry of its own."""

    def collect(self):
        return REGISTRY.collect()
