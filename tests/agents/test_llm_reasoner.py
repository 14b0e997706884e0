"""The LLM reasoner against OpenAI-shaped HTTP answers: structured output, validation, retries, rule fallback.

The only mock is the LLM's HTTP API (respx on `http://llm.test/v1/chat/completions`); the event-loop and
cancellation tests talk to a real local HTTP server instead. The agent under test is a tiny one defined here,
with its own prompt template in a temporary prompts directory.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import respx
from pydantic import BaseModel, Field

from agents import prompts
from agents.base import AgentSpec, Decision, RuleReasoner
from agents.llm import LLMReasoner, LLMSettings, build_reasoner
from tools.errors import ConfigurationError, ValidationError

BASE_URL = "http://llm.test/v1"
URL = f"{BASE_URL}/chat/completions"
TEMPLATE = "You choose the next technique.\n\nInput:\n${input_json}\n\nAnswer with JSON matching:\n${output_schema}\n"


class PickInput(BaseModel):
    """What the test agent decides on."""

    budget_mb: float
    allowed: list[str]


class Pick(BaseModel):
    """The technique to apply next and its bit width."""

    technique: str = Field(description="One of the allowed techniques.")
    bits: int = Field(ge=2, le=16)
    reason: str


def pick_rules(payload: PickInput) -> Pick:
    """The test agent's expert rules: the first allowed technique at 8 bits."""
    return Pick(technique=payload.allowed[0], bits=8, reason="rules: first allowed technique")


def pick_check(payload: PickInput, output: Pick) -> None:
    """Reject a technique the input does not allow."""
    if output.technique not in payload.allowed:
        raise ValidationError(
            f"technique {output.technique!r} is not available", hint="choose an allowed one"
        )


AGENT = AgentSpec(
    name="pick",
    prompt="pick_test",
    input_type=PickInput,
    output_type=Pick,
    rules=pick_rules,
    check=pick_check,
)
PAYLOAD = PickInput(budget_mb=120.0, allowed=["ort_int8", "prune"])
GOOD = {"technique": "prune", "bits": 4, "reason": "pruning fits the budget"}


@pytest.fixture(autouse=True)
def prompt_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A prompts directory holding only the test agent's template."""
    (tmp_path / "pick_test.md").write_text(TEMPLATE)
    monkeypatch.setattr(prompts, "PROMPTS_DIR", tmp_path)
    prompts.load_prompt.cache_clear()
    yield tmp_path
    prompts.load_prompt.cache_clear()


@pytest.fixture
def reasoner_logs() -> Iterator[list[logging.LogRecord]]:
    """Records the reasoner logs (captured on its own logger: the CLI's setup may stop propagation)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("robopt.reasoner")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(level)


def settings(**overrides: Any) -> LLMSettings:
    """Settings for the fake endpoint, with no backoff so that retries cost no time."""
    values: dict[str, Any] = dict(
        api_key="test-key", base_url=BASE_URL, model="test-model", retry_backoff_s=0.0, max_retry_wait_s=1.0
    )
    return LLMSettings(**{**values, **overrides})


def completion(message: dict[str, Any], finish_reason: str = "stop") -> dict[str, Any]:
    """A chat.completions response body as OpenAI sends it."""
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "test-model-2025-01-01",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": 50, "completion_tokens": 20, "total_tokens": 70},
    }


def tool_reply(arguments: dict[str, Any] | str, name: str = "Pick") -> httpx.Response:
    """An answer that calls the forced tool with `arguments` (a dict, or raw text to send as is)."""
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    call = {"id": "call_1", "type": "function", "function": {"name": name, "arguments": text}}
    message = {"role": "assistant", "content": None, "tool_calls": [call], "refusal": None}
    return httpx.Response(200, json=completion(message, "tool_calls"))


def text_reply(content: str, finish_reason: str = "stop") -> httpx.Response:
    """An answer with text content only (what the json_schema response format returns)."""
    return httpx.Response(
        200, json=completion({"role": "assistant", "content": content, "refusal": None}, finish_reason)
    )


def error_reply(status: int, headers: dict[str, str] | None = None) -> httpx.Response:
    """An OpenAI-shaped error answer."""
    body = {"error": {"message": f"status {status} from the test server", "type": "test_error", "code": None}}
    return httpx.Response(status, json=body, headers=headers)


def body(call: respx.models.Call) -> dict[str, Any]:
    """The JSON body of a recorded request."""
    return json.loads(call.request.content)


def decide(reasoner: LLMReasoner, agent: AgentSpec = AGENT) -> Decision:
    """Run one decision on a fresh event loop."""
    return asyncio.run(reasoner.decide(agent, PAYLOAD))


def expected_system_prompt() -> str:
    """The prompt the reasoner must send: the template with the payload and the output schema filled in."""
    return prompts.render_prompt(
        "pick_test",
        input_json=PAYLOAD.model_dump_json(),
        output_schema=json.dumps(Pick.model_json_schema(), indent=2),
    )


def test_tool_call_answer_is_used_and_request_carries_tool_prompt_and_payload() -> None:
    with respx.mock(assert_all_called=True) as mock:
        route = mock.post(URL).mock(return_value=tool_reply(GOOD))
        decision = decide(LLMReasoner(settings()))

    assert decision.source == "llm" and decision.reasoner == "openai"
    assert decision.output == Pick(**GOOD)
    assert decision.llm_attempts == 1 and decision.fallback_reason is None and decision.notes == []
    assert decision.model == "test-model-2025-01-01"
    request = route.calls.last.request
    assert request.headers["authorization"] == "Bearer test-key"
    sent = body(route.calls.last)
    assert sent["model"] == "test-model" and sent["temperature"] == 0
    assert "response_format" not in sent
    (tool,) = sent["tools"]
    assert tool["type"] == "function" and tool["function"]["name"] == "Pick"
    assert tool["function"]["description"] == Pick.__doc__
    parameters = tool["function"]["parameters"]
    assert set(parameters["properties"]) == {"technique", "bits", "reason"}
    assert parameters["properties"]["bits"]["maximum"] == 16
    assert set(parameters["required"]) == {"technique", "bits", "reason"}
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "Pick"}}
    assert sent["parallel_tool_calls"] is False
    system, user = sent["messages"]
    assert system == {"role": "system", "content": expected_system_prompt()}
    assert '"maximum": 16' in system["content"] and '"allowed":["ort_int8","prune"]' in system["content"]
    assert user == {"role": "user", "content": PAYLOAD.model_dump_json()}


def test_json_schema_answer_is_used_and_request_carries_response_format() -> None:
    with respx.mock(assert_all_called=True) as mock:
        route = mock.post(URL).mock(return_value=text_reply(json.dumps(GOOD)))
        decision = decide(LLMReasoner(settings(structured_method="json_schema")))

    assert decision.source == "llm" and decision.output == Pick(**GOOD) and decision.llm_attempts == 1
    sent = body(route.calls.last)
    assert "tools" not in sent and "tool_choice" not in sent
    response_format = sent["response_format"]
    assert response_format["type"] == "json_schema"
    assert (
        response_format["json_schema"]["name"] == "Pick" and response_format["json_schema"]["strict"] is True
    )
    schema = response_format["json_schema"]["schema"]
    assert set(schema["properties"]) == {"technique", "bits", "reason"}
    assert schema["additionalProperties"] is False
    assert [m["role"] for m in sent["messages"]] == ["system", "user"]
    assert sent["messages"][0]["content"] == expected_system_prompt()
    assert sent["messages"][1]["content"] == PAYLOAD.model_dump_json()


@pytest.mark.parametrize(
    "method, malformed, good",
    [
        ("function_calling", tool_reply('{"technique": "prune", "bits": '), tool_reply(GOOD)),
        ("json_schema", text_reply('{"technique": "prune", "bits": '), text_reply(json.dumps(GOOD))),
    ],
)
def test_malformed_json_is_retried_with_feedback(
    method: str, malformed: httpx.Response, good: httpx.Response
) -> None:
    with respx.mock() as mock:
        route = mock.post(URL).mock(side_effect=[malformed, good])
        decision = decide(LLMReasoner(settings(structured_method=method)))

    assert decision.source == "llm" and decision.output == Pick(**GOOD)
    assert decision.llm_attempts == 2 and route.call_count == 2
    assert len(decision.notes) == 1 and "not valid JSON" in decision.notes[0]
    first, second = (body(call)["messages"] for call in route.calls)
    assert len(first) == 2
    assert second[:2] == first and second[2]["role"] == "user"
    assert second[2]["content"].startswith("Your previous answer was rejected: ")
    assert "not valid JSON" in second[2]["content"]


@pytest.mark.parametrize("method", ["function_calling", "json_schema"])
def test_schema_mismatch_is_retried(method: str) -> None:
    wrong = {**GOOD, "bits": 99}
    replies = {
        "function_calling": [tool_reply(wrong), tool_reply(GOOD)],
        "json_schema": [text_reply(json.dumps(wrong)), text_reply(json.dumps(GOOD))],
    }[method]
    with respx.mock() as mock:
        route = mock.post(URL).mock(side_effect=replies)
        decision = decide(LLMReasoner(settings(structured_method=method)))

    assert decision.source == "llm" and decision.llm_attempts == 2 and route.call_count == 2
    assert "does not match Pick" in decision.notes[0] and "bits" in decision.notes[0]
    assert "less than or equal to 16" in decision.notes[0]


def test_check_failure_every_time_falls_back_to_rules(reasoner_logs: list[logging.LogRecord]) -> None:
    with respx.mock() as mock:
        route = mock.post(URL).mock(return_value=tool_reply({**GOOD, "technique": "quantum_magic"}))
        decision = decide(LLMReasoner(settings()))

    assert route.call_count == 3
    assert decision.source == "rules_fallback" and decision.output == pick_rules(PAYLOAD)
    assert decision.llm_attempts == 3 and decision.model == "test-model"
    assert "'quantum_magic' is not available" in decision.fallback_reason
    assert decision.fallback_reason.endswith("(after 3 attempts)") and "\n" not in decision.fallback_reason
    assert [note.split(":")[0] for note in decision.notes] == ["attempt 1", "attempt 2", "attempt 3"]
    failures = [r for r in reasoner_logs if r.levelno == logging.WARNING]
    assert len(failures) == 4  # one per attempt, then the fallback
    assert all(r.component == "reasoner" and r.agent == "pick" for r in failures)


@pytest.mark.parametrize("retry_after, expected_wait", [("30", 0.3), ("0.1", 0.1)])
def test_rate_limit_honours_retry_after_up_to_the_cap(retry_after: str, expected_wait: float) -> None:
    with respx.mock() as mock:
        route = mock.post(URL).mock(
            side_effect=[error_reply(429, {"Retry-After": retry_after}), tool_reply(GOOD)]
        )
        started = time.monotonic()
        decision = decide(LLMReasoner(settings(max_retry_wait_s=0.3)))
        elapsed = time.monotonic() - started

    assert decision.source == "llm" and decision.llm_attempts == 2 and route.call_count == 2
    assert "HTTP 429" in decision.notes[0] and f"waited {expected_wait:.2f} s" in decision.notes[0]
    assert expected_wait <= elapsed < expected_wait + 5


@pytest.mark.parametrize("max_retries", [0, 2])
def test_server_error_every_time_falls_back_after_max_retries_plus_one_calls(max_retries: int) -> None:
    with respx.mock() as mock:
        route = mock.post(URL).mock(return_value=error_reply(500))
        decision = decide(LLMReasoner(settings(max_retries=max_retries)))

    assert route.call_count == max_retries + 1 and decision.llm_attempts == max_retries + 1
    assert decision.source == "rules_fallback" and decision.output == pick_rules(PAYLOAD)
    assert decision.fallback_reason.startswith(f"HTTP 500 from {BASE_URL}")
    assert f"after {max_retries + 1} attempt" in decision.fallback_reason


@pytest.mark.parametrize(
    "error, words",
    [
        (httpx.ReadTimeout, "timeout"),
        (httpx.ConnectTimeout, "timeout"),
        (httpx.ConnectError, "cannot reach http://llm.test/v1: ConnectError: simulated"),
    ],
)
def test_timeouts_and_lost_connections_are_retried_then_fall_back(error: type[Exception], words: str) -> None:
    with respx.mock() as mock:
        route = mock.post(URL).mock(side_effect=error("simulated"))
        decision = decide(LLMReasoner(settings()))

    assert route.call_count == 3 and decision.llm_attempts == 3
    assert decision.source == "rules_fallback" and words in decision.fallback_reason


@pytest.mark.parametrize("status", [401, 403, 400, 404])
def test_refused_requests_fall_back_at_once(status: int) -> None:
    with respx.mock() as mock:
        route = mock.post(URL).mock(return_value=error_reply(status))
        decision = decide(LLMReasoner(settings()))

    assert route.call_count == 1 and decision.llm_attempts == 1
    assert decision.source == "rules_fallback" and decision.output == pick_rules(PAYLOAD)
    assert f"HTTP {status}" in decision.fallback_reason and "(after 1 attempt)" in decision.fallback_reason
    assert ("API key" in decision.fallback_reason) == (status in (401, 403))


def test_text_instead_of_tool_call_is_retried_and_json_text_is_accepted() -> None:
    fenced = f"```json\n{json.dumps(GOOD)}\n```"
    with respx.mock() as mock:
        route = mock.post(URL).mock(side_effect=[text_reply("I would prune."), text_reply(fenced)])
        decision = decide(LLMReasoner(settings()))

    assert route.call_count == 2 and decision.source == "llm" and decision.output == Pick(**GOOD)
    assert "no tool call" in decision.notes[0] and "I would prune." in decision.notes[0]


def test_cut_off_answer_says_so() -> None:
    with respx.mock() as mock:
        mock.post(URL).mock(return_value=text_reply('{"technique": "pru', finish_reason="length"))
        decision = decide(LLMReasoner(settings(max_retries=0)))

    assert decision.source == "rules_fallback" and "finish_reason=length" in decision.fallback_reason


def test_missing_prompt_falls_back_without_calling_the_llm() -> None:
    agent = AgentSpec(
        name="pick", prompt="no_such_prompt", input_type=PickInput, output_type=Pick, rules=pick_rules
    )
    with respx.mock(assert_all_called=False) as mock:
        route = mock.post(URL).mock(return_value=tool_reply(GOOD))
        decision = decide(LLMReasoner(settings()), agent)

    assert route.call_count == 0 and decision.llm_attempts == 0
    assert (
        decision.source == "rules_fallback" and "no prompt named 'no_such_prompt'" in decision.fallback_reason
    )


class _FakeOpenAIHandler(BaseHTTPRequestHandler):
    """A keep-alive HTTP/1.1 server answering every chat completion with a valid tool call."""

    protocol_version = "HTTP/1.1"
    delay = threading.Event()  # set: answer at once; clear: hold the answer until set (or 5 s)
    requests: list[str] = []

    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).requests.append(self.path)
        type(self).delay.wait(timeout=5)
        data = tool_reply(GOOD).content
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output quiet."""


@pytest.fixture
def local_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real OpenAI-shaped HTTP server on localhost; yields its base URL."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    _FakeOpenAIHandler.requests = []
    _FakeOpenAIHandler.delay.set()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeOpenAIHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    _FakeOpenAIHandler.delay.set()
    server.shutdown()
    server.server_close()


def test_one_reasoner_works_across_event_loops(local_server: str) -> None:
    reasoner = LLMReasoner(settings(base_url=local_server))
    first = asyncio.run(reasoner.decide(AGENT, PAYLOAD))
    second = asyncio.run(reasoner.decide(AGENT, PAYLOAD))  # the first loop, and its connections, are closed

    async def decide_close_decide() -> Decision:
        await reasoner.decide(AGENT, PAYLOAD)
        await reasoner.aclose()
        return await reasoner.decide(AGENT, PAYLOAD)

    after_close = asyncio.run(decide_close_decide())

    assert [first.source, second.source, after_close.source] == ["llm", "llm", "llm"]
    assert [first.llm_attempts, second.llm_attempts, after_close.llm_attempts] == [1, 1, 1]
    assert _FakeOpenAIHandler.requests == ["/v1/chat/completions"] * 4


def test_cancellation_propagates_instead_of_falling_back(local_server: str) -> None:
    reasoner = LLMReasoner(settings(base_url=local_server))
    _FakeOpenAIHandler.delay.clear()

    async def cancel_midway() -> None:
        task = asyncio.create_task(reasoner.decide(AGENT, PAYLOAD))
        while not _FakeOpenAIHandler.requests:
            await asyncio.sleep(0.01)
        task.cancel()
        await task

    started = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(cancel_midway())
    assert time.monotonic() - started < 4


def test_settings_from_env_need_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ROBOPT_LLM_API_KEY", "OPENAI_API_KEY", "ROBOPT_LLM_BASE_URL", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigurationError) as caught:
        LLMSettings.from_env()
    assert "ROBOPT_LLM_API_KEY" in caught.value.hint and "OPENAI_API_KEY" in caught.value.hint
    with pytest.raises(ConfigurationError):
        build_reasoner("openai")

    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-openai-var")
    assert LLMSettings.from_env().api_key.get_secret_value() == "sk-from-openai-var"


def test_settings_from_env_read_local_server_values() -> None:
    env = {
        "ROBOPT_LLM_API_KEY": "none",
        "OPENAI_API_KEY": "sk-ignored",
        "OPENAI_BASE_URL": "http://localhost:8000/v1",
        "ROBOPT_LLM_MODEL": "qwen2.5-7b-instruct",
        "ROBOPT_LLM_MAX_RETRIES": "4",
        "ROBOPT_LLM_STRUCTURED_METHOD": "json_schema",
    }
    loaded = LLMSettings.from_env(env)

    assert loaded.api_key.get_secret_value() == "none" and "none" not in repr(loaded)
    assert loaded.base_url == "http://localhost:8000/v1" and loaded.model == "qwen2.5-7b-instruct"
    assert loaded.max_retries == 4 and loaded.structured_method == "json_schema"
    assert (loaded.timeout_s, loaded.temperature) == (60.0, 0.0)
    assert LLMSettings.from_env({"OPENAI_API_KEY": "k"}).model == "gpt-4o-mini"


@pytest.mark.parametrize(
    "name, value", [("ROBOPT_LLM_MAX_RETRIES", "lots"), ("ROBOPT_LLM_STRUCTURED_METHOD", "json_mode")]
)
def test_settings_from_env_reject_bad_values(name: str, value: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        LLMSettings.from_env({"OPENAI_API_KEY": "k", name: value})
    assert name in caught.value.hint


def test_build_reasoner() -> None:
    assert isinstance(build_reasoner("rules"), RuleReasoner)
    llm = build_reasoner("openai", settings())
    assert isinstance(llm, LLMReasoner) and llm.settings == settings()
    with pytest.raises(ValidationError) as caught:
        build_reasoner("anthropic")  # type: ignore[arg-type]
    assert "rules" in caught.value.hint and "openai" in caught.value.hint


def test_json_schema_refusal_is_a_rejected_answer() -> None:
    refusal = {"role": "assistant", "content": None, "refusal": "I cannot help with that."}
    with respx.mock() as mock:
        route = mock.post(URL).mock(return_value=httpx.Response(200, json=completion(refusal)))
        decision = decide(LLMReasoner(settings(structured_method="json_schema", max_retries=1)))

    assert route.call_count == 2 and decision.source == "rules_fallback"
    assert "OpenAIRefusalError: I cannot help with that." in decision.fallback_reason
