"""The converted artifact run by OpenVINO on the CPU, at float32 or bfloat16.

OpenVINO reads the ONNX artifact of `segserve-weights export-onnx` as it is (its ONNX
front end keeps the artifact's metadata_props, so the provenance checks are the same as
ONNX Runtime's) and compiles it for this CPU when the worker starts.

- Precision (SEGSERVE_PRECISION): `fp32`, or `bf16` where the CPU computes bfloat16 itself
  (OpenVINO lists BF16 among the CPU's optimisation capabilities: AVX512_BF16 or AMX). bf16
  is refused elsewhere instead of being emulated slowly. Whether bf16 masks are close
  enough is the agreement gate's question (segserve.gate), asked on the host before it is
  chosen (`segserve-weights choose-backend`).
- Threads: SEGSERVE_TORCH_THREADS inference threads, one stream, latency hint: one request
  at a time per uWSGI worker. No CPU pinning: several workers share the host's cores, and a
  pinned pool in each would pile them onto the same ones.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from segserve import config
from segserve.backends import ONNX_CLASS_IDS, ONNX_INPUT, equivalence_summary, open_artifact
from segserve.errors import StartupError

if TYPE_CHECKING:
    from segserve.config import Settings
    from segserve.weights import WeightsFile

# SEGSERVE_PRECISION -> OpenVINO's INFERENCE_PRECISION_HINT, and the CPU capability that
# computes it natively.
OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}
CAPABILITY = {"fp32": "FP32", "bf16": "BF16"}


def cpu_capabilities(core=None) -> tuple[str, ...]:
    """What OpenVINO's CPU plugin says this CPU computes natively (FP32, BF16, INT8, ...)."""
    import openvino

    core = core or openvino.Core()
    return tuple(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def host_precisions(core=None) -> tuple[str, ...]:
    """The precisions this host can serve with OpenVINO."""
    caps = cpu_capabilities(core)
    return tuple(p for p in CAPABILITY if CAPABILITY[p] in caps)


def compile_artifact(path: str, precision: str, threads: int, core=None):
    import openvino

    core = core or openvino.Core()
    model = core.read_model(path)
    compiled = core.compile_model(
        model,
        "CPU",
        {
            "INFERENCE_PRECISION_HINT": OV_PRECISION[precision],
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
            "ENABLE_CPU_PINNING": False,
        },
    )
    return model, compiled


def model_metadata(model) -> dict[str, str]:
    """The segserve.* entries of the artifact's metadata_props, as OpenVINO read them."""
    info = model.get_rt_info()
    # An RTMap: `in` and [] work, .get does not.
    framework = info["framework"] if "framework" in info else {}  # noqa: SIM401
    return {
        key.removeprefix("segserve."): value.astype(str)
        for key, value in framework.items()
        if key.startswith("segserve.")
    }


class OpenVinoBackend:
    name = "openvino"

    def __init__(self, weights: WeightsFile | None, device: str, settings: Settings):
        if device != "cpu":
            raise StartupError(f"the openvino backend runs on the CPU, not {device}")
        self.device = device
        try:
            import openvino
        except ImportError:
            raise StartupError(
                f"{config.BACKEND.env}=openvino but openvino is not installed "
                "(pip install 'segserve[openvino]')"
            ) from None
        core = openvino.Core()
        self.precision = settings.precision
        if self.precision not in host_precisions(core):
            raise StartupError(
                f"{config.PRECISION.env}={self.precision}, but this CPU does not compute it "
                f"natively (OpenVINO lists {', '.join(cpu_capabilities(core))}); "
                f"use {config.PRECISION.env}=fp32"
            )
        self.threads = settings.torch_threads

        def load(path: str):
            model, compiled = compile_artifact(path, self.precision, self.threads, core)
            return compiled, model_metadata(model)

        # `weights` is unused: the model is the artifact's (self.weights).
        self.path, self.sha256, compiled, self.meta, self.weights = open_artifact(settings, load)
        self.request = compiled.create_infer_request()
        self.output = compiled.output(ONNX_CLASS_IDS)
        self.ov_version = openvino.__version__
        # One infer request per worker; uWSGI runs one request at a time in it, and the lock
        # keeps that true if a thread ever calls in.
        self.lock = threading.Lock()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        with self.lock:
            # share_inputs: the request reads the batch in place instead of copying its
            # 3.2 MB (at 520x520) into its own tensor first; infer() returns only when done.
            # share_outputs: infer() returns views, not copies of every output (the unused
            # float32 logits are 22.7 MB at 520x520); the class ids are copied out below.
            self.request.infer(
                {ONNX_INPUT: np.ascontiguousarray(batch)}, share_inputs=True, share_outputs=True
            )
            # The request's output buffer is reused by the next call: copy it out.
            return self.request.get_tensor(self.output).data.copy()

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "openvino_version": self.ov_version,
            "onnx_path": self.path,
            "onnx_sha256": self.sha256,
            "precision": self.precision,
            "inference_threads": self.threads,
            "streams": 1,
            "equivalence": equivalence_summary(self.meta),
        }
