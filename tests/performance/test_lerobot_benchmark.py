"""Benchmark: LeRobot's ACT and Diffusion Policy at their default sizes (random weights), eager fp32 against ONNX
fp32 and against what `robopt optimize` delivers, with parity and the time robopt took (never fails on timing).

Cameras: ACT one 3x224x224 camera and a 14-d state (ALOHA-like, images downscaled to keep the run short);
Diffusion Policy one 3x96x96 camera and a 2-d state (PushT), 100 DDPM steps as LeRobot's defaults say.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

pytestmark = [pytest.mark.performance, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
GOAL = "at least 2x faster, keep accuracy within 5%"


def _write_default_policy(policy_type: str, directory: Path) -> Path:
    """LeRobot's default config for the type (no backbone download), saved as LeRobot saves it."""
    from tests.lerobot_zoo import write_policy

    image, state = ((3, 224, 224), 14) if policy_type == "act" else ((3, 96, 96), 2)
    return write_policy(
        policy_type,
        directory,
        image_shape=image,
        state_dim=state,
        action_dim=state,
        pretrained_backbone_weights=None,
    )


def _p50_ms(run: Any, iterations: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(iterations):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def _eager_and_onnx(directory: Path, work: Path, iterations: int) -> dict[str, Any]:
    import onnxruntime as ort

    from tools.compression.onnx_export import export_to_onnx
    from tools.intake import load_model

    loaded = load_model(directory, data_dir=work / "data")
    feeds = {
        s.name: torch.rand(s.shape, generator=torch.Generator().manual_seed(3)) for s in loaded.input_specs
    }
    torch.set_num_threads(1)
    with torch.no_grad():
        eager_ms = _p50_ms(lambda: loaded.module(**feeds), iterations)
        expected = loaded.module(**feeds)
    row: dict[str, Any] = {
        "params_m": sum(p.numel() for p in loaded.module.parameters()) / 1e6,
        "eager_ms": eager_ms,
    }
    if getattr(loaded.module.policy.config, "noise_scheduler_type", "") == "DDPM":
        row["onnx_error"] = "DDPM draws noise at every step: the whole path does not export with parity"
        return row
    try:
        started = time.perf_counter()
        path = export_to_onnx(loaded.module, loaded.input_specs, work / "fp32.onnx")
        row["export_s"] = time.perf_counter() - started
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        numpy_feeds = {k: v.numpy() for k, v in feeds.items()}
        row["onnx_ms"] = _p50_ms(lambda: session.run(None, numpy_feeds), iterations)
        row["onnx_mb"] = path.stat().st_size / 2**20
        row["onnx_max_abs"] = float(
            (torch.from_numpy(session.run(None, numpy_feeds)[0]) - expected).abs().max()
        )
    except Exception as exc:  # noqa: BLE001 - print why the whole path does not export, keep benchmarking
        row["onnx_error"] = str(exc).splitlines()[0][:160]
    return row


def _robopt(directory: Path, work: Path, attempts: int, budget_s: int, cap_s: int) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "ROBOPT_LLM_API_KEY")}
    env.update(
        {"ROBOPT_DATA_DIR": str(work / "robopt"), "ROBOPT_LATENCY_ITERATIONS": "10", "PYTHONPATH": str(REPO)}
    )
    out = work / "out"
    command = [sys.executable, "-m", "server.cli", "optimize", str(directory), "--goal", GOAL]
    command += ["--max-attempts", str(attempts), "--time-budget", str(budget_s), "--out", str(out)]
    started = time.perf_counter()
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=cap_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the CLI and the children it started
        process.communicate()
        return {"robopt_s": time.perf_counter() - started, "robopt_error": f"did not finish in {cap_s} s"}
    row: dict[str, Any] = {"robopt_s": time.perf_counter() - started, "exit": process.returncode}
    report_path = out / "report.json"
    if not report_path.is_file():
        row["robopt_error"] = (stderr or stdout).strip().splitlines()[-1:]
        return row
    report = json.loads(report_path.read_text())
    final = report["final"]
    details = (final.get("accuracy") or {}).get("details") or {}
    row.update(
        {
            "version": f"{final['version_id']} ({final.get('technique') or 'original'})",
            "robopt_ms": (final.get("runtime") or {}).get("p50_ms"),
            "robopt_mb": (final.get("size") or {}).get("artifact_mb"),
            "parity_max_abs": details.get("max_abs_error"),
            "parity_rel_l2": details.get("max_relative_l2"),
            "goal_met": report.get("goal_met"),
        }
    )
    return row


def _print(policy_type: str, row: dict[str, Any]) -> None:
    print(f"\nLeRobot {policy_type} at default size (batch 1, 1 thread, this machine):")
    for key, value in row.items():
        print(f"  {key:16s} {value:.3f}" if isinstance(value, float) else f"  {key:16s} {value}")


@pytest.mark.parametrize(
    ("policy_type", "iterations", "attempts", "budget_s", "cap_s"),
    [("act", 10, 3, 360, 450), ("diffusion", 2, 1, 60, 150)],
)
def test_lerobot_policy_at_default_size_prints_figures(
    policy_type: str, iterations: int, attempts: int, budget_s: int, cap_s: int, tmp_path: Path
) -> None:
    pytest.importorskip("lerobot", reason="the lerobot extra is not installed")
    started = time.perf_counter()
    directory = _write_default_policy(policy_type, tmp_path / policy_type)
    row = {"build_s": time.perf_counter() - started, **_eager_and_onnx(directory, tmp_path, iterations)}
    _print(policy_type, row)  # printed before robopt runs, which a default-size Diffusion Policy may outlast
    robopt = _robopt(directory, tmp_path, attempts, budget_s, cap_s)
    _print(f"{policy_type}: robopt optimize --goal '{GOAL}'", robopt)
    assert row["eager_ms"] > 0
