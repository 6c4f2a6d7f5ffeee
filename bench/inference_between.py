"""Does what a worker does between two inferences slow the next one? In one process, one
thread, the settings the service compiles with (segserve.openvino_backend), interleaved:

- back to back, the same input batch (the ceiling's "inference alone");
- after a pause of GAP ms asleep (the worker waiting for its next request);
- after GAP ms spinning (the core kept busy, caches left alone);
- after GAP ms reading an 8 MB array (caches filled with other data, as I/O would);
- on a fresh batch, decoded and resized from the image each time (the served pipeline).

    python bench/inference_between.py ARTIFACT.onnx IMAGE [--precision bf16] [--gap-ms 1.5]
                                      [--rounds 15]

Prints the median and 10th percentile ms of each.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from segserve.handler import to_batch
from segserve.images import decode_image
from segserve.openvino_backend import compile_artifact

POLLUTE = np.ones(8 * 1024 * 1024 // 8)  # 8 MB of float64: more than this core's L2


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("artifact")
    parser.add_argument("image")
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    parser.add_argument("--gap-ms", type=float, default=1.5)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--input-size", type=int, default=520)
    args = parser.parse_args()
    if args.rounds < 1 or args.gap_ms < 0:
        parser.error("--rounds must be above 0 and --gap-ms at least 0")

    _, compiled = compile_artifact(args.artifact, args.precision, 1)
    request = compiled.create_infer_request()
    name = compiled.input(0).get_any_name()
    with open(args.image, "rb") as fh:
        data = fh.read()
    gap = args.gap_ms / 1000

    def fresh_batch() -> np.ndarray:
        decoded = decode_image(data, max_pixels=10**8, draft_size=args.input_size)
        return to_batch(decoded.image, args.input_size)

    def spin(work=None) -> None:
        end = time.perf_counter() + gap
        while time.perf_counter() < end:
            if work is not None:
                work()

    fixed = fresh_batch()
    between = {
        "back to back": lambda: fixed,
        "after a sleep": lambda: (time.sleep(gap), fixed)[1],
        "after a spin": lambda: (spin(), fixed)[1],
        "after reading 8 MB": lambda: (spin(POLLUTE.sum), fixed)[1],
        "fresh batch (pipeline)": fresh_batch,
    }
    times: dict[str, list[float]] = {way: [] for way in between}
    for _ in range(5):
        request.infer({name: fixed}, share_inputs=True, share_outputs=True)
    for round_ in range(args.rounds):
        # Reverse the order every other round, so that no way always follows the same one.
        order = list(between) if round_ % 2 else list(reversed(between))
        for way in order:
            for _ in range(4):
                batch = between[way]()
                started = time.perf_counter()
                request.infer({name: batch}, share_inputs=True, share_outputs=True)
                times[way].append(time.perf_counter() - started)
    print(f"{args.precision}, gap {args.gap_ms} ms, {4 * args.rounds} inferences each")
    for way, values in times.items():
        ms = np.asarray(values) * 1000
        print(f"{way:24s} median {statistics.median(ms):6.2f} ms, p10 {np.percentile(ms, 10):6.2f}")


if __name__ == "__main__":
    main()
