"""Benchmark: LeRobot ACT at its default size exported to ONNX and its precision variants (prints figures).

ACT with LeRobot's default widths (dim_model 512, 4 encoder layers, ResNet18) on one 3x224x224 camera and the
zoo's 6-d state: eager fp32, ONNX fp32, static INT8 QDQ (calibrated on other observations), dynamic
INT8, FP16 — size, p50 (ORT CPU, 1 thread, batch 1) and action error vs torch on held-out observations.
Fails only when an export breaks, never on timing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.performance, pytest.mark.integration, pytest.mark.slow]


def test_default_size_act_exports_and_variants(tmp_path: Path) -> None:
    pytest.importorskip("lerobot", reason="the lerobot extra is not installed")
    from tests.lerobot_zoo import write_tiny_act
    from tools.lerobot.coverage import ORT_CPU_QDQ, TENSORRT_QDQ, onnx_policy_variant, p50_latency
    from tools.lerobot.export import (
        export_policy_onnx,
        held_out_observations,
        load_policy_module,
        observation_specs,
    )

    defaults = dict(dim_model=512, n_heads=8, dim_feedforward=3200, n_encoder_layers=4, n_decoder_layers=1)
    directory = write_tiny_act(
        tmp_path / "act", chunk_size=100, n_action_steps=100, image_shape=(3, 224, 224), **defaults
    )
    module = load_policy_module(directory)
    specs = observation_specs(module)
    held_out = held_out_observations(specs, count=2)
    calibration = held_out_observations(specs, count=8, batch_sizes=(2,), seed=99)
    params = sum(p.numel() for p in module.parameters())
    single = [value[:1] for value in held_out[0].values()]
    torch.set_num_threads(1)
    with torch.inference_mode():
        eager = p50_latency(lambda: module(*single), warmup=2, runs=5)
    exported = export_policy_onnx(module, specs, tmp_path / "onnx", held_out=held_out)
    fp32_bytes = exported.path().stat().st_size
    from tools.lerobot.coverage import fp32_onnx_latency

    lines = [
        f"ACT {params / 1e6:.1f}M params, 3x224x224 + state 6",
        f"{'eager fp32':18s} {'':>9s}  p50 {eager:8.2f} ms",
        f"{'onnx fp32':18s} {fp32_bytes / 1e6:7.1f}MB  p50 {fp32_onnx_latency(exported.directory, held_out):8.2f} ms"
        f"  rel L2 {exported.parity.outputs[0].relative_l2:.2e}",
    ]
    runs = [
        ("int8_static_qdq", "int8 qdq trt-s8", TENSORRT_QDQ),
        ("int8_static_qdq", "int8 qdq ort-u8", ORT_CPU_QDQ),
        ("int8_dynamic", "int8 dynamic", TENSORRT_QDQ),
        ("fp16", "fp16", TENSORRT_QDQ),
    ]
    for variant, label, config in runs:
        result = onnx_policy_variant(
            exported.directory,
            variant,
            tmp_path / label.replace(" ", "_"),
            module,
            specs,
            held_out,
            calibration,
            config,
        )
        lines.append(
            f"{label:18s} {result.bytes / 1e6:7.1f}MB  p50 {result.p50_ms:8.2f} ms  rel L2 "
            f"{result.parity.outputs[0].relative_l2:.2e}  cos {result.parity.min_cosine:.5f}"
        )
    print("\n" + "\n".join(lines))
    assert exported.parity.min_cosine > 0.999


def test_default_size_diffusion_exports_and_fp16(tmp_path: Path) -> None:
    """Diffusion Policy with LeRobot's default UNet (512/1024/2048) on one 3x96x96 camera, the zoo's 10
    DDPM steps: runner fp32 vs fp16 (float32 scheduler math), size, p50, action error vs torch with the same noise.
    """
    pytest.importorskip("lerobot", reason="the lerobot extra is not installed")
    from tests.lerobot_zoo import write_tiny_diffusion
    from tools.lerobot.coverage import diffusion_fp16_variant, fp32_onnx_latency, p50_latency
    from tools.lerobot.diffusion_export import export_diffusion_onnx
    from tools.lerobot.export import held_out_observations, load_policy_module, observation_specs

    directory = write_tiny_diffusion(
        tmp_path / "diffusion",
        down_dims=(512, 1024, 2048),
        kernel_size=5,
        diffusion_step_embed_dim=128,
        spatial_softmax_num_keypoints=32,
        horizon=16,
        n_action_steps=8,
        drop_n_last_frames=7,
        image_shape=(3, 96, 96),
    )
    module = load_policy_module(directory)
    params = sum(p.numel() for p in module.parameters())
    held_out = held_out_observations(observation_specs(module), count=1)
    single = [value[:1] for value in held_out[0].values()]
    torch.set_num_threads(1)
    with torch.inference_mode():
        eager = p50_latency(lambda: module(*single), warmup=1, runs=3)
    exported = export_diffusion_onnx(module, tmp_path / "onnx", held_out=held_out)
    fp32_ms = fp32_onnx_latency(exported.directory, held_out)
    fp16 = diffusion_fp16_variant(exported.directory, tmp_path / "fp16", module, held_out)
    print(
        f"\nDiffusion {params / 1e6:.1f}M params, 3x96x96 + state 6, {module.policy.diffusion.num_inference_steps} "
        f"DDPM steps\neager fp32 p50 {eager:8.1f} ms\nrunner fp32 {exported.manifest['bytes'] / 1e6:7.1f}MB p50 "
        f"{fp32_ms:8.1f} ms rel L2 {exported.parity.outputs[0].relative_l2:.2e}\nrunner fp16 {fp16.bytes / 1e6:7.1f}MB "
        f"p50 {fp16.p50_ms:8.1f} ms rel L2 {fp16.parity.outputs[0].relative_l2:.2e}"
    )
    assert exported.parity.min_cosine > 0.999
