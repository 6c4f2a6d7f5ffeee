"""Settings, read from SEGSERVE_* environment variables or from a mapping given by a test.

Every setting is declared once, below, as a `Setting` (its key, type, default, range and help);
parsing, validation, the `Settings` fields and the settings table of app/README.md
(`python -m segserve.config --markdown`) all come from that one list. Keys are the variable
names without the prefix (WEIGHTS_PATH for SEGSERVE_WEIGHTS_PATH), as Flask's
`Config.from_prefixed_env` produces them. Values may be strings (from the environment) or
already typed (from a test); every one is validated here, so a bad value stops the worker at
start with a message naming the variable instead of failing on the first request. Other
modules name a setting through its declaration (`config.DEVICE.env`), never by a literal.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, make_dataclass
from typing import Any

from segserve.errors import ConfigError

PREFIX = "SEGSERVE"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Setting:
    key: str
    kind: str  # "text", "sha256", "choice", "int", "port" (an int 1-65535 or unset)
    default: Any
    help: str
    low: int = 1
    high: int | None = None
    # The valid values, or a function that returns them (read when a value is checked).
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] = ()
    pattern: str | None = None
    required: bool = False
    # How the README shows the default, where the value alone says too little.
    shown_default: str | None = None
    # What a valid value looks like, for the error message of a `pattern`.
    expect: str = ""

    @property
    def env(self) -> str:
        return f"{PREFIX}_{self.key}"

    @property
    def name(self) -> str:
        """The attribute of `Settings` that holds it."""
        return self.key.lower()

    def read(self, values: Mapping[str, Any]) -> Any:
        value = values.get(self.key)
        if isinstance(value, str):
            value = value.strip() or None
        if value is None:
            if self.required:
                raise ConfigError(f"{self.env} is required: {self.help}")
            value = self.default
        return None if value is None else _PARSERS[self.kind](self, value)


def _text(setting: Setting, value: Any) -> str:
    text = str(value)
    if setting.pattern and not re.fullmatch(setting.pattern, text.lower()):
        raise ConfigError(f"{setting.env} must be {setting.expect}, got {text!r}")
    return text.lower() if setting.pattern else text


def _sha256(setting: Setting, value: Any) -> str:
    sha = str(value).lower()
    if not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise ConfigError(f"{setting.env} must be 64 hex digits, got {sha!r}")
    return sha


def _choice(setting: Setting, value: Any) -> str:
    text = str(value).lower()
    choices = setting.choices() if callable(setting.choices) else setting.choices
    if text not in choices:
        raise ConfigError(f"{setting.env} must be one of {', '.join(choices)}, got {text!r}")
    return text


# The registries are read when a value is checked, not when this module is imported: the
# modules that hold them (backends, models and what they import) name their own settings
# through the declarations here, so this module imports none of them at its top.
def _archs() -> tuple[str, ...]:
    from segserve.models import ARCHS

    return tuple(ARCHS)


def _backends() -> tuple[str, ...]:
    from segserve.backends import BACKENDS

    return tuple(BACKENDS)


def _int(setting: Setting, value: Any) -> int:
    try:
        if isinstance(value, bool):
            raise ValueError
        number = int(value)
        # int("1.5") fails already; this rejects a typed 1.5 from a test mapping too.
        if isinstance(value, float) and number != value:
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"{setting.env} must be an integer, got {value!r}") from None
    low, high = setting.low, setting.high
    if number < low or (high is not None and number > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ConfigError(f"{setting.env} must be {bounds}, got {number}")
    return number


_PARSERS = {"text": _text, "sha256": _sha256, "choice": _choice, "int": _int, "port": _int}

# --- The settings ------------------------------------------------------------------------
WEIGHTS_PATH = Setting(
    "WEIGHTS_PATH", "text", None, shown_default="(required with `torch`)", expect="a path",
    help="the path of a weights file (make one with `segserve-weights init OUT.pth`); the "
    "artifact backends need no weights file (their artifact describes the model), and check "
    "one given here against the artifact's source",
)  # fmt: skip
WEIGHTS_SHA256 = Setting(
    "WEIGHTS_SHA256", "sha256", None,
    help="expected sha256 of the weights file, or of the weights an artifact was converted "
    "from; a mismatch refuses to start",
)  # fmt: skip
ARCH = Setting(
    "ARCH", "choice", None, choices=_archs,
    help="expected architecture; the weights file records its own, a mismatch refuses to start",
)  # fmt: skip
DEVICE = Setting(
    "DEVICE", "text", "auto", pattern=r"auto|cpu|cuda|cuda:\d+",
    expect="`auto`, `cpu`, `cuda` or `cuda:N`",
    help="where the model runs: `cuda` gives each worker one of the host's GPUs in turn, "
    "`cuda:N` puts every worker on GPU N, `auto` is `cuda` on a GPU host (GPU_COUNT above 0, "
    "or GPUs the NVIDIA driver lists), else the CPU",
)  # fmt: skip
GPU_COUNT = Setting(
    "GPU_COUNT", "int", 0, low=0,
    help="GPUs on this host (the cuda role's `cuda_gpu_count`); with `cuda` (or `auto` on a "
    "GPU host) worker k uses GPU (k-1) mod this count, alone (see GPU hosts); 0 counts the "
    "GPUs the NVIDIA driver lists",
)  # fmt: skip
TORCH_THREADS = Setting(
    "TORCH_THREADS", "int", 1,
    help="intra-op threads per worker, for every backend (torch's inter-op threads too; "
    "ONNX Runtime's inter-op threads are always 1)",
)  # fmt: skip
MAX_IMAGE_BYTES = Setting(
    "MAX_IMAGE_BYTES", "int", 10 * 1024 * 1024,
    help="largest request body (Flask `MAX_CONTENT_LENGTH`); the fleet keeps it equal to "
    "uWSGI `limit-post` and nginx `client_max_body_size` (`segserve_max_image_bytes`)",
)  # fmt: skip
# 24 million: a 6000x4000 photo, from a 24-megapixel camera. Larger photos exist (phones'
# 48-megapixel modes) and are refused: the limit bounds what one decode costs a worker.
MAX_PIXELS = Setting(
    "MAX_PIXELS", "int", 24_000_000,
    help="largest image in pixels (a 6000x4000 photo), checked from the header before "
    "decoding (decompression bombs); also Pillow's `MAX_IMAGE_PIXELS`",
)  # fmt: skip
# 32 MiB: the JSON mask costs 2-4 bytes per pixel, so about 16 megapixels at best; larger
# masks go as PNG (about a byte per pixel before compression).
MAX_JSON_BYTES = Setting(
    "MAX_JSON_BYTES", "int", 32 * 1024 * 1024,
    help="largest JSON mask answer (`/v1/segment` as JSON and `/infer`), refused with 422 "
    "`json_too_large`; PNG answers are not bounded by it",
)  # fmt: skip
# The short side the model accepts: below 16 its strided layers run out of pixels.
INPUT_SIZE = Setting(
    "INPUT_SIZE", "int", 520, low=16, high=4096,
    help="the short side images are resized to for the model (torchvision's preset for "
    "these weights)",
)  # fmt: skip
BACKEND = Setting(
    "BACKEND", "choice", "torch", choices=_backends,
    help="inference backend: eager PyTorch (CPU or CUDA), ONNX Runtime or OpenVINO (CPU; "
    "see Backends)",
)  # fmt: skip
PRECISION = Setting(
    "PRECISION", "choice", "fp32", choices=("fp32", "bf16"),
    help="the precision the backend computes at; `bf16` with `openvino` only, on a CPU that "
    "has it, and only after it passed the agreement gate (see Backends)",
)  # fmt: skip
BACKEND_CHOICE = Setting(
    "BACKEND_CHOICE", "text", None, expect="a path",
    help="the record of `segserve-weights choose-backend` that chose this backend and "
    "precision; checked at start, summarised on `GET /v1/model`",
)  # fmt: skip
ONNX_PATH = Setting(
    "ONNX_PATH", "text", None, expect="a path",
    help="the artifact of `segserve-weights export-onnx WEIGHTS.pth OUT.onnx`; required "
    "with `onnxruntime` and `openvino`",
)  # fmt: skip
ONNX_SHA256 = Setting(
    "ONNX_SHA256", "sha256", None,
    help="expected sha256 of the ONNX artifact; a mismatch refuses to start",
)  # fmt: skip
# The name the fleet routes the model by (nginx's /v1/models/<name>/): the same characters as
# roles/segserve's model names, so it fits a URL path, a unit name and a metrics label as it is.
MODEL_NAME = Setting(
    "MODEL_NAME", "text", "default", pattern=r"[a-z0-9][a-z0-9_-]{0,39}",
    expect="1-40 of a-z, 0-9, `_` and `-`, starting with a letter or digit",
    help="the model's name in the fleet: shown on `GET /v1/model`, in the `ready:` log line "
    "and as the `model` label of every metric",
)  # fmt: skip
METRICS_PORT = Setting(
    "METRICS_PORT", "port", None, high=65535,
    help="a port whose requests may only be `GET /metrics` and `GET /healthz`; other "
    "ports are unaffected (see Run it with uWSGI)",
)  # fmt: skip
UWSGI_STATS_PORT = Setting(
    "UWSGI_STATS_PORT", "port", None, high=65535,
    help="the port of uWSGI's stats server on 127.0.0.1 (`stats-http`): `/metrics` then adds "
    "the master's counts (workers, busy workers, respawns, harakiri kills, listen queue)",
)  # fmt: skip
LOG_FORMAT = Setting(
    "LOG_FORMAT", "choice", "json", choices=("json", "text"),
    help="the log on stderr: one JSON object per line (model, worker, nginx's request id, "
    "a request's status and stage timings), or the same as plain text (see Logs)",
)  # fmt: skip
LOG_REQUESTS = Setting(
    "LOG_REQUESTS", "choice", "all", choices=("all", "errors", "none"),
    help="which requests get a `request` record: all but the successful probes and scrapes "
    "(`/healthz`, `/readyz`, `/metrics`), only those answered 4xx/5xx, or none",
)  # fmt: skip

SETTINGS = (
    WEIGHTS_PATH, WEIGHTS_SHA256, ARCH, DEVICE, GPU_COUNT, TORCH_THREADS, MAX_IMAGE_BYTES,
    MAX_PIXELS, MAX_JSON_BYTES, INPUT_SIZE, BACKEND, PRECISION, BACKEND_CHOICE, ONNX_PATH,
    ONNX_SHA256, MODEL_NAME, METRICS_PORT, UWSGI_STATS_PORT, LOG_FORMAT, LOG_REQUESTS,
)  # fmt: skip
# Anything under SEGSERVE_ not declared is reported as unknown, which catches typos such as
# SEGSERVE_WIEGHTS_PATH.
KNOWN = {setting.key: setting for setting in SETTINGS}


def _check_together(settings: Any) -> None:
    """The rules that involve more than one setting."""
    from segserve.backends import ARTIFACT_BACKENDS

    backend = settings.backend
    if backend not in ARTIFACT_BACKENDS and settings.weights_path is None:
        raise ConfigError(
            f"{WEIGHTS_PATH.env} is required with {BACKEND.env}={backend}: the path of a "
            "weights file (make one with `segserve-weights init OUT.pth`)"
        )
    if (
        backend in ARTIFACT_BACKENDS
        and settings.weights_path is None
        and settings.weights_sha256 is None
    ):
        # The artifact names the weights it was converted from; one of these pins them.
        raise ConfigError(
            f"{BACKEND.env}={backend} needs {WEIGHTS_SHA256.env} (the sha256 of the weights "
            f"the artifact was converted from) or {WEIGHTS_PATH.env}"
        )
    if backend in ARTIFACT_BACKENDS and settings.onnx_path is None:
        raise ConfigError(
            f"{BACKEND.env}={backend} needs {ONNX_PATH.env}: the artifact made by "
            "`segserve-weights export-onnx WEIGHTS.pth OUT.onnx`"
        )
    if backend in ARTIFACT_BACKENDS and settings.device.startswith("cuda"):
        raise ConfigError(
            f"{BACKEND.env}={backend} runs on the CPU; set {DEVICE.env}=cpu (or auto), "
            f"or use {BACKEND.env}=torch on GPU hosts"
        )
    if settings.precision != "fp32" and backend != "openvino":
        raise ConfigError(
            f"{PRECISION.env}={settings.precision} needs {BACKEND.env}=openvino; "
            f"{backend} computes at fp32"
        )


def _from_mapping(cls: type, values: Mapping[str, Any]) -> Any:
    settings = cls(**{s.name: s.read(values) for s in SETTINGS})
    _check_together(settings)
    return settings


Settings = make_dataclass(
    "Settings",
    [(s.name, Any, field(default=s.default)) for s in SETTINGS],
    frozen=True,
    namespace={"from_mapping": classmethod(_from_mapping)},
)
Settings.__module__ = __name__
Settings.__doc__ = "The parsed settings, one field per `Setting` (its `name`)."


def unknown_keys(values: Mapping[str, Any]) -> list[str]:
    return sorted(f"{PREFIX}_{key}" for key in values if key not in KNOWN)


def values_text(setting: Setting) -> str:
    """What a valid value of `setting` is, in words."""
    if setting.kind == "sha256":
        return "64 hex digits"
    if setting.kind == "choice":
        choices = setting.choices() if callable(setting.choices) else setting.choices
        return ", ".join(f"`{c}`" for c in choices)
    if setting.kind in ("int", "port"):
        if setting.high is None:
            return f"integer >= {setting.low}"
        return f"{setting.low}-{setting.high}"
    return setting.expect or "text"


def markdown_table() -> str:
    """The settings table of app/README.md."""
    rows = ["| Variable | Default | Values | Meaning |", "|---|---|---|---|"]
    for s in SETTINGS:
        shown = s.shown_default or ("unset" if s.default is None else f"`{s.default}`")
        rows.append(f"| `{s.env}` | {shown} | {values_text(s)} | {s.help} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] != ["--markdown"]:
        sys.exit("usage: python -m segserve.config --markdown")
    print(markdown_table())
