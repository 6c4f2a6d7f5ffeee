"""Per-image cost of each inference backend against eager PyTorch, in one run, interleaved.

    .venv/bin/python bench/backends.py [-n 30] [--input-size 520] [--procs 2] [--repeats 2]

Makes a weights file (`init --varied-masks`: untrained, but its masks hold many classes, so
the agreement figures are not trivially 100%; its cost is the trained network's), converts it
with the same code as `segserve-weights export-onnx` (which runs the equivalence check), then
times the real handler of each backend on the same images, one request of each backend after
the other, rotating the order each round, and reports medians:

- `torch (argmax)`: eager PyTorch with torch's argmax over classes, the service before the
  backends work;
- `torch`: the torch backend as it is now (eager, class ids by a running maximum);
- `onnxruntime`: the converted artifact (float32, graph optimisations 'all', argmax in graph);
- `openvino fp32`, `openvino bf16`: the same artifact run by OpenVINO (bf16 only where the
  CPU computes it natively), each first put through the agreement gate (segserve.gate)
  against eager float32 on the gate's 12 photos.

"inference" is the backend alone (batch in, class ids out); "total" is decode -> preprocess ->
inference -> postprocess -> PNG encode, what a request costs inside the app. Then images/s
with `--procs` processes x 1 thread for each backend, the runs interleaved `--repeats` times.
Writes bench/results/backends.md.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchlib import spawn_rate, write_report

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from inprocess import cpu_model  # noqa: E402

BASE_VARIANTS = ("torch (argmax)", "torch", "onnxruntime")


def variants() -> tuple[str, ...]:
    from segserve.openvino_backend import host_precisions

    return BASE_VARIANTS + tuple(f"openvino {p}" for p in host_precisions())


def make_handler(variant: str, weights: str, onnx_path: str, input_size: int):
    import torch

    from segserve.backends import TorchBackend
    from segserve.config import Settings
    from segserve.handler import SegmentationHandler

    torch.set_num_threads(1)
    values = {
        "WEIGHTS_PATH": weights,
        "DEVICE": "cpu",
        "INPUT_SIZE": input_size,
        "TORCH_THREADS": 1,
    }
    if variant == "onnxruntime":
        values.update(BACKEND="onnxruntime", ONNX_PATH=onnx_path)
    if variant.startswith("openvino"):
        values.update(BACKEND="openvino", PRECISION=variant.split()[1], ONNX_PATH=onnx_path)
    handler = SegmentationHandler(Settings.from_mapping(values))
    handler.initialize()
    if variant == "torch (argmax)":

        class ArgmaxBackend(TorchBackend):
            def infer(self, batch):
                with torch.inference_mode():
                    return self.model(batch)["out"].argmax(dim=1).to(torch.uint8)

        backend = ArgmaxBackend(handler.weights, "cpu", handler.settings)
        handler.backend = backend
        handler.warm_up()
    return handler


def openvino_gate(weights: str, onnx_path: str, variant: str, input_size: int):
    """The agreement gate for one OpenVINO precision, against eager float32."""
    import torch

    from segserve import gate
    from segserve import weights as weights_mod
    from segserve.backends import read_onnx_metadata
    from segserve.models import build_model
    from segserve.openvino_backend import compile_artifact

    source = weights_mod.load(weights)
    model = build_model(source.arch, source.num_classes)
    model.load_state_dict(source.state_dict)
    model.eval()
    precision = variant.split()[1]
    _, compiled = compile_artifact(onnx_path, precision, 1)
    request = compiled.create_infer_request()

    def eager(batch):
        with torch.inference_mode():
            return model(torch.from_numpy(batch))["out"].numpy()

    def candidate(batch):
        out = request.infer({"input": batch})
        return out[compiled.output("class_ids")], out[compiled.output("logits")]

    depth = int(read_onnx_metadata(onnx_path)["rounding_depth"])
    return gate.evaluate(eager, candidate, precision=precision, depth=depth, input_size=input_size)


def cpu_flags() -> str:
    """The flags of /proc/cpuinfo that bfloat16 and int8 kernels use, or 'none of them'."""
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(
                (line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []
            )
    except OSError:
        return "unknown"
    return ", ".join(f for f in wanted if f in flags) or "none of them"


def test_images(input_size: int) -> dict[str, bytes]:
    """A square JPEG (input_size x input_size, as bench/inprocess.py) and a 3:2 one."""
    from PIL import Image

    from segserve import samples

    out = {}
    for name, file, size in (
        ("astronaut", "astronaut.jpg", (input_size, input_size)),
        ("coffee 3:2", "coffee.jpg", (input_size * 3 // 2, input_size)),
    ):
        with Image.open(samples.path(file)) as photo:
            image = photo.convert("RGB").resize(size, Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        out[f"{name} {size[0]}x{size[1]}"] = buffer.getvalue()
    return out


def one_request(handler, data: bytes) -> tuple[float, float]:
    from segserve.images import encode_png

    started = time.perf_counter()
    result = handler.handle(data)
    encode_png(result.mask)
    return result.timings["inference"], time.perf_counter() - started


def _worker(variant, weights, onnx_path, input_size, data, n, barrier, results):
    handler = make_handler(variant, weights, onnx_path, input_size)
    one_request(handler, data)
    barrier.wait()
    started = time.perf_counter()
    for _ in range(n):
        one_request(handler, data)
    results.put((started, time.perf_counter()))


def throughput(variant, weights, onnx_path, input_size, data, n, procs) -> float:
    return spawn_rate(_worker, (variant, weights, onnx_path, input_size, data, n), procs, n)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=30, help="rounds (requests per backend per image)")
    parser.add_argument("--input-size", type=int, default=520)
    parser.add_argument("--procs", type=int, default=2, help="processes for the throughput runs")
    parser.add_argument("--repeats", type=int, default=2, help="throughput runs per backend")
    parser.add_argument("--out", default=str(HERE / "results" / "backends.md"))
    args = parser.parse_args()
    names = variants()

    import onnxruntime
    import openvino
    import torch

    from segserve import convert
    from segserve import weights as weights_mod

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        weights = os.path.join(tmp, "varied.pth")
        onnx_path = os.path.join(tmp, "varied.onnx")
        payload = weights_mod.init_payload("lraspp_mobilenet_v3_large", 0, varied_masks=True)
        weights_mod.save(payload, weights)
        torch.set_num_threads(1)
        started = time.perf_counter()
        _, figures, _ = convert.export_onnx(
            weights_mod.load(weights), onnx_path, input_size=args.input_size
        )
        convert_s = time.perf_counter() - started
        print(figures.table(), flush=True)
        gates = {"onnxruntime": figures}
        for variant in names:
            if variant.startswith("openvino"):
                gates[variant] = openvino_gate(weights, onnx_path, variant, args.input_size)
                print(variant, gates[variant].table(), sep="\n", flush=True)

        images = test_images(args.input_size)
        handlers = {v: make_handler(v, weights, onnx_path, args.input_size) for v in names}
        times = {(v, i): ([], []) for v in names for i in images}
        for round_ in range(args.n):
            order = names[round_ % len(names) :] + names[: round_ % len(names)]
            for image, data in images.items():
                for variant in order:
                    inference, total = one_request(handlers[variant], data)
                    times[variant, image][0].append(inference)
                    times[variant, image][1].append(total)
        del handlers

        first = next(iter(images.values()))
        rates: dict[str, list[float]] = {v: [] for v in names}
        for _ in range(args.repeats):
            for variant in names:
                rate = throughput(
                    variant, weights, onnx_path, args.input_size, first, args.n, args.procs
                )
                rates[variant].append(rate)
                print(f"{variant}: {rate:.2f} images/s", flush=True)
    load_after = os.getloadavg()

    def ms(values: list[float]) -> float:
        return statistics.median(values) * 1000

    command = "python bench/backends.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    lines = [
        "# Inference backends: per-image cost against eager PyTorch",
        "",
        f"- Command: `{command.strip()}` ({time.strftime('%Y-%m-%d %H:%M %Z')})",
        f"- Machine: {cpu_model()}, {os.cpu_count()} cores; load average {load_before[0]:.2f} "
        f"before, {load_after[0]:.2f} after (the machine may run other jobs). Requests of the "
        "backends are interleaved (order rotated each round) and the figures are medians, so "
        "a busy spell hits all alike.",
        f"- CPU features that decide the precisions: {cpu_flags()}",
        f"- Python {platform.python_version()}, torch {torch.__version__}, onnxruntime "
        f"{onnxruntime.__version__}, openvino {openvino.__version__}; 1 thread per process "
        "(torch and ONNX Runtime intra-op 1, inter-op 1, no spinning; OpenVINO 1 inference "
        "thread, 1 stream, no pinning)",
        f"- Model: lraspp_mobilenet_v3_large, `segserve-weights init --varied-masks` (untrained "
        f"test device; same cost as trained weights), input short side {args.input_size}, "
        f"median of {args.n} requests per backend and image",
        "",
        "## Per-image cost (ms, median)",
        "",
        "| Image | Backend | inference | total (decode to PNG) | inference vs onnxruntime "
        "| total vs onnxruntime | inference vs torch |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for image in images:
        base_i = {v: ms(times[v, image][0]) for v in names}
        base_t = {v: ms(times[v, image][1]) for v in names}
        ort_i, ort_t = base_i["onnxruntime"], base_t["onnxruntime"]
        for v in names:
            lines.append(
                f"| {image} | {v} | {base_i[v]:.1f} | {base_t[v]:.1f} "
                f"| {ort_i / base_i[v]:.2f}x | {ort_t / base_t[v]:.2f}x "
                f"| {base_i['torch'] / base_i[v]:.2f}x |"
            )
    lines += [
        "",
        f"## Throughput, {args.procs} processes x 1 thread ({next(iter(images))}, "
        f"decode to PNG; {args.repeats} interleaved runs of {args.n} images per process)",
        "",
        "| Backend | images/s (each run) | median | vs onnxruntime |",
        "|---|---|---:|---:|",
        *(
            f"| {v} | {', '.join(f'{r:.2f}' for r in rates[v])} "
            f"| {statistics.median(rates[v]):.2f} "
            f"| {statistics.median(rates[v]) / statistics.median(rates['onnxruntime']):.2f}x |"
            for v in names
        ),
        "",
        f"## Agreement gate of each candidate (input size {args.input_size}; the conversion's "
        f"export + check took {convert_s:.0f} s)",
        "",
        "Every candidate against eager PyTorch float32 on the same 12 photos (segserve.gate, "
        "app/README.md). flips = pixels whose class differs; undecided = pixels whose eager "
        "top-2 margin is within the precision's rounding bound; decided flips must be 0, and "
        "no image may have more than 1% of its pixels flipped; classes = classes in the eager "
        "mask (a plain untrained init has 1, which would make agreement trivial).",
        "",
        *(
            line
            for name, result in gates.items()
            for line in (f"{name}:", "", "```", result.table(), "```", "")
        ),
    ]
    return write_report(args.out, lines)


if __name__ == "__main__":
    sys.exit(main())
