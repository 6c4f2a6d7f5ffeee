"""segserve-weights choose-backend: the gate and the timing on this machine, the record, its
reuse, and the service's check of it at start."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from segserve import choose, create_app, gate
from segserve.errors import StartupError

from conftest import INPUT_SIZE

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

CLI = [sys.executable, "-m", "segserve.weights_cli"]


@pytest.fixture(scope="module")
def no_torch(tmp_path_factory):
    """As on a CPU host (app/requirements-cpu.lock): torch cannot be imported, here or in the
    timing processes (test_without_torch.py checks the blocker)."""
    from test_without_torch import BLOCKER

    site = tmp_path_factory.mktemp("no-torch")
    (site / "sitecustomize.py").write_text(BLOCKER)
    return {**os.environ, "PYTHONPATH": str(site)}


def _cli(no_torch, converted, out, *extra):
    argv = [*CLI, "choose-backend", "--workers", "1", "--threads", "1", "--rounds", "1"]
    argv += ["--images", "2", "--input-size", str(INPUT_SIZE), *extra]
    argv += ["--sha256", converted[3]["source_weights_sha256"], str(converted[0]), str(out)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, env=no_torch)


@pytest.fixture(scope="module")
def measured(no_torch, converted, tmp_path_factory):
    out = tmp_path_factory.mktemp("choice") / "choice.json"
    run = _cli(no_torch, converted, out)
    assert run.returncode == 0, run.stderr
    return out, run


def test_records_the_fastest_passing_candidate(measured, converted):
    out, run = measured
    record = json.loads(out.read_text())
    chosen = f"{record['chosen']['backend']} {record['chosen']['precision']}"
    assert run.stdout.strip() == chosen
    labels = [c["label"] for c in record["candidates"]]
    assert labels == list(choose.CANDIDATES)
    timed = {c["label"]: c for c in record["candidates"] if "median_images_per_s" in c}
    assert choose.BASELINE in timed and chosen in timed
    # Every timed candidate passed the gate; the chosen one is the fastest of them, or the
    # baseline when nothing beats it by more than MIN_GAIN.
    assert all(c["gate"]["passes"] for c in timed.values())
    best = max(timed, key=lambda label: timed[label]["median_images_per_s"])
    gain = timed[best]["median_images_per_s"] / timed[choose.BASELINE]["median_images_per_s"]
    assert chosen == (best if gain > 1 + choose.MIN_GAIN else choose.BASELINE)
    assert record["key"]["cpu"]["cores"] == len(os.sched_getaffinity(0))
    assert record["key"]["onnx_sha256"] == converted[1]
    # Every candidate, the baseline too, gated here against eager PyTorch as recorded: the
    # baseline's figures are the conversion's own (same runtime, same reference).
    assert "recorded" in record["reference"]
    baseline = next(c for c in record["candidates"] if c["label"] == choose.BASELINE)
    assert baseline["gate"]["pixel_agreement"] == round(float(converted[3]["pixel_agreement"]), 6)


def test_second_run_times_nothing(measured, no_torch, converted):
    out, first = measured
    before = out.read_text()
    run = _cli(no_torch, converted, out)
    assert run.returncode == 0, run.stderr
    assert "is up to date" in run.stderr and "candidates:" not in run.stderr
    assert out.read_text() == before and run.stdout == first.stdout


def test_another_layout_is_measured_again(measured, no_torch, converted, tmp_path):
    out = tmp_path / "copy.json"
    out.write_text(measured[0].read_text())
    run = _cli(no_torch, converted, out, "--threshold", "0.98")
    assert run.returncode == 0, run.stderr
    assert "candidates:" in run.stderr and "written" in run.stderr
    assert json.loads(out.read_text())["key"]["threshold"] == 0.98


def test_baseline_kept_unless_clearly_faster():
    base = [10.0, 10.0, 10.0]
    assert choose.decide({choose.BASELINE: base, "openvino bf16": [10.4, 10.4, 10.4]}) == (
        choose.BASELINE
    )
    assert choose.decide({choose.BASELINE: base, "openvino bf16": [10.6, 10.6, 9.0]}) == (
        "openvino bf16"
    )
    assert choose.decide({choose.BASELINE: base, "openvino fp32": [8.0, 8.0, 8.0]}) == (
        choose.BASELINE
    )


def test_a_candidate_that_fails_the_gate_is_not_timed(
    varied_weights, converted, tmp_path, monkeypatch
):
    real = choose.gate_all

    def with_bf16_failing(cands, *args):
        results = real(cands, *args)
        for label, result in results.items():
            if label != choose.BASELINE:
                result.images[0].decided_flips = 7
        return results

    monkeypatch.setattr(choose, "gate_all", with_bf16_failing)
    out = tmp_path / "choice.json"
    record, measured = choose.choose(
        str(converted[0]), str(out), workers=1, threads=1,
        input_size=INPUT_SIZE, rounds=1, images=1,
    )  # fmt: skip
    assert measured
    assert (record["chosen"]["backend"], record["chosen"]["precision"]) == ("onnxruntime", "fp32")
    others = [c for c in record["candidates"] if c["label"] != choose.BASELINE and "gate" in c]
    assert others and all(not c["gate"]["passes"] and "images_per_s" not in c for c in others)
    assert "7 decided pixels changed class" in others[0]["gate"]["failures"][0]


def _served(varied_weights, converted, record_path, backend, precision):
    return {
        "WEIGHTS_SHA256": converted[3]["source_weights_sha256"],
        "DEVICE": "cpu",
        "INPUT_SIZE": INPUT_SIZE,
        "BACKEND": backend,
        "PRECISION": precision,
        "ONNX_PATH": str(converted[0]),
        "BACKEND_CHOICE": str(record_path),
    }


def test_service_shows_the_choice(measured, varied_weights, converted):
    record = json.loads(measured[0].read_text())
    chosen = record["chosen"]
    app = create_app(
        _served(varied_weights, converted, measured[0], chosen["backend"], chosen["precision"])
    )
    shown = app.test_client().get("/v1/model").get_json()["backend_choice"]
    assert shown["chosen"] == f"{chosen['backend']} {chosen['precision']}"
    assert shown["candidates"][choose.BASELINE] == {
        "passes_gate": True,
        "vs_baseline": 1.0,
        "skipped": False,
    }
    # Ratios only: no absolute rates in public.
    assert "images_per_s" not in json.dumps(shown)


def test_service_refuses_a_record_that_chose_something_else(measured, varied_weights, converted):
    record = json.loads(measured[0].read_text())
    other = "openvino" if record["chosen"]["backend"] == "onnxruntime" else "onnxruntime"
    with pytest.raises(StartupError, match="but this worker is set to"):
        create_app(_served(varied_weights, converted, measured[0], other, "fp32"))


def test_service_refuses_a_record_of_another_artifact(
    measured, varied_weights, converted, tmp_path
):
    record = json.loads(measured[0].read_text())
    record["key"]["onnx_sha256"] = "0" * 64
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps(record))
    chosen = record["chosen"]
    with pytest.raises(StartupError, match="measured with another artifact"):
        create_app(
            _served(varied_weights, converted, stale, chosen["backend"], chosen["precision"])
        )


def test_gate_record_names_its_version(measured):
    record = json.loads(measured[0].read_text())
    assert {c["gate"]["gate"] for c in record["candidates"] if "gate" in c} == {gate.GATE_VERSION}
