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

from benchlib import cpu_flags, spawn_rate, write_report

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
                    logits = self.model(torch.from_numpy(batch))["out"]
                    return logits.argmax(dim=1).to(torch.uint8).numpy()

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


STAGES = ("decode", "preprocess", "inference", "postprocess", "png", "total")


def one_request(handler, data: bytes) -> dict[str, float]:
    """Seconds of each stage of one request, as the handler times them, plus the PNG encode
    and the total."""
    from segserve.images import encode_png

    started = time.perf_counter()
    result = handler.handle(data)
    encoded = time.perf_counter()
    encode_png(result.mask)
    done = time.perf_counter()
    return {**result.timings, "png": done - encoded, "total": done - started}


def torch_preprocess(image, input_size: int):
    """The preprocessing the service ran before its lookup table: torch operations over the
    whole image (convert, divide, subtract, divide), kept here only to measure against."""
    import numpy as np
    import torch
    from PIL import Image

    from segserve.handler import MAX_ASPECT, MEAN, STD
    from segserve.images import resized_size

    target = resized_size(image.width, image.height, input_size, input_size * MAX_ASPECT)
    if target != image.size:
        image = image.resize(target, Image.Resampling.BILINEAR)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
    tensor = pixels.permute(2, 0, 1).float().div_(255.0)
    tensor = tensor.sub_(torch.tensor(MEAN).view(3, 1, 1)).div_(torch.tensor(STD).view(3, 1, 1))
    return tensor.unsqueeze(0).contiguous().numpy()


def interleaved_ms(paths: dict, args: tuple, n: int) -> list[float]:
    """Median ms of each callable in `paths` on the same arguments, n rounds, one call of each
    after the other in every round (a busy spell hits all alike)."""
    timed = {name: [] for name in paths}
    for _ in range(n):
        for name, fn in paths.items():
            started = time.perf_counter()
            fn(*args)
            timed[name].append(time.perf_counter() - started)
    return [statistics.median(t) * 1000 for t in timed.values()]


def pillow_png(mask) -> bytes:
    """The PNG encode the service ran before its own writer: Pillow, compression level 1."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(mask).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def png_comparison(masks: dict, n: int) -> list[str]:
    """Median ms and bytes of Pillow's encoder and the service's writer on the same masks,
    interleaved, and whether both decode to the mask."""
    import numpy as np
    from PIL import Image

    from segserve.images import encode_png

    rows = []
    for name, mask in masks.items():
        before, after = interleaved_ms({"pillow": pillow_png, "ours": encode_png}, (mask,), n)
        same = all(
            np.array_equal(np.asarray(Image.open(io.BytesIO(fn(mask)))), mask)
            for fn in (pillow_png, encode_png)
        )
        rows.append(
            f"| {name} | {before:.2f} | {after:.2f} | {before / after:.2f}x "
            f"| {len(pillow_png(mask)):,} | {len(encode_png(mask)):,} "
            f"| {'yes' if same else 'NO'} |"
        )
    return rows


def preprocess_comparison(images: dict[str, bytes], input_size: int, n: int) -> list[str]:
    """Median ms of the two preprocessing paths on each decoded image, interleaved, and
    whether they give the same bits. One image is given at 512x512 so that the resize to
    `input_size` runs too."""
    import numpy as np
    from PIL import Image

    from segserve.handler import to_batch

    decoded = {}
    for name, data in images.items():
        with Image.open(io.BytesIO(data)) as image:
            decoded[name] = image.convert("RGB")
    first = next(iter(decoded.values()))
    decoded["astronaut 512x512 (resized)"] = first.resize((512, 512), Image.Resampling.LANCZOS)
    rows = []
    for name, image in decoded.items():
        paths = {"torch": torch_preprocess, "table": to_batch}
        before, after = interleaved_ms(paths, (image, input_size), n)
        same = np.array_equal(torch_preprocess(image, input_size), to_batch(image, input_size))
        rows.append(
            f"| {name} | {before:.2f} | {after:.2f} | {before / after:.2f}x "
            f"| {'yes' if same else 'NO'} |"
        )
    return rows


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
        times = {(v, i): {s: [] for s in STAGES} for v in names for i in images}
        for round_ in range(args.n):
            order = names[round_ % len(names) :] + names[: round_ % len(names)]
            for image, data in images.items():
                for variant in order:
                    for stage, seconds in one_request(handlers[variant], data).items():
                        times[variant, image][stage].append(seconds)
        masks = {i: handlers["onnxruntime"].handle(data).mask for i, data in images.items()}
        del handlers
        preprocess_rows = preprocess_comparison(images, args.input_size, args.n)
        png_rows = png_comparison(masks, args.n)

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

    def share(variant: str, image: str) -> float:
        return ms(times[variant, image]["inference"]) / ms(times[variant, image]["total"])

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
        base_i = {v: ms(times[v, image]["inference"]) for v in names}
        base_t = {v: ms(times[v, image]["total"]) for v in names}
        ort_i, ort_t = base_i["onnxruntime"], base_t["onnxruntime"]
        for v in names:
            lines.append(
                f"| {image} | {v} | {base_i[v]:.1f} | {base_t[v]:.1f} "
                f"| {ort_i / base_i[v]:.2f}x | {ort_t / base_t[v]:.2f}x "
                f"| {base_i['torch'] / base_i[v]:.2f}x |"
            )
    first_image = next(iter(images))
    lines += [
        "",
        f"## Stages of one request ({first_image}; ms, median of {args.n})",
        "",
        "What a request costs around the network, per backend: decode (JPEG to RGB), "
        "preprocess (resize when needed, normalise to float32 NCHW), inference (network and "
        "argmax), postprocess (mask back to the image's size), PNG encode.",
        "",
        "| Backend | " + " | ".join(STAGES) + " | inference share |",
        "|---|" + "---:|" * (len(STAGES) + 1),
        *(
            f"| {v} | "
            + " | ".join(f"{ms(times[v, first_image][s]):.2f}" for s in STAGES)
            + f" | {share(v, first_image):.0%} |"
            for v in names
        ),
        "",
        "## Preprocessing: torch operations (before) against the lookup table (now)",
        "",
        "An 8-bit channel has 256 levels, so the service normalises with one table lookup per "
        "pixel (segserve.handler.NORMALISE) instead of four float operations over the image; "
        "the table holds the float32 results of the same operations, so the bits are equal. "
        f"ms, median of {args.n}, interleaved:",
        "",
        "| Image | torch ops | lookup table | speed-up | same bits |",
        "|---|---:|---:|---:|---|",
        *preprocess_rows,
        "",
        "## PNG encode: Pillow (before) against the service's own writer (now)",
        "",
        "The masks the onnxruntime backend gave for the images above. Pillow picks a filter for "
        "every row; the service writes filter type 0 and deflates with zlib's run-length "
        f"strategy (segserve.images.encode_png). ms, median of {args.n}, interleaved; bytes of "
        "the PNG; both decoded by Pillow and compared with the mask:",
        "",
        "| Mask | Pillow level 1 | own writer | speed-up | Pillow bytes | own bytes "
        "| same pixels |",
        "|---|---:|---:|---:|---:|---:|---|",
        *png_rows,
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
