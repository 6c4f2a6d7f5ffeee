"""int8 by post-training quantisation, through the same agreement gate as every candidate.

    .venv/bin/python bench/int8.py [-n 30] [--input-size 520]

Makes the bench's multi-class weights (`init --varied-masks`, as bench/backends.py), converts
them as `segserve-weights export-onnx` does, then quantises that artifact statically with ONNX
Runtime's own quantiser (QDQ format: the rounding nodes' weights int8 per output channel,
their inputs uint8 per tensor), once per calibration method (MinMax and Percentile; not
Entropy: `quantize_static` gives its calibrator 128 histogram bins for 128 quantised ones,
which leaves the full range, so it is MinMax again). Calibration photos are crops and
scales of the three packaged samples that are *not* among the gate's 12 photos; they are the
only photos the project carries, so calibration and gate share their sources, which can only
flatter int8.

Each quantised graph is then a candidate twice, ONNX Runtime int8 and OpenVINO reading the same
QDQ graph (its int8 kernels), and goes through segserve.gate against eager PyTorch float32
on the gate's 12 photos. The bound is the 8-bit one, bfloat16's (u = 2**-8; the gate's lines
say "bf16 rounding bound"): an 8-bit grid cannot round finer than 1/256 of what it spans. int8's
rounding is relative to each tensor's range, not to each value, so against the logits' RMS its
error can exceed that: the bound is strict for int8, and the gate's second rule (at most 1% of
an image's pixels changed) is the one that does not depend on it. Then inference alone is
timed, interleaved, against the
artifact under ONNX Runtime float32 and OpenVINO float32 (and bfloat16 where the CPU has it).
Writes bench/results/int8.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchlib import cpu_flags, write_report

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from inprocess import cpu_model  # noqa: E402

# The graph's rounding nodes (segserve.gate.ROUNDING_OPS): what int8 would speed up.
QUANTISED_OPS = ["Conv", "ConvTranspose", "Gemm", "MatMul"]
# Percentile keeps the outliers of an activation out of its range; MinMax is the plain range
# seen. Each is a fair try (Entropy is not: see the docstring).
METHODS = ("MinMax", "Percentile")
# The 8-bit bound (see the docstring).
GATE_PRECISION = "bf16"


def calibration_images():
    """Crops and scales of the samples, none of them a gate photo (segserve.convert), all
    brought to one 4:3 shape (the histogram calibrators stack their batches)."""
    from PIL import Image, ImageOps

    from segserve import samples

    out = []
    for name in ("astronaut.jpg", "chelsea.jpg", "coffee.jpg"):
        with Image.open(samples.path(name)) as photo:
            image = photo.convert("RGB")
        w, h = image.size
        out.append(image.crop((w // 4, h // 4, w, h)))
        out.append(image.crop((0, 0, w * 2 // 3, h * 2 // 3)).resize((400, 300)))
        out.append(ImageOps.mirror(image.crop((w // 8, 0, w * 7 // 8, h))))
        out.append(image.resize((w * 3 // 4, h * 3 // 4)).rotate(8, expand=False))
    return [i.resize((640, 480), Image.Resampling.LANCZOS) for i in out]


class Reader:
    """ONNX Runtime's calibration reader over the calibration photos, as served batches."""

    def __init__(self, input_size: int):
        from segserve.handler import to_batch

        self.batches = iter([to_batch(i, input_size) for i in calibration_images()])

    def get_next(self):
        batch = next(self.batches, None)
        return None if batch is None else {"input": batch}

    def rewind(self):  # newer ONNX Runtime versions call it between passes
        pass


def quantise(fp32_path: str, out_path: str, method: str, input_size: int) -> float:
    """Write the QDQ int8 graph; seconds it took."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    started = time.perf_counter()
    prepared = out_path + ".pre.onnx"
    quant_pre_process(fp32_path, prepared, skip_symbolic_shape=True)
    quantize_static(
        prepared,
        out_path,
        Reader(input_size),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=QUANTISED_OPS,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=getattr(CalibrationMethod, method),
    )
    return time.perf_counter() - started


def ort_runner(path: str):
    from segserve.backends import ort_session

    session = ort_session(path, 1)

    def run(batch):
        return tuple(session.run(["class_ids", "logits"], {"input": batch}))

    return run


def ov_runner(path: str, precision: str):
    from segserve.openvino_backend import compile_artifact

    _, compiled = compile_artifact(path, precision, 1)
    request = compiled.create_infer_request()

    def run(batch):
        out = request.infer({"input": batch})
        return out[compiled.output("class_ids")], out[compiled.output("logits")]

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=30, help="timed inferences per candidate")
    parser.add_argument("--input-size", type=int, default=520)
    parser.add_argument("--out", default=str(HERE / "results" / "int8.md"))
    args = parser.parse_args()

    import onnxruntime
    import openvino
    import torch

    from segserve import convert, gate
    from segserve import weights as weights_mod
    from segserve.handler import to_batch
    from segserve.models import build_model
    from segserve.openvino_backend import host_precisions

    torch.set_num_threads(1)
    load_before = os.getloadavg()
    gates, quant_s, timings = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        weights_path = os.path.join(tmp, "varied.pth")
        fp32 = os.path.join(tmp, "varied.onnx")
        payload = weights_mod.init_payload("lraspp_mobilenet_v3_large", 0, varied_masks=True)
        weights_mod.save(payload, weights_path)
        source = weights_mod.load(weights_path)
        _, figures, meta = convert.export_onnx(source, fp32, input_size=args.input_size)
        depth = int(meta["rounding_depth"])
        model = build_model(source.arch, source.num_classes)
        model.load_state_dict(source.state_dict)
        model.eval()

        def eager(batch):
            with torch.inference_mode():
                return model(torch.from_numpy(batch))["out"].numpy()

        runners = {"onnxruntime fp32": ort_runner(fp32)}
        for p in host_precisions():
            runners[f"openvino {p}"] = ov_runner(fp32, p)
        for method in METHODS:
            path = os.path.join(tmp, f"int8-{method}.onnx")
            quant_s[method] = quantise(fp32, path, method, args.input_size)
            runners[f"onnxruntime int8 ({method})"] = ort_runner(path)
            runners[f"openvino int8 ({method})"] = ov_runner(path, "fp32")
        for name, run in runners.items():
            precision = "fp32" if "fp32" in name else GATE_PRECISION
            gates[name] = gate.evaluate(
                eager, run, precision=precision, depth=depth, input_size=args.input_size
            )
            print(name, gates[name].table(), sep="\n", flush=True)

        from PIL import Image

        from segserve import samples

        with Image.open(samples.path("astronaut.jpg")) as photo:
            image = photo.convert("RGB").resize((args.input_size,) * 2)
        batch = to_batch(image, args.input_size)
        timed = {name: [] for name in runners}
        for run in runners.values():
            run(batch)  # warm-up
        for _ in range(args.n):
            for name, run in runners.items():
                started = time.perf_counter()
                run(batch)
                timed[name].append(time.perf_counter() - started)
        timings = {name: statistics.median(t) * 1000 for name, t in timed.items()}
    load_after = os.getloadavg()

    base = timings["onnxruntime fp32"]
    command = "python bench/int8.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    lines = [
        "# int8 by post-training quantisation, through the agreement gate",
        "",
        f"- Command: `{command.strip()}` ({time.strftime('%Y-%m-%d %H:%M %Z')})",
        f"- Machine: {cpu_model()}, {os.cpu_count()} cores ({cpu_flags()}); load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after; Python "
        f"{platform.python_version()}, onnxruntime {onnxruntime.__version__}, openvino "
        f"{openvino.get_version()}, torch {torch.__version__}.",
        "- Model: lraspp_mobilenet_v3_large, the bench's multi-class weights (`init "
        "--varied-masks`: untrained, thin logit margins, many classes per mask), converted by "
        f"`export-onnx` at {args.input_size}. Quantised with ONNX Runtime's `quantize_static` "
        f"(QDQ; {', '.join(QUANTISED_OPS)} nodes; weights int8 per channel, activations uint8 "
        "per tensor; MinMax and Percentile calibration) on 12 calibration photos (crops, "
        "scales, a mirror and a rotation of the three samples, none a gate photo). "
        "Quantising took " + ", ".join(f"{m} {s:.0f} s" for m, s in quant_s.items()) + ".",
        f"- Gate: `{gate.GATE_VERSION}` against eager PyTorch float32 on the gate's 12 photos, "
        "at most 1% of an image's pixels changed; int8 and bfloat16 candidates at the 8-bit "
        "bound (u = 2^-8, named bf16 in the gate's lines), float32 ones at float32's. The "
        "bound is strict for int8 (its rounding is relative to a tensor's range); the 1% rule "
        "does not depend on it.",
        f"- Time: inference alone (batch in, class ids out), one thread, a {args.input_size}x"
        f"{args.input_size} photo, median of {args.n}, candidates interleaved.",
        "",
        "| candidate | gate | decided flips | pixel agreement | worst image | ms | "
        "speed vs onnxruntime fp32 |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, result in gates.items():
        lines.append(
            f"| {name} | {'passes' if result.passes else 'FAILS'} | {result.decided_flips:,} "
            f"| {result.pixel_agreement:.4%} | {result.min_image_agreement:.4%} "
            f"| {timings[name]:.1f} | {base / timings[name]:.2f}x |"
        )
    lines += ["", "Why a candidate fails, in the gate's words:", ""]
    for name, result in gates.items():
        for failure in result.failures():
            lines.append(f"- {name}: {failure}")
    lines.append("")
    return write_report(args.out, lines)


if __name__ == "__main__":
    sys.exit(main())
