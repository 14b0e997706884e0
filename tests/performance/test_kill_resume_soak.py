"""Benchmark (issue 16): a kill-and-resume soak. One job on a real `robopt serve`; the service is SIGKILLed (its
whole process group, as a power cut would) at ten different moments of the job and restarted each time. The job
must end with its goal met, one contiguous event numbering across all eleven servers, and every version it stored
verified against its sha256. Prints each kill's moment and the restart and resume times.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.server.api_support import (
    API,
    Server,
    complete_event,
    follow_job,
    read_sse,
    server_env,
    start_server,
    upload_model,
    wait_for_status,
    write_policy_onnx,
)
from tools.versions import MANIFEST, VersionStore, artifact_sha256

pytestmark = pytest.mark.performance

KILLS = 10
SCHEDULE = (
    (True, 0),
    (False, 2),
    (True, 1),
    (False, 1),
    (True, 3),
    (True, 0),
    (False, 3),
    (True, 2),
    (False, 1),
    (False, 2),
)
"""When each of the ten servers is killed: (whether it must first store a checkpoint beyond the last one seen,
then how many more of the job's own events). Five kills come after progress, five in the middle of the node a
resume restarts (a resume's 'resumed' status and its re-announced starting checkpoint are not the job's own
events); together they land at different moments: right after a checkpoint, during a node's progress, while an
attempt's child runs, at a verdict."""
GOAL = "at least 2x smaller, lose at most 1% accuracy"
MAX_ATTEMPTS = 8


@dataclass
class Kill:
    """One power cut: the last event the server streamed before it, and how long the restart took."""

    seq: int
    moment: str
    restart_s: float = 0.0


def _stream_until(
    server: Server, job_id: str, after: int, schedule: tuple[bool, int], past_step: int
) -> tuple[list[dict[str, Any]], bool, int]:
    """Stream the job's events after `after` until the kill moment `schedule` names; return them, whether the
    job's stream ended first (then nothing is to be killed), and the highest checkpoint step seen."""
    progress, extra = schedule
    seen: list[dict[str, Any]] = []
    checkpointed, own = not progress, 0
    with httpx.stream(
        "GET",
        f"{server.url}{API}/jobs/{job_id}/events",
        headers={"Last-Event-ID": str(after)},
        timeout=300,
    ) as response:
        for event in read_sse(response):
            seen.append(event)
            data = event["data"]
            step = int(data.get("step", -1)) if event["type"] == "checkpoint" else None
            if event["type"] == "status" and data.get("state") == "resumed":
                continue
            if step is not None and step <= past_step:
                continue  # the checkpoint a resume starts from, announced again
            if step is not None:
                past_step = step
            if checkpointed:
                own += 1
            elif step is not None:
                checkpointed = True  # the progress this kill waits for; `extra` events are counted after it
            else:
                continue
            if own >= extra:
                return seen, False, past_step
    return seen, True, past_step


def _moment(event: dict[str, Any]) -> str:
    """Where the job stood at an event, in words: its type and node or step."""
    data = event["data"]
    where = data.get("node") or data.get("step") or data.get("state")
    return f"{event['type']} {where}" if where is not None else event["type"]


def test_ten_power_cuts_mid_job_end_goal_met_with_every_event_and_version(tmp_path: Path) -> None:
    data_dir = tmp_path / "soak"
    env = server_env(data_dir)
    policy, _ = write_policy_onnx(tmp_path / "policy.onnx")
    started = time.monotonic()
    server = start_server(env, tmp_path / "server-00.log")
    kills: list[Kill] = []
    last_seq, past_step = 0, -2
    ended_early = False
    try:
        with server.client() as client:
            model = upload_model(client, policy)
            answer = client.post(
                "/jobs", json={"model_id": model["id"], "goal": GOAL, "max_attempts": MAX_ATTEMPTS}
            )
            assert answer.status_code == 202, answer.text
            job_id = answer.json()["job"]["id"]
        for index, moment in enumerate(SCHEDULE[:KILLS], start=1):
            seen, ended_early, past_step = _stream_until(server, job_id, last_seq, moment, past_step)
            if seen:
                last_seq = seen[-1]["seq"]
            if ended_early:
                break
            last = seen[-1]
            server.kill()
            kills.append(Kill(seq=last["seq"], moment=_moment(last)))
            restart = time.monotonic()
            server = start_server(env, tmp_path / f"server-{index:02d}.log")
            kills[-1].restart_s = time.monotonic() - restart
        events = follow_job(server, job_id, timeout=600)
        with server.client() as client:
            job = wait_for_status(client, job_id, {"succeeded", "best_effort", "failed"})
            report = client.get(f"/jobs/{job_id}/report")
    finally:
        server.stop()
    wall_s = time.monotonic() - started

    store = VersionStore(data_dir / "versions")
    versions = store.list(job_id)
    verified = [m for m in versions if artifact_sha256(store.artifact_path(job_id, m.id)) == m.sha256]
    job_dir = data_dir / "versions" / job_id
    leftovers = sorted(p.name for p in job_dir.iterdir() if p.is_dir() and not (p / MANIFEST).is_file())
    seqs = [event["seq"] for event in events]

    print(f"\nkill-and-resume soak: job {job_id}, goal {GOAL!r}, {wall_s:.1f} s in all")
    for number, kill in enumerate(kills, start=1):
        print(
            f"  kill {number:2d}: after event {kill.seq:3d} ({kill.moment}); restart to /health {kill.restart_s:.1f} s"
        )
    print(
        f"  status {job['status']}; events {len(seqs)} (1..{seqs[-1] if seqs else 0}); attempts {job['attempts_count']}"
    )
    print(
        f"  versions {len(versions)}, verified {len(verified)}; folders without a manifest: {leftovers or 'none'}"
    )

    assert not ended_early and len(kills) == KILLS, f"the job ended after {len(kills)} kills: make it longer"
    assert len({k.moment for k in kills}) >= 4, "the kills landed at different moments of the job"
    assert job["status"] == "succeeded", f"the goal is met after every resume: {job['status']}"
    assert job["goal_met"] is True and report.status_code == 200, report.text
    assert seqs == list(
        range(1, len(seqs) + 1)
    ), "one numbering across eleven servers, nothing lost or repeated"
    complete_event(events)
    # each of the eleven servers took the job up once: it started it, or resumed it from its last checkpoint
    # (or started it again when it was killed before the job's first checkpoint was stored)
    takes = [e for e in events if e["type"] == "status" and e["data"].get("state") in ("running", "resumed")]
    assert (
        len(takes) == KILLS + 1
    ), f"every server took the job up once: {[e['data']['state'] for e in takes]}"
    assert versions and len(verified) == len(versions), "every stored version matches its sha256"
    assert not [p for p in psutil.process_iter(["cmdline"]) if job_id in " ".join(p.info["cmdline"] or [])]
