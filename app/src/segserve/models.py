"""The segmentation architectures segserve can serve, built with torchvision.

Networks are always built with weights=None and weights_backbone=None: torchvision's default
for weights_backbone downloads ImageNet weights, and the service must never download anything.
Learned parameters come from the weights file only. torchvision is imported inside the builders
so that reading this registry (for validating settings) stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

NUM_CLASSES = 21
DEFAULT_ARCH = "lraspp_mobilenet_v3_large"

# The 21 Pascal VOC classes, in the order of the models' output channels.
VOC_CATEGORIES = (
    "__background__",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


@dataclass(frozen=True)
class Arch:
    name: str
    build: Callable[[int], nn.Module]
    # torchvision's pretrained weights for this network, as "<Enum class>.<member>".
    pretrained: str


def _build_lraspp(num_classes: int) -> nn.Module:
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    return lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=num_classes)


def _build_deeplabv3(num_classes: int) -> nn.Module:
    from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large

    # The auxiliary head only helps training; serving reads the main output.
    return deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False
    )


ARCHS: dict[str, Arch] = {
    "lraspp_mobilenet_v3_large": Arch(
        "lraspp_mobilenet_v3_large",
        _build_lraspp,
        "LRASPP_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1",
    ),
    "deeplabv3_mobilenet_v3_large": Arch(
        "deeplabv3_mobilenet_v3_large",
        _build_deeplabv3,
        "DeepLabV3_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1",
    ),
}


def build_model(arch: str, num_classes: int = NUM_CLASSES) -> nn.Module:
    """An untrained network of the given architecture, in eval mode."""
    try:
        spec = ARCHS[arch]
    except KeyError:
        raise ValueError(f"unknown arch {arch!r}; known: {', '.join(ARCHS)}") from None
    return spec.build(num_classes).eval()
