"""Inference backends: each maps a normalised NCHW float32 batch to class ids.

Decoding, preprocessing and postprocessing are shared in the handler; a backend only runs the
network. The registry is what SEGSERVE_BACKEND selects from; a new backend (for example
onnxruntime) registers here and gets the same request path, metrics and tests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

    from segserve.weights import WeightsFile


class Backend(Protocol):
    name: str
    device: str

    def infer(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float32 on the CPU -> (N, H, W) uint8 class ids on the CPU."""
        ...


class TorchBackend:
    """Eager PyTorch under inference_mode: the measured baseline on CPU and CUDA."""

    name = "torch"

    def __init__(self, weights: WeightsFile, device: str):
        import torch

        from segserve.models import build_model

        self.device = device
        model = build_model(weights.arch, weights.num_classes)
        try:
            model.load_state_dict(weights.state_dict)
        except RuntimeError as exc:
            from segserve.weights import WeightsError, summarize

            raise WeightsError(
                f"{weights.path} does not fit {weights.arch}: {summarize(exc)}"
            ) from None
        self.model = model.to(torch.device(device)).eval()

    def infer(self, batch: torch.Tensor) -> torch.Tensor:
        import torch

        with torch.inference_mode():
            logits = self.model(batch.to(self.device, non_blocking=True))["out"]
            # argmax on the device: a uint8 mask is 84x smaller to copy back than 21
            # float32 channels.
            return logits.argmax(dim=1).to(torch.uint8).cpu()


BACKENDS: dict[str, type] = {"torch": TorchBackend}


def create_backend(name: str, weights: WeightsFile, device: str) -> Backend:
    return BACKENDS[name](weights, device)
