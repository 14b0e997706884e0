"""Every supported format is detected by content, loaded, and runs to the same output as the original model."""

from __future__ import annotations

import json
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.model_zoo import reference_output
from tools.errors import InputSpecError, MissingDependencyError, UnsafeFileError, ValidationError
from tools.inputs import parse_input_spec
from tools.intake import LoadOptions, ModelFormat, Runtime, detect_format, load_model

ARCH = "tests.model_zoo:TinyMLP"


def _run(loaded) -> np.ndarray:  # noqa: ANN001 - LoadedModel
    inputs = loaded.example_inputs()
    if loaded.runtime == Runtime.TORCH:
        with torch.no_grad():
            return loaded.module(**inputs).numpy()
    return loaded.session.run(None, {k: v.numpy() for k, v in inputs.items()})[0]


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("torchscript", ModelFormat.TORCHSCRIPT),
        ("state_dict", ModelFormat.TORCH_STATE_DICT),
        ("state_dict_legacy", ModelFormat.TORCH_STATE_DICT),
        ("safetensors", ModelFormat.SAFETENSORS),
        ("pickled_module", ModelFormat.TORCH_PICKLED_MODULE),
        ("onnx", ModelFormat.ONNX),
    ],
)
def test_format_detected_by_content_not_extension(
    zoo: dict[str, Path], tmp_path: Path, key: str, expected: ModelFormat
) -> None:
    disguised = tmp_path / "model.weird-extension"
    shutil.copy(zoo[key], disguised)
    assert detect_format(disguised).format == expected


@pytest.mark.parametrize("key", ["torchscript", "onnx"])
def test_self_describing_formats_load_and_match_original(
    zoo: dict[str, Path], data_dir: Path, key: str
) -> None:
    loaded = load_model(zoo[key], data_dir=data_dir)
    _, expected = reference_output()
    assert [s.name for s in loaded.input_specs] == ["state"]
    np.testing.assert_allclose(_run(loaded), expected.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("key", ["state_dict", "state_dict_legacy", "safetensors"])
def test_weight_files_load_into_named_architecture(zoo: dict[str, Path], data_dir: Path, key: str) -> None:
    options = LoadOptions(architecture=ARCH, config_path=zoo["config"])
    loaded = load_model(zoo[key], options, data_dir=data_dir)
    _, expected = reference_output()
    np.testing.assert_allclose(_run(loaded), expected.numpy(), rtol=1e-6)


def test_weight_file_without_architecture_says_how_to_give_one(zoo: dict[str, Path], data_dir: Path) -> None:
    with pytest.raises(ValidationError, match="--arch"):
        load_model(zoo["state_dict"], data_dir=data_dir)


def test_weights_for_another_architecture_are_refused_with_the_mismatch(
    zoo: dict[str, Path], tmp_path: Path, data_dir: Path
) -> None:
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"in_features": 8, "hidden": 32}))
    with pytest.raises(ValidationError, match="does not match the architecture"):
        load_model(zoo["state_dict"], LoadOptions(architecture=ARCH, config_path=wrong), data_dir=data_dir)


def test_pickled_module_needs_trust_flag(zoo: dict[str, Path], data_dir: Path) -> None:
    with pytest.raises(UnsafeFileError, match="--trust-pickle"):
        load_model(zoo["pickled_module"], data_dir=data_dir)
    # trust is an allowlist: the test's own package must be named before its classes are constructed
    with pytest.raises(UnsafeFileError, match="tests.model_zoo.TinyMLP") as refused:
        load_model(zoo["pickled_module"], LoadOptions(trust_pickle=True), data_dir=data_dir)
    assert "--trust-package tests" in (refused.value.hint or "")
    options = LoadOptions(trust_pickle=True, trusted_packages=("tests",))
    loaded = load_model(zoo["pickled_module"], options, data_dir=data_dir)
    assert loaded.format == ModelFormat.TORCH_PICKLED_MODULE
    np.testing.assert_allclose(_run(loaded), reference_output()[1].numpy(), rtol=1e-6)


def test_torchscript_without_recorded_inputs_asks_for_input_shape(tmp_path: Path, data_dir: Path) -> None:
    path = tmp_path / "bare.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(3, 2)), str(path))
    with pytest.raises(InputSpecError, match="--input-shape"):
        load_model(path, data_dir=data_dir)
    loaded = load_model(
        path, LoadOptions(input_specs=(parse_input_spec("input:1x3:float32"),)), data_dir=data_dir
    )
    assert _run(loaded).shape == (1, 2)


def test_onnx_token_input_range_comes_from_embedding_table(tmp_path: Path, data_dir: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Embedding(50, 4), torch.nn.Flatten(), torch.nn.Linear(24, 2)).eval()
    path = tmp_path / "tokens.onnx"
    torch.onnx.export(
        model, (torch.zeros(1, 6, dtype=torch.long),), str(path), input_names=["input_ids"], dynamo=False
    )
    spec = load_model(path, data_dir=data_dir).input_specs[0]
    assert (spec.name, spec.dtype, spec.low, spec.high) == ("input_ids", "int64", 0, 50)


def test_hf_directory_loads_with_multimodal_inputs(tiny_llava_dir: Path, data_dir: Path) -> None:
    loaded = load_model(tiny_llava_dir, data_dir=data_dir)
    assert loaded.format == ModelFormat.HF_DIRECTORY
    inputs = loaded.example_inputs()
    image_token, vocab = loaded.config["image_token_index"], loaded.config["text_config"]["vocab_size"]
    assert (
        int((inputs["input_ids"] == image_token).sum()) == 16
    )  # (32 / 8) ** 2 image tokens, no CLS for SigLIP
    with torch.no_grad():
        logits = loaded.module(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], vocab)


def test_hf_directory_with_custom_code_needs_trust(
    tiny_llava_dir: Path, tmp_path: Path, data_dir: Path
) -> None:
    copy = tmp_path / "remote"
    shutil.copytree(tiny_llava_dir, copy)
    config = json.loads((copy / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsafeFileError, match="--trust-remote-code"):
        load_model(copy, data_dir=data_dir)


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_archive_of_hf_directory_unpacks_into_data_dir(
    tiny_llava_dir: Path, tmp_path: Path, data_dir: Path, kind: str
) -> None:
    archive = tmp_path / f"model.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
            for file in tiny_llava_dir.iterdir():
                zf.write(file, f"tiny-llava/{file.name}")
    else:
        with tarfile.open(archive, "w:gz") as tf:
            tf.add(tiny_llava_dir, arcname="tiny-llava")
    loaded = load_model(archive, data_dir=data_dir)
    assert loaded.format == ModelFormat.HF_DIRECTORY
    assert (data_dir / "intake") in loaded.path.parents
    assert loaded.source == archive
    again = load_model(archive, data_dir=data_dir)  # same content: the unpacked copy is reused
    assert again.path == loaded.path


@pytest.mark.parametrize("layout", ["savedmodel", "keras"])
def test_tensorflow_models_are_recognized_and_name_the_extra(
    tmp_path: Path, data_dir: Path, layout: str
) -> None:
    if layout == "savedmodel":
        path = tmp_path / "saved"
        (path / "variables").mkdir(parents=True)
        (path / "saved_model.pb").write_bytes(b"\x08\x01")
    else:
        path = tmp_path / "policy.keras"
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("config.json", "{}")
            zf.writestr("metadata.json", "{}")
            zf.writestr("model.weights.h5", b"\x89HDF\r\n\x1a\n")
    with pytest.raises(MissingDependencyError, match=r"robopt\[tf\]"):
        load_model(path, data_dir=data_dir)


def test_directory_with_single_model_file_is_resolved(
    zoo: dict[str, Path], tmp_path: Path, data_dir: Path
) -> None:
    folder = tmp_path / "export"
    folder.mkdir()
    shutil.copy(zoo["onnx"], folder / "policy.onnx")
    assert load_model(folder, data_dir=data_dir).format == ModelFormat.ONNX
