"""Reference model definitions in pure PyTorch: MobileNetV1/V2/V3, EfficientNet-B0…B7,
ShuffleNetV1/V2, and ResNet and VGG baselines.

Build one with :func:`create_model` (or its function, e.g. :func:`mobilenet_v2`), list them
with :func:`list_models`, read a model's default input size with :func:`model_info`, and load
local weights with :func:`load_weights`. :mod:`mobilefuse.models.specs` holds the block tables
the MobileNets and EfficientNets are built from.
"""

from mobilefuse.models.efficientnet import (
    EfficientNet,
    efficientnet_b0,
    efficientnet_b1,
    efficientnet_b2,
    efficientnet_b3,
    efficientnet_b4,
    efficientnet_b5,
    efficientnet_b6,
    efficientnet_b7,
)
from mobilefuse.models.layers import ConvNormAct, SqueezeExcitation, StochasticDepth
from mobilefuse.models.mobilenet import (
    MobileNet,
    mobilenet_v1,
    mobilenet_v2,
    mobilenet_v3_large,
    mobilenet_v3_small,
)
from mobilefuse.models.registry import ModelInfo, create_model, list_models, model_info
from mobilefuse.models.resnet import ResNet, resnet18, resnet34, resnet50, resnet101
from mobilefuse.models.shufflenet import (
    ShuffleNetV1,
    ShuffleNetV2,
    shufflenet_v1,
    shufflenet_v2_x0_5,
    shufflenet_v2_x1_0,
    shufflenet_v2_x1_5,
    shufflenet_v2_x2_0,
)
from mobilefuse.models.specs import (
    MODEL_SPECS,
    BlockSpec,
    DepthwiseLayer,
    ModelSpec,
    depthwise_layers,
    get_spec,
    make_divisible,
    unique_depthwise_layers,
)
from mobilefuse.models.vgg import VGG, vgg16, vgg16_bn, vgg19, vgg19_bn
from mobilefuse.models.weights import load_weights

__all__ = [
    "MODEL_SPECS", "VGG", "BlockSpec", "ConvNormAct", "DepthwiseLayer", "EfficientNet",
    "MobileNet", "ModelInfo", "ModelSpec", "ResNet", "ShuffleNetV1", "ShuffleNetV2",
    "SqueezeExcitation", "StochasticDepth", "create_model", "depthwise_layers",
    "efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3",
    "efficientnet_b4", "efficientnet_b5", "efficientnet_b6", "efficientnet_b7", "get_spec",
    "list_models", "load_weights", "make_divisible", "mobilenet_v1", "mobilenet_v2",
    "mobilenet_v3_large", "mobilenet_v3_small", "model_info", "resnet18", "resnet34",
    "resnet50", "resnet101", "shufflenet_v1", "shufflenet_v2_x0_5", "shufflenet_v2_x1_0",
    "shufflenet_v2_x1_5", "shufflenet_v2_x2_0", "unique_depthwise_layers", "vgg16", "vgg16_bn",
    "vgg19", "vgg19_bn",
]
