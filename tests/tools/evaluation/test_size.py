"""Tests of artifact size and weights by precision: plain, tied, quantized (torch.ao, torchao, bnb), ONNX."""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import pytest
import torch
import torch.nn as nn
from onnx import TensorProto, helper

from tools.errors import ValidationError
from tools.evaluation.size import (
    SizeFigures,
    measure_size,
    normalize_precision,
    size_of_module,
    size_of_onnx,
)
from tools.inputs import InputSpec
from tools.intake.types import LoadOptions


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 16)).eval()


_MLP_PARAMS = 256 * 128 + 128 + 128 * 16 + 16


def test_fp32_module_counts_every_parameter_at_four_bytes() -> None:
    figures = size_of_module(_mlp())
    assert figures.params_by_dtype["float32"].count == _MLP_PARAMS
    assert figures.weight_bytes == 4 * _MLP_PARAMS and figures.total_params == _MLP_PARAMS
    assert figures.dominant_precision() == "fp32"


def test_tied_weights_count_once_and_index_buffers_are_left_out() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(100, 32)
            self.head = nn.Linear(32, 100, bias=False)
            self.head.weight = self.embed.weight
            self.norm = nn.BatchNorm1d(32)  # running stats count, num_batches_tracked (int64) does not

    figures = size_of_module(Tied())
    assert figures.params_by_dtype["float32"].count == 100 * 32 + 4 * 32
    assert "int64" not in figures.params_by_dtype


def test_half_precision_halves_the_weight_bytes() -> None:
    fp32, fp16 = size_of_module(_mlp()), size_of_module(_mlp().half())
    assert fp16.weight_bytes * 2 == fp32.weight_bytes
    assert fp16.params_by_dtype["float16"].count == _MLP_PARAMS and fp16.dominant_precision() == "fp16"


def test_torch_ao_dynamic_int8_weights_are_counted_as_int8() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = torch.ao.quantization.quantize_dynamic(_mlp(), {nn.Linear}, dtype=torch.qint8)
    figures = size_of_module(quantized)
    assert figures.params_by_dtype["int8"].count == 256 * 128 + 128 * 16
    assert figures.dominant_precision() == "int8"
    assert figures.weight_bytes < size_of_module(_mlp()).weight_bytes / 3


def test_torchao_int8_tensor_subclass_is_counted_by_its_inner_storage() -> None:
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    model = _mlp()
    quantize_(model, Int8WeightOnlyConfig())
    figures = size_of_module(model)
    # qdata (and int8 zero points) by storage, scales and biases as float32
    assert figures.params_by_dtype["int8"].count >= 256 * 128 + 128 * 16
    assert figures.weight_bytes < size_of_module(_mlp()).weight_bytes / 3
    assert figures.dominant_precision() == "int8"


def test_bitsandbytes_4bit_weights_count_logical_elements_at_half_a_byte() -> None:
    bnb = pytest.importorskip("bitsandbytes")
    layer = bnb.nn.Linear4bit(256, 128, compute_dtype=torch.float32, quant_type="nf4")
    layer.load_state_dict(nn.Linear(256, 128).state_dict())
    layer = layer.to("cpu")
    figures = size_of_module(layer)
    nf4 = figures.params_by_dtype["nf4"]
    assert (nf4.count, nf4.bytes) == (256 * 128, 256 * 128 // 2)
    assert figures.dominant_precision() == "int4"


def test_onnx_initializers_match_the_torch_parameters(tmp_path: Path) -> None:
    path = tmp_path / "mlp.onnx"
    torch.onnx.export(_mlp(), (torch.randn(1, 256),), str(path), input_names=["x"], dynamo=False)
    figures = size_of_onnx(path)
    assert figures.params_by_dtype["float32"].count == _MLP_PARAMS
    assert figures.artifact_bytes == path.stat().st_size and figures.source == "onnx"


def test_onnx_external_data_is_part_of_the_artifact(tmp_path: Path) -> None:
    path = tmp_path / "ext" / "mlp.onnx"
    path.parent.mkdir()
    torch.onnx.export(_mlp(), (torch.randn(1, 256),), str(tmp_path / "tmp.onnx"), dynamo=False)
    model = onnx.load(str(tmp_path / "tmp.onnx"))
    onnx.save_model(model, str(path), save_as_external_data=True, location="mlp.data", size_threshold=0)
    figures = size_of_onnx(path)
    external = (path.parent / "mlp.data").stat().st_size
    assert external >= 4 * _MLP_PARAMS
    assert figures.artifact_bytes == path.stat().st_size + external
    assert figures.params_by_dtype["float32"].count == _MLP_PARAMS


def test_onnx_matmulnbits_weights_count_as_int4_and_fp16_as_half(tmp_path: Path) -> None:
    k, n, block = 64, 32, 32
    packed = helper.make_tensor(
        "w", TensorProto.UINT8, [n, k // block, block // 2], bytes(n * k // 2), raw=True
    )
    scales = helper.make_tensor("s", TensorProto.FLOAT, [n * k // block], [1.0] * (n * k // block))
    half = helper.make_tensor("h", TensorProto.FLOAT16, [n], bytes(2 * n), raw=True)
    node = helper.make_node(
        "MatMulNBits", ["x", "w", "s"], ["y0"], domain="com.microsoft", K=k, N=n, bits=4, block_size=block
    )
    add = helper.make_node("Add", ["y0", "h"], ["y"])
    graph = helper.make_graph(
        [node, add],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, n])],
        [packed, scales, half],
    )
    path = tmp_path / "int4.onnx"
    onnx.save(helper.make_model(graph), str(path))
    figures = size_of_onnx(path)
    assert figures.params_by_dtype["int4"].count == k * n
    assert figures.params_by_dtype["int4"].bytes == k * n // 2
    assert figures.params_by_dtype["float16"].bytes == 2 * n


def test_measure_size_of_a_torchscript_file(tmp_path: Path) -> None:
    path = tmp_path / "mlp.pt"
    torch.jit.save(torch.jit.trace(_mlp(), torch.randn(1, 256)), str(path))
    options = LoadOptions(input_specs=(InputSpec(name="x", shape=(1, 256)),))
    figures = measure_size(path, options)
    assert figures.artifact_bytes == path.stat().st_size
    assert figures.total_params == _MLP_PARAMS
    assert SizeFigures.model_validate_json(figures.model_dump_json()) == figures


def test_precision_names_normalize_and_unknown_ones_are_refused() -> None:
    assert [normalize_precision(n) for n in ("float16", "BF16", "qint8", "nf4", "torch.float32")] == [
        "fp16",
        "bf16",
        "int8",
        "int4",
        "fp32",
    ]
    with pytest.raises(ValidationError, match="unknown precision 'fp12'"):
        normalize_precision("fp12")
