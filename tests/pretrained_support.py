"""The pretrained encoder and its real-photo crops, now in `tools.reference.pretrained_encoder` (the evals use them
too); re-exported here for the tests that import them from this module."""

from tools.reference.pretrained_encoder import (
    ARCH,
    MEAN,
    SIDE,
    STD,
    crops,
    encoder_load_options,
    pretrained_encoder,
    pretrained_weights,
)

__all__ = [
    "ARCH",
    "MEAN",
    "SIDE",
    "STD",
    "crops",
    "encoder_load_options",
    "pretrained_encoder",
    "pretrained_weights",
]
