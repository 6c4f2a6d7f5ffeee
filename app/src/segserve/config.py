"""Settings, read from SEGSERVE_* environment variables or from a mapping given by a test.

Keys are the variable names without the prefix (WEIGHTS_PATH for SEGSERVE_WEIGHTS_PATH), as
Flask's `Config.from_prefixed_env` produces them. Values may be strings (from the environment)
or already typed (from a test); every one is validated here so that a bad value stops the
worker at start with a message naming the variable, instead of failing on the first request.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from segserve.errors import ConfigError

PREFIX = "SEGSERVE"
# The short side the model accepts: below 16 its strided layers run out of pixels.
INPUT_SIZE_RANGE = (16, 4096)

# name -> (default, help). Anything under SEGSERVE_ not listed here is reported as unknown,
# which catches typos such as SEGSERVE_WIEGHTS_PATH.
KNOWN = {
    "WEIGHTS_PATH": (None, "path of the weights file (required)"),
    "WEIGHTS_SHA256": (None, "expected sha256 of the weights file"),
    "ARCH": (None, "expected architecture; the weights file records its own"),
    "DEVICE": ("auto", "auto, cpu, cuda or cuda:N"),
    "TORCH_THREADS": (1, "intra-op threads per worker (torch and onnxruntime)"),
    "THREADS": (None, "alias of TORCH_THREADS, for backends other than torch"),
    "MAX_IMAGE_BYTES": (10 * 1024 * 1024, "largest accepted request body in bytes"),
    # 24 million: a 6000x4000 photo, from a 24-megapixel camera. Larger photos exist (phones'
    # 48-megapixel modes) and are refused: the limit bounds what one decode costs a worker.
    "MAX_PIXELS": (24_000_000, "largest accepted image in pixels (decompression bombs)"),
    # 32 MiB: the JSON mask costs 2-4 bytes per pixel, so about 16 megapixels at best; larger
    # masks go as PNG (about a byte per pixel before compression).
    "MAX_JSON_BYTES": (32 * 1024 * 1024, "largest JSON mask answer in bytes (PNG is not bounded)"),
    "INPUT_SIZE": (520, "short side the image is resized to before inference"),
    "BACKEND": ("torch", "inference backend: torch or onnxruntime"),
    "ONNX_PATH": (None, "the ONNX artifact (segserve-weights export-onnx); onnxruntime only"),
    "ONNX_SHA256": (None, "expected sha256 of the ONNX artifact"),
    "TORCH_HALF": (False, "torch on CUDA: float16 inference (unmeasured, off)"),
    "TORCH_CHANNELS_LAST": (False, "torch: channels_last memory format (unmeasured on GPU, off)"),
    "CUDNN_BENCHMARK": (False, "torch on CUDA: cudnn.benchmark (unmeasured, off)"),
    "METRICS_PORT": (None, "a port whose requests may only be GET /metrics and GET /healthz"),
}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


@dataclass(frozen=True)
class Settings:
    weights_path: str
    weights_sha256: str | None = None
    arch: str | None = None
    device: str = "auto"
    torch_threads: int = 1
    max_image_bytes: int = KNOWN["MAX_IMAGE_BYTES"][0]
    max_pixels: int = KNOWN["MAX_PIXELS"][0]
    max_json_bytes: int = KNOWN["MAX_JSON_BYTES"][0]
    input_size: int = 520
    backend: str = "torch"
    onnx_path: str | None = None
    onnx_sha256: str | None = None
    torch_half: bool = False
    torch_channels_last: bool = False
    cudnn_benchmark: bool = False
    metrics_port: int | None = None

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Settings:
        # Imported here: the registries import torch-free modules only, but keeping the
        # dependency one-way (registries do not import config) avoids import cycles.
        from segserve.backends import BACKENDS
        from segserve.models import ARCHS

        def raw(name: str) -> Any:
            value = values.get(name)
            if isinstance(value, str):
                value = value.strip()
                if value == "":
                    value = None
            return value if value is not None else KNOWN[name][0]

        path = raw("WEIGHTS_PATH")
        if path is None:
            raise ConfigError(
                f"{PREFIX}_WEIGHTS_PATH is required: the path of a weights file "
                "(make one with `segserve-weights init OUT.pth`)"
            )

        sha = _sha256("WEIGHTS_SHA256", raw("WEIGHTS_SHA256"))

        arch = raw("ARCH")
        if arch is not None and arch not in ARCHS:
            raise ConfigError(f"{PREFIX}_ARCH must be one of {', '.join(ARCHS)}, got {arch!r}")

        device = str(raw("DEVICE")).lower()
        if not _DEVICE.match(device):
            raise ConfigError(f"{PREFIX}_DEVICE must be auto, cpu, cuda or cuda:N, got {device!r}")

        backend = str(raw("BACKEND")).lower()
        if backend not in BACKENDS:
            raise ConfigError(
                f"{PREFIX}_BACKEND must be one of {', '.join(BACKENDS)}, got {backend!r}"
            )

        onnx_path = raw("ONNX_PATH")
        if backend == "onnxruntime" and onnx_path is None:
            raise ConfigError(
                f"{PREFIX}_BACKEND=onnxruntime needs {PREFIX}_ONNX_PATH: the artifact made by "
                "`segserve-weights export-onnx WEIGHTS.pth OUT.onnx`"
            )
        if backend == "onnxruntime" and device.startswith("cuda"):
            raise ConfigError(
                f"{PREFIX}_BACKEND=onnxruntime runs on the CPU; set {PREFIX}_DEVICE=cpu (or auto), "
                f"or use {PREFIX}_BACKEND=torch on GPU hosts"
            )

        # SEGSERVE_THREADS is a backend-neutral alias; both set to different values is a typo.
        threads = _positive_int("TORCH_THREADS", raw("TORCH_THREADS"))
        if raw("THREADS") is not None:
            alias = _positive_int("THREADS", raw("THREADS"))
            if values.get("TORCH_THREADS") not in (None, "") and alias != threads:
                raise ConfigError(
                    f"{PREFIX}_THREADS={alias} and {PREFIX}_TORCH_THREADS={threads} disagree; "
                    "set one of them"
                )
            threads = alias

        return cls(
            weights_path=str(path),
            weights_sha256=sha,
            arch=arch,
            device=device,
            torch_threads=threads,
            max_image_bytes=_positive_int("MAX_IMAGE_BYTES", raw("MAX_IMAGE_BYTES")),
            max_pixels=_positive_int("MAX_PIXELS", raw("MAX_PIXELS")),
            max_json_bytes=_positive_int("MAX_JSON_BYTES", raw("MAX_JSON_BYTES")),
            input_size=_positive_int(
                "INPUT_SIZE", raw("INPUT_SIZE"), low=INPUT_SIZE_RANGE[0], high=INPUT_SIZE_RANGE[1]
            ),
            backend=backend,
            onnx_path=None if onnx_path is None else str(onnx_path),
            onnx_sha256=_sha256("ONNX_SHA256", raw("ONNX_SHA256")),
            torch_half=_bool("TORCH_HALF", raw("TORCH_HALF")),
            torch_channels_last=_bool("TORCH_CHANNELS_LAST", raw("TORCH_CHANNELS_LAST")),
            cudnn_benchmark=_bool("CUDNN_BENCHMARK", raw("CUDNN_BENCHMARK")),
            metrics_port=_optional_port("METRICS_PORT", raw("METRICS_PORT")),
        )


def unknown_keys(values: Mapping[str, Any]) -> list[str]:
    return sorted(f"{PREFIX}_{key}" for key in values if key not in KNOWN)


def _sha256(name: str, value: Any) -> str | None:
    if value is None:
        return None
    sha = str(value).lower()
    if not _SHA256.match(sha):
        raise ConfigError(f"{PREFIX}_{name} must be 64 hex digits, got {sha!r}")
    return sha


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"{PREFIX}_{name} must be true or false, got {value!r}")


def _optional_port(name: str, value: Any) -> int | None:
    return None if value is None else _positive_int(name, value, low=1, high=65535)


def _positive_int(name: str, value: Any, *, low: int = 1, high: int | None = None) -> int:
    try:
        if isinstance(value, bool):
            raise ValueError
        number = int(value)
        # int("1.5") fails already; this rejects a typed 1.5 from a test mapping too.
        if isinstance(value, float) and number != value:
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"{PREFIX}_{name} must be an integer, got {value!r}") from None
    if number < low or (high is not None and number > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ConfigError(f"{PREFIX}_{name} must be {bounds}, got {number}")
    return number
