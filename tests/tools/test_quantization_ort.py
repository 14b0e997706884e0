"""ONNX Runtime quantization of the reference VLA: INT8 dynamic and static, 4-bit MatMulNBits, FP16.

Each technique must make the graph smaller while keeping the actions close to the FP32 graph's, leave the
nodes it was told to exclude in float, and give the same bytes for the same config.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import onnx
import pydantic
import pytest
import torch

from tests.technique_support import load, outputs, store_reference
from tools.compression.onnx_export import OnnxExportConfig, cpu_session
from tools.errors import OptimizationError, ValidationError
from tools.quantization.casting import OnnxFp16Config
from tools.quantization.ort_int4 import OrtMatMul4BitsConfig
from tools.quantization.ort_int8 import OrtInt8DynamicConfig, OrtInt8StaticConfig, float_weight_nodes
from tools.reference.calibration import reaching_calibration
from tools.techniques import apply, get_technique, output_agreement, store_original
from tools.versions import VersionStore

# Fidelity bounds follow the model, measured in the same test on held-out reaching inputs with expert
# labels: a technique's deviation from the FP32 graph (mean squared action difference) must stay a small
# fraction of the FP32 graph's own error against the expert, and its error against the expert may grow by at
# most that fraction. A broken quantizer deviates by about the zero-action error, which `_faithful` checks
# is far away (12.7x FP32's error on the reference VLA), so each bound still catches it. Measured deviation
# / FP32 error on the reference VLA (the same weights on every CPU, see tools/reference/reproducible.py):
# dynamic 0.0014, static minmax 0.034, 4-bit rtn 0.010 and hqq 0.0027, fp16 2e-7; each bound allows 7-15x
# that, for other CPUs' ORT kernels.
MAX_DEVIATION = {"dynamic": 0.02, "static": 0.25, "int4": 0.1, "fp16": 0.001}
HELD_OUT = reaching_calibration(4, 16, seed=4242)


@pytest.fixture(scope="module")
def vla(tmp_path_factory: pytest.TempPathFactory, reference_cache: Path) -> dict:
    """The reference VLA stored once and exported once to FP32 ONNX."""
    data_dir = tmp_path_factory.mktemp("ort_quant") / "data"
    data_dir.mkdir()
    store = VersionStore(data_dir / "versions")
    source = store_reference(store, "vla", reference_cache, data_dir)
    exported = apply(store, source.job_id, source.id, OnnxExportConfig(parity_inputs=2), data_dir=data_dir)
    fp32 = load(store, exported.version, data_dir)
    return {
        "store": store,
        "data_dir": data_dir,
        "source": source,
        "fp32": exported.version,
        "fp32_model": fp32,
    }


def _quantize(vla: dict, config: object, calibration: object = None) -> tuple:
    """Apply `config` to the FP32 ONNX version; return (result, loaded model)."""
    result = apply(
        vla["store"],
        vla["fp32"].job_id,
        vla["fp32"].id,
        config,
        data_dir=vla["data_dir"],
        calibration=calibration,
    )
    return result, load(vla["store"], result.version, vla["data_dir"])


def _faithful(reference: object, candidate: object, technique: str) -> float:
    """Assert `candidate` stays within MAX_DEVIATION[technique] of what `reference` allows; return the cosine.

    Both graphs run on the held-out batches: the candidate's mean squared deviation from the reference and its
    error against the expert actions are compared with the reference's own error against the expert.
    """
    cosines, deviation, ref_err, cand_err, zero_err = [], [], [], [], []
    for batch, labels in zip(HELD_OUT.batches, HELD_OUT.labels):
        (ref,), (cand,) = outputs(reference, batch), outputs(candidate, batch)
        cosines.append(output_agreement([ref], [cand])[0].cosine)
        deviation.append(float(((cand - ref) ** 2).mean()))
        ref_err.append(float(((ref - labels) ** 2).mean()))
        cand_err.append(float(((cand - labels) ** 2).mean()))
        zero_err.append(float((labels**2).mean()))
    ref_err_mean, budget = statistics.mean(ref_err), MAX_DEVIATION[technique]
    relative = statistics.mean(deviation) / ref_err_mean
    error_ratio, zero_ratio = (
        statistics.mean(cand_err) / ref_err_mean,
        statistics.mean(zero_err) / ref_err_mean,
    )
    print(
        f"\n{technique}: deviation {relative:.4f} of FP32's error (bound {budget}), error {error_ratio:.4f}x "
        f"FP32's, zero-action {zero_ratio:.1f}x, worst cosine {min(cosines):.6f}"
    )
    assert zero_ratio >= 5, "the reference must beat the zero action by far, or no bound here means anything"
    assert relative <= budget, f"{technique} deviates {relative:.4f} of FP32's error, allowed {budget}"
    assert error_ratio <= 1 + budget, f"{technique} raised the action error {error_ratio:.4f}x"
    return min(cosines)


def _median_ms(session: object, feeds: dict, runs: int = 50) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def test_configs_round_trip_and_reject_bad_values() -> None:
    configs = [
        OrtInt8DynamicConfig(
            per_channel=True, nodes_to_exclude=("action_head.mlp.6",), op_types_to_exclude=("Conv",)
        ),
        OrtInt8StaticConfig(
            calibration_method="percentile",
            percentile=99.9,
            activation_type="int8",
            symmetric_activations=True,
        ),
        OrtMatMul4BitsConfig(algorithm="hqq", block_size=64, accuracy_level=4),
        OnnxFp16Config(keep_io_types=False, op_block_list=("Softmax",)),
    ]
    for config in configs:
        assert type(config).model_validate_json(config.model_dump_json()) == config
    bad = [
        (OrtMatMul4BitsConfig, {"block_size": 48}),
        (OrtMatMul4BitsConfig, {"block_size": 512}),
        (OrtMatMul4BitsConfig, {"algorithm": "hqq", "symmetric": True}),
        (OrtInt8StaticConfig, {"activation_type": "int8", "weight_type": "uint8"}),
        (OrtInt8StaticConfig, {"calibration_method": "kl"}),
        (OrtInt8DynamicConfig, {"weight_type": "int4"}),
        (OrtInt8DynamicConfig, {"op_types_to_quantize": ()}),
    ]
    for config_type, values in bad:
        with pytest.raises(pydantic.ValidationError):
            config_type(**values)
    assert get_technique("ort_int8_static").spec.needs.calibration_data
    assert not get_technique("ort_int8_dynamic").spec.needs.calibration_data


def test_dynamic_int8_is_small_faithful_and_fast(vla: dict) -> None:
    result, int8 = _quantize(vla, OrtInt8DynamicConfig())
    ratio = result.version.size_bytes / vla["fp32"].size_bytes
    assert ratio <= 0.30, f"INT8 dynamic is {ratio:.1%} of FP32"
    cosine = _faithful(vla["fp32_model"], int8, "dynamic")
    facts = result.facts
    assert facts["gemm_rewritten_as_matmul"] == 10 and facts["quantized_nodes"] >= 29
    assert facts["weight_fraction_quantized"] > 0.95 and facts["excluded_nodes"] == []
    # Latency, in process, one thread, batch 1, alternating to share the machine's noise.
    feeds = {name: tensor[:1].numpy() for name, tensor in HELD_OUT.batches[0].items()}
    sessions = {"fp32": cpu_session(vla["fp32_model"].path), "int8": cpu_session(int8.path)}
    for session in sessions.values():
        _median_ms(session, feeds, 10)
    times: dict[str, list[float]] = {"fp32": [], "int8": []}
    for _ in range(5):
        for name, session in sessions.items():
            times[name].append(_median_ms(session, feeds, 10))
    fp32_ms, int8_ms = statistics.median(times["fp32"]), statistics.median(times["int8"])
    print(
        f"\nVLA ORT CPU 1 thread batch 1: FP32 {fp32_ms:.3f} ms, INT8 dynamic {int8_ms:.3f} ms, "
        f"size {ratio:.1%}, cosine {cosine:.5f}"
    )
    assert int8_ms <= 1.5 * fp32_ms


def test_static_int8_calibrates_and_stays_faithful(vla: dict) -> None:
    with pytest.raises(OptimizationError, match="needs calibration"):
        _quantize(vla, OrtInt8StaticConfig())
    result, int8 = _quantize(vla, OrtInt8StaticConfig(calibration_batches=2), reaching_calibration(2, 16))
    ratio = result.version.size_bytes / vla["fp32"].size_bytes
    assert ratio <= 0.30, f"INT8 static is {ratio:.1%} of FP32"
    # Static INT8 quantizes every activation too, so it may deviate 10x more than dynamic INT8
    _faithful(vla["fp32_model"], int8, "static")
    assert result.facts["calibration"] == {
        "method": "minmax",
        "feeds": 4,
        "rows": 32,
        "source": "reference-task",
    }
    assert result.facts["weight_fraction_quantized"] == 1.0  # Conv and Gemm too, as QDQ
    ops = {node.op_type for node in onnx.load(str(int8.path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_excluded_nodes_stay_float(vla: dict) -> None:
    calibration = reaching_calibration(1, 8)
    for config in (
        OrtInt8DynamicConfig(nodes_to_exclude=("action_head.mlp.0",)),
        OrtInt8StaticConfig(nodes_to_exclude=("action_head.mlp.0",), calibration_batches=1),
        OrtMatMul4BitsConfig(nodes_to_exclude=("action_head.mlp.0",)),
    ):
        result, model = _quantize(vla, config, calibration)
        excluded = result.facts["excluded_nodes"]
        graph = onnx.load(str(model.path))
        floats = float_weight_nodes(graph)
        # The first action-head layer (2944x1024, half the weights) kept its float weight in the graph.
        assert [name for name in excluded if name in floats] == ["node_linear_25"], config.type
        assert 0.4 < result.facts["weight_fraction_quantized"] < 0.6, config.type
        assert result.version.size_bytes > 0.5 * vla["fp32"].size_bytes
    with pytest.raises(ValidationError, match="no node"):
        _quantize(vla, OrtInt8DynamicConfig(nodes_to_exclude=("action_head.nonexistent",)))


def test_matmul_4bits_is_smaller_than_int8_and_faithful(vla: dict) -> None:
    int8, _ = _quantize(vla, OrtInt8DynamicConfig())
    result, int4 = _quantize(vla, OrtMatMul4BitsConfig())
    assert result.version.size_bytes < 0.75 * int8.version.size_bytes
    assert result.facts["matmul_nbits_nodes"] == result.facts["constant_weight_matmuls"] == 29
    ops = [node.op_type for node in onnx.load(str(int4.path)).graph.node]
    assert ops.count("MatMulNBits") == 29 and "Gemm" not in ops
    _faithful(vla["fp32_model"], int4, "int4")
    # HQQ on the trunk only (the action head is excluded: HQQ's optimization is slow on 3M-weight layers).
    hqq, hqq_model = _quantize(
        vla, OrtMatMul4BitsConfig(algorithm="hqq", block_size=64, nodes_to_exclude=("action_head",))
    )
    assert hqq.facts["matmul_nbits_nodes"] == 25
    _faithful(vla["fp32_model"], hqq_model, "int4")


def test_fp16_halves_the_graph(vla: dict) -> None:
    result, fp16 = _quantize(vla, OnnxFp16Config())
    ratio = result.version.size_bytes / vla["fp32"].size_bytes
    assert 0.45 <= ratio <= 0.55
    _faithful(vla["fp32_model"], fp16, "fp16")
    assert [i.type for i in fp16.session.get_inputs()][0] == "tensor(float)"  # keep_io_types
    assert result.facts["weight_fraction_fp16"] == 1.0
    kept, _ = _quantize(vla, OnnxFp16Config(nodes_to_exclude=("action_head.mlp.0",)))
    assert kept.facts["float32_weight_nodes"] == ["node_linear_25"] == kept.facts["excluded_nodes"]
    assert kept.version.size_bytes > result.version.size_bytes + 5_000_000  # its 3M weights stayed 4 bytes


def test_same_config_gives_the_same_bytes(vla: dict) -> None:
    calibration = reaching_calibration(1, 8)
    for config in (
        OrtInt8DynamicConfig(),
        OrtInt8StaticConfig(calibration_batches=1),
        OrtMatMul4BitsConfig(),
    ):
        first, _ = _quantize(vla, config, calibration)
        second, _ = _quantize(vla, config, calibration)
        assert first.version.sha256 == second.version.sha256, config.type


def test_pytorch_source_is_exported_first(tmp_path: Path, reference_cache: Path) -> None:
    data_dir = tmp_path / "data"
    store = VersionStore(data_dir / "versions")
    source = store_reference(store, "conv_policy", reference_cache, data_dir)
    result = apply(store, source.job_id, source.id, OrtInt8DynamicConfig(), data_dir=data_dir)
    assert result.facts["exported_from_torch"] and result.facts["export_parity"]["max_abs_error"] <= 1e-3
    torch_model, int8 = load(store, source, data_dir), load(store, result.version, data_dir)
    for batch in reaching_calibration(2, 8, seed=9).batches:
        batch = {spec.name: batch[spec.name] for spec in torch_model.input_specs}  # no instruction tokens
        (agreement,) = output_agreement(outputs(torch_model, batch), outputs(int8, batch))
        assert agreement.cosine > 0.999
    assert torch.cuda.is_available() or "onnxruntime-cpu" in get_technique("ort_int8_dynamic").spec.runtimes


def test_torchscript_source_is_quantized_through_its_export_and_fp16_io_is_declared(
    tmp_path: Path, zoo: dict[str, Path]
) -> None:
    data_dir = tmp_path / "data"
    store = VersionStore(data_dir / "versions")
    scripted = store_original(store, "scripted", zoo["torchscript"], None, data_dir)
    int8 = apply(store, scripted.job_id, scripted.id, OrtInt8DynamicConfig(), data_dir=data_dir)
    quantized, original = load(store, int8.version, data_dir), load(store, scripted, data_dir)
    assert quantized.session is not None and int8.version.format == "onnx"  # TorchScript reaches ONNX Runtime
    ops = {node.op_type for node in onnx.load(str(quantized.path)).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeLinear"}, ops
    inputs = original.example_inputs()
    (expected,), (actual,) = outputs(original, inputs), outputs(quantized, inputs)
    assert output_agreement([expected], [actual])[0].cosine > 0.99
    graph = store_original(store, "tiny_onnx", zoo["onnx"], None, data_dir)
    result = apply(store, graph.job_id, graph.id, OnnxFp16Config(keep_io_types=False), data_dir=data_dir)
    fp16 = load(store, result.version, data_dir)
    assert fp16.session.get_inputs()[0].type == "tensor(float16)"
    assert [spec.dtype for spec in fp16.input_specs] == ["float16"]  # synthetic inputs match the graph
    (action,) = outputs(fp16, fp16.example_inputs())
    (reference,) = outputs(load(store, graph, data_dir), {"state": fp16.example_inputs()["state"].float()})
    assert output_agreement([reference], [action])[0].cosine > 0.999
