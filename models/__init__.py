"""Reference model definitions in pure PyTorch (MobileNet, EfficientNet, ShuffleNet).

:mod:`mobilefuse.models.specs` holds the block tables the definitions are built from.
"""

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

__all__ = [
    "MODEL_SPECS", "BlockSpec", "DepthwiseLayer", "ModelSpec", "depthwise_layers", "get_spec",
    "make_divisible", "unique_depthwise_layers",
]
