"""Ahead-of-time conversion of a weights file to an ONNX artifact, with an equivalence check.

Run where the weights are provisioned (`segserve-weights export-onnx IN.pth OUT.onnx`), never
at request time. The steps:

1. Build the network from the weights file and export it with torch.onnx.export (the
   TorchScript-based exporter, `dynamo=False`: it needs no onnxscript and gives a graph that
   ONNX Runtime optimises fully). Batch, height and width are dynamic axes: the service keeps
   each image's aspect ratio (short side = input size), so one artifact serves every shape.
   The graph has two outputs: `class_ids` (argmax over classes, uint8, what serving reads)
   and `logits` (read by the check only).
2. Run the agreement gate (segserve.gate): the same real photos through eager PyTorch
   float32 and through ONNX Runtime (with the service's session options); every pixel whose
   eager top-2 margin is above float32's rounding bound must keep its class, and no image
   may have more than 1 - `threshold` of its pixels changed. When it fails, nothing is
   written unless `force` is given, which the artifact records.
3. Record provenance in the ONNX model's metadata_props (keys `segserve.*`): the source
   weights' sha256, arch, classes, input-size policy, the figures and the images they were
   measured on, and what the gate reads of eager PyTorch on those images (each pixel's class
   and up to which precision it is decided: segserve.gate.record_reference), so that a host
   without torch gates its candidates against the same reference.
   In the model file itself rather than a sidecar, so the figures can never be separated from
   or paired with the wrong graph, the artifact's own sha256 covers them, and the service reads
   them through onnxruntime alone (`onnx` is needed for the conversion, not for serving).

Untrained weights (a seeded init) give nearly uniform masks, which agree trivially; the gate
stays meaningful because every decided pixel counts, and the tests run it on
`init --varied-masks` weights, whose masks hold many classes.
"""

from __future__ import annotations

import base64
import json
import os
import warnings
from typing import TYPE_CHECKING

from segserve import gate
from segserve.backends import ONNX_CLASS_IDS, ONNX_FORMAT, ONNX_INPUT, ONNX_LOGITS, ort_session
from segserve.config import INPUT_SIZE
from segserve.errors import StartupError

if TYPE_CHECKING:
    from PIL import Image

    from segserve.weights import WeightsFile

# Least share of each image's pixels that must keep their class (see segserve.gate).
DEFAULT_THRESHOLD = 1.0 - gate.DEFAULT_MAX_FLIP_SHARE
OPSET = 17


class ConversionError(StartupError):
    """The conversion failed or its result does not match eager PyTorch closely enough."""


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
) -> tuple[str, gate.GateResult, dict[str, str]]:
    """Convert, check, write atomically. Returns (sha256 of the artifact, the figures, the
    metadata written). Raises ConversionError when the gate fails, unless `force`."""
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
                return model(torch.from_numpy(batch))["out"].numpy()

        def converted(batch):
            ids, logits = session.run([ONNX_CLASS_IDS, ONNX_LOGITS], {ONNX_INPUT: batch})
            return ids, logits

        proto = onnx.load(tmp)
        depth = gate.onnx_rounding_depth(proto)
        figures = gate.evaluate(
            eager,
            converted,
            precision="fp32",
            depth=depth,
            input_size=input_size,
            max_flip_share=1.0 - threshold,
            images=images,
        )
        # What the gate reads of eager PyTorch, for the hosts that gate their candidates and
        # have no torch (segserve.choose): base64 in the metadata, covered by the sha256.
        recorded = gate.record_reference(eager, depth=depth, input_size=input_size, images=images)
        if not figures.passes and not force:
            raise ConversionError(
                "converted model fails the agreement gate against eager PyTorch float32: "
                + "; ".join(figures.failures())
                + "; nothing written (--force writes it anyway, recorded as forced)"
            )
        meta = {
            "format": ONNX_FORMAT,
            "source_weights_sha256": weights.sha256,
            "source_weights_name": os.path.basename(weights.path),
            "arch": weights.arch,
            "num_classes": str(weights.num_classes),
            # What the service reports of the model, read from here where no weights file
            # (and no torch) is installed: see segserve.backends.model_from_artifact.
            "categories": json.dumps(list(weights.categories)),
            "pretrained": str(weights.pretrained).lower(),
            "weights_source": weights.source,
            "precision": "float32",
            "input_size_policy": (
                f"dynamic batch, height and width; short side resized to {INPUT_SIZE.env} "
                f"(long side at most 4x); checked at {input_size}"
            ),
            "checked_input_size": str(input_size),
            "gate": gate.GATE_VERSION,
            "rounding_depth": str(depth),
            "pixel_agreement": f"{figures.pixel_agreement:.6f}",
            "min_image_agreement": f"{figures.min_image_agreement:.6f}",
            "decided_flips": str(figures.decided_flips),
            "max_abs_logit_diff": f"{figures.max_abs_logit_diff:.6g}",
            "agreement_threshold": str(threshold),
            "agreement_forced": str(not figures.passes).lower(),
            "equivalence_images": json.dumps(figures.image_records()),
            "gate_reference": base64.b64encode(recorded).decode("ascii"),
            "exporter": f"torch.onnx.export(dynamo=False, opset_version={OPSET})",
            "torch_version": torch.__version__,
        }
        del proto.metadata_props[:]
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = f"segserve.{key}", value
        onnx.save(proto, tmp)
    return file_sha256(out), figures, meta
