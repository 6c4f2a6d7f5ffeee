"""The seeds' naive design, for comparison only: the Flask development server, the model
built inside the request handler, the mask answered as a JSON list of lists.

    python naive_server.py WEIGHTS [--port 5000]

Same network, weights file, input size (short side 520) and torch threads as the service.
"""

import argparse
import io

import torch
from flask import Flask, jsonify, request
from PIL import Image
from torchvision import transforms as T
from torchvision.models.segmentation import lraspp_mobilenet_v3_large

parser = argparse.ArgumentParser()
parser.add_argument("weights")
parser.add_argument("--port", type=int, default=5000)
parser.add_argument("--threads", type=int, default=1)
args = parser.parse_args()
torch.set_num_threads(args.threads)

app = Flask(__name__)


@app.route("/infer", methods=["POST"])
def infer():
    model = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21)
    model.load_state_dict(torch.load(args.weights, weights_only=True)["state_dict"])
    model.eval()
    image = Image.open(io.BytesIO(request.data)).convert("RGB")
    preprocess = T.Compose(
        [T.Resize(520), T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]
    )
    with torch.no_grad():
        out = model(preprocess(image).unsqueeze(0))["out"]
    return jsonify(out.argmax(1)[0].tolist())


if __name__ == "__main__":
    app.run(host="0.0.0.0", port=args.port)
