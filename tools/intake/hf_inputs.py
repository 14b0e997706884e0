"""Infer a Hugging Face model's inputs from its config: `input_ids`, `pixel_values`, image placeholder tokens.

Multimodal VLA-family models need `input_ids` holding exactly as many image tokens as the vision tower yields
features; the rule per `model_type` lives here so synthetic inputs always run.
"""

from __future__ import annotations

from typing import Any

from tools.errors import InputSpecError
from tools.inputs import InputSpec

DEFAULT_TEXT_TOKENS = 16


def _get(config: dict[str, Any], *keys: str, default: Any = None) -> Any:
    for key in keys:
        if config.get(key) is not None:
            return config[key]
    return default


def _image_tokens(model_type: str, config: dict[str, Any], vision: dict[str, Any]) -> int:
    image_size, patch_size = int(vision.get("image_size", 224)), int(vision.get("patch_size", 16))
    patches = (image_size // patch_size) ** 2
    if model_type in {"idefics3", "smolvlm"}:
        return patches // int(config.get("scale_factor", 1)) ** 2
    if model_type == "llava" and vision.get("model_type") == "clip_vision_model":
        return patches + (1 if config.get("vision_feature_select_strategy") == "full" else 0)
    return patches


def _text_range(vocab: int, reserved: int | None) -> tuple[int, int]:
    """Token ids for synthetic text: the part of the vocabulary on the larger side of the image token."""
    if reserved is None or not 0 <= reserved < vocab:
        return 0, vocab
    return (0, reserved) if reserved >= vocab - reserved - 1 else (reserved + 1, vocab)


def infer_hf_input_specs(config: dict[str, Any], text_tokens: int = DEFAULT_TEXT_TOKENS) -> list[InputSpec]:
    """Return batch-1 input specs for a Hugging Face config (text, vision, or vision-language)."""
    model_type = str(config.get("model_type", ""))
    text = config.get("text_config") or config
    vision = config.get("vision_config")
    vocab = _get(text, "vocab_size") or _get(config, "vocab_size")
    if isinstance(vision, dict) and vocab:
        image_token = _get(config, "image_token_id", "image_token_index")
        if image_token is None:
            raise InputSpecError(
                f"{model_type} config has a vision tower but no image token id",
                hint="pass --input-shape for every input",
            )
        count = _image_tokens(model_type, config, vision)
        low, high = _text_range(int(vocab), int(image_token))
        size, channels = int(vision.get("image_size", 224)), int(vision.get("num_channels", 3))
        pixel_shape = (
            (1, 1, channels, size, size)
            if model_type in {"idefics3", "smolvlm"}
            else (1, channels, size, size)
        )
        return [
            InputSpec(
                name="input_ids",
                shape=(1, count + text_tokens),
                dtype="int64",
                low=low,
                high=high,
                prefix=(int(image_token),) * count,
            ),
            InputSpec(name="pixel_values", shape=pixel_shape, dtype="float32"),
        ]
    specs: list[InputSpec] = []
    if vocab:
        specs.append(
            InputSpec(name="input_ids", shape=(1, text_tokens), dtype="int64", low=0, high=int(vocab))
        )
        if config.get("is_encoder_decoder"):
            specs.append(
                InputSpec(
                    name="decoder_input_ids", shape=(1, text_tokens), dtype="int64", low=0, high=int(vocab)
                )
            )
    vision_cfg = vision if isinstance(vision, dict) else config
    if "image_size" in vision_cfg and "patch_size" in vision_cfg or "num_channels" in vision_cfg:
        size = vision_cfg.get("image_size", 224)
        size = int(size[0] if isinstance(size, (list, tuple)) else size)
        specs.append(
            InputSpec(name="pixel_values", shape=(1, int(vision_cfg.get("num_channels", 3)), size, size))
        )
    if not specs:
        raise InputSpecError(
            f"cannot infer the inputs of a {model_type or 'Hugging Face'} model from its config",
            hint="pass --input-shape NAME:DIMS:DTYPE for each input",
        )
    return specs
