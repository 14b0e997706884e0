"""A LeRobotDataset as a job's data, as a user gives it: `robopt optimize POLICY --data DATASET_DIR` judges the
policy on action error against the recorded actions of held-out episodes; the same over HTTP from an archive.
"""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest

from tests.server.api_support import server_env, start_server, upload_model, wait_for_status
from tests.server.test_cli_lerobot import _robopt

pytestmark = pytest.mark.integration
GOAL = "at least 2x smaller, keep action MSE within 5%"


def _report(data_dir: Path) -> dict:
    (report,) = (data_dir / "reports").glob("*/report.json")
    return json.loads(report.read_text())


def test_optimize_with_a_lerobot_dataset_judges_action_error_on_held_out_episodes(
    lerobot_act_dir: Path, lerobot_dataset_dir: Path, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    run = _robopt(
        data_dir, "optimize", str(lerobot_act_dir), "--goal", GOAL, "--max-attempts", "2",
        "--out", str(tmp_path / "out"), "--data", str(lerobot_dataset_dir),
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    report = _report(data_dir)
    text = json.dumps(report)
    assert "action_mse" in text and '"task"' in text, text[:3000]
    assert "max_accuracy_drop" in text  # judged against the original's own action error on the held-out part
    notes = report["notes"]
    assert any("held-out acceptance on episodes [3]" in note for note in notes), notes
    assert any("calibration and search on episodes [0, 1, 2]" in note for note in notes), notes
    assert "held-out acceptance on episodes [3]" in (tmp_path / "out" / "report.md").read_text()


def test_a_directory_that_is_not_a_lerobot_dataset_exits_2_saying_so(
    lerobot_act_dir: Path, tmp_path: Path
) -> None:
    run = _robopt(
        tmp_path / "data", "optimize", str(lerobot_act_dir), "--goal", GOAL, "--data", str(tmp_path)
    )
    assert run.returncode == 2, run.stdout[-2000:] + run.stderr[-2000:]
    assert "not a LeRobotDataset: it has no meta/info.json" in run.stdout + run.stderr


def test_a_lerobot_dataset_uploaded_as_an_archive_feeds_a_job_over_http(
    lerobot_act_dir: Path, lerobot_dataset_dir: Path, tmp_path: Path
) -> None:
    policy_archive, data_archive = tmp_path / "act_policy.tar.gz", tmp_path / "pick_cube.tar.gz"
    with tarfile.open(policy_archive, "w:gz") as tar:
        tar.add(lerobot_act_dir, arcname="act_policy")
    with tarfile.open(data_archive, "w:gz") as tar:
        tar.add(lerobot_dataset_dir, arcname="pick_cube")
    data_dir = tmp_path / "data"
    server = start_server(server_env(data_dir, latency_iterations=5), tmp_path / "server.log")
    try:
        with server.client() as client:
            model = upload_model(client, policy_archive)
            uploaded = client.post(
                "/datasets", files={"file": (data_archive.name, data_archive.read_bytes())}
            )
            assert uploaded.status_code == 201, uploaded.text
            dataset = uploaded.json()
            assert dataset["kind"] == "lerobot" and dataset["episodes"] == 4 and dataset["has_labels"]
            assert dataset["arrays"]["observation.state"] == [6]
            unpacked = list((data_dir / "datasets" / dataset["id"]).rglob("info.json"))
            assert [path.parent.parent.name for path in unpacked] == [
                "pick_cube"
            ]  # inside the dataset folder
            job = {"model_id": model["id"], "goal": GOAL, "max_attempts": 1, "dataset_id": dataset["id"]}
            accepted = client.post("/jobs", json=job)
            assert accepted.status_code == 202, accepted.text
            job_id = accepted.json()["job"]["id"]
            ended = wait_for_status(client, job_id, {"succeeded", "best_effort", "failed"}, timeout=600)
            assert ended["status"] == "succeeded", ended
            report = client.get(f"/jobs/{job_id}/report").json()
            text = json.dumps(report)
            assert "action_mse" in text, text[:2000]
            assert any("held-out acceptance on episodes [3]" in note for note in report["notes"])
            not_a_dataset = tmp_path / "empty.tar.gz"
            with tarfile.open(not_a_dataset, "w:gz") as tar:
                tar.add(lerobot_act_dir, arcname="act_policy")  # a policy, not a dataset
            refused = client.post(
                "/datasets", files={"file": (not_a_dataset.name, not_a_dataset.read_bytes())}
            )
            assert refused.status_code == 422, refused.text
            assert "not a LeRobotDataset" in refused.json()["message"]
            zipped = Path(shutil.make_archive(str(tmp_path / "pick_cube"), "zip", lerobot_dataset_dir.parent,
                                              lerobot_dataset_dir.name))  # fmt: skip
            as_zip = client.post("/datasets", files={"file": (zipped.name, zipped.read_bytes())})
            assert as_zip.status_code == 201, as_zip.text
            same = as_zip.json()
            assert (same["kind"], same["episodes"], same["has_labels"]) == ("lerobot", 4, True)
            assert same["arrays"] == dataset["arrays"] and same["id"] != dataset["id"]
    finally:
        server.stop()
