"""Ahead-of-time conversion of a weights file to an ONNX artifact, with an equivalence check.

Run where the weights are provisioned (`segserve-weights export-onnx IN.pth OUT.onnx`), never
at request time. The steps:

1. Build the network from the weights file and export it with torch.onnx.export (the
   TorchScript-based exporter, `dynamo=False`: it needs no onnxscript and gives a graph that
   ONNX Runtime optimises fully). Batch, height and width are dynamic axes: the service keeps
   each image's aspect ratio (short side = input size), so one artifact serves every shape.
   The graph has two outputs: `class_ids` (argmax over classes, uint8, what serving reads)
   and `logits` (read by the check only).
2. Run the equivalence check: the same real images through eager PyTorch float32 and through
   ONNX Runtime (with the service's session options); per image, the share of pixels whose
   class agrees, the largest absolute logit difference, and how many pixels are "close
   calls" (eager's top-2 margin smaller than twice that difference: the only pixels where a
   numerical difference could flip the class). Below the threshold (overall, or on any one
   image) nothing is written unless `force` is given, which the artifact records.
3. Record provenance in the ONNX model's metadata_props (keys `segserve.*`): the source
   weights' sha256, arch, input-size policy, the figures and the images they were measured on.
   In the model file itself rather than a sidecar, so the figures can never be separated from
   or paired with the wrong graph, the artifact's own sha256 covers them, and the service reads
   them through onnxruntime alone (`onnx` is needed for the conversion, not for serving).

Untrained weights (a seeded init) give nearly uniform masks, which agree trivially; the check
stays meaningful because it also reports the logit difference and the close calls, and the
tests run it on `init --varied-masks` weights, whose masks hold many classes.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from segserve.backends import ONNX_CLASS_IDS, ONNX_FORMAT, ONNX_INPUT, ONNX_LOGITS, ort_session
from segserve.config import INPUT_SIZE
from segserve.errors import StartupError

if TYPE_CHECKING:
    from PIL import Image

    from segserve.weights import WeightsFile

DEFAULT_THRESHOLD = 0.995
OPSET = 17


class ConversionError(StartupError):
    """The conversion failed or its result does not match eager PyTorch closely enough."""


@dataclass
class ImageAgreement:
    name: str
    size: str  # the model input, WxH
    pixels: int
    agreement: float  # share of pixels with the same class as eager float32
    max_abs_logit_diff: float
    close_calls: int  # pixels whose eager top-2 margin < 2 x max_abs_logit_diff
    classes: int  # classes present in the eager mask


@dataclass
class Equivalence:
    images: list[ImageAgreement] = field(default_factory=list)

    @property
    def pixel_agreement(self) -> float:
        total = sum(i.pixels for i in self.images)
        return sum(i.agreement * i.pixels for i in self.images) / total

    @property
    def min_image_agreement(self) -> float:
        return min(i.agreement for i in self.images)

    @property
    def max_abs_logit_diff(self) -> float:
        return max(i.max_abs_logit_diff for i in self.images)

    def passes(self, threshold: float) -> bool:
        return self.pixel_agreement >= threshold and self.min_image_agreement >= threshold

    def table(self) -> str:
        lines = [
            f"{'image':<28} {'input':>9} {'agreement':>10} {'max|dlogit|':>12} "
            f"{'close calls':>11} {'classes':>7}"
        ]
        for i in self.images:
            lines.append(
                f"{i.name:<28} {i.size:>9} {i.agreement:>10.5%} {i.max_abs_logit_diff:>12.3g} "
                f"{i.close_calls:>11} {i.classes:>7}"
            )
        lines.append(
            f"{'overall':<28} {'':>9} {self.pixel_agreement:>10.5%} "
            f"{self.max_abs_logit_diff:>12.3g} {sum(i.close_calls for i in self.images):>11}"
        )
        return "\n".join(lines)


def equivalence_images() -> list[tuple[str, Image.Image]]:
    """Real photos for the check: the three packaged samples and nine variants of them
    (flips, crops, rotations, sizes, greyscale, a wide panorama), 12 in all, of different
    aspect ratios so that the dynamic axes are exercised."""
    from PIL import Image, ImageOps

    from segserve import samples

    def photo(name: str) -> Image.Image:
        with Image.open(samples.path(name)) as image:
            return image.convert("RGB")

    astronaut, chelsea, coffee = (photo(n) for n in ("astronaut.jpg", "chelsea.jpg", "coffee.jpg"))
    flip_lr = Image.Transpose.FLIP_LEFT_RIGHT
    return [
        ("astronaut.jpg", astronaut),
        ("chelsea.jpg", chelsea),
        ("coffee.jpg", coffee),
        ("astronaut flipped", astronaut.transpose(flip_lr)),
        ("chelsea flipped", chelsea.transpose(flip_lr)),
        ("coffee upside down", coffee.transpose(Image.Transpose.FLIP_TOP_BOTTOM)),
        ("astronaut crop 300x400", astronaut.crop((40, 0, 340, 400))),
        ("chelsea rotated 90", chelsea.transpose(Image.Transpose.ROTATE_90)),
        ("coffee crop 400x250", coffee.crop((100, 75, 500, 325))),
        ("coffee small 150x100", coffee.resize((150, 100), Image.Resampling.LANCZOS)),
        ("astronaut greyscale", ImageOps.grayscale(astronaut).convert("RGB")),
        ("coffee panorama 600x160", coffee.crop((0, 120, 600, 280))),
    ]


def check_equivalence(
    reference: Callable,
    candidate: Callable,
    input_size: int,
    images: list[tuple[str, Image.Image]] | None = None,
) -> Equivalence:
    """Compare two functions over real images. Each maps a (1, 3, H, W) batch to (N, C, H, W)
    float32 logits (numpy), or to a pair (class ids, logits) when the candidate computes its
    class ids itself (the artifact does: what serving returns is what is compared)."""
    from segserve.handler import to_batch

    result = Equivalence()
    for name, image in images if images is not None else equivalence_images():
        batch = to_batch(image, input_size)
        ref = reference(batch)
        out = candidate(batch)
        if isinstance(out, tuple):
            out_ids, out = out
        else:
            out_ids = out.argmax(axis=1)
        ref_ids = ref.argmax(axis=1)
        diff = float(np.abs(out.astype(np.float32) - ref).max())
        top2 = np.sort(ref, axis=1)[:, -2:]
        margin = top2[:, 1] - top2[:, 0]
        result.images.append(
            ImageAgreement(
                name=name,
                size=f"{batch.shape[3]}x{batch.shape[2]}",
                pixels=int(ref_ids.size),
                agreement=float((ref_ids == out_ids).mean()),
                max_abs_logit_diff=diff,
                close_calls=int((margin < 2 * diff).sum()),
                classes=len(np.unique(ref_ids)),
            )
        )
    return result


def _with_two_outputs(model):
    """The network as the artifact holds it: (class_ids uint8, logits)."""
    import torch

    class Exported(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            logits = self.model(x)["out"]
            return logits.argmax(dim=1).to(torch.uint8), logits

    return Exported(model).eval()


def export_onnx(
    weights: WeightsFile,
    out: str | os.PathLike[str],
    *,
    input_size: int = 520,
    threshold: float = DEFAULT_THRESHOLD,
    force: bool = False,
    images: list[tuple[str, Image.Image]] | None = None,
    threads: int = 1,
) -> tuple[str, Equivalence, dict[str, str]]:
    """Convert, check, write atomically. Returns (sha256 of the artifact, the figures, the
    metadata written). Raises ConversionError below the threshold unless `force`."""
    import onnx
    import torch

    from segserve.models import build_model
    from segserve.weights import atomic_output, file_sha256

    out = os.fspath(out)
    model = build_model(weights.arch, weights.num_classes)
    model.load_state_dict(weights.state_dict)
    exported = _with_two_outputs(model)
    example = torch.zeros(1, 3, input_size, input_size)

    with atomic_output(out, ".segserve-onnx-", ".onnx") as tmp:
        with torch.no_grad(), warnings.catch_warnings():
            # The TorchScript-based exporter announces its deprecation; it is chosen on
            # purpose (see the module docstring).
            warnings.simplefilter("ignore")
            torch.onnx.export(
                exported,
                (example,),
                tmp,
                dynamo=False,
                opset_version=OPSET,
                input_names=[ONNX_INPUT],
                output_names=[ONNX_CLASS_IDS, ONNX_LOGITS],
                dynamic_axes={
                    ONNX_INPUT: {0: "batch", 2: "height", 3: "width"},
                    ONNX_CLASS_IDS: {0: "batch", 1: "height", 2: "width"},
                    ONNX_LOGITS: {0: "batch", 2: "height", 3: "width"},
                },
            )
        session = ort_session(tmp, threads)

        def eager(batch):
            with torch.inference_mode():
                return model(batch)["out"].numpy()

        def converted(batch):
            ids, logits = session.run([ONNX_CLASS_IDS, ONNX_LOGITS], {ONNX_INPUT: batch.numpy()})
            return ids, logits

        figures = check_equivalence(eager, converted, input_size, images)
        if not figures.passes(threshold) and not force:
            raise ConversionError(
                f"converted model agrees with eager PyTorch on {figures.pixel_agreement:.4%} of "
                f"pixels (worst image {figures.min_image_agreement:.4%}), below the threshold "
                f"{threshold:.2%}; nothing written (--force writes it anyway, recorded as forced)"
            )
        meta = {
            "format": ONNX_FORMAT,
            "source_weights_sha256": weights.sha256,
            "source_weights_name": os.path.basename(weights.path),
            "arch": weights.arch,
            "num_classes": str(weights.num_classes),
            "pretrained": str(weights.pretrained).lower(),
            "weights_source": weights.source,
            "precision": "float32",
            "input_size_policy": (
                f"dynamic batch, height and width; short side resized to {INPUT_SIZE.env} "
                f"(long side at most 4x); checked at {input_size}"
            ),
            "checked_input_size": str(input_size),
            "pixel_agreement": f"{figures.pixel_agreement:.6f}",
            "min_image_agreement": f"{figures.min_image_agreement:.6f}",
            "max_abs_logit_diff": f"{figures.max_abs_logit_diff:.6g}",
            "agreement_threshold": str(threshold),
            "agreement_forced": str(not figures.passes(threshold)).lower(),
            "equivalence_images": json.dumps([asdict(i) for i in figures.images]),
            "exporter": f"torch.onnx.export(dynamo=False, opset_version={OPSET})",
            "torch_version": torch.__version__,
        }
        proto = onnx.load(tmp)
        del proto.metadata_props[:]
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = f"segserve.{key}", value
        onnx.save(proto, tmp)
    return file_sha256(out), figures, meta
