"""GPU latency of LeRobot's ACT and Diffusion Policy at their default sizes: a script for a CUDA machine.

Not collected by pytest (no `test_` prefix) and imported by nothing in robopt. Run on a machine with a CUDA
build of torch and LeRobot's policy code importable:

    python tests/performance/gpu_lerobot_latency.py [--out figures.json] [--iterations 200]

Prints, per policy: eager CUDA fp32, eager CUDA fp16 (weights and inputs cast to half, as users try first),
fp16 under torch.autocast (fp32 kept where autocast deems fp16 unsafe), CUDA-graph replay of the fp16 forward where it captures, and ONNX Runtime on the host's
CPU for the same exported graph (ACT) — each p50/p95 in ms at batch 1 — plus the fp16 action error against
fp32. TensorRT and ONNX Runtime's CUDA provider are measured only where their Python packages import; their
absence is printed, never guessed around.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any, Callable

import torch


def _import_lerobot_policies() -> None:
    """Import LeRobot's policy modules without `lerobot/policies/__init__.py` (it imports every VLA)."""
    if not torch.cuda.is_available():  # the CPU torchvision shim robopt uses; harmless on a CUDA build
        sys.modules.setdefault(
            "torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations")
        )
    spec = importlib.util.find_spec("lerobot")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("lerobot is not importable here: install lerobot==0.4.4 with --no-deps")
    package = types.ModuleType("lerobot.policies")
    package.__path__ = [os.path.join(spec.submodule_search_locations[0], "policies")]
    sys.modules.setdefault("lerobot.policies", package)


def _timed(run: Callable[[], Any], iterations: int, sync: bool) -> dict[str, float]:
    """p50/p95 in ms of `run` after a warm-up of a tenth as many calls (at least 3)."""
    for _ in range(max(3, iterations // 10)):
        run()
    if sync:
        torch.cuda.synchronize()
    samples = []
    for _ in range(iterations):
        start = time.perf_counter()
        run()
        if sync:
            torch.cuda.synchronize()
        samples.append((time.perf_counter() - start) * 1e3)
    samples.sort()
    return {"p50_ms": statistics.median(samples), "p95_ms": samples[int(0.95 * (len(samples) - 1))]}


def _act(device: str) -> tuple[torch.nn.Module, dict[str, torch.Tensor], Callable[..., torch.Tensor]]:
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.act.modeling_act import ACTPolicy

    config = ACTConfig(  # LeRobot's default ACT (ResNet18, 4+1 layers, chunk 100) on an ALOHA camera
        input_features={
            "observation.state": PolicyFeature(type=FeatureType.STATE, shape=(14,)),
            "observation.images.top": PolicyFeature(type=FeatureType.VISUAL, shape=(3, 480, 640)),
        },
        output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(14,))},
        pretrained_backbone_weights=None,
        device=device,
    )
    torch.manual_seed(0)
    policy = ACTPolicy(config).to(device).eval()
    batch = {
        "observation.state": torch.randn(1, 14, device=device),
        "observation.images.top": torch.rand(1, 3, 480, 640, device=device),
    }
    return policy, batch, lambda p, b: p.predict_action_chunk(b)


def _diffusion(device: str) -> tuple[torch.nn.Module, dict[str, torch.Tensor], Callable[..., torch.Tensor]]:
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy

    config = DiffusionConfig(  # LeRobot's default Diffusion Policy (PushT: 96x96 crop 84, horizon 16)
        input_features={
            "observation.state": PolicyFeature(type=FeatureType.STATE, shape=(2,)),
            "observation.image": PolicyFeature(type=FeatureType.VISUAL, shape=(3, 96, 96)),
        },
        output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(2,))},
        pretrained_backbone_weights=None,
        device=device,
    )
    torch.manual_seed(0)
    policy = DiffusionPolicy(config).to(device).eval()
    steps = config.n_obs_steps
    batch = {
        "observation.state": torch.randn(1, steps, 2, device=device),
        "observation.images": torch.rand(1, steps, 1, 3, 96, 96, device=device),
    }
    noise = torch.randn(1, config.horizon, 2, device=device)

    def generate(p: torch.nn.Module, b: dict[str, torch.Tensor]) -> torch.Tensor:
        if not torch.cuda.is_current_stream_capturing():
            torch.manual_seed(0)  # DDPM draws fresh noise at every step: the same draws for every variant
        return p.diffusion.generate_actions(b, noise=noise.to(next(p.parameters()).dtype))

    return policy, batch, generate


def _half(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.half() if v.is_floating_point() else v for k, v in batch.items()}


def _measure(name: str, build: Callable, iterations: int, out_dir: Path) -> dict[str, Any]:
    figures: dict[str, Any] = {"policy": name}
    policy, batch, forward = build("cuda")
    figures["parameters_m"] = round(sum(p.numel() for p in policy.parameters()) / 1e6, 2)
    with torch.inference_mode():
        reference = forward(policy, batch).float()
        figures["eager_cuda_fp32"] = _timed(lambda: forward(policy, batch), iterations, sync=True)
        try:
            half = policy.half()
            half_batch = _half(batch)
            actions = forward(half, half_batch).float()
            figures["eager_cuda_fp16"] = _timed(lambda: forward(half, half_batch), iterations, sync=True)
            figures["fp16_max_abs_action_error"] = float((actions - reference).abs().max())
            figures["fp16_relative_l2"] = float((actions - reference).norm() / reference.norm())
        except Exception as exc:  # a dtype mismatch is a finding to print, not a crash
            figures["eager_cuda_fp16"] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        policy.float()
        with torch.autocast(device_type="cuda", dtype=torch.float16):  # fp16 kernels, fp32 where unsafe
            actions = forward(policy, batch).float()
            figures["autocast_cuda_fp16"] = _timed(lambda: forward(policy, batch), iterations, sync=True)
        figures["autocast_fp16_max_abs_action_error"] = float((actions - reference).abs().max())
        figures["autocast_fp16_relative_l2"] = float((actions - reference).norm() / reference.norm())
    figures["cuda_graph_fp32"] = _cuda_graph(policy, batch, forward, iterations)
    if name == "act":
        figures.update(_onnx_figures(policy, batch, out_dir, iterations))
    return figures


def _cuda_graph(policy: torch.nn.Module, batch: dict, forward: Callable, iterations: int) -> Any:
    """Capture one forward in a CUDA graph and time its replay (launch overhead gone)."""
    try:
        static = {k: v.clone() for k, v in batch.items()}
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.inference_mode(), torch.cuda.stream(stream):
            for _ in range(3):
                forward(policy, static)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            forward(policy, static)
        return _timed(graph.replay, iterations, sync=True)
    except Exception as exc:
        return f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"


def _onnx_figures(policy: torch.nn.Module, batch: dict, out_dir: Path, iterations: int) -> dict[str, Any]:
    """Export ACT's chunk forward to ONNX and time it in ONNX Runtime on each provider that imports."""
    figures: dict[str, Any] = {}

    class Chunk(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, state: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
            return self.inner.predict_action_chunk(
                {"observation.state": state, "observation.images.top": image}
            )

    cpu_policy = policy.to("cpu")
    args = (batch["observation.state"].cpu(), batch["observation.images.top"].cpu())
    path = out_dir / "act.onnx"
    torch.onnx.export(
        Chunk(cpu_policy),
        args,
        str(path),
        input_names=["state", "image"],
        output_names=["actions"],
        dynamo=False,
        opset_version=17,
    )
    policy.to("cuda")
    try:
        import onnxruntime as ort
    except ImportError:
        return {"onnxruntime": "not importable here"}
    feeds = {"state": args[0].numpy(), "image": args[1].numpy()}
    available = ort.get_available_providers()
    figures["onnxruntime_providers"] = available
    for provider in ("CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"):
        if provider not in available:
            figures[f"ort_{provider}"] = "provider not available in this onnxruntime build"
            continue
        session = ort.InferenceSession(str(path), providers=[provider])
        figures[f"ort_{provider}"] = _timed(lambda: session.run(None, feeds), iterations, sync=False)
    try:
        import tensorrt  # noqa: F401

        figures["tensorrt"] = "importable; engine build not scripted here"
    except ImportError:
        figures["tensorrt"] = "the tensorrt package is not installed on this machine"
    return figures


def main() -> None:
    """Measure both policies and print one JSON document (also written to --out)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--iterations", type=int, default=200)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this script measures GPU latency")
    _import_lerobot_policies()
    machine = {
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cpu_threads": os.cpu_count(),
        "python": platform.python_version(),
    }
    results = {"machine": machine, "policies": []}
    with tempfile.TemporaryDirectory() as tmp:
        # Diffusion's 100 denoising steps make one call ~100x an ACT call: a tenth of the iterations.
        for name, build, iterations in (
            ("act", _act, args.iterations),
            ("diffusion", _diffusion, max(10, args.iterations // 10)),
        ):
            results["policies"].append(_measure(name, build, iterations, Path(tmp)))
            print(json.dumps(results["policies"][-1], indent=1), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    print(json.dumps(machine))


if __name__ == "__main__":
    main()
