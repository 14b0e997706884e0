"""Infer a Hugging Face model's inputs from its config: `input_ids`, `pixel_values`, image placeholder tokens.

Multimodal VLA-family models need `input_ids` holding exactly as many image tokens as the vision tower yields
features; the rule per `model_type` lives here, once, for intake, profiling and the reference models.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from tools.errors import InputSpecError
from tools.inputs import InputSpec

DEFAULT_TEXT_TOKENS = 16
TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "decoder_input_ids")
"""Inputs laid out (batch, sequence): their sequence axis is dynamic in an export."""
FIRST_TEXT_ID = (
    4  # ids below are specials (pad, bos, eos, unk) in common tokenizers: keep synthetic text above
)
_VISION_ONLY = {"siglip_vision_model", "clip_vision_model", "smolvlm_vision", "idefics3_vision"}
_IMAGE_AXIS = {"idefics3", "smolvlm"}  # pixel_values (B, num_images, C, H, W)


def _first(value: Any) -> int:
    return int(value[0] if isinstance(value, (list, tuple)) else value)


def _patches(vision: dict[str, Any]) -> int:
    return (_first(vision.get("image_size", 224)) // _first(vision.get("patch_size", 16))) ** 2


def _llava_tokens(config: dict[str, Any]) -> int:
    """LLaVA: one per patch, plus CLIP's class token, minus the first token under the `default` strategy."""
    vision = config["vision_config"]
    has_class_token = vision.get("model_type") == "clip_vision_model"
    dropped = 1 if config.get("vision_feature_select_strategy", "default") == "default" else 0
    return _patches(vision) + int(has_class_token) - dropped


def _idefics3_tokens(config: dict[str, Any]) -> int:
    """Idefics3 / SmolVLM: patches reduced by the pixel shuffle (scale_factor squared)."""
    return _patches(config["vision_config"]) // int(config.get("scale_factor", 1)) ** 2


IMAGE_TOKEN_RULES: dict[str, Callable[[dict[str, Any]], int]] = {
    "llava": _llava_tokens,
    "paligemma": lambda config: _patches(config["vision_config"]),
    "idefics3": _idefics3_tokens,
    "smolvlm": _idefics3_tokens,
}


def image_token_count(config: dict[str, Any]) -> int:
    """Image placeholder tokens one image needs in `input_ids` for this multimodal config."""
    rule = IMAGE_TOKEN_RULES.get(str(config.get("model_type")))
    if rule is None:
        raise InputSpecError(
            f"no image-token rule for model_type {config.get('model_type')!r}; known: {', '.join(IMAGE_TOKEN_RULES)}",
            hint="pass --input-shape for every input",
        )
    return rule(config)


def infer_hf_input_specs(config: dict[str, Any], text_tokens: int = DEFAULT_TEXT_TOKENS) -> list[InputSpec]:
    """Return batch-1 input specs for a Hugging Face config dict (text, vision, or vision-language)."""
    model_type = str(config.get("model_type", ""))
    if model_type in IMAGE_TOKEN_RULES:
        return _multimodal_specs(config, text_tokens)
    if model_type in _VISION_ONLY or (config.get("image_size") and not config.get("vocab_size")):
        return [_pixel_spec(config, model_type)]
    vocab = config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size")
    if vocab and not config.get("vision_config"):
        high = int(vocab)
        specs = [
            InputSpec(name="input_ids", shape=(1, text_tokens), dtype="int64", low=_low(high), high=high)
        ]
        if config.get("is_encoder_decoder"):
            specs.append(specs[0].model_copy(update={"name": "decoder_input_ids"}))
        return specs
    raise InputSpecError(
        f"cannot infer the inputs of a {model_type or 'Hugging Face'} model from its config",
        hint="pass --input-shape NAME:DIMS:DTYPE for each input",
    )


def _multimodal_specs(config: dict[str, Any], text_tokens: int) -> list[InputSpec]:
    model_type = str(config["model_type"])
    image_token = config.get("image_token_id", config.get("image_token_index"))
    vocab = (config.get("text_config") or {}).get("vocab_size") or config.get("vocab_size")
    if image_token is None or not vocab:
        raise InputSpecError(
            f"{model_type} config lacks its image token id or vocabulary size",
            hint="pass --input-shape for every input",
        )
    count = image_token_count(config)
    high = min(int(vocab), int(image_token))  # text ids stay below the image token
    ids = InputSpec(
        name="input_ids",
        shape=(1, count + text_tokens),
        dtype="int64",
        low=_low(high),
        high=high,
        prefix=(int(image_token),) * count,
    )
    specs = [ids, _pixel_spec(config["vision_config"], model_type)]
    if model_type == "paligemma":  # 0 marks the prompt (prefix), which PaliGemma attends bidirectionally
        specs.append(InputSpec(name="token_type_ids", shape=ids.shape, dtype="int64", low=0, high=1))
    return specs


def _pixel_spec(vision: dict[str, Any], model_type: str) -> InputSpec:
    size, channels = _first(vision.get("image_size", 224)), int(vision.get("num_channels", 3))
    images = (1,) if model_type in _IMAGE_AXIS else ()
    return InputSpec(name="pixel_values", shape=(1, *images, channels, size, size))


def _low(high: int) -> int:
    return FIRST_TEXT_ID if high > FIRST_TEXT_ID + 1 else 0


def with_encoder_inputs(specs: list[InputSpec], module: Any, config: dict[str, Any]) -> list[InputSpec]:
    """Add the inputs an encoder (a model that does not generate) takes beside `input_ids`: `attention_mask`
    (all ones) and, where the config has token types, `token_type_ids` (all zeros), so that what is measured
    and exported keeps every input a deployment feeds it."""
    can_generate = getattr(module, "can_generate", None)
    ids = next((spec for spec in specs if spec.name == "input_ids" and not spec.prefix), None)
    if ids is None or not callable(can_generate) or can_generate():
        return specs
    try:
        accepted = set(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):
        return specs
    names = {spec.name for spec in specs}
    added = []
    if "attention_mask" in accepted and "attention_mask" not in names:
        added.append(InputSpec(name="attention_mask", shape=ids.shape, dtype="int64", low=1, high=2))
    if "token_type_ids" in accepted and "token_type_ids" not in names and config.get("type_vocab_size"):
        added.append(InputSpec(name="token_type_ids", shape=ids.shape, dtype="int64", low=0, high=1))
    return [*specs, *added]
