"""The model handler: initialize once per worker, then decode -> preprocess -> infer ->
postprocess per request. Each step is a method so that a subclass can replace one of them
(a different resize, another backend's tensor layout) without touching the others.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from segserve import gpus, images
from segserve.backends import ARTIFACT_BACKENDS, create_backend
from segserve.images import DecodedImage, decode_image, resized_size
from segserve.metrics import StageTimings

if TYPE_CHECKING:
    from segserve.backends import Backend
    from segserve.config import Settings
    from segserve.weights import WeightsFile

log = logging.getLogger("segserve")

# ImageNet statistics: what torchvision's segmentation weights were trained with.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
# The resized long side may be at most this many times the short side (see resized_size).
MAX_ASPECT = 4

# Called with an image's (width, height) from its header; raises to refuse it.
SizeCheck = Callable[[int, int], None]


@dataclass
class Result:
    mask: np.ndarray  # (height, width) uint8 class ids
    width: int
    height: int
    timings: StageTimings = field(default_factory=StageTimings)
    _counts: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    def id_counts(self) -> np.ndarray:
        """Pixels per class id (images.id_counts), counted once per result: the classes header
        and a JSON answer's length both read them."""
        if self._counts is None:
            self._counts = images.id_counts(self.mask)
        return self._counts

    def classes_present(self) -> list[int]:
        """The class ids in the mask, ascending."""
        return np.flatnonzero(self.id_counts()).tolist()


class SegmentationHandler:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.weights: WeightsFile | None = None
        self.backend: Backend | None = None
        self.device: str | None = None
        self.choice: dict | None = None
        self.ready = False

    # -- start-up -------------------------------------------------------------------------

    def initialize(self) -> None:
        """Load the weights, build the backend, run one warm-up inference."""
        from segserve import weights as weights_mod

        s = self.settings
        # The artifact backends run on the CPU here: "auto" means the best they can use.
        # The GPU is chosen before anything starts CUDA in this worker (see segserve.gpus).
        device = "cpu" if s.backend in ARTIFACT_BACKENDS else s.device
        self.placement = gpus.place(device, s.gpu_count)
        gpus.check_visible(self.placement)
        self.device = self.placement.label
        if s.backend in ARTIFACT_BACKENDS:
            # The artifact describes its model: no weights file to load, no torch needed.
            self.backend = create_backend(s.backend, None, self.placement.torch_device, s)
            self.weights = self.backend.weights
        else:
            self.weights = weights_mod.load(
                s.weights_path, expected_sha256=s.weights_sha256, expected_arch=s.arch
            )
            self.backend = create_backend(s.backend, self.weights, self.placement.torch_device, s)
        self.choice = None
        if s.backend_choice is not None:
            from segserve import choose

            self.choice = choose.check_served(
                s.backend_choice, s.backend, s.precision, getattr(self.backend, "sha256", None)
            )
        started = time.perf_counter()
        self.warm_up()
        self.warmup_seconds = time.perf_counter() - started
        self.ready = True

    def warm_up(self) -> None:
        # The first forward pass allocates and picks kernels; doing it here keeps that cost
        # (and any failure) out of the first real request.
        size = self.settings.input_size
        grey = DecodedImage(Image.new("RGB", (size, size), (128, 128, 128)), size, size, "-")
        self.postprocess(self.infer(self.preprocess(grey)), grey)

    # -- per request ----------------------------------------------------------------------

    def decode(self, data: bytes, check_size: SizeCheck | None = None) -> DecodedImage:
        return decode_image(
            data,
            max_pixels=self.settings.max_pixels,
            draft_size=self.settings.input_size,
            check_size=check_size,
        )

    def preprocess(self, decoded: DecodedImage) -> np.ndarray:
        return to_batch(decoded.image, self.settings.input_size)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.backend.infer(batch)

    def postprocess(self, class_ids: np.ndarray, decoded: DecodedImage) -> np.ndarray:
        """The class ids of the one image, brought back to its upright size (nearest
        neighbour: ids are labels, never blended)."""
        ids = class_ids[0]
        size = (decoded.width, decoded.height)
        if (ids.shape[1], ids.shape[0]) != size:
            ids = np.asarray(Image.fromarray(ids).resize(size, Image.Resampling.NEAREST))
        return ids

    def handle(self, data: bytes, *, check_size: SizeCheck | None = None) -> Result:
        """`check_size(width, height)` may refuse the image from its header (see
        decode_image): the view passes the limits that depend on what it will answer."""
        timings = StageTimings()
        with timings.stage("decode"):
            decoded = self.decode(data, check_size)
        with timings.stage("preprocess"):
            batch = self.preprocess(decoded)
        with timings.stage("inference"):
            class_ids = self.infer(batch)
        with timings.stage("postprocess"):
            mask = self.postprocess(class_ids, decoded)
        return Result(mask=mask, width=decoded.width, height=decoded.height, timings=timings)

    # -- description ----------------------------------------------------------------------

    def describe(self) -> dict:
        """What GET /v1/model answers, to anyone who can reach the service: what a client needs
        to read a mask and to know which model made it. No paths, library versions, pids or
        settings: those tell an attacker what to aim at (library versions are on the private
        /metrics, see build_info)."""
        w = self.weights
        info = {
            "name": self.settings.model_name,
            "app_version": app_version(),
            "arch": w.arch,
            "backend": self.settings.backend,
            "precision": self.settings.precision,
            "device": self.device,
            "input_size": self.settings.input_size,
            "classes": {str(i): name for i, name in enumerate(w.categories)},
            "pretrained": w.pretrained,
            "weights_sha256": w.sha256,
        }
        if self.choice is not None:
            info["backend_choice"] = self.choice
        if not w.pretrained:
            info["warning"] = UNTRAINED_WARNING
        return info

    def build_info(self) -> dict[str, str]:
        """Versions of what serves, for operators: the labels of /metrics' segserve_build_info."""
        return {
            "model": self.settings.model_name,
            "app_version": app_version(),
            # "" when not installed, whichever backend runs (a CPU host serving the converted
            # model has no torch); torch's own version string where it serves (it names the
            # CUDA build, e.g. 2.14.1+cu130).
            **_torch_versions(self.settings.backend),
            "onnxruntime": _distribution_version("onnxruntime") or "",
            "openvino": _distribution_version("openvino") or "",
            "backend": self.settings.backend,
            "precision": self.settings.precision,
            "device": self.device,
        }


UNTRAINED_WARNING = (
    "UNTRAINED weights (a seeded initialisation, not a trained model): the masks are "
    "meaningless; make real weights with `segserve-weights export`"
)


def app_version() -> str:
    # "unknown" when running from a source tree that was never installed.
    return _distribution_version("segserve") or "unknown"


def _torch_versions(backend: str) -> dict[str, str]:
    if backend in ARTIFACT_BACKENDS:
        return {
            "torch": _distribution_version("torch") or "",
            "torchvision": _distribution_version("torchvision") or "",
        }
    import torch
    import torchvision

    return {"torch": torch.__version__, "torchvision": torchvision.__version__}


def _distribution_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _normalise_table() -> np.ndarray:
    """(3, 256) float32: the normalised value of each 8-bit level per channel, computed with
    the float32 operations torchvision's preset applies per pixel ((v / 255 - mean) / std),
    so a lookup gives the very same bits."""
    levels = np.arange(256, dtype=np.float32) / np.float32(255.0)
    mean = np.asarray(MEAN, dtype=np.float32)[:, None]
    std = np.asarray(STD, dtype=np.float32)[:, None]
    return (levels[None, :] - mean) / std


# An 8-bit channel has 256 levels: one lookup per pixel instead of a conversion, a division,
# a subtraction and a division over the whole image (bench/results/backends.md, stages).
NORMALISE = _normalise_table()


def to_batch(image: Image.Image, input_size: int) -> np.ndarray:
    """An RGB image as the model's (1, 3, H, W) float32 input: short side resized to
    `input_size` (bilinear, antialiased), ImageNet normalisation, as torchvision's
    SemanticSegmentation preset does for these weights. Shared by every backend and by the
    agreement gate; numpy only, so the artifact backends need no torch for it."""
    target = resized_size(image.width, image.height, input_size, input_size * MAX_ASPECT)
    if target != image.size:
        image = image.resize(target, Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.uint8)
    batch = np.empty((1, 3, pixels.shape[0], pixels.shape[1]), dtype=np.float32)
    for channel in range(3):
        np.take(NORMALISE[channel], pixels[:, :, channel], out=batch[0, channel])
    return batch
