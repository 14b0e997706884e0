"""Structured logging: one JSON object a line on stderr, with context (`component`, `job_id`, `model_id`).

Use `get_logger(component)` and pass context through `extra={...}`; `configure_logging` is called once by the
entry points (CLI, server), never at import time. The module is named `log` so it never shadows `logging`.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any

CONTEXT_KEYS = ("component", "job_id", "model_id", "version_id", "technique")
_STANDARD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON line holding the message, the level and every context field given."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                payload[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, sort_keys=False)


class ComponentAdapter(logging.LoggerAdapter):
    """Logger that always carries its component and merges per-call context given through `extra`."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs["extra"] = {**(self.extra or {}), **(kwargs.get("extra") or {})}
        return msg, kwargs


def get_logger(component: str, **context: Any) -> ComponentAdapter:
    """Return a logger for `component`, with any fixed context (for example `job_id`) bound to it."""
    return ComponentAdapter(logging.getLogger(f"robopt.{component}"), {"component": component, **context})


NOISY_LIBRARY_LOGGERS = ("torchao", "bitsandbytes", "torch.utils._pytree")
"""Libraries that warn at import about optional kernels they could not load (CUDA-only builds on a CPU machine);
their warnings say nothing about the user's model, so the CLI shows only their errors."""


def configure_logging(level: str = "WARNING") -> None:
    """Send robopt's logs to stderr as JSON lines at `level`; idempotent."""
    root = logging.getLogger("robopt")
    root.setLevel(level.upper())
    if not any(getattr(h, "_robopt", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        handler._robopt = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.propagate = False
    for name in NOISY_LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
