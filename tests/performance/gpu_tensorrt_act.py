"""ACT on a GPU: TensorRT fp32/fp16 engines from robopt's exported ONNX vs ONNX Runtime CUDA vs eager CUDA.

Not collected by pytest and never imported by robopt: run it by hand on a machine with an NVIDIA GPU,

    python tests/performance/gpu_tensorrt_act.py --onnx act_export/policy.onnx [--lerobot-dir act_dir]

where `act_export/` comes from `tools.lerobot.export.export_policy_onnx` (it reads `export.json` beside the
graph for the input shapes) and `--lerobot-dir` is the LeRobot directory for the eager CUDA baseline.
Needs `pip install tensorrt` (the PyPI package, CUDA 12 or 13 build matching the driver) and, for the ORT
column, `onnxruntime-gpu`; a missing one is reported and its column skipped. Prints one line per runtime:
p50 / p95 latency at batch 1, and the action error of each engine against ONNX Runtime CPU fp32.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np


def _timed(call: Callable[[], Any], sync: Callable[[], None], warmup: int, runs: int) -> tuple[float, float]:
    for _ in range(warmup):
        call()
    sync()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        sync()
        times.append((time.perf_counter() - started) * 1000.0)
    times.sort()
    return statistics.median(times), times[int(0.95 * (len(times) - 1))]


def _inputs(onnx_path: Path, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    manifest = json.loads((onnx_path.parent / "export.json").read_text())
    rng = np.random.default_rng(seed)
    found = {}
    for spec in manifest["inputs"]:
        shape = (batch, *spec["shape"][1:])
        found[spec["name"]] = (rng.random(shape) if len(shape) >= 4 else rng.standard_normal(shape)).astype(
            np.float32
        )
    return found


def build_engine(onnx_path: Path, fp16: bool, inputs: dict[str, np.ndarray]) -> Any:
    """A TensorRT engine for the graph with an optimization profile at the inputs' shapes."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError("TensorRT could not parse the graph: " + "; ".join(errors))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 4 << 30)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for name, array in inputs.items():
        profile.set_shape(name, array.shape, array.shape, array.shape)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the engine")
    return trt.Runtime(logger).deserialize_cuda_engine(serialized)


def trt_runner(
    engine: Any, inputs: dict[str, np.ndarray]
) -> tuple[Callable[[], Any], Callable[[], np.ndarray]]:
    """A call that runs the engine on device buffers (torch CUDA tensors) and a getter for its action."""
    import tensorrt as trt
    import torch

    context = engine.create_execution_context()
    buffers = {}
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            context.set_input_shape(name, inputs[name].shape)
            buffers[name] = torch.from_numpy(inputs[name]).cuda()
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
            dtype = torch.float16 if engine.get_tensor_dtype(name) == trt.DataType.HALF else torch.float32
            buffers[name] = torch.empty(tuple(context.get_tensor_shape(name)), dtype=dtype, device="cuda")
    for name, tensor in buffers.items():
        context.set_tensor_address(name, tensor.data_ptr())
    stream = torch.cuda.current_stream().cuda_stream
    outputs = [n for n in buffers if n not in inputs]
    return (lambda: context.execute_async_v3(stream)), (lambda: buffers[outputs[0]].float().cpu().numpy())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, required=True, help="policy.onnx written by export_policy_onnx")
    parser.add_argument("--lerobot-dir", type=Path, default=None, help="LeRobot ACT directory (eager CUDA)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()

    import onnxruntime as ort
    import torch

    inputs = _inputs(args.onnx, batch=1)
    reference = ort.InferenceSession(str(args.onnx), providers=["CPUExecutionProvider"]).run(None, inputs)[0]
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    print(f"ACT {args.onnx} on {device}; batch 1; {args.runs} runs after {args.warmup} warm-up")
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    rows: list[tuple[str, float, float, float]] = []

    def record(name: str, call: Callable[[], Any], result: Callable[[], np.ndarray]) -> None:
        p50, p95 = _timed(call, sync, args.warmup, args.runs)
        error = float(np.abs(result() - reference).max())
        rms = float(np.sqrt(np.mean((result() - reference) ** 2)) / (np.sqrt(np.mean(reference**2)) + 1e-12))
        rows.append((name, p50, p95, error))
        print(f"{name:24s} p50 {p50:8.3f} ms  p95 {p95:8.3f} ms  max|err| {error:.3g}  rel RMS {rms:.3%}")

    cpu = ort.InferenceSession(str(args.onnx), providers=["CPUExecutionProvider"])
    record("onnxruntime cpu fp32", lambda: cpu.run(None, inputs), lambda: cpu.run(None, inputs)[0])
    if "CUDAExecutionProvider" in ort.get_available_providers():
        cuda = ort.InferenceSession(str(args.onnx), providers=["CUDAExecutionProvider"])
        record("onnxruntime cuda fp32", lambda: cuda.run(None, inputs), lambda: cuda.run(None, inputs)[0])
    else:
        print("onnxruntime cuda: skipped (install onnxruntime-gpu)")
    if args.lerobot_dir is not None and torch.cuda.is_available():
        from tools.lerobot.export import load_policy_module

        module = load_policy_module(args.lerobot_dir).cuda().eval()
        tensors = [torch.from_numpy(inputs[name]).cuda() for name in module.input_names]
        for dtype in (torch.float32, torch.float16):
            model = module.to(dtype)
            cast = [t.to(dtype) for t in tensors]
            try:
                with torch.inference_mode():
                    record(
                        f"eager cuda {str(dtype)[6:]}",
                        lambda: model(*cast),
                        lambda: model(*cast).float().cpu().numpy(),
                    )
            except RuntimeError as exc:  # LeRobot's policies are not all fp16-clean in eager mode
                print(f"eager cuda {str(dtype)[6:]}: failed: {str(exc).splitlines()[0]}")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        print("tensorrt: skipped (pip install tensorrt)")
        return 0
    for fp16 in (False, True):
        started = time.perf_counter()
        engine = build_engine(args.onnx, fp16, inputs)
        built = time.perf_counter() - started
        call, result = trt_runner(engine, inputs)
        record(f"tensorrt {'fp16' if fp16 else 'fp32'} (built {built:.0f} s)", call, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
