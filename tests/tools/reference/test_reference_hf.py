"""Tiny Hugging Face VLA-family directories: they load with transformers, run, and archive cleanly."""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tools.errors import InputSpecError, NotFoundError
from tools.intake.hf_inputs import image_token_count
from tools.reference import build_reference, read_reference_metadata
from tools.reference.hf_vla import (
    HF_BUILDERS,
    build_inputs_for_hf_vla,
    hf_example_inputs,
    load_hf_model,
    save_hf_reference,
)

pytestmark = pytest.mark.integration

EXPECTED_CLASSES = {
    "hf_llava_siglip": "LlavaForConditionalGeneration",
    "hf_smolvlm": "SmolVLMForConditionalGeneration",
    "hf_paligemma": "PaliGemmaForConditionalGeneration",
    "hf_llama": "LlamaForCausalLM",
    "hf_siglip_vision": "SiglipVisionModel",
}


@pytest.mark.parametrize("name", sorted(HF_BUILDERS))
def test_hf_reference_loads_and_runs(name: str, reference_cache: Path) -> None:
    directory = build_reference(name, reference_cache)
    assert (directory / "config.json").is_file() and (directory / "model.safetensors").is_file()
    model = load_hf_model(directory)
    assert type(model).__name__ == EXPECTED_CLASSES[name]
    assert sum(p.numel() for p in model.parameters()) < 3_000_000
    inputs = build_inputs_for_hf_vla(directory, batch_size=2)
    with torch.no_grad():
        output = model(**inputs)
    result = output.logits if getattr(output, "logits", None) is not None else output.last_hidden_state
    assert result.shape[0] == 2 and torch.isfinite(result).all()
    if "input_ids" in inputs and "pixel_values" in inputs:
        assert result.shape[1] == inputs["input_ids"].shape[1]
    assert read_reference_metadata(directory)["architecture"] == EXPECTED_CLASSES[name]


def test_multimodal_inputs_hold_the_image_tokens_the_model_needs(reference_cache: Path) -> None:
    from transformers import AutoConfig

    expected_image_tokens = {"hf_llava_siglip": 16, "hf_paligemma": 16, "hf_smolvlm": 4}  # 32px / 8px patches
    for name, count in expected_image_tokens.items():
        config = AutoConfig.from_pretrained(build_reference(name, reference_cache))
        inputs = hf_example_inputs(config, batch_size=1, text_tokens=5)
        assert int((inputs["input_ids"] == config.image_token_id).sum()) == count, name
        assert inputs["input_ids"].shape == (1, count + 5)
    llava = AutoConfig.from_pretrained(build_reference("hf_llava_siglip", reference_cache))
    llava.vision_feature_select_strategy = "default"  # drops the first token of each image
    assert image_token_count(llava.to_dict()) == 15


def test_unknown_model_type_and_missing_config_are_explained(tmp_path: Path) -> None:
    with pytest.raises(InputSpecError, match="whisper"):
        hf_example_inputs(SimpleNamespace(model_type="whisper"))
    with pytest.raises(NotFoundError):
        build_inputs_for_hf_vla(tmp_path)
    with pytest.raises(NotFoundError, match="hf_smolvlm"):
        save_hf_reference("hf_unknown", tmp_path)


def test_same_seed_gives_identical_weights(tmp_path: Path) -> None:
    first = save_hf_reference("hf_paligemma", tmp_path / "a", seed=3)
    second = save_hf_reference("hf_paligemma", tmp_path / "b", seed=3)
    other = save_hf_reference("hf_paligemma", tmp_path / "c", seed=4)
    read = lambda path: (path / "model.safetensors").read_bytes()  # noqa: E731
    assert read(first) == read(second) != read(other)


def test_archives_hold_one_hf_directory(reference_cache: Path, tmp_path: Path) -> None:
    directory = build_reference("hf_archives", reference_cache)
    formats = read_reference_metadata(directory)["formats"]
    with zipfile.ZipFile(directory / formats["archive_zip"]) as archive:
        archive.extractall(tmp_path / "zip")
    with tarfile.open(directory / formats["archive_tar_gz"]) as archive:
        archive.extractall(tmp_path / "tar", filter="data")
    for root in (tmp_path / "zip" / "hf_llava_siglip", tmp_path / "tar" / "hf_llava_siglip"):
        model = load_hf_model(root)
        with torch.no_grad():
            assert (
                model(**build_inputs_for_hf_vla(root)).logits.shape[-1] == model.config.text_config.vocab_size
            )
