"""TorchServe handler for the benchmark: TorchServe's own ImageSegmenter, with the service's
preprocessing and answer, so both stacks do the same work per image.

TorchServe's default image_segmenter handler crops to 224x224 and answers with a JSON list
of [class, probability] per pixel; here only two things differ from it: the input is
resized to a short side of 520 (as the service does, no crop) and the answer is the class-id
mask as an 8-bit PNG (Pillow's encoder, compression level 1; the service writes its PNG
itself, about 2 ms faster per 520x520 mask: bench/results/backends.md). Decoding (PIL),
batching, the model call under torch.inference_mode and the eager model are TorchServe's.
"""

import io
import os

import torch
from PIL import Image
from torchvision import transforms as T
from ts.torch_handler.image_segmenter import ImageSegmenter

INPUT_SIZE = int(os.environ.get("SEGSERVE_INPUT_SIZE", "520"))


class Segmenter(ImageSegmenter):
    image_processing = T.Compose(
        [
            T.Resize(INPUT_SIZE),
            T.ToTensor(),
            T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )

    def initialize(self, context):
        threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
        torch.set_num_threads(threads)
        super().initialize(context)

    def postprocess(self, data):
        ids = data["out"].argmax(dim=1).to(torch.uint8).cpu().numpy()
        answers = []
        for mask in ids:
            buffer = io.BytesIO()
            Image.fromarray(mask).save(buffer, format="PNG", compress_level=1)
            answers.append(buffer.getvalue())
        return answers
