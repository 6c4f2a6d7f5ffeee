"""The agreement gate: may a runtime, at a precision, serve in place of eager PyTorch float32?

Every candidate (ONNX Runtime float32 at conversion, OpenVINO float32 or bfloat16 on a host)
goes through the same gate, on the same real photos, against the same reference: eager
PyTorch float32, run at conversion, and on a host (which has no torch) read from what the
conversion recorded of it in the artifact (record_reference, evaluate_recorded).

Why not "share of pixels that agree" alone: float32 runtimes agree on 99.9999% of pixels, but
a bfloat16 one cannot, and the share it reaches says more about the weights than about the
runtime (the bench's multi-class test weights have logit margins far thinner than a trained
model's, so a small rounding error flips more of their pixels). What a reduced precision may
change is bounded, and the gate asks for exactly that bound:

1. **Decided pixels must agree, all of them.** A pixel is *decided* at precision p when the
   reference's top-2 logit margin is above what rounding can move it:

       bound = 2 * (D * u_fp32 + sqrt(D) * u_p) * rms(reference logits of the image)

   - u is the unit roundoff: 2**-24 for float32 (24 significand bits), 2**-8 for bfloat16
     (8 significand bits: 7 stored and the implicit one).
   - D is the rounding depth: the graph's Conv, ConvTranspose, Gemm and MatMul nodes, each of
     which rounds what it computes (66 for lraspp_mobilenet_v3_large).
   - D * u_fp32 is the reference's own uncertainty: eager PyTorch is a float32 computation
     too, known only up to the worst case of D rounding steps (Higham, "Accuracy and
     Stability of Numerical Algorithms", 2nd ed., Lemma 3.1: |error| <= gamma_D, about D u).
     Another correct float32 implementation (other kernels, another summation order) may
     differ from it by that much, so the worst case, not a likely case, is allowed for.
   - sqrt(D) * u_p is the candidate's rounding at its own precision, taken as D independent
     rounding steps (Higham and Mary, "A New Approach to Probabilistic Rounding Error
     Analysis", SIAM J. Sci. Comput. 41(5), 2019: such errors grow like sqrt(D) u). The
     worst case D u_p would make the bound half the logits' scale at bfloat16 and leave
     nearly every pixel undecided: a gate that cannot fail.
   - The image's logit RMS is the scale of the errors: every pixel's logits come out of the
     same layers, whose activations the roundings are relative to.
   - 2: the top-1 and the top-2 logit can move in opposite directions.
   A flip on a decided pixel is not rounding: it is a wrong graph, layout, kernel or input.
2. **Flips stay under a stated share**: at most `max_flip_share` (1%) of any one image's
   pixels may change class. Below the bound a pixel is a tie at precision p and may go
   either way; this caps how much of a mask may be such ties.

The constants are fixed here, before any candidate is measured, and the same for all of them.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

# Unit roundoff per precision: half the gap between 1.0 and the next representable number.
UNIT_ROUNDOFF = {"fp32": 2.0**-24, "bf16": 2.0**-8}
PRECISIONS = tuple(UNIT_ROUNDOFF)
# Nodes that round their inputs to the inference precision (their products are what rounds).
ROUNDING_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
DEFAULT_MAX_FLIP_SHARE = 0.01
# The gate's name in records: a change of the rule above is a new version.
GATE_VERSION = "decided-pixels/1"

# A (1, 3, H, W) float32 batch -> (1, C, H, W) logits, or (class ids, logits) for a
# candidate that computes its own class ids (what serving returns is what is compared).
Runner = Callable[[np.ndarray], Any]


def rounding_bound(precision: str, depth: int, logits: np.ndarray) -> float:
    """The largest top-2 margin (in logits) that rounding at `precision` can overturn."""
    rms = float(np.sqrt(np.mean(np.square(logits, dtype=np.float64))))
    reference = depth * UNIT_ROUNDOFF["fp32"]
    candidate = math.sqrt(depth) * UNIT_ROUNDOFF[precision]
    return 2.0 * (reference + candidate) * rms


@dataclass
class ImageGate:
    name: str
    size: str  # the model input, WxH
    pixels: int
    flips: int  # pixels whose class differs from the reference's
    undecided: int  # pixels whose reference margin is within the bound
    decided_flips: int  # flips outside the bound: must be 0
    bound: float  # in logits
    max_abs_logit_diff: float | None  # None against a recorded reference (no logits kept)
    classes: int  # classes present in the reference mask

    @property
    def agreement(self) -> float:
        return 1.0 - self.flips / self.pixels


@dataclass
class GateResult:
    precision: str
    depth: int
    max_flip_share: float
    images: list[ImageGate] = field(default_factory=list)

    @property
    def pixel_agreement(self) -> float:
        return 1.0 - sum(i.flips for i in self.images) / sum(i.pixels for i in self.images)

    @property
    def min_image_agreement(self) -> float:
        return min(i.agreement for i in self.images)

    @property
    def max_abs_logit_diff(self) -> float | None:
        diffs = [i.max_abs_logit_diff for i in self.images]
        return None if None in diffs else max(diffs)

    @property
    def decided_flips(self) -> int:
        return sum(i.decided_flips for i in self.images)

    def failures(self) -> list[str]:
        """Why the candidate fails, one line per broken rule; empty when it passes."""
        out = []
        if self.decided_flips:
            worst = max(self.images, key=lambda i: i.decided_flips)
            out.append(
                f"{self.decided_flips} decided pixels changed class (margin above the "
                f"{self.precision} rounding bound; worst: {worst.decided_flips} on {worst.name})"
            )
        over = [i for i in self.images if 1.0 - i.agreement > self.max_flip_share]
        if over:
            worst = min(over, key=lambda i: i.agreement)
            out.append(
                f"{len(over)} images have more than {self.max_flip_share:.2%} of their pixels "
                f"changed (worst: {1.0 - worst.agreement:.3%} on {worst.name})"
            )
        return out

    @property
    def passes(self) -> bool:
        return not self.failures()

    def summary(self) -> dict[str, Any]:
        return {
            "gate": GATE_VERSION,
            "precision": self.precision,
            "rounding_depth": self.depth,
            "max_flip_share": self.max_flip_share,
            "passes": self.passes,
            "pixel_agreement": round(self.pixel_agreement, 6),
            "min_image_agreement": round(self.min_image_agreement, 6),
            "decided_flips": self.decided_flips,
            "max_abs_logit_diff": _rounded(self.max_abs_logit_diff),
            "failures": self.failures(),
        }

    def image_records(self) -> list[dict[str, Any]]:
        return [asdict(i) for i in self.images]

    def table(self) -> str:
        lines = [
            f"{'image':<26} {'input':>9} {'agreement':>10} {'flips':>6} {'undecided':>9} "
            f"{'decided flips':>13} {'bound':>9} {'max|dlogit|':>11} {'classes':>7}"
        ]
        for i in self.images:
            lines.append(
                f"{i.name:<26} {i.size:>9} {i.agreement:>10.5%} {i.flips:>6} {i.undecided:>9} "
                f"{i.decided_flips:>13} {i.bound:>9.3g} {_shown(i.max_abs_logit_diff)} "
                f"{i.classes:>7}"
            )
        verdict = "passes" if self.passes else "FAILS: " + "; ".join(self.failures())
        lines.append(
            f"{'overall':<26} {'':>9} {self.pixel_agreement:>10.5%} "
            f"{sum(i.flips for i in self.images):>6} {sum(i.undecided for i in self.images):>9} "
            f"{self.decided_flips:>13} {'':>9} {_shown(self.max_abs_logit_diff)}"
        )
        lines.append(
            f"gate {GATE_VERSION}, {self.precision}, rounding depth {self.depth}, at most "
            f"{self.max_flip_share:.2%} of an image's pixels: {verdict}"
        )
        return "\n".join(lines)


def _rounded(value: float | None) -> float | None:
    return None if value is None else float(f"{value:.6g}")


def _shown(value: float | None) -> str:
    return f"{'-':>11}" if value is None else f"{value:>11.3g}"


def evaluate(
    reference: Runner,
    candidate: Runner,
    *,
    precision: str,
    depth: int,
    input_size: int,
    max_flip_share: float = DEFAULT_MAX_FLIP_SHARE,
    images: Iterable[tuple[str, Image.Image]] | None = None,
) -> GateResult:
    """Run both over the gate's photos (segserve.convert.equivalence_images by default)."""
    from segserve.convert import equivalence_images
    from segserve.handler import to_batch

    if precision not in UNIT_ROUNDOFF:
        raise ValueError(f"unknown precision {precision!r}: one of {', '.join(PRECISIONS)}")
    result = GateResult(precision=precision, depth=depth, max_flip_share=max_flip_share)
    for name, image in images if images is not None else equivalence_images():
        batch = to_batch(image, input_size)
        ref = np.asarray(reference(batch), dtype=np.float32)
        out = candidate(batch)
        if isinstance(out, tuple):
            out_ids, out = out
        else:
            out_ids = np.asarray(out).argmax(axis=1)
        out = np.asarray(out, dtype=np.float32)
        ref_ids = ref.argmax(axis=1)
        top2 = np.sort(ref, axis=1)[:, -2:]
        margin = top2[:, 1] - top2[:, 0]
        bound = rounding_bound(precision, depth, ref)
        result.images.append(
            _image_gate(
                name,
                f"{batch.shape[3]}x{batch.shape[2]}",
                ref_ids,
                out_ids,
                margin <= bound,
                bound,
                float(np.abs(out - ref).max()),
            )
        )
    return result


def _image_gate(name, size, ref_ids, out_ids, undecided, bound, max_abs_logit_diff) -> ImageGate:
    """One photo's counts: the candidate's classes against the reference's, and which of the
    changed pixels were decided (one accounting for the live and the recorded reference)."""
    flipped = np.asarray(out_ids) != ref_ids
    return ImageGate(
        name=name,
        size=size,
        pixels=int(ref_ids.size),
        flips=int(flipped.sum()),
        undecided=int(undecided.sum()),
        decided_flips=int((flipped & ~undecided).sum()),
        bound=bound,
        max_abs_logit_diff=max_abs_logit_diff,
        classes=len(np.unique(ref_ids)),
    )


def onnx_rounding_depth(proto) -> int:
    """D of the bound: the rounding nodes of an ONNX graph (top level; the exported
    segmentation networks have no subgraphs)."""
    return sum(1 for node in proto.graph.node if node.op_type in ROUNDING_OPS)


# --- The reference, recorded -------------------------------------------------------------
# A host that serves the converted model has no torch, so it cannot run eager PyTorch. The
# conversion (which has it) records what the gate reads of the reference, per photo and pixel:
# its class, and up to which precision its margin is decided (0: undecided even at float32,
# 1: decided at float32 only, 2: at bfloat16 too; the bounds grow in that order). The gate on
# the host then compares a candidate's class ids with these: the same rule, the same photos,
# the same reference as at conversion, without the logits.
REFERENCE_FORMAT = "segserve-gate-reference/1"


def record_reference(
    reference: Runner,
    *,
    depth: int,
    input_size: int,
    images: Iterable[tuple[str, Image.Image]] | None = None,
) -> bytes:
    """The reference's classes and decided levels on the gate's photos, as compressed bytes."""
    from segserve.convert import equivalence_images
    from segserve.handler import to_batch

    index: dict[str, Any] = {
        "format": REFERENCE_FORMAT,
        "depth": depth,
        "input_size": input_size,
        "precisions": list(PRECISIONS),
        "images": [],
    }
    arrays: dict[str, np.ndarray] = {}
    for n, (name, image) in enumerate(images if images is not None else equivalence_images()):
        batch = to_batch(image, input_size)
        ref = np.asarray(reference(batch), dtype=np.float32)
        top2 = np.sort(ref, axis=1)[:, -2:]
        margin = top2[:, 1] - top2[:, 0]
        bounds = {p: rounding_bound(p, depth, ref) for p in PRECISIONS}
        level = sum((margin > bounds[p]).astype(np.uint8) for p in PRECISIONS)
        arrays[f"ids{n}"] = ref.argmax(axis=1).astype(np.uint8)
        arrays[f"level{n}"] = level.astype(np.uint8)
        index["images"].append(
            {"name": name, "size": f"{batch.shape[3]}x{batch.shape[2]}", "bounds": bounds}
        )
    arrays["index"] = np.frombuffer(json.dumps(index).encode(), dtype=np.uint8)
    out = io.BytesIO()
    np.savez_compressed(out, **arrays)
    return out.getvalue()


def evaluate_recorded(
    recorded: bytes,
    candidate: Runner,
    *,
    precision: str,
    input_size: int,
    max_flip_share: float = DEFAULT_MAX_FLIP_SHARE,
    images: Iterable[tuple[str, Image.Image]] | None = None,
) -> GateResult:
    """The gate against a recorded reference (record_reference): the same verdict as evaluate
    against the live one, from the candidate's class ids alone (no logit difference)."""
    from segserve.convert import equivalence_images
    from segserve.handler import to_batch

    if precision not in UNIT_ROUNDOFF:
        raise ValueError(f"unknown precision {precision!r}: one of {', '.join(PRECISIONS)}")
    with np.load(io.BytesIO(recorded), allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    index = json.loads(arrays["index"].tobytes())
    if index.get("format") != REFERENCE_FORMAT:
        raise ValueError(f"not a recorded gate reference ({index.get('format')!r})")
    if index["input_size"] != input_size:
        raise ValueError(
            f"the reference was recorded at input size {index['input_size']}, not {input_size}"
        )
    needed = index["precisions"].index(precision) + 1
    photos = list(images if images is not None else equivalence_images())
    if [name for name, _ in photos] != [i["name"] for i in index["images"]]:
        raise ValueError("the reference was recorded on other photos than the gate's")
    result = GateResult(precision=precision, depth=index["depth"], max_flip_share=max_flip_share)
    for n, ((name, image), meta) in enumerate(zip(photos, index["images"], strict=True)):
        batch = to_batch(image, input_size)
        out = candidate(batch)
        out_ids = out[0] if isinstance(out, tuple) else np.asarray(out).argmax(axis=1)
        ref_ids, level = arrays[f"ids{n}"], arrays[f"level{n}"]
        undecided = level < needed
        bound = meta["bounds"][precision]
        result.images.append(
            _image_gate(name, meta["size"], ref_ids, out_ids, undecided, bound, None)
        )
    return result
