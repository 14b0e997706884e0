"""Errors render as one actionable line, whatever text the underlying library produced."""

from __future__ import annotations

from tools.errors import CorruptFileError, first_line


def test_first_line_survives_empty_and_multiline_library_messages() -> None:
    assert first_line(RuntimeError("")) == "RuntimeError"
    assert first_line(RuntimeError("first\n\tsecond")) == "first"
    assert len(first_line(ValueError("x" * 1000))) == 300


def test_one_line_carries_code_message_and_hint() -> None:
    error = CorruptFileError("model.onnx is broken\nbadly", hint="re-export it")
    assert error.one_line() == "[corrupt_file] model.onnx is broken badly (hint: re-export it)"
    assert error.to_dict()["code"] == "corrupt_file" and error.exit_code == 2
