"""Declared sizes are checked against the file and the memory budget before anything is allocated, and the
checks refuse only forged files: real SafeTensors, external-data ONNX and model classes still load."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from safetensors.torch import save_file

from tools.errors import CorruptFileError, UnsupportedFormatError
from tools.intake import LoadOptions, budget, load_model
from tools.intake.detect import validate_safetensors_header
from tools.intake.hf_loader import model_class_for


def _add_model(initializer: TensorProto) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", initializer.name], ["y"])],
        "add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 256])],
        [initializer],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_scalar_and_empty_safetensors_pass_the_header_check(tmp_path: Path) -> None:
    path = tmp_path / "edge.safetensors"
    save_file({"scalar": torch.tensor(3.0), "empty": torch.zeros(0, 4), "w": torch.ones(2, 3)}, str(path))
    assert set(validate_safetensors_header(path)) == {"scalar", "empty", "w"}


@pytest.mark.parametrize("info", [[1, 2], {"dtype": "F32", "shape": 4, "data_offsets": [0, 16]}])
def test_safetensors_entry_that_is_not_a_tensor_description_is_corrupt(tmp_path: Path, info: object) -> None:
    header = json.dumps({"w": info}).encode()
    path = tmp_path / "odd.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    with pytest.raises(CorruptFileError, match="odd.safetensors"):
        validate_safetensors_header(path)


def test_onnx_with_external_data_still_loads(tmp_path: Path, data_dir: Path) -> None:
    weight = numpy_helper.from_array(torch.ones(1, 256).numpy(), "w")
    path = tmp_path / "external.onnx"
    onnx.save(_add_model(weight), str(path), save_as_external_data=True, location="w.bin", size_threshold=0)
    assert (tmp_path / "w.bin").stat().st_size == 1024
    loaded = load_model(path, LoadOptions(), data_dir=data_dir)
    assert loaded.session is not None


def test_onnx_external_data_outside_the_model_folder_is_refused(tmp_path: Path, data_dir: Path) -> None:
    weight = numpy_helper.from_array(torch.ones(1, 256).numpy(), "w")
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    path = model_dir / "model.onnx"
    onnx.save(_add_model(weight), str(path), save_as_external_data=True, location="w.bin", size_threshold=0)
    model = onnx.load(str(path), load_external_data=False)
    model.graph.initializer[0].external_data[0].value = "../outside.bin"
    (tmp_path / "outside.bin").write_bytes(b"\0" * 1024)
    onnx.save(model, str(path))
    with pytest.raises(CorruptFileError, match="not a file beside the model"):
        load_model(path, LoadOptions(), data_dir=data_dir)


def test_onnx_initializer_dims_larger_than_the_file_are_refused(tmp_path: Path, data_dir: Path) -> None:
    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[10**6, 10**6], raw_data=b"\0" * 16)
    path = tmp_path / "forged.onnx"
    path.write_bytes(_add_model(weight).SerializeToString())
    with pytest.raises(CorruptFileError, match=r"forged.onnx declares initializer 'w' .* but the file has"):
        load_model(path, LoadOptions(), data_dir=data_dir)


def test_memory_budget_refuses_weights_that_fit_the_file_but_not_memory(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "model.onnx"
    onnx.save(_add_model(numpy_helper.from_array(torch.ones(1, 256).numpy(), "w")), str(path))
    monkeypatch.setattr(budget, "memory_budget_bytes", lambda: 512)
    with pytest.raises(CorruptFileError, match="memory budget of 512 bytes"):
        load_model(path, LoadOptions(), data_dir=data_dir)


@pytest.mark.parametrize("name", ["BertModel", "AutoModel", "NoSuchModelClass"])
def test_architectures_naming_a_model_class_or_nothing_known_is_accepted(name: str) -> None:
    import transformers

    cls = model_class_for({"architectures": [name]}, LoadOptions())
    assert cls is getattr(transformers, name, transformers.AutoModel)


@pytest.mark.parametrize("name", ["pipeline", "AutoConfig", "BertConfig", "logging"])
def test_architectures_naming_something_else_is_unsupported(name: str) -> None:
    with pytest.raises(UnsupportedFormatError, match=f"names '{name}'.*not a model class"):
        model_class_for({"architectures": [name]}, LoadOptions(), source="m/config.json")
