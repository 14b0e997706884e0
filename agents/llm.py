"""The LLM reasoner: any OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, llama.cpp) through langchain-openai.

Each call renders the agent's prompt, asks for structured output (a forced tool call, or a JSON-schema response
format), validates the answer against the agent's output type and semantic check, and retries on invalid output
or a transient API failure. When every try fails, or the endpoint refuses the key, the agent's expert rules answer
instead and the `Decision` says why (`source='rules_fallback'`), so a bad LLM can slow a job but never break it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from time import time
from typing import TYPE_CHECKING, Any, Literal, Mapping

import httpx
import openai
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic import ValidationError as PydanticValidationError

from agents.base import AgentSpec, Decision, In, Out, Reasoner, RuleReasoner
from agents.prompts import render_prompt
from tools.errors import ConfigurationError, ValidationError, first_line
from tools.log import get_logger

if TYPE_CHECKING:
    from langchain_core.messages import BaseMessage
    from langchain_core.runnables import Runnable
    from langchain_openai import ChatOpenAI

log = get_logger("reasoner")

StructuredMethod = Literal["function_calling", "json_schema"]
ReasonerKind = Literal["rules", "openai"]
REASONER_KINDS: tuple[str, ...] = ("rules", "openai")

RETRY_FEEDBACK = "Your previous answer was rejected: {reason}. Answer again with output that fits the schema."
"""Sent after an invalid answer, so that a retry at temperature 0 does not repeat the same mistake."""

_RETRYABLE_STATUS = {408, 409, 429}
_NO_KEY_HINT = (
    "set OPENAI_API_KEY (or ROBOPT_LLM_API_KEY); a local server that needs no key (vLLM, Ollama, llama.cpp) "
    "takes any non-empty value, e.g. ROBOPT_LLM_API_KEY=none with OPENAI_BASE_URL=http://localhost:8000/v1; "
    "or use the offline rule reasoner"
)


class LLMSettings(BaseModel):
    """How to reach the LLM and how hard to try before the rules answer instead."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    api_key: SecretStr = Field(description="API key; any non-empty value for servers that need none.")
    base_url: str | None = Field(default=None, description="OpenAI-compatible endpoint; None means OpenAI's.")
    model: str = Field(default="gpt-4o-mini", min_length=1, description="Model name the endpoint serves.")
    timeout_s: float = Field(default=60.0, gt=0, le=3600, description="Limit on one request, seconds.")
    max_retries: int = Field(default=2, ge=0, le=10, description="Extra tries after the first one.")
    temperature: float = Field(default=0.0, ge=0, le=2)
    structured_method: StructuredMethod = Field(
        default="function_calling",
        description="'function_calling': a forced tool call (most OpenAI-compatible servers support it); "
        "'json_schema': OpenAI's strict structured-output response format.",
    )
    retry_backoff_s: float = Field(
        default=0.5, ge=0, le=60, description="First wait between tries; doubles on each further try."
    )
    max_retry_wait_s: float = Field(
        default=8.0, ge=0, le=300, description="Cap on one wait, including a server's Retry-After."
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LLMSettings:
        """Read the settings from the environment (`ROBOPT_LLM_*`, then the OpenAI client's own variables)."""
        env = os.environ if environ is None else environ

        def pick(*names: str) -> str | None:
            return next((env[name].strip() for name in names if env.get(name, "").strip()), None)

        api_key = pick("ROBOPT_LLM_API_KEY", "OPENAI_API_KEY")
        if api_key is None:
            raise ConfigurationError("no API key for the LLM reasoner", hint=_NO_KEY_HINT)
        values: dict[str, Any] = {
            "api_key": api_key,
            "base_url": pick("ROBOPT_LLM_BASE_URL", "OPENAI_BASE_URL"),
        }
        for name, var in (
            ("model", "ROBOPT_LLM_MODEL"),
            ("timeout_s", "ROBOPT_LLM_TIMEOUT_S"),
            ("max_retries", "ROBOPT_LLM_MAX_RETRIES"),
            ("structured_method", "ROBOPT_LLM_STRUCTURED_METHOD"),
        ):
            if (value := pick(var)) is not None:
                values[name] = value
        try:
            return cls(**values)
        except PydanticValidationError as exc:
            error = exc.errors()[0]
            name = str(error["loc"][0])
            var = {"api_key": "ROBOPT_LLM_API_KEY", "base_url": "ROBOPT_LLM_BASE_URL"}.get(
                name, f"ROBOPT_LLM_{name.upper()}"
            )
            raise ConfigurationError(
                f"invalid LLM setting {name}: {error['msg']}", hint=f"check {var} in the environment"
            ) from None


class _AttemptFailed(Exception):
    """One try at the LLM failed: `reason` is one line, `retryable` says whether another try can help."""

    def __init__(self, reason: str, *, retryable: bool = True, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        self.is_invalid_output = False


class _InvalidOutput(_AttemptFailed):
    """The endpoint answered, but not with a valid output for this agent and input."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.is_invalid_output = True


@dataclass
class _LoopClient:
    """A chat model bound to one event loop, with its structured-output runnables by output type."""

    loop: asyncio.AbstractEventLoop
    http: httpx.AsyncClient
    chat: ChatOpenAI
    runnables: dict[type[BaseModel], Runnable] = field(default_factory=dict)


class LLMReasoner:
    """Answer agents with an LLM; validate, retry, and fall back to the agent's rules when the LLM fails."""

    name = "openai"

    def __init__(self, settings: LLMSettings) -> None:
        self.settings = settings
        self._client: _LoopClient | None = None

    async def decide(self, agent: AgentSpec[In, Out], payload: In) -> Decision[Out]:
        """Return the LLM's validated answer, or the rules' answer with the reason the LLM path failed."""
        context = {"component": "reasoner", "agent": agent.name}
        try:
            payload_json = payload.model_dump_json()
            schema_json = json.dumps(agent.output_type.model_json_schema(), indent=2)
            system = render_prompt(agent.prompt, input_json=payload_json, output_schema=schema_json)
            runnable = self._structured(agent.output_type)
        except Exception as exc:  # noqa: BLE001 - a broken prompt or client must not stop the job
            reason = f"cannot prepare the LLM call: {first_line(exc)}"
            log.warning("%s; the rules answer", reason, extra=context)
            return self._fallback(agent, payload, reason, attempts=0, notes=[])

        from langchain_core.messages import HumanMessage, SystemMessage

        messages: list[BaseMessage] = [SystemMessage(system), HumanMessage(payload_json)]
        tries = self.settings.max_retries + 1
        notes: list[str] = []
        failure: _AttemptFailed | None = None
        for attempt in range(1, tries + 1):
            if failure is not None:
                wait = self._wait_before(attempt, failure)
                if wait > 0:
                    notes[-1] += f"; waited {wait:.2f} s"
                    await asyncio.sleep(wait)
            try:
                output, model = await self._attempt(agent, payload, runnable, messages, failure)
            except _AttemptFailed as exc:
                failure = exc
            except Exception as exc:  # noqa: BLE001 - an unforeseen library error is one more failed try
                failure = _AttemptFailed(f"unexpected {type(exc).__name__}: {first_line(exc)}")
            else:
                log.info("LLM answered after %d attempt(s)", attempt, extra=context)
                return Decision(
                    output=output,
                    source="llm",
                    reasoner=self.name,
                    model=model,
                    llm_attempts=attempt,
                    notes=notes,
                )
            notes.append(f"attempt {attempt}: {failure.reason}")
            log.warning("LLM attempt %d/%d failed: %s", attempt, tries, failure.reason, extra=context)
            if not failure.retryable:
                break
        assert failure is not None  # the loop ran at least once and every pass without a return set it
        plural = "s" if attempt > 1 else ""
        reason = f"{failure.reason} (after {attempt} attempt{plural})"
        log.warning("LLM failed for good, the rules answer: %s", reason, extra=context)
        return self._fallback(agent, payload, reason, attempts=attempt, notes=notes)

    async def aclose(self) -> None:
        """Close the HTTP client opened on the running event loop; the next call opens a new one."""
        client = self._client
        if client is not None and client.loop is asyncio.get_running_loop():
            self._client = None
            await client.http.aclose()

    def _fallback(
        self, agent: AgentSpec[In, Out], payload: In, reason: str, *, attempts: int, notes: list[str]
    ) -> Decision[Out]:
        """Answer with the rules and record why the LLM did not."""
        return Decision(
            output=agent.run_rules(payload),
            source="rules_fallback",
            reasoner=self.name,
            model=self.settings.model,
            llm_attempts=attempts,
            fallback_reason=reason,
            notes=notes,
        )

    def _wait_before(self, attempt: int, failure: _AttemptFailed) -> float:
        """Seconds to wait before try `attempt`: the server's Retry-After, else exponential backoff; capped."""
        if failure.retry_after_s is not None:
            wanted = failure.retry_after_s
        else:
            wanted = self.settings.retry_backoff_s * 2 ** (attempt - 2)
        return max(0.0, min(wanted, self.settings.max_retry_wait_s))

    async def _attempt(
        self,
        agent: AgentSpec[In, Out],
        payload: In,
        runnable: Runnable,
        messages: list[BaseMessage],
        previous: _AttemptFailed | None,
    ) -> tuple[Out, str]:
        """Make one request and return the validated, checked output and the model that answered."""
        from langchain_core.messages import HumanMessage

        if previous is not None and previous.is_invalid_output:
            messages = [*messages, HumanMessage(RETRY_FEEDBACK.format(reason=previous.reason))]
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                result = await runnable.ainvoke(messages)
        except asyncio.CancelledError:
            raise
        except (openai.APIError, httpx.HTTPError, TimeoutError) as exc:
            raise self._api_failure(exc) from exc
        except PydanticValidationError as exc:  # json_schema: the client validates the answer itself
            raise _InvalidOutput(_describe_validation(exc, agent.output_type)) from exc
        except ValueError as exc:  # json_schema: neither parsed output nor a refusal
            raise _InvalidOutput(f"unusable answer: {first_line(exc, 200)}") from exc
        raw = result.get("raw")
        model = (getattr(raw, "response_metadata", None) or {}).get("model_name") or self.settings.model
        output = _output_from(result, agent.output_type)
        if agent.check is not None:
            try:
                agent.check(payload, output)
            except ValidationError as exc:
                raise _InvalidOutput(f"output failed the {agent.name} check: {exc.message}") from exc
            except Exception as exc:  # noqa: BLE001 - a crashing check is still a rejected answer
                raise _InvalidOutput(f"the {agent.name} check raised {type(exc).__name__}: {first_line(exc)}")
        return output, model

    def _api_failure(self, exc: BaseException) -> _AttemptFailed:
        """Classify an API error: rate limits, server errors, timeouts and lost connections are worth a retry."""
        where = self.settings.base_url or "api.openai.com"
        if isinstance(exc, (openai.APITimeoutError, httpx.TimeoutException, TimeoutError)):
            return _AttemptFailed(f"no answer from {where} within {self.settings.timeout_s:g} s (timeout)")
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            message = f"HTTP {status} from {where}: {first_line(exc, 200)}"
            if status in (401, 403):
                return _AttemptFailed(f"{message}; check the API key", retryable=False)
            retryable = status in _RETRYABLE_STATUS or status >= 500
            return _AttemptFailed(message, retryable=retryable, retry_after_s=_retry_after(exc.response))
        if isinstance(exc, (openai.APIConnectionError, httpx.TransportError)):
            cause: BaseException = exc  # the client wraps the transport's error in "Connection error."
            while not isinstance(cause, (httpx.HTTPError, OSError)) and cause.__cause__ is not None:
                cause = cause.__cause__
            return _AttemptFailed(f"cannot reach {where}: {type(cause).__name__}: {first_line(cause, 200)}")
        return _AttemptFailed(f"API error from {where}: {first_line(exc, 200)}")

    def _structured(self, output_type: type[BaseModel]) -> Runnable:
        """The structured-output runnable for `output_type` on this event loop's client (created on first use)."""
        client = self._loop_client()
        if output_type not in client.runnables:
            client.runnables[output_type] = client.chat.with_structured_output(
                output_type, method=self.settings.structured_method, include_raw=True
            )
        return client.runnables[output_type]

    def _loop_client(self) -> _LoopClient:
        """The chat model for the running event loop: created once, again only when the loop changes.

        langchain-openai shares one process-wide httpx client whose pooled connections belong to the loop that
        opened them; a later `asyncio.run` would reuse dead connections. Owning the client per loop avoids it.
        """
        loop = asyncio.get_running_loop()
        if self._client is None or self._client.loop is not loop:
            from langchain_openai import ChatOpenAI

            settings = self.settings
            http = openai.DefaultAsyncHttpxClient(timeout=settings.timeout_s)
            chat = ChatOpenAI(
                model=settings.model,
                api_key=settings.api_key,
                base_url=settings.base_url,
                timeout=settings.timeout_s,
                max_retries=0,
                temperature=settings.temperature,
                use_responses_api=False,
                http_async_client=http,
            )
            self._client = _LoopClient(loop=loop, http=http, chat=chat)
        return self._client


def _output_from(result: dict[str, Any], output_type: type[Out]) -> Out:
    """Turn langchain's `{raw, parsed, parsing_error}` into a validated output, or say what is wrong."""
    error = result.get("parsing_error")
    if isinstance(error, PydanticValidationError):
        raise _InvalidOutput(_describe_validation(error, output_type))
    if error is not None:
        raise _InvalidOutput(f"unusable answer ({type(error).__name__}: {first_line(error, 200)})")
    parsed = result.get("parsed")
    if parsed is None:
        parsed = _json_from_text(result.get("raw"), output_type)
    try:
        return parsed if isinstance(parsed, output_type) else output_type.model_validate(parsed)
    except PydanticValidationError as exc:
        raise _InvalidOutput(_describe_validation(exc, output_type)) from exc


def _json_from_text(raw: Any, output_type: type[BaseModel]) -> Any:
    """Accept a JSON object written as text when the server ignored the forced tool call; else say why not."""
    invalid = getattr(raw, "invalid_tool_calls", None) or []
    if invalid:
        lines = str(invalid[0].get("error") or "").strip().splitlines()
        detail = next((line for line in lines if "JSONDecodeError" in line), lines[0] if lines else "")[:160]
        raise _InvalidOutput(f"tool call arguments are not valid JSON ({detail})")
    if getattr(raw, "tool_calls", None):
        names = ", ".join(str(call.get("name")) for call in raw.tool_calls)
        raise _InvalidOutput(f"called tool(s) {names} instead of answering with {output_type.__name__}")
    finish = (getattr(raw, "response_metadata", None) or {}).get("finish_reason")
    text = raw.text if raw is not None else ""
    if not isinstance(text, str) or not text.strip():
        raise _InvalidOutput(f"empty answer, no tool call (finish_reason={finish})")
    body = re.sub(r"^```(?:json)?\s*|\s*```$", "", text.strip())
    try:
        return json.loads(body)
    except json.JSONDecodeError:
        cut = " (cut off: finish_reason=length)" if finish == "length" else ""
        raise _InvalidOutput(f"no tool call and the text is not JSON{cut}: {text.strip()[:120]!r}") from None


def _describe_validation(exc: PydanticValidationError, output_type: type[BaseModel]) -> str:
    """One line naming the first few fields that failed validation and why."""
    errors = exc.errors()
    if errors and errors[0]["type"] == "json_invalid":
        return f"answer is not valid JSON ({errors[0]['msg']})"
    parts = [f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in errors[:3]]
    more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
    return f"answer does not match {output_type.__name__}: {'; '.join(parts)}{more}"


def _retry_after(response: httpx.Response | None) -> float | None:
    """Seconds the server asked us to wait (`retry-after-ms`, or `Retry-After` as seconds or an HTTP date)."""
    if response is None:
        return None
    headers = response.headers
    try:
        if (millis := headers.get("retry-after-ms")) is not None:
            return max(0.0, float(millis) / 1000)
        if (value := headers.get("retry-after")) is None:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time())
    except (TypeError, ValueError, OverflowError):
        return None


def build_reasoner(kind: ReasonerKind, settings: LLMSettings | None = None) -> Reasoner:
    """Build the reasoner named `kind`: the offline rules, or an LLM endpoint (settings from the env if None)."""
    if kind == "rules":
        return RuleReasoner()
    if kind == "openai":
        return LLMReasoner(settings or LLMSettings.from_env())
    raise ValidationError(f"unknown reasoner {kind!r}", hint=f"choose one of: {', '.join(REASONER_KINDS)}")
