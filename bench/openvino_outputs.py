"""OpenVINO's infer() with and without share_outputs, interleaved in one process: what copying
every output back (the class ids and the unused float32 logits) costs per image.

    python bench/openvino_outputs.py ARTIFACT.onnx [--precision bf16] [-n 80]

One thread, one stream, the settings the service compiles with (segserve.openvino_backend);
random 520x520 batches. Prints the median ms of each way.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("artifact")
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    parser.add_argument("-n", type=int, default=80)
    args = parser.parse_args()

    from segserve.openvino_backend import compile_artifact

    _, compiled = compile_artifact(args.artifact, args.precision, 1)
    request = compiled.create_infer_request()
    name = compiled.input(0).get_any_name()
    rng = np.random.default_rng(0)
    times: dict[bool, list[float]] = {True: [], False: []}
    for i in range(args.n):
        # Alternate which way goes first, so neither always runs on a warmer cache.
        for shared in (True, False) if i % 2 else (False, True):
            batch = rng.standard_normal((1, 3, 520, 520), dtype=np.float32)
            started = time.perf_counter()
            request.infer({name: batch}, share_inputs=True, share_outputs=shared)
            times[shared].append(time.perf_counter() - started)
    for shared, values in times.items():
        ms = statistics.median(values[5:]) * 1000
        print(f"share_outputs={shared}: {ms:.2f} ms per image (median of {len(values) - 5})")


if __name__ == "__main__":
    main()
