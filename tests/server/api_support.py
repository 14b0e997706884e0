"""A real robopt HTTP service for tests: `robopt serve` (or `uvicorn server.main:app`) on 127.0.0.1 in a child
process with its own data dir, plus an SSE reader and a model worth optimizing."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import httpx
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[2]
API = "/api/v1"
STARTUP_S = 90.0


def free_port() -> int:
    """A port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_env(data_dir: Path, reference_cache: Path | None = None, **settings: Any) -> dict[str, str]:
    """The environment of a test server: its data dir, no LLM key, and the given ROBOPT_* settings."""
    dropped = ("OPENAI_API_KEY", "ROBOPT_LLM_API_KEY", "ROBOPT_API_KEY")
    env = {name: value for name, value in os.environ.items() if name not in dropped}
    env.update(
        {"ROBOPT_DATA_DIR": str(data_dir), "ROBOPT_LATENCY_ITERATIONS": "20", "ROBOPT_LOG_LEVEL": "INFO"}
    )
    if reference_cache is not None:
        env["ROBOPT_REFERENCE_CACHE_DIR"] = str(reference_cache)
    env.update({f"ROBOPT_{name.upper()}": str(value) for name, value in settings.items()})
    return env


@dataclass
class Server:
    """A running service: its URL, process and log file."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str]
    headers: dict[str, str] = field(default_factory=dict)

    def client(self, **kwargs: Any) -> httpx.Client:
        """An HTTP client for the API (with the server's key, when it has one)."""
        return httpx.Client(base_url=self.url + API, headers=self.headers, timeout=120, **kwargs)

    def kill(self) -> None:
        """Kill the server and every process it started (as a power cut would)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        """Stop the server the way an operator does (SIGTERM), killing it if it hangs."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 40) -> str:
        """The end of the server's log, for failure messages."""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def start_server(
    env: dict[str, str], log: Path, *, uvicorn_cli: bool = False, api_key: str | None = None
) -> Server:
    """Start `robopt serve` (or `uvicorn server.main:app`) on a free loopback port and wait for /health."""
    port = free_port()
    if uvicorn_cli:
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "server.main:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
    else:
        command = [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    if api_key is not None:
        env = {**env, "ROBOPT_API_KEY": api_key}
    handle = log.open("ab")
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
    )
    server = Server(
        url=f"http://127.0.0.1:{port}",
        process=process,
        log=log,
        env=env,
        headers={"Authorization": f"Bearer {api_key}"} if api_key else {},
    )
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log_tail()}")
        try:
            if httpx.get(f"{server.url}{API}/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.kill()
    raise RuntimeError(f"server did not answer /health in {STARTUP_S} s:\n{server.log_tail()}")


def read_sse(response: httpx.Response, limit: int | None = None) -> Iterator[dict[str, Any]]:
    """Parse a `text/event-stream` response into events (id, event, data as JSON); stop after `limit`."""
    fields: dict[str, str] = {}
    count = 0
    for line in response.iter_lines():
        if line == "":
            if "data" in fields:
                event = json.loads(fields["data"])
                assert str(event["seq"]) == fields.get("id"), "the SSE id must be the event's seq"
                assert event["type"] == fields.get("event"), "the SSE event name must be the event's type"
                yield event
                count += 1
                if limit is not None and count >= limit:
                    return
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value


def follow_job(
    server: Server, job_id: str, after: int | None = None, timeout: float = 300
) -> list[dict[str, Any]]:
    """Every event of the job (after `after`) over SSE, until its stream ends."""
    headers = {**server.headers}
    if after is not None:
        headers["Last-Event-ID"] = str(after)
    with httpx.stream(
        "GET", f"{server.url}{API}/jobs/{job_id}/events", headers=headers, timeout=timeout
    ) as response:
        assert response.status_code == 200, response.read()
        return list(read_sse(response))


def complete_event(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The stream's one `complete` event; only the job's closing checkpoint may follow it (the stream ends after
    the job's last event, not at `complete`)."""
    indices = [i for i, event in enumerate(events) if event["type"] == "complete"]
    assert len(indices) == 1, [event["type"] for event in events]
    assert all(event["type"] == "checkpoint" for event in events[indices[0] + 1 :]), events[indices[0] :]
    return events[indices[0]]


def wait_for_status(
    client: httpx.Client, job_id: str, statuses: set[str], timeout: float = 300
) -> dict[str, Any]:
    """Poll the job until its status is one of `statuses`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        time.sleep(0.25)
    raise AssertionError(f"job {job_id} did not reach {statuses}; last: {job['status']}")


class WideMLP(nn.Module):
    """A 1.3M-parameter policy MLP: big enough that INT8 quantization makes it clearly smaller."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(64, 768), nn.ReLU(), nn.Linear(768, 768), nn.ReLU(), nn.Linear(768, 8)
        )

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.net(state)


def write_policy_onnx(path: Path, seed: int = 0) -> tuple[Path, int]:
    """Export a seeded WideMLP to ONNX; return the path and its parameter count."""
    torch.manual_seed(seed)
    model = WideMLP().eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model, (torch.randn(1, 64),), str(path), input_names=["state"], output_names=["action"], dynamo=False
    )
    return path, sum(p.numel() for p in model.parameters())


def upload_model(client: httpx.Client, path: Path, name: str | None = None, **options: Any) -> dict[str, Any]:
    """POST /models with the file (and options); return the answer's JSON, asserting 201."""
    data = {"name": name or path.name}
    if options:
        data["options"] = json.dumps(options)
    with path.open("rb") as handle:
        response = client.post("/models", files={"file": (path.name, handle)}, data=data)
    assert response.status_code == 201, response.text
    return response.json()
