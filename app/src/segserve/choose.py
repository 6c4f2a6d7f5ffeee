"""Choose, on this host, the fastest backend that passes the agreement gate.

`segserve-weights choose-backend` runs where the service will run, at deploy time, never at
request time:

1. The candidates: `onnxruntime fp32` (the baseline, always), `openvino fp32`, and
   `openvino bf16` where the CPU computes bfloat16 natively; one not installed or not
   supported here is recorded as skipped, with why.
2. Each, the baseline included, goes through the agreement gate (segserve.gate) on the
   gate's 12 photos, run here on this host's CPU; only those that pass may be chosen. The
   reference is eager PyTorch float32 as the conversion recorded it in the artifact (each
   pixel's class and decided level): the host has no torch, and needs none for the gate.
3. Those that pass are timed with the host's worker layout: `workers` processes of `threads`
   threads each (as uWSGI will run them), all serving a 520x520 photo from JPEG to PNG at
   once, in interleaved rounds (order rotated each round), images/s per round; medians.
4. The fastest is chosen, but it replaces the baseline only when it is more than MIN_GAIN
   faster: no host ends up slower than onnxruntime fp32 through noise.

The record (JSON) keeps the choice, every candidate's gate figures and rates, and the key it
was measured under: the weights' and the artifact's sha256, the CPU (model and flags), the
runtimes' versions, the layout, the input size, the gate. A second run with the same key
reads the record and times nothing ("up to date").
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

from segserve import gate
from segserve.errors import StartupError

RECORD_FORMAT = "segserve-backend-choice/1"
BASELINE = "onnxruntime fp32"
CANDIDATES = ("onnxruntime fp32", "openvino fp32", "openvino bf16")
# A candidate replaces the baseline only when its median rate is this much higher: rounds on
# one host vary by a few percent (bench/results/backends.md), and a tie is not a win.
MIN_GAIN = 0.05


class ChoiceError(StartupError):
    """No candidate can serve, or the inputs are not what the record needs."""


@dataclass(frozen=True)
class Candidate:
    label: str  # "openvino bf16"

    @property
    def backend(self) -> str:
        return self.label.split()[0]

    @property
    def precision(self) -> str:
        return self.label.split()[1]


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def cpu_identity() -> dict[str, Any]:
    """What makes timings on this CPU valid: its model, its flags (hashed) and the cores this
    process may use."""
    model, flags = "unknown", ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name.strip() == "model name" and model == "unknown":
                    model = value.strip()
                if name.strip() == "flags" and not flags:
                    flags = " ".join(sorted(value.split()))
    except OSError:
        pass
    return {
        "model": model,
        "flags_sha256": hashlib.sha256(flags.encode()).hexdigest()[:16],
        "cores": len(os.sched_getaffinity(0)),
    }


def available() -> tuple[list[Candidate], dict[str, str]]:
    """The candidates this host can run, and why the others are skipped."""
    skipped: dict[str, str] = {}
    if _version("onnxruntime") is None:
        raise ChoiceError("onnxruntime is not installed: it is the baseline every choice needs")
    runnable = [Candidate(BASELINE)]
    if _version("openvino") is None:
        for label in CANDIDATES[1:]:
            skipped[label] = "openvino is not installed"
        return runnable, skipped
    from segserve.openvino_backend import cpu_capabilities, host_precisions

    precisions = host_precisions()
    for label in CANDIDATES[1:]:
        if Candidate(label).precision in precisions:
            runnable.append(Candidate(label))
        else:
            skipped[label] = (
                f"this CPU does not compute {Candidate(label).precision} natively "
                f"(OpenVINO lists {', '.join(cpu_capabilities())})"
            )
    return runnable, skipped


def choice_key(
    weights_sha: str, onnx_sha: str, input_size: int, workers: int, threads: int, threshold: float
) -> dict[str, Any]:
    return {
        "weights_sha256": weights_sha,
        "onnx_sha256": onnx_sha,
        "input_size": input_size,
        "workers": workers,
        "threads": threads,
        "threshold": threshold,
        "gate": gate.GATE_VERSION,
        "cpu": cpu_identity(),
        "versions": {n: _version(n) for n in ("segserve", "onnxruntime", "openvino", "torch")},
    }


def read_record(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("format") == RECORD_FORMAT else None


def _runner(candidate: Candidate, onnx_path: str, threads: int):
    """(class ids, logits) of the artifact under `candidate`, for the gate."""
    if candidate.backend == "onnxruntime":
        from segserve.backends import ONNX_CLASS_IDS, ONNX_INPUT, ONNX_LOGITS, ort_session

        session = ort_session(onnx_path, threads)
        return lambda batch: tuple(session.run([ONNX_CLASS_IDS, ONNX_LOGITS], {ONNX_INPUT: batch}))
    from segserve.openvino_backend import compile_artifact

    _, compiled = compile_artifact(onnx_path, candidate.precision, threads)
    request = compiled.create_infer_request()
    ids, logits = compiled.output("class_ids"), compiled.output("logits")

    def run(batch):
        out = request.infer({"input": batch})
        return out[ids], out[logits]

    return run


def recorded_reference(meta: dict[str, str], input_size: int) -> bytes:
    """What the conversion recorded of eager PyTorch on the gate's photos (base64 in the
    artifact's metadata), at the input size the service runs."""
    import base64

    if "gate_reference" not in meta:
        raise ChoiceError(
            "the artifact carries no recorded gate reference (made by an older version): "
            "convert again with `segserve-weights export-onnx`"
        )
    if meta.get("checked_input_size") != str(input_size):
        raise ChoiceError(
            f"the artifact's gate reference was recorded at input size "
            f"{meta.get('checked_input_size')}, not {input_size}: convert it with "
            f"`segserve-weights export-onnx --input-size {input_size}`"
        )
    return base64.b64decode(meta["gate_reference"])


def gate_all(cands, onnx_path, recorded, input_size, threshold, threads):
    """Every candidate's gate on this host, against eager PyTorch as recorded."""
    return {
        c.label: gate.evaluate_recorded(
            recorded,
            _runner(c, onnx_path, threads),
            precision=c.precision,
            input_size=input_size,
            max_flip_share=1.0 - threshold,
        )
        for c in cands
    }


def _timing_worker(settings_values, labels, rounds, images, barrier, results):
    """One of `workers` processes: every candidate's handler built once, then the rounds,
    in step with the other processes (the barrier), each candidate in turn."""
    from segserve import samples
    from segserve.config import Settings
    from segserve.handler import SegmentationHandler
    from segserve.images import encode_png

    with open(samples.path("astronaut.jpg"), "rb") as f:
        data = f.read()
    handlers = {}
    for label in labels:
        c = Candidate(label)
        values = {**settings_values, "BACKEND": c.backend, "PRECISION": c.precision}
        handlers[label] = SegmentationHandler(Settings.from_mapping(values))
        handlers[label].initialize()
        encode_png(handlers[label].handle(data).mask)
    for round_ in range(rounds):
        shift = round_ % len(labels)
        for label in labels[shift:] + labels[:shift]:
            barrier.wait()
            started = time.perf_counter()
            for _ in range(images):
                encode_png(handlers[label].handle(data).mask)
            results.put((round_, label, started, time.perf_counter()))


def time_all(labels, settings_values, workers, rounds, images) -> dict[str, list[float]]:
    """images/s of each candidate per round, all `workers` processes at once."""
    import multiprocessing as mp

    # Spawned, not forked: each process starts clean, as a uWSGI worker with lazy-apps does.
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(workers)
    results = ctx.Queue()
    args = (settings_values, list(labels), rounds, images, barrier, results)
    procs = [ctx.Process(target=_timing_worker, args=args) for _ in range(workers)]
    for p in procs:
        p.start()
    spans: dict[tuple[int, str], list[tuple[float, float]]] = {}
    try:
        for _ in range(workers * rounds * len(labels)):
            round_, label, start, end = results.get(timeout=600)
            spans.setdefault((round_, label), []).append((start, end))
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    if any(p.exitcode for p in procs):
        raise ChoiceError("a timing process failed; its error is above")
    rates: dict[str, list[float]] = {label: [] for label in labels}
    for (_, label), s in sorted(spans.items()):
        wall = max(end for _, end in s) - min(start for start, _ in s)
        rates[label].append(workers * images / wall)
    return rates


def decide(rates: dict[str, list[float]]) -> str:
    medians = {label: statistics.median(r) for label, r in rates.items()}
    best = max(medians, key=medians.get)
    if best != BASELINE and medians[best] <= medians[BASELINE] * (1.0 + MIN_GAIN):
        return BASELINE
    return best


def summary_line(record: dict[str, Any]) -> str:
    chosen = record["chosen"]
    return f"{chosen['backend']} {chosen['precision']}"


def write_record(path: str, record: dict[str, Any]) -> None:
    from segserve.weights import atomic_output

    with atomic_output(path, ".segserve-choice-", ".json") as tmp, open(tmp, "w") as f:
        json.dump(record, f, indent=2, sort_keys=True)
        f.write("\n")


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def choose(
    onnx_path: str,
    out: str,
    *,
    workers: int,
    threads: int,
    input_size: int = 520,
    threshold: float = 1.0 - gate.DEFAULT_MAX_FLIP_SHARE,
    rounds: int = 3,
    images: int = 8,
    expected_sha256: str | None = None,
) -> tuple[dict[str, Any], bool]:
    """The record for this host, and whether it was measured now (False: it was up to date).
    `expected_sha256` pins the weights the artifact must have been converted from."""
    from segserve.backends import read_onnx_metadata
    from segserve.weights import WeightsError, file_sha256

    if not os.path.isfile(onnx_path):
        raise WeightsError(f"onnx artifact not found: {onnx_path}")
    onnx_sha = file_sha256(onnx_path)
    # A record is written only after the artifact's weights were checked against the key's:
    # with the weights pinned, a record whose key matches (the artifact's sha256 included)
    # needs no look inside the artifact; unpinned, the artifact names them.
    meta = None if expected_sha256 else read_onnx_metadata(onnx_path)
    weights_sha = (
        expected_sha256.lower() if expected_sha256 else meta.get("source_weights_sha256", "")
    )
    key = choice_key(weights_sha, onnx_sha, input_size, workers, threads, threshold)
    old = read_record(out)
    if old is not None and old.get("key") == key:
        return old, False
    meta = meta or read_onnx_metadata(onnx_path)
    if meta.get("source_weights_sha256") != weights_sha:
        raise WeightsError(
            f"{onnx_path} was converted from weights sha256 "
            f"{meta.get('source_weights_sha256') or '(not recorded)'}, expected {expected_sha256}"
        )

    recorded = recorded_reference(meta, input_size)
    started = time.perf_counter()
    runnable, skipped = available()
    log(f"candidates: {', '.join(c.label for c in runnable)}")
    for label, why in skipped.items():
        log(f"skipped {label}: {why}")
    gates = gate_all(runnable, onnx_path, recorded, input_size, threshold, threads)
    for label, result in gates.items():
        log(f"{label}:\n{result.table()}")
    passing = [label for label, result in gates.items() if result.passes]
    if BASELINE not in passing:
        raise ChoiceError(
            f"the baseline {BASELINE} fails the agreement gate on this host: "
            + "; ".join(gates[BASELINE].failures())
        )
    settings_values = {
        "WEIGHTS_SHA256": weights_sha,
        "ONNX_PATH": onnx_path,
        "ONNX_SHA256": onnx_sha,
        "DEVICE": "cpu",
        "TORCH_THREADS": threads,
        "INPUT_SIZE": input_size,
    }
    rates = time_all(passing, settings_values, workers, rounds, images)
    chosen = decide(rates)
    baseline_rate = statistics.median(rates[BASELINE])
    entries = []
    for label in CANDIDATES:
        entry: dict[str, Any] = {"label": label, "skipped": skipped.get(label)}
        if label in gates:
            entry["gate"] = gates[label].summary()
        if label in rates:
            median = statistics.median(rates[label])
            entry["images_per_s"] = [round(r, 2) for r in rates[label]]
            entry["median_images_per_s"] = round(median, 2)
            entry["vs_baseline"] = round(median / baseline_rate, 3)
        entries.append(entry)
    record = {
        "format": RECORD_FORMAT,
        "key": key,
        "chosen": {
            "backend": Candidate(chosen).backend,
            "precision": Candidate(chosen).precision,
            "median_images_per_s": round(statistics.median(rates[chosen]), 2),
            "vs_baseline": round(statistics.median(rates[chosen]) / baseline_rate, 3),
        },
        "baseline": BASELINE,
        "min_gain": MIN_GAIN,
        "reference": "eager PyTorch float32, as the conversion recorded it in the artifact",
        "timing": {
            "workers": workers,
            "threads": threads,
            "rounds": rounds,
            "images_per_worker_per_round": images,
            "image": "astronaut.jpg 512x512, JPEG in, PNG mask out",
        },
        "candidates": entries,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_record(out, record)
    return record, True


def check_served(path: str, backend: str, precision: str, onnx_sha256: str | None):
    """At a worker's start: the record must have chosen what this worker serves, for the
    artifact it loads. Returns what GET /v1/model shows of it: the choice, when it was
    measured, and each candidate's gate verdict and speed against the baseline (ratios only:
    absolute rates are a host's capacity, for its operators, in the record and the role's fact)."""
    from segserve import config

    record = read_record(path)
    if record is None:
        raise ChoiceError(
            f"{config.BACKEND_CHOICE.env}={path} is not a backend choice record (made by "
            "`segserve-weights choose-backend`)"
        )
    label = summary_line(record)
    if label != f"{backend} {precision}":
        raise ChoiceError(
            f"{path} chose {label}, but this worker is set to {backend} {precision} "
            f"({config.BACKEND.env}, {config.PRECISION.env})"
        )
    if onnx_sha256 is not None and record["key"].get("onnx_sha256") != onnx_sha256:
        measured = record["key"].get("onnx_sha256")
        raise ChoiceError(
            f"{path} was measured with another artifact (sha256 {measured}, this one is "
            f"{onnx_sha256}): run `segserve-weights choose-backend` again"
        )
    return {
        "chosen": label,
        "baseline": record["baseline"],
        "measured_at": record["measured_at"],
        "candidates": {
            c["label"]: {
                "passes_gate": c.get("gate", {}).get("passes"),
                "vs_baseline": c.get("vs_baseline"),
                "skipped": c.get("skipped") is not None,
            }
            for c in record["candidates"]
        },
    }
