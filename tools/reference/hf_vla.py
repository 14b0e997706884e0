"""Tiny random-weight Hugging Face models of the VLA families, and the inputs each one needs to run.

The directories are made with `save_pretrained` (SafeTensors) from real transformers 5 configurations, only
shrunk: LLaVA with a SigLIP vision tower and a Llama language model (the OpenVLA/Prismatic shape), SmolVLM
(SmolVLA's backbone), PaliGemma (pi0's backbone), plus a plain Llama and a SigLIP vision encoder.

Multimodal models need `input_ids` holding exactly as many image tokens as the vision tower yields
features; `hf_example_inputs` applies intake's rule (`tools.intake.hf_inputs`) per `config.model_type`.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from tools.errors import CorruptFileError, NotFoundError
from tools.log import get_logger

logger = get_logger("reference")

VOCAB_SIZE = 512
IMAGE_SIZE = 32
PATCH_SIZE = 8
IMAGE_TOKEN_ID = VOCAB_SIZE - 1


def _vision_kwargs() -> dict[str, Any]:
    return dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
    )


def _text_kwargs() -> dict[str, Any]:
    return dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )


def _llava_siglip_llama() -> Any:
    from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, SiglipVisionConfig

    config = LlavaConfig(
        vision_config=SiglipVisionConfig(**_vision_kwargs()),
        text_config=LlamaConfig(**_text_kwargs()),
        image_token_index=IMAGE_TOKEN_ID,
        image_seq_length=(IMAGE_SIZE // PATCH_SIZE) ** 2,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
    )
    return LlavaForConditionalGeneration(config)


def _smolvlm() -> Any:
    from transformers import LlamaConfig, SmolVLMConfig, SmolVLMForConditionalGeneration
    from transformers.models.smolvlm import SmolVLMVisionConfig

    config = SmolVLMConfig(
        vision_config=SmolVLMVisionConfig(**_vision_kwargs()),
        text_config=LlamaConfig(**_text_kwargs()),
        image_token_id=IMAGE_TOKEN_ID,
        scale_factor=2,
        pad_token_id=0,
    )
    return SmolVLMForConditionalGeneration(config)


def _paligemma() -> Any:
    from transformers import (
        GemmaConfig,
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        SiglipVisionConfig,
    )

    text = GemmaConfig(**{**_text_kwargs(), "num_key_value_heads": 1, "head_dim": 16})
    config = PaliGemmaConfig(
        vision_config=SiglipVisionConfig(**_vision_kwargs()),
        text_config=text,
        image_token_index=IMAGE_TOKEN_ID,
        vocab_size=VOCAB_SIZE,
        projection_dim=64,
        hidden_size=64,
    )
    return PaliGemmaForConditionalGeneration(config)


def _llama() -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(**_text_kwargs()))


def _siglip_vision() -> Any:
    from transformers import SiglipVisionConfig, SiglipVisionModel

    return SiglipVisionModel(SiglipVisionConfig(**_vision_kwargs()))


HF_BUILDERS: dict[str, Callable[[], Any]] = {
    "hf_llava_siglip": _llava_siglip_llama,
    "hf_smolvlm": _smolvlm,
    "hf_paligemma": _paligemma,
    "hf_llama": _llama,
    "hf_siglip_vision": _siglip_vision,
}


def save_hf_reference(name: str, target_dir: Path, seed: int = 0) -> Path:
    """Build the tiny model `name` with seeded random weights and `save_pretrained` it into `target_dir`."""
    if name not in HF_BUILDERS:
        raise NotFoundError(
            f"unknown Hugging Face reference {name!r}; known: {', '.join(sorted(HF_BUILDERS))}"
        )
    torch.manual_seed(seed)
    model = HF_BUILDERS[name]().eval()
    target_dir = Path(target_dir)
    with _no_progress_bars():
        model.save_pretrained(target_dir)
    logger.info(
        "saved %s (%d parameters) to %s", name, sum(p.numel() for p in model.parameters()), target_dir
    )
    return target_dir


def load_hf_model(model_dir: Path) -> torch.nn.Module:
    """Load a saved directory with the class named in `config.architectures` (no remote code)."""
    import transformers
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    architectures = getattr(config, "architectures", None) or []
    if not architectures or not hasattr(transformers, architectures[0]):
        raise CorruptFileError(f"{model_dir} names no loadable architecture: {architectures}")
    with _no_progress_bars():
        return getattr(transformers, architectures[0]).from_pretrained(model_dir).eval()


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def hf_example_inputs(
    config: Any, batch_size: int = 1, text_tokens: int = 8, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Make synthetic forward() inputs for a Hugging Face config, with the image tokens its model requires.

    The rules live in `tools.intake.hf_inputs` (shared with intake); this batches them.
    """
    from tools.inputs import synthesize_inputs
    from tools.intake.hf_inputs import infer_hf_input_specs

    as_dict = config.to_dict() if hasattr(config, "to_dict") else dict(vars(config))
    specs = infer_hf_input_specs(as_dict, text_tokens=text_tokens)
    batched = [spec.model_copy(update={"shape": (batch_size, *spec.shape[1:])}) for spec in specs]
    return synthesize_inputs(batched, seed=seed)


def build_inputs_for_hf_vla(
    model_dir: Path, batch_size: int = 1, text_tokens: int = 8, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Read `model_dir`'s config.json and return synthetic inputs its forward() accepts."""
    from transformers import AutoConfig

    if not (Path(model_dir) / "config.json").is_file():
        raise NotFoundError(f"{model_dir} has no config.json; not a Hugging Face model directory")
    config = AutoConfig.from_pretrained(model_dir)
    return hf_example_inputs(config, batch_size=batch_size, text_tokens=text_tokens, seed=seed)
