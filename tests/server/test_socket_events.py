"""Job events over Socket.io against a real `robopt serve` on 127.0.0.1, with python-socketio's AsyncClient:
order and event names, resume from a seq, per-job isolation, and the API key checked on connect."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

socketio = pytest.importorskip("socketio", reason="python-socketio is not installed")
pytest.importorskip("aiohttp", reason="the Socket.io test client needs aiohttp (the dev extra)")

from graph.events import EVENT_TYPES  # noqa: E402
from tests.server.api_support import (  # noqa: E402
    Server,
    follow_job,
    server_env,
    start_server,
    upload_model,
    wait_for_status,
    write_policy_onnx,
)

pytestmark = pytest.mark.integration
GOAL = "at least 2x smaller, lose at most 1% accuracy"
KEY = "socket-test-key"
NAMES = {f"optimization:{kind}" for kind in EVENT_TYPES}
STREAM_S = 300.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("socket")
    running = start_server(server_env(root / "data", max_concurrent_jobs=2), root / "server.log")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def model_id(server: Server, tmp_path_factory: pytest.TempPathFactory) -> str:
    path, _ = write_policy_onnx(tmp_path_factory.mktemp("policy") / "policy.onnx")
    with server.client() as client:
        return upload_model(client, path, name="wide-mlp")["id"]


def _start(server: Server, model_id: str, goal: str = GOAL) -> str:
    with server.client() as client:
        response = client.post(
            "/jobs", json={"model_id": model_id, "goal": goal, "max_attempts": 1, "stop_at_first": True}
        )
    assert response.status_code == 202, response.text
    return response.json()["job"]["id"]


class Listener:
    """A Socket.io client that records every `optimization:*` event as (name, payload)."""

    def __init__(self, **client: Any) -> None:
        self.sio = socketio.AsyncClient(reconnection=False, **client)
        self.got: list[tuple[str, dict[str, Any]]] = []
        self.ended: dict[str, asyncio.Event] = {}
        self.last_seq: dict[str, int] = {}

        async def record(name: str, payload: dict[str, Any]) -> None:
            if name == "stream:end":  # nothing more follows on this subscription
                self.last_seq[payload["job_id"]] = payload["last_seq"]
                self.ended.setdefault(payload["job_id"], asyncio.Event()).set()
                return
            self.got.append((name, payload))

        self.sio.on("*", record)
        self.refusal: Any = None

        async def refused(data: Any) -> None:
            self.refusal = data

        self.sio.on("connect_error", refused)

    async def connect(self, server: Server, **kwargs: Any) -> None:
        await self.sio.connect(server.url, wait_timeout=30, **kwargs)

    async def subscribe(self, job_id: str, after_seq: int = 0) -> dict[str, Any]:
        self.ended.setdefault(job_id, asyncio.Event())
        return await self.sio.call("subscribe", {"job_id": job_id, "after_seq": after_seq}, timeout=30)

    async def until_end(self, job_id: str) -> list[tuple[str, dict[str, Any]]]:
        await asyncio.wait_for(self.ended[job_id].wait(), STREAM_S)
        await asyncio.sleep(0.5)  # anything (wrongly) sent after the last event arrives too
        return [(name, payload) for name, payload in self.got if payload["job_id"] == job_id]


def _seqs(got: list[tuple[str, dict[str, Any]]]) -> list[int]:
    return [payload["seq"] for _, payload in got]


def test_a_jobs_events_arrive_in_order_with_their_names_as_sse_sends_them(
    server: Server, model_id: str
) -> None:
    job_id = _start(server, model_id)

    async def scenario() -> list[tuple[str, dict[str, Any]]]:
        listener = Listener()
        await listener.connect(server)
        try:
            assert await listener.subscribe(job_id) == {"job_id": job_id, "after_seq": 0}
            got = await listener.until_end(job_id)
            assert listener.last_seq[job_id] == got[-1][1]["seq"]  # stream:end names the last event sent
            return got
        finally:
            await listener.sio.disconnect()

    got = asyncio.run(scenario())
    assert _seqs(got) == list(range(1, len(got) + 1)), f"out of order or missing: {_seqs(got)}"
    assert all(name == f"optimization:{payload['type']}" for name, payload in got)
    assert {name for name, _ in got} <= NAMES
    assert {"optimization:status", "optimization:progress", "optimization:attempt"} <= {n for n, _ in got}
    names = [n for n, _ in got]
    assert names.count("optimization:complete") == 1 and names[-2:] == [
        "optimization:complete",
        "optimization:checkpoint",
    ]
    assert [payload for _, payload in got] == follow_job(server, job_id), "the same JSON as the SSE stream"


def test_resuming_from_a_seq_yields_exactly_the_rest(server: Server, model_id: str) -> None:
    job_id = _start(server, model_id)
    with server.client() as client:
        wait_for_status(client, job_id, {"succeeded", "best_effort", "failed"})
    everything = follow_job(server, job_id)
    middle = len(everything) // 2

    async def scenario(after: int) -> list[tuple[str, dict[str, Any]]]:
        listener = Listener()
        await listener.connect(server, transports=["websocket"])
        try:
            assert (await listener.subscribe(job_id, after))["after_seq"] == after
            return await listener.until_end(job_id)
        finally:
            await listener.sio.disconnect()

    rest = asyncio.run(scenario(everything[middle - 1]["seq"]))
    assert [payload for _, payload in rest] == everything[middle:]
    assert asyncio.run(scenario(0)) == [(f"optimization:{e['type']}", e) for e in everything]


def test_a_live_resume_mid_job_loses_and_repeats_nothing(server: Server, model_id: str) -> None:
    job_id = _start(server, model_id)

    async def scenario() -> tuple[list[int], list[int]]:
        first = Listener()
        await first.connect(server)
        await first.subscribe(job_id)
        while len(first.got) < 3:
            await asyncio.sleep(0.05)
        await first.sio.disconnect()  # a dropped connection, mid-job
        seen = _seqs(first.got)
        second = Listener()
        await second.connect(server)
        try:
            await second.subscribe(job_id, seen[-1])
            return seen, _seqs(await second.until_end(job_id))
        finally:
            await second.sio.disconnect()

    seen, rest = asyncio.run(scenario())
    assert seen + rest == list(range(1, len(seen) + len(rest) + 1)), (seen, rest)


def test_a_client_of_job_a_gets_nothing_of_job_b(server: Server, model_id: str) -> None:
    job_a = _start(server, model_id)
    job_b = _start(server, model_id, goal="as fast as possible")

    async def scenario() -> tuple[list[tuple[str, dict[str, Any]]], list[tuple[str, dict[str, Any]]]]:
        only_a, only_b = Listener(), Listener()
        for listener, job_id in ((only_a, job_a), (only_b, job_b)):
            await listener.connect(server)
            await listener.subscribe(job_id)
        try:
            await asyncio.gather(only_a.until_end(job_a), only_b.until_end(job_b))
            return list(only_a.got), list(only_b.got)
        finally:
            await asyncio.gather(only_a.sio.disconnect(), only_b.sio.disconnect())

    got_a, got_b = asyncio.run(scenario())
    assert got_a and {payload["job_id"] for _, payload in got_a} == {job_a}
    assert got_b and {payload["job_id"] for _, payload in got_b} == {job_b}
    assert _seqs(got_a) == list(range(1, len(got_a) + 1))


def test_subscribing_to_an_unknown_job_answers_an_error(server: Server) -> None:
    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        listener = Listener()
        await listener.connect(server)
        try:
            unknown = await listener.subscribe("job-0000000000")
            bad = await listener.sio.call("subscribe", {"job_id": "x", "after_seq": -1}, timeout=30)
            return unknown, bad
        finally:
            await listener.sio.disconnect()

    unknown, bad = asyncio.run(scenario())
    assert unknown["error"]["code"] == "not_found"
    assert bad["error"]["code"] == "validation_error" and "after_seq" in bad["error"]["message"]


def test_a_keyed_service_refuses_a_socket_without_the_key(tmp_path: Path) -> None:
    server = start_server(
        server_env(tmp_path / "data"), tmp_path / "keyed.log", uvicorn_cli=True, api_key=KEY
    )

    async def refused(**kwargs: Any) -> dict[str, Any]:
        listener = Listener()
        with pytest.raises(socketio.exceptions.ConnectionError):
            await listener.connect(server, **kwargs)
        await listener.sio.disconnect()
        return listener.refusal

    async def accepted(**kwargs: Any) -> dict[str, Any]:
        listener = Listener()
        await listener.connect(server, **kwargs)
        try:
            return await listener.subscribe("job-0000000000")
        finally:
            await listener.sio.disconnect()

    try:
        assert asyncio.run(refused()) == {
            "message": "this server needs an API key",
            "data": {
                "code": "unauthorized",
                "message": "this server needs an API key",
                "hint": "send `Authorization: Bearer <ROBOPT_API_KEY>`",
                "detail": {},
            },
        }
        for kwargs in (
            {"auth": {"token": "nope"}},
            {"auth": {"token": "nope"}, "transports": ["websocket"]},
            {"headers": {"Authorization": "Bearer nope"}},
        ):
            assert asyncio.run(refused(**kwargs))["data"]["code"] == "unauthorized", kwargs
        for kwargs in ({"auth": {"token": KEY}}, {"headers": {"Authorization": f"Bearer {KEY}"}}):
            assert asyncio.run(accepted(**kwargs))["error"]["code"] == "not_found", kwargs
        assert (
            asyncio.run(accepted(auth={"token": KEY}, transports=["websocket"]))["error"]["code"]
            == "not_found"
        )
        assert httpx.get(f"{server.url}/api/v1/jobs").status_code == 401, "the REST API is still guarded"
    finally:
        server.stop()
