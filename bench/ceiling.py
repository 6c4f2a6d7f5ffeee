"""The in-process ceiling on one app host: the service's own handler, no HTTP, no uWSGI.

Run inside an app host with the service's virtualenv and settings (scripts/bench does it):

    /opt/segserve/venv/bin/python ceiling.py IMAGE [--backend BACKEND] [--precision P] [-n 40]

Reads the service's settings from /etc/segserve/segserve.env (weights, artifact, threads,
input size), so the model, weights, input size and thread count are the served ones; the
backend (and OpenVINO's precision) may be overridden. Prints one JSON line: images/s and
median ms for decode to PNG, decode to JSON and inference alone, one process, as one uWSGI
worker runs them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import hostenv


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("image")
    parser.add_argument("--backend", default=None)
    parser.add_argument("--precision", default=None, help="fp32 or bf16 (openvino only)")
    parser.add_argument("-n", type=int, default=40)
    parser.add_argument("--env-file", default=hostenv.ENV_FILE)
    args = parser.parse_args()

    env = hostenv.read_env(args.env_file)
    hostenv.use_thread_settings(env)
    from segserve.config import Settings
    from segserve.handler import SegmentationHandler
    from segserve.images import encode_png, mask_to_json

    threads = int(env.get("SEGSERVE_TORCH_THREADS", "1"))
    mapping = hostenv.served_settings(env, args.backend, args.precision)
    if mapping.get("BACKEND", "torch") == "torch":
        # Only the torch ceiling needs torch (a CPU host serving the artifact may have none).
        import torch

        torch.set_num_threads(threads)
        torch.set_num_interop_threads(threads)
    handler = SegmentationHandler(Settings.from_mapping(mapping))
    handler.initialize()
    with open(args.image, "rb") as fh:
        data = fh.read()
    batch = handler.preprocess(handler.decode(data))

    def run(fn):
        fn()
        times = []
        for _ in range(args.n):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        return {
            "images_per_s": len(times) / sum(times),
            "median_ms": statistics.median(times) * 1000,
        }

    out = {
        "backend": mapping.get("BACKEND", "torch"),
        "precision": handler.backend.describe().get("precision", "fp32"),
        "threads": threads,
        "input_size": int(mapping.get("INPUT_SIZE", 520)),
        "n": args.n,
        "png": run(lambda: encode_png(handler.handle(data).mask)),
        "json": run(lambda: mask_to_json(handler.handle(data).mask)),
        "inference": run(lambda: handler.infer(batch)),
        "png_bytes": len(encode_png(handler.handle(data).mask)),
        "json_bytes": len(mask_to_json(handler.handle(data).mask)),
    }
    print("CEILJSON " + json.dumps(out))


if __name__ == "__main__":
    main()
