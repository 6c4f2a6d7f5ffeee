"""LitServe serving the service's artifact with the service's runtime, for the benchmark.

    python server.py --port 8090    (in app1's bench folder, beside hostenv.py)

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

from fastapi import Response

import hostenv
import litserve as ls
from segserve.images import encode_png


class SegmentAPI(ls.LitAPI):
    """Module level: LitServe spawns its inference worker, which unpickles this class."""

    def setup(self, device):
        from segserve.config import Settings
        from segserve.handler import SegmentationHandler

        mapping = hostenv.served_settings(hostenv.read_env(), "onnxruntime", "fp32")
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
    hostenv.use_thread_settings(hostenv.read_env())
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
