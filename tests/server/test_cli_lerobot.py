"""A LeRobot policy directory end to end, as a user runs it: `robopt analyze`, `robopt optimize` to a goal, the
ONNX artifact loaded back in ONNX Runtime against LeRobot's own policy, and an archive upload over HTTP."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.server.api_support import server_env, start_server, upload_model

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def _robopt(data_dir: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "ROBOPT_LLM_API_KEY")}
    env.update({"ROBOPT_DATA_DIR": str(data_dir), "ROBOPT_LATENCY_ITERATIONS": "20", "PYTHONPATH": str(REPO)})
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _assert_onnx_matches_policy(artifact: Path, policy_dir: Path, atol: float) -> None:
    """The artifact takes LeRobot's observations by their ONNX-safe names and returns the same action chunk."""
    import onnxruntime as ort

    from tools.intake import load_model

    loaded = load_model(policy_dir, data_dir=artifact.parent / "reload")
    session = ort.InferenceSession(str(artifact), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [s.name for s in loaded.input_specs]
    generator = torch.Generator().manual_seed(7)
    for batch in (1, 3):  # held-out raw observations, images in [0, 1], at more than one batch size
        feeds = {s.name: torch.rand((batch, *s.shape[1:]), generator=generator) for s in loaded.input_specs}
        (actions,) = session.run(None, {k: v.numpy() for k, v in feeds.items()})
        with torch.no_grad():
            expected = loaded.module(**feeds).numpy()
        facts = loaded.metadata["policy"]
        assert actions.shape == (batch, facts["chunk_size"], facts["action_dim"])
        scale = float(np.abs(expected).max())
        assert float(np.abs(actions - expected).max()) <= atol * max(scale, 1.0)


def _lerobot_observations(policy_dir: Path, path: Path, count: int = 32) -> Path:
    """Observations as a LeRobot user has them: arrays under LeRobot's feature keys (`observation.state`), one
    frame each (no `n_obs_steps` history), images in [0, 1]."""
    from tools.intake import load_model

    loaded = load_model(policy_dir, data_dir=path.parent / "spec")
    facts = loaded.metadata["policy"]
    generator = torch.Generator().manual_seed(11)
    arrays = {}
    for spec in loaded.input_specs:
        shape = spec.shape[2:] if facts["n_obs_steps"] > 1 else spec.shape[1:]
        arrays[facts["input_names"][spec.name]] = torch.rand((count, *shape), generator=generator).numpy()
    np.savez(path, **arrays)
    return path


def _report_notes(data_dir: Path) -> list[str]:
    import json

    (report,) = (data_dir / "reports").glob("*/report.json")
    return json.loads(report.read_text())["notes"]


def test_act_directory_is_analyzed_and_optimized_to_a_speed_goal(
    lerobot_act_dir: Path, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    analyzed = _robopt(data_dir, "analyze", str(lerobot_act_dir))
    assert analyzed.returncode == 0, analyzed.stderr[-2000:]
    assert "lerobot_policy" in analyzed.stdout and "Visual policy" in analyzed.stdout
    assert "vision_tower" in analyzed.stdout and "language" not in analyzed.stdout

    out = tmp_path / "out"
    goal = "at least 1.5x faster, keep accuracy within 5%"
    observations = _lerobot_observations(lerobot_act_dir, tmp_path / "obs.npz")  # LeRobot's own keys
    run = _robopt(
        data_dir, "optimize", str(lerobot_act_dir), "--goal", goal, "--max-attempts", "3", "--out", str(out),
        "--data", str(observations),
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "GOAL MET" in run.stdout.upper()
    assert any(
        "'observation.state' feeds input 'observation_state'" in note for note in _report_notes(data_dir)
    )
    artifact = out / "model.onnx"
    assert artifact.is_file()
    _assert_onnx_matches_policy(artifact, lerobot_act_dir, atol=0.05)


def test_diffusion_directory_is_optimized_to_a_speed_goal(
    lerobot_diffusion_ddim_dir: Path, tmp_path: Path
) -> None:
    """The export gives about 1.3x on this 3-step policy, so the goal asks 1.1x (a 1.3x limit failed at 1.297x on
    a loaded machine). Single frames are stacked for every version: the exported ONNX carries the policy's
    history, so INT8 on it calibrates on stacked frames (it failed with an input_spec_error before)."""
    import json

    from tools.versions import VersionStore

    out, data_dir = tmp_path / "out", tmp_path / "data"
    goal = "at least 1.1x faster, keep accuracy within 5%"
    frames = _lerobot_observations(lerobot_diffusion_ddim_dir, tmp_path / "frames.npz")  # one frame each
    run = _robopt(
        data_dir, "optimize", str(lerobot_diffusion_ddim_dir), "--goal", goal, "--max-attempts", "3",
        "--out", str(out), "--data", str(frames),
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "GOAL MET" in run.stdout.upper()
    (report_path,) = (data_dir / "reports").glob("*/report.json")
    report = json.loads(report_path.read_text())
    assert any("history of 2 copies" in note for note in report["notes"]), report["notes"]
    attempts = [a for a in report["attempts"] if a["technique"] != "original"]
    assert (attempts[0]["technique"], attempts[0]["status"]) == ("onnx_export", "accepted"), attempts[0]
    assert len(attempts) >= 2 and all(a["status"] != "failed" for a in attempts), [
        a["reason"] for a in attempts
    ]
    stored = VersionStore(data_dir / "versions").artifact_path(
        report_path.parent.name, attempts[0]["measurement"]["version_id"]
    )
    exported = tmp_path / "exported" / stored.name
    exported.parent.mkdir()
    shutil.copyfile(stored, exported)  # checked outside the store, which stays as robopt left it
    _assert_onnx_matches_policy(exported, lerobot_diffusion_ddim_dir, atol=0.05)


def test_act_directory_uploaded_as_an_archive_is_profiled_and_takes_lerobot_keyed_data(
    lerobot_act_dir: Path, tmp_path: Path
) -> None:
    archive = tmp_path / "act_policy.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(lerobot_act_dir, arcname="act_policy")
    server = start_server(server_env(tmp_path / "data"), tmp_path / "server.log")
    try:
        with server.client() as client:
            answer = upload_model(client, archive)
            assert answer["format"] == "lerobot_policy", answer
            from tools.intake import load_model

            module = load_model(lerobot_act_dir, data_dir=tmp_path / "local").module
            assert answer["params"] == sum(p.numel() for p in module.parameters())
            listed = client.get(f"/models/{answer['id']}").json()
            assert listed["format"] == "lerobot_policy"
            # A dataset under LeRobot's feature keys feeds the policy's inputs; a missing key names both spellings.
            observations = _lerobot_observations(lerobot_act_dir, tmp_path / "obs.npz")
            uploaded = client.post("/datasets", files={"file": ("obs.npz", observations.read_bytes())})
            assert uploaded.status_code == 201, uploaded.text
            goal = "at least 2x smaller, keep accuracy within 5%"
            job = {"model_id": answer["id"], "goal": goal, "max_attempts": 1}
            accepted = client.post("/jobs", json={**job, "dataset_id": uploaded.json()["id"]})
            assert accepted.status_code == 202, accepted.text
            client.post(f"/jobs/{accepted.json()['job']['id']}/cancel")
            np.savez(
                tmp_path / "partial.npz", **{"observation.state": np.load(observations)["observation.state"]}
            )
            partial = client.post(
                "/datasets", files={"file": ("partial.npz", (tmp_path / "partial.npz").read_bytes())}
            )
            refused = client.post("/jobs", json={**job, "dataset_id": partial.json()["id"]})
            assert refused.status_code == 422, refused.text
            message = refused.json()["message"]
            assert "'observation.images.top' (or 'observation_images_top')" in message, message
    finally:
        server.stop()


def test_ddpm_diffusion_directory_is_optimized_to_its_sampler_export(
    lerobot_diffusion_dir: Path, tmp_path: Path
) -> None:
    """DDPM draws noise at every step, so no whole graph exports: the loop plans the sampler export, whose
    runner directory is measured end to end, reaches the goal, and runs alone with the policy's actions."""
    from tools.intake import load_model
    from tools.lerobot.sampler import DiffusionOnnxRunner
    from tools.lerobot.sampler_module import SamplerRunnerModule

    out = tmp_path / "out"
    goal = "at least 1.2x faster, keep accuracy within 5%"
    run = _robopt(
        tmp_path / "data", "optimize", str(lerobot_diffusion_dir), "--goal", goal, "--max-attempts", "3",
        "--out", str(out),
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "GOAL MET" in run.stdout.upper(), run.stdout[-3000:]
    runner_dir = out / "sampler"  # the version's artifact is the runner directory
    assert f"artifact: {runner_dir}" in run.stdout
    assert {"encoder.onnx", "denoiser.onnx", "runner.json"} <= {p.name for p in runner_dir.iterdir()}
    policy = load_model(lerobot_diffusion_dir, data_dir=tmp_path / "reload")
    exported = SamplerRunnerModule(runner_dir)
    generator = torch.Generator().manual_seed(7)
    for batch in (1, 3):  # held-out raw observations; the module keeps the policy's noise, so actions match
        feeds = {s.name: torch.rand((batch, *s.shape[1:]), generator=generator) for s in policy.input_specs}
        with torch.no_grad():
            expected = policy.module(**feeds).numpy()
        actions = exported(**feeds).numpy()
        assert actions.shape == expected.shape
        assert float(np.abs(actions - expected).max()) <= 0.01 * max(float(np.abs(expected).max()), 1.0)
    standalone = DiffusionOnnxRunner(runner_dir)(  # numpy + ONNX Runtime only, its own noise
        {name: value.numpy() for name, value in feeds.items()}, seed=3
    )
    facts = policy.metadata["policy"]
    assert standalone.shape == (3, facts["n_action_steps"], facts["action_dim"])
    assert np.isfinite(standalone).all()


@pytest.mark.parametrize(
    ("simulator", "policy_type", "shape"),
    [("aloha:fast:steps=20", "act", dict(state_dim=14, action_dim=14, image_shape=(3, 48, 64))),
     ("pusht:steps=20", "diffusion", dict(state_dim=2, action_dim=2, image_shape=(3, 32, 32)))],
)  # fmt: skip
def test_a_lerobot_directory_is_judged_in_its_simulator_over_the_cli(
    simulator: str, policy_type: str, shape: dict, tmp_path: Path
) -> None:
    """`robopt optimize DIR --sim aloha:fast` / `--sim pusht` (episodes cut to 20 steps): every version is judged
    by closed-loop action agreement with the original on the same seeded episodes."""
    pytest.importorskip("gym_pusht", reason="the sim extra is not installed")
    from tests.lerobot_zoo import write_tiny_act, write_tiny_diffusion

    if policy_type == "act":
        policy = write_tiny_act(tmp_path / "act", **shape)
    else:
        policy = write_tiny_diffusion(
            tmp_path / "diffusion", noise_scheduler_type="DDIM", num_inference_steps=3, **shape
        )
    data_dir = tmp_path / "data"
    run = _robopt(
        data_dir, "optimize", str(policy), "--sim", simulator, "--episodes", "2", "--max-attempts", "1",
        "--goal", "at least 2x smaller, keep accuracy within 5%",
    )  # fmt: skip
    assert run.returncode in (0, 3), run.stdout[-3000:] + run.stderr[-2000:]  # met, or best effort
    import json

    (report_path,) = (data_dir / "reports").glob("*/report.json")
    report = json.loads(report_path.read_text())
    baseline = report["baseline"]["accuracy"]
    assert baseline["level"] == "closed_loop_agreement" and baseline["metric"] == "action_agreement"
    assert baseline["value"] == pytest.approx(1.0)  # the original agrees with itself exactly
    assert (
        report["attempts"]
        and report["attempts"][0]["measurement"]["accuracy"]["level"] == "closed_loop_agreement"
    )
