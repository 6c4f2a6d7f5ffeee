"""LitServe serving the service's artifact with the service's runtime, for the benchmark.

    python server.py --port 8090

The peer on equal terms: the same converted ONNX artifact, run by the same onnxruntime
session with the same thread settings (the service's own handler, built from the settings in
/etc/segserve/segserve.env with the backend pinned to onnxruntime), the same decode,
preprocessing, postprocessing and PNG encode. What differs is only the serving layer: LitServe's
uvicorn/FastAPI front, its queue to one inference worker process, and multipart/form-data in
(LitServe hands a request to decode_request as parsed JSON or a form: a raw image body is not
one of them, so the image goes in a form field `image`, as LitServe's own image examples take it).
"""

from __future__ import annotations

import argparse
import os

from fastapi import Response

import litserve as ls
from segserve.images import encode_png

ENV_FILE = "/etc/segserve/segserve.env"


def read_env(path: str) -> dict[str, str]:
    env = {}
    with open(path) as fh:
        for line in fh:
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                key, value = line.split("=", 1)
                env[key] = value
    return env


class SegmentAPI(ls.LitAPI):
    """Module level: LitServe spawns its inference worker, which unpickles this class."""

    def setup(self, device):
        from segserve.config import Settings
        from segserve.handler import SegmentationHandler

        env = read_env(ENV_FILE)
        prefix = "SEGSERVE_"
        mapping = {k.removeprefix(prefix): v for k, v in env.items() if k.startswith(prefix)}
        mapping.update(BACKEND="onnxruntime", PRECISION="fp32")
        mapping.pop("BACKEND_CHOICE", None)
        self.handler = SegmentationHandler(Settings.from_mapping(mapping))
        self.handler.initialize()

    def decode_request(self, request):
        return request["image"].file.read()

    def predict(self, data):
        return self.handler.handle(data).mask

    def encode_response(self, mask):
        return Response(content=encode_png(mask), media_type="image/png")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args()
    # The thread settings of the service's workers, inherited by the spawned worker before it
    # imports any runtime.
    env = read_env(ENV_FILE)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[key] = env.get(key, "1")
    server = ls.LitServer(
        SegmentAPI(api_path="/predict"),
        accelerator="cpu",
        devices=1,
        workers_per_device=1,
        timeout=60,
    )
    server.run(port=args.port, host="0.0.0.0", generate_client_file=False)


if __name__ == "__main__":
    main()
