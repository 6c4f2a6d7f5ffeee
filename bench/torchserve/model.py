"""The network for TorchServe's eager mode: torchvision's LRASPP MobileNetV3-Large, 21 classes;
the weights come from the service's weights file (its state_dict, saved as the archive's
serialized file)."""

from torchvision.models.segmentation import lraspp_mobilenet_v3_large
from torchvision.models.segmentation.lraspp import LRASPP


class Model(LRASPP):
    def __init__(self):
        built = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21)
        super().__init__(built.backbone, low_channels=40, high_channels=960, num_classes=21)
