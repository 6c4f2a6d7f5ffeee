"""In-process cost of serving one image, stage by stage, without HTTP or uWSGI.

    .venv/bin/python bench/inprocess.py [--arch A] [--threads 1] [-n 30] [--procs 2]

Reports the median ms per image for decode / preprocess / inference / postprocess / encode
(PNG and JSON), the size of each response, and images/s for one process and for N processes
x `--threads` torch threads (multiprocessing, each process loading its own model as a uWSGI
worker does), and the JSON mask encoder beside the ones it replaced (bench/json_baseline.py),
timed in turn on the same masks. Writes the result as markdown (default
bench/results/inprocess.md). The model is an untrained seeded init: on CPU its cost is the
same as the trained network's.
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


def make_handler(weights: str, input_size: int, threads: int):
    import torch

    from segserve.config import Settings
    from segserve.handler import SegmentationHandler

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(threads)
    handler = SegmentationHandler(
        Settings.from_mapping({"WEIGHTS_PATH": weights, "DEVICE": "cpu", "INPUT_SIZE": input_size})
    )
    handler.initialize()
    return handler


def test_image(size: int) -> bytes:
    from PIL import Image

    from segserve import samples

    with Image.open(samples.path("astronaut.jpg")) as photo:
        image = photo.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def one_request(handler, data: bytes, fmt: str) -> tuple[dict[str, float], int]:
    from segserve.images import encode_png, mask_to_json

    result = handler.handle(data)
    started = time.perf_counter()
    body = encode_png(result.mask) if fmt == "png" else mask_to_json(result.mask)
    result.timings["encode"] = time.perf_counter() - started
    return result.timings, len(body)


def stage_table(handler, data: bytes, n: int) -> tuple[dict[str, float], dict[str, int]]:
    from segserve.images import encode_png, mask_to_json

    samples: dict[str, list[float]] = {}
    sizes = {}
    for _ in range(n):
        timings, _ = one_request(handler, data, "png")
        for stage, seconds in timings.items():
            samples.setdefault(stage, []).append(seconds)
    mask = handler.handle(data).mask
    for label, encode in (("encode (PNG)", encode_png), ("encode (JSON)", mask_to_json)):
        times = []
        for _ in range(n):
            started = time.perf_counter()
            body = encode(mask)
            times.append(time.perf_counter() - started)
        samples[label] = times
        sizes[label.split("(")[1].rstrip(")")] = len(body)
    samples.pop("encode")
    return {k: statistics.median(v) * 1000 for k, v in samples.items()}, sizes


def throughput(handler, data: bytes, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        one_request(handler, data, "png")
    return n / (time.perf_counter() - started)


def _worker(weights, input_size, threads, data, n, barrier, results):
    handler = make_handler(weights, input_size, threads)
    one_request(handler, data, "png")
    barrier.wait()
    started = time.perf_counter()
    for _ in range(n):
        one_request(handler, data, "png")
    results.put((started, time.perf_counter()))


def multi_process(weights, input_size, threads, data, n, procs) -> float:
    return spawn_rate(_worker, (weights, input_size, threads, data, n), procs, n)


def big_jpeg_decode(handler, n: int) -> tuple[float, float]:
    """Decode of a 12-megapixel JPEG, with and without the decoder's reduced-scale mode."""
    from PIL import Image

    from segserve.images import decode_image

    with Image.open(io.BytesIO(test_image(1024))) as small:
        big = small.resize((4032, 3024))
    buffer = io.BytesIO()
    big.save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()
    out = []
    for draft in (handler.settings.input_size, None):
        times = []
        for _ in range(max(3, n // 4)):
            started = time.perf_counter()
            decode_image(data, max_pixels=10**8, draft_size=draft)
            times.append(time.perf_counter() - started)
        out.append(statistics.median(times) * 1000)
    return out[0], out[1]


def many_classes_mask(height: int, width: int):
    """A mask as a trained model draws it on a busy scene: blobs of all 21 VOC classes, so ids
    of one and two digits (an untrained model's is nearly one id)."""
    import numpy as np

    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 21, size=(height // 20 + 1, width // 20 + 1), dtype=np.uint8)
    return np.repeat(np.repeat(coarse, 20, axis=0), 20, axis=1)[:height, :width]


def json_encoders(mask, n: int) -> list[tuple[str, float, float, float]]:
    """(encoder, ms on the served mask, ms on a 21-class mask, times slower than the served
    one) for each encoder, timed in turn on the same masks; every one must give the same bytes.
    """
    from json_baseline import numpy_digits, stdlib_json
    from segserve.images import mask_to_json

    encoders = {
        "orjson (served)": mask_to_json,
        "numpy digit layout (before)": numpy_digits,
        "json.dumps(mask.tolist())": stdlib_json,
    }
    masks = (mask, many_classes_mask(*mask.shape))
    for each in masks:
        outputs = {encode(each) for encode in encoders.values()}
        if len(outputs) != 1:
            raise SystemExit("the JSON mask encoders disagree: the comparison is void")
    rows = []
    for name, encode in encoders.items():
        medians = []
        for each in masks:
            times = []
            for _ in range(n):
                started = time.perf_counter()
                encode(each)
                times.append(time.perf_counter() - started)
            medians.append(statistics.median(times) * 1000)
        rows.append((name, *medians))
    served = rows[0][2]
    return [(name, a, b, b / served) for name, a, b in rows]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="lraspp_mobilenet_v3_large")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("-n", type=int, default=30, help="images per measurement")
    parser.add_argument("--procs", type=int, default=2, help="processes for the parallel run")
    parser.add_argument("--input-size", type=int, default=520)
    parser.add_argument("--weights", help="a weights file (default: a seeded init, made here)")
    parser.add_argument("--out", default=str(HERE / "results" / "inprocess.md"))
    args = parser.parse_args()

    import torch

    from segserve import weights as weights_mod

    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights or os.path.join(tmp, "w.pth")
        if not args.weights:
            weights_mod.save(weights_mod.init_payload(args.arch, 0), weights)
        data = test_image(args.input_size)
        handler = make_handler(weights, args.input_size, args.threads)
        one_request(handler, data, "png")
        stages, sizes = stage_table(handler, data, args.n)
        single = throughput(handler, data, args.n)
        draft_ms, full_ms = big_jpeg_decode(handler, args.n)
        encoders = json_encoders(handler.handle(data).mask, args.n)
        del handler
        parallel = multi_process(weights, args.input_size, args.threads, data, args.n, args.procs)

    command = "python bench/inprocess.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    lines = [
        "# In-process serving cost",
        "",
        f"- Command: `{command.strip()}`",
        f"- Machine: {cpu_model()}, {os.cpu_count()} cores; Python {platform.python_version()}, "
        f"torch {torch.__version__}",
        f"- Model: {args.arch} (untrained seeded init), input {args.input_size}x{args.input_size} "
        f"(a {len(data)}-byte JPEG of astronaut.jpg), {args.threads} torch thread(s), "
        f"median of {args.n}",
        "",
        "| Stage | ms per image |",
        "|---|---:|",
        *(f"| {stage} | {ms:.1f} |" for stage, ms in stages.items()),
        "",
        "| Response | bytes |",
        "|---|---:|",
        *(f"| {fmt} | {size:,} |" for fmt, size in sizes.items()),
        "",
        "| Throughput (decode to PNG) | images/s |",
        "|---|---:|",
        f"| 1 process x {args.threads} thread(s) | {single:.2f} |",
        f"| {args.procs} processes x {args.threads} thread(s) | {parallel:.2f} |",
        "",
        f"Decode of a 4032x3024 JPEG: {draft_ms:.1f} ms with reduced-scale decoding "
        f"(as served), {full_ms:.1f} ms at full scale.",
        "",
        "JSON mask encoders, side by side on the same masks (identical bytes checked):",
        "",
        "| Encoder | ms, served mask | ms, 21-class mask | x the served encoder (21-class) |",
        "|---|---:|---:|---:|",
        *(f"| {name} | {a:.2f} | {b:.2f} | {ratio:.1f} |" for name, a, b, ratio in encoders),
        "",
        "An untrained model's mask is nearly uniform, so the PNG here is smaller than a real "
        "model's; the JSON size depends only on the image size.",
        "",
    ]
    return write_report(args.out, lines)


if __name__ == "__main__":
    sys.exit(main())
