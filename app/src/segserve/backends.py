"""Inference backends: each maps a normalised NCHW float32 batch (numpy) to uint8 class ids.

Decoding, preprocessing and postprocessing are shared in the handler; a backend only runs the
network. The registry is what SEGSERVE_BACKEND selects from:

- `torch`: eager PyTorch under inference_mode, on the CPU or CUDA (the reference).
- `onnxruntime`: the same network converted ahead of time by `segserve-weights export-onnx`
  and run by ONNX Runtime on the CPU. onnxruntime is imported only when this backend is
  chosen, so a torch-only install keeps working.
- `openvino`: the same artifact run by OpenVINO on the CPU, at float32 or, where the CPU has
  it, bfloat16 (SEGSERVE_PRECISION; see segserve.openvino_backend).

The artifact backends share `open_artifact`: the file's sha256 before it is parsed, then its
provenance (format, the weights it was converted from, the architecture).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from segserve import config
from segserve.errors import StartupError

if TYPE_CHECKING:
    import torch

    from segserve.config import Settings
    from segserve.weights import WeightsFile

log = logging.getLogger("segserve")

# The ONNX artifact's format tag, in its metadata_props (see segserve.convert).
ONNX_FORMAT = "segserve-onnx/1"
# Output names of the exported graph: the class ids (argmax inside the graph, uint8) are what
# serving reads; the logits are read only by the equivalence check.
ONNX_INPUT = "input"
ONNX_CLASS_IDS = "class_ids"
ONNX_LOGITS = "logits"


class Backend(Protocol):
    name: str
    device: str

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) float32 -> (N, H, W) uint8 class ids."""
        ...

    def describe(self) -> dict[str, Any]:
        """This backend's details for operators (the start-up log line); never served:
        /v1/model is public."""
        ...


class TorchBackend:
    """Eager PyTorch under inference_mode, float32: the reference on CPU and CUDA."""

    name = "torch"

    def __init__(self, weights: WeightsFile, device: str, settings: Settings | None = None):
        import torch

        from segserve.models import build_model

        self.device = device
        model = build_model(weights.arch, weights.num_classes)
        try:
            model.load_state_dict(weights.state_dict)
        except RuntimeError as exc:
            from segserve.weights import WeightsError, summarize

            raise WeightsError(
                f"{weights.path} does not fit {weights.arch}: {summarize(exc)}"
            ) from None
        self.model = model.to(torch.device(device)).eval()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            tensor = torch.from_numpy(batch).to(self.device, non_blocking=True)
            logits = self.model(tensor)["out"]
            # argmax on the device: a uint8 mask is 84x smaller to copy back than 21
            # float32 channels.
            return class_ids(logits).cpu().numpy()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "precision": "fp32"}


def class_ids(logits: torch.Tensor) -> torch.Tensor:
    """argmax over the class axis of (N, C, H, W) logits, as (N, H, W) uint8.

    On the CPU, torch's argmax over a non-innermost axis is slow on one thread (about 60 ms
    for 21 x 520 x 781); a running maximum over the 21 channel planes gives the same ids (the
    first maximum wins on ties, as argmax's) several times faster. CUDA keeps argmax.
    """
    import torch

    if logits.device.type != "cpu":
        return logits.argmax(dim=1).to(torch.uint8)
    best = logits[:, 0].clone()
    ids = torch.zeros(best.shape, dtype=torch.uint8)
    for c in range(1, logits.shape[1]):
        plane = logits[:, c]
        better = plane > best
        best = torch.where(better, plane, best)
        ids.masked_fill_(better, c)
    return ids


def ort_session(path: str, threads: int, *, optimise: bool = True):
    """An ONNX Runtime CPU session set up for one worker among several on a few cores:
    `threads` intra-op threads, 1 inter-op thread (sequential execution), no spinning (idle
    pool threads would otherwise busy-wait and take the other workers' cores), all graph
    optimisations (the layout transforms of level 'all' halve the cost here; basic and
    extended were no faster than no optimisation at all). `optimise=False` for a session that
    only reads the metadata: optimising costs seconds and serves no inference there."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if optimise
        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: its warnings are not the service's log
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def read_onnx_metadata(session_or_path) -> dict[str, str]:
    """The segserve.* entries of an artifact's metadata_props, without the prefix. From a path,
    through a session with no graph optimisation: reading the metadata needs none, and an
    optimised session costs seconds (what `export-onnx --if-changed` and `choose-backend` pay
    on every deploy)."""
    session = session_or_path
    if isinstance(session_or_path, (str, os.PathLike)):
        session = ort_session(os.fspath(session_or_path), 1, optimise=False)
    props = session.get_modelmeta().custom_metadata_map
    return {k.removeprefix("segserve."): v for k, v in props.items() if k.startswith("segserve.")}


def open_artifact(settings: Settings, load):
    """Check and load the converted artifact for an artifact backend: `load(path)` parses it
    and returns (runtime object, its segserve.* metadata). Returns (path, sha256, runtime
    object, metadata, the model it holds). The sha256 is checked before the file is parsed, as
    for the weights; the metadata must name the weights the settings pin. No weights file is
    read, and no torch imported: the artifact describes its model itself (model_from_artifact),
    so a host serving it needs neither."""
    from segserve.weights import WeightsError, file_sha256, weights_file_sha256

    path = settings.onnx_path
    if path is None or not os.path.isfile(path):
        raise WeightsError(f"onnx artifact not found: {path}")
    sha = file_sha256(path)
    if settings.onnx_sha256 is not None and sha != settings.onnx_sha256:
        raise WeightsError(
            f"onnx sha256 mismatch: file {path} has {sha}, expected {settings.onnx_sha256}"
        )
    try:
        runtime, meta = load(path)
    except Exception as exc:
        text = str(exc).strip().splitlines()
        raise WeightsError(
            f"cannot load onnx artifact {path}: {text[0] if text else type(exc).__name__}"
        ) from None
    if meta.get("format") != ONNX_FORMAT:
        raise WeightsError(
            f"{path} is not a segserve onnx artifact (format {meta.get('format')!r}, "
            f"expected {ONNX_FORMAT!r}); make one with `segserve-weights export-onnx`"
        )
    source = meta.get("source_weights_sha256")
    if settings.weights_sha256 is not None and source != settings.weights_sha256:
        raise WeightsError(
            f"onnx artifact mismatch: {path} was converted from weights sha256 {source}, "
            f"but {config.WEIGHTS_SHA256.env} is {settings.weights_sha256}; convert those "
            f"weights with `segserve-weights export-onnx WEIGHTS.pth {path}`"
        )
    if settings.weights_path is not None:
        weights_sha = weights_file_sha256(settings.weights_path)
        if source != weights_sha:
            raise WeightsError(
                f"onnx artifact mismatch: {path} was converted from weights sha256 {source}, "
                f"but {settings.weights_path} has {weights_sha}; convert again with "
                f"`segserve-weights export-onnx {settings.weights_path} {path}`"
            )
    if settings.arch is not None and meta.get("arch") != settings.arch:
        raise WeightsError(
            f"onnx artifact mismatch: {path} holds {meta.get('arch')}, "
            f"{config.ARCH.env} asks for {settings.arch}"
        )
    model = model_from_artifact(path, meta)
    if meta.get("agreement_forced") == "true":
        log.warning(
            "onnx artifact %s was written with --force past its agreement gate "
            "(pixel agreement %s, threshold %s): its masks may differ from eager PyTorch",
            path,
            meta.get("pixel_agreement"),
            meta.get("agreement_threshold"),
        )
    if settings.input_size != int(meta.get("checked_input_size", 0) or 0):
        log.warning(
            "onnx artifact %s was checked at input size %s; %s is %d",
            path,
            meta.get("checked_input_size"),
            config.INPUT_SIZE.env,
            settings.input_size,
        )
    return path, sha, runtime, meta, model


def model_from_artifact(path: str, meta: dict[str, str]) -> WeightsFile:
    """The model an artifact holds, as its metadata records it (architecture, classes, the
    weights it was converted from and whether they are trained): what the service reports,
    without the weights file. The tensors stay in the graph (state_dict is empty)."""
    from segserve.models import ARCHS
    from segserve.weights import WeightsError, WeightsFile

    try:
        categories = json.loads(meta["categories"])
        num_classes = int(meta["num_classes"])
    except (KeyError, TypeError, ValueError):
        categories, num_classes = None, -1
    if (
        not isinstance(categories, list)
        or len(categories) != num_classes
        or meta.get("arch") not in ARCHS
        or len(meta.get("source_weights_sha256", "")) != 64
    ):
        raise WeightsError(
            f"{path} does not record its model (architecture, classes, source weights): it was "
            "made by an older segserve-weights; convert again with `segserve-weights export-onnx`"
        )
    return WeightsFile(
        path=meta.get("source_weights_name", path),
        sha256=meta["source_weights_sha256"],
        arch=meta["arch"],
        num_classes=num_classes,
        categories=tuple(str(c) for c in categories),
        pretrained=meta.get("pretrained") == "true",
        source=meta.get("weights_source", ""),
        seed=None,
        state_dict={},
    )


class OnnxRuntimeBackend:
    """The network converted by `segserve-weights export-onnx`, run by ONNX Runtime (CPU).

    The artifact records the sha256 of the weights it was converted from, which must be the
    pinned ones (SEGSERVE_WEIGHTS_SHA256, or the file at SEGSERVE_WEIGHTS_PATH), and describes
    its model; its own sha256 can be pinned with SEGSERVE_ONNX_SHA256. `weights` is unused:
    the model is the artifact's (self.weights).
    """

    name = "onnxruntime"

    def __init__(self, weights: WeightsFile | None, device: str, settings: Settings):
        if device != "cpu":
            raise StartupError(f"the onnxruntime backend runs on the CPU, not {device}")
        self.device = device
        try:
            import onnxruntime
        except ImportError:
            raise StartupError(
                f"{config.BACKEND.env}=onnxruntime but onnxruntime is not installed "
                "(pip install 'segserve[onnx]')"
            ) from None

        def load(path: str):
            session = ort_session(path, settings.torch_threads)
            return session, read_onnx_metadata(session)

        self.path, self.sha256, self.session, self.meta, self.weights = open_artifact(
            settings, load
        )
        self.ort_version = onnxruntime.__version__
        self.threads = settings.torch_threads

    def infer(self, batch: np.ndarray) -> np.ndarray:
        # Only the uint8 class ids are fetched; the logits stay inside ONNX Runtime.
        (ids,) = self.session.run([ONNX_CLASS_IDS], {ONNX_INPUT: np.ascontiguousarray(batch)})
        return ids

    def describe(self) -> dict[str, Any]:
        meta = self.meta
        return {
            "name": self.name,
            "onnxruntime_version": self.ort_version,
            "onnx_path": self.path,
            "onnx_sha256": self.sha256,
            "precision": "fp32",
            "intra_op_threads": self.threads,
            "inter_op_threads": 1,
            "graph_optimization_level": "all",
            "equivalence": equivalence_summary(meta),
        }


def equivalence_summary(meta: dict[str, str]) -> dict[str, Any]:
    """The conversion's agreement figures, as recorded in the artifact."""

    def number(key: str) -> float | None:
        try:
            return float(meta[key])
        except (KeyError, ValueError):
            return None

    try:
        images = [item["name"] for item in json.loads(meta.get("equivalence_images", "[]"))]
    except (ValueError, TypeError, KeyError):
        images = []
    return {
        "reference": "eager PyTorch float32",
        "gate": meta.get("gate"),
        "rounding_depth": int(number("rounding_depth") or 0),
        "decided_flips": int(number("decided_flips") or 0),
        "pixel_agreement": number("pixel_agreement"),
        "min_image_agreement": number("min_image_agreement"),
        "max_abs_logit_diff": number("max_abs_logit_diff"),
        "threshold": number("agreement_threshold"),
        "forced": meta.get("agreement_forced") == "true",
        "checked_input_size": int(number("checked_input_size") or 0),
        "images": images,
    }


def _openvino(weights: WeightsFile | None, device: str, settings: Settings) -> Backend:
    # Its own module: it is the only one that imports openvino, and only when chosen.
    from segserve.openvino_backend import OpenVinoBackend

    return OpenVinoBackend(weights, device, settings)


BACKENDS: dict[str, Callable[..., Backend]] = {
    "torch": TorchBackend,
    "onnxruntime": OnnxRuntimeBackend,
    "openvino": _openvino,
}
# The backends that run the converted artifact (SEGSERVE_ONNX_PATH), on the CPU only.
ARTIFACT_BACKENDS = ("onnxruntime", "openvino")


def create_backend(
    name: str, weights: WeightsFile | None, device: str, settings: Settings | None = None
) -> Backend:
    """`weights`: the loaded weights file for torch; None for the artifact backends, whose
    model is the artifact's (the backend's `weights`)."""
    return BACKENDS[name](weights, device, settings)
