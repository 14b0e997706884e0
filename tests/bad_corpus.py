"""The corpus of bad model files: each is built on the fly and paired with the error robopt must raise.

Shared by the intake tests, the CLI tests (exit 2 with the message) and the HTTP service's tests (422 with the
code), each with and without the trust flags. Pickles that run code are in `tests/bad_pickles.py`, more malformed
files of each format in `tests/bad_formats.py`.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from tests.bad_formats import write_bad_formats
from tests.bad_pickles import write_bad_pickles
from tools import errors


@dataclass(frozen=True)
class BadCase:
    """A bad file, the exception class robopt must raise for it, and a fragment of the one-line message; with the
    trust flags set (`--trust-pickle`, `--trust-remote-code`) the refusal may differ, and then says so here.
    """

    name: str
    path: Path
    error: type[errors.RoboptError]
    fragment: str
    trusted_error: type[errors.RoboptError] | None = None
    trusted_fragment: str | None = None

    def expected(self, trusted: bool) -> tuple[type[errors.RoboptError], str]:
        """The error class and message fragment of the refusal, with or without the trust flags."""
        if trusted and self.trusted_error is not None:
            return self.trusted_error, self.trusted_fragment or self.fragment
        return self.error, self.fragment


class _RunsCommand:
    """Unpickling this runs a shell command that creates `marker`: proof of code execution if it ever exists."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def _tar_with(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for info, payload in members:
            if payload is not None:
                info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return path


def _write_safetensors_header(path: Path, header: dict, data_bytes: int) -> None:
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + b"\0" * data_bytes)


def _huge_onnx_model(inputs: list, initializers: list) -> object:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", [inputs[0].name], ["y"])],
        "huge",
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _write_huge_input_onnx(path: Path) -> None:
    """A valid, tiny graph whose input declares 10^15 float32 elements (4x10^15 bytes) for the sample inputs."""
    from onnx import TensorProto, helper

    model = _huge_onnx_model([helper.make_tensor_value_info("x", TensorProto.FLOAT, [10**15])], [])
    path.write_bytes(model.SerializeToString())


def _write_huge_external_onnx(directory: Path) -> None:
    """A model whose initializer claims 4x10^15 bytes of external data in a 64-byte file beside it."""
    from onnx import TensorProto, helper

    directory.mkdir()
    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[10**15])
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "w.bin"), ("offset", "0"), ("length", str(4 * 10**15))):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    (directory / "w.bin").write_bytes(b"\0" * 64)
    model = _huge_onnx_model([helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])], [weight])
    (directory / "model.onnx").write_bytes(model.SerializeToString())


def _write_hf_directory(path: Path, architecture: str) -> None:
    """A Hugging Face directory whose `architectures` names something in transformers that is not a model."""
    path.mkdir()
    config = {
        "model_type": "bert",
        "architectures": [architecture],
        "hidden_size": 8,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 16,
        "vocab_size": 32,
    }
    (path / "config.json").write_text(json.dumps(config))
    save_file({"w": torch.zeros(2)}, str(path / "model.safetensors"))


def build_bad_corpus(directory: Path, marker: Path) -> list[BadCase]:
    """Write every bad file into `directory`; loading any of them must never create `marker`."""
    directory.mkdir(parents=True, exist_ok=True)
    cases: list[BadCase] = []

    def add(
        name: str,
        error: type[errors.RoboptError],
        fragment: str,
        trusted_error: type[errors.RoboptError] | None = None,
        trusted_fragment: str | None = None,
    ) -> Path:
        path = directory / name
        cases.append(BadCase(name, path, error, fragment, trusted_error, trusted_fragment))
        return path

    add("empty.pt", errors.CorruptFileError, "empty").write_bytes(b"")

    good = directory / "_good.safetensors"
    save_file({"weight": torch.arange(4096, dtype=torch.float32)}, str(good))
    blob = good.read_bytes()
    good.unlink()
    add("truncated.safetensors", errors.CorruptFileError, "truncated").write_bytes(blob[: len(blob) - 1000])

    header = json.dumps({"w": {"dtype": "F32", "shape": [2**38], "data_offsets": [0, 2**40]}}).encode()
    add("terabytes.safetensors", errors.CorruptFileError, "header describes").write_bytes(
        struct.pack("<Q", len(header)) + header + b"\0" * 64
    )
    add("huge_header.safetensors", errors.CorruptFileError, "claims").write_bytes(
        struct.pack("<Q", 2**42) + b'{"w": {}}' + b"\0" * 64
    )

    for name, shape in (
        ("negative", [-2, -8]),
        ("string", ["4", 4]),
        ("null", [None, 16]),
        ("overflowing", [2**62, 2**62, 4]),
    ):
        _write_safetensors_header(
            add(f"shape_{name}.safetensors", errors.CorruptFileError, "shape"),
            {"w": {"dtype": "F32", "shape": shape, "data_offsets": [0, 64]}},
            64,
        )
    _write_huge_input_onnx(add("huge_input.onnx", errors.CorruptFileError, "memory budget"))
    _write_huge_external_onnx(add("huge_external_data", errors.CorruptFileError, "declares initializer 'w'"))
    _write_hf_directory(
        add("hf_function_arch", errors.UnsupportedFormatError, "not a model class"), "pipeline"
    )
    _write_hf_directory(
        add("hf_config_arch", errors.UnsupportedFormatError, "not a model class"), "AutoConfig"
    )

    add("random.onnx", errors.CorruptFileError, "not an ONNX").write_bytes(
        bytes(((i * 7919 + 13) * 104729) % 251 for i in range(4096))
    )
    add("truncated.onnx", errors.CorruptFileError, "not a valid ONNX").write_bytes(
        b"\x08\x08\x12\x07pytorch" + b"\x3a\xff\xff\x03" + b"\x00" * 16
    )

    with add("command.pt", errors.UnsafeFileError, "posix.system").open("wb") as handle:
        pickle.dump(_RunsCommand(marker), handle)
    torch.save(
        {"weight": torch.zeros(2), "payload": _RunsCommand(marker)},
        add("command_zip.pt", errors.UnsafeFileError, "posix.system"),
    )

    with zipfile.ZipFile(add("escape.zip", errors.UnsafeFileError, "'..'"), "w") as archive:
        archive.writestr("model/config.json", "{}")
        archive.writestr("../../escaped.txt", "outside")
    _tar_with(
        add("escape.tar.gz", errors.UnsafeFileError, "'..'"),
        [(tarfile.TarInfo("model/../../escaped.txt"), b"outside")],
    )
    link = tarfile.TarInfo("model/link")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    _tar_with(add("symlink.tar.gz", errors.UnsafeFileError, "link"), [(link, None)])
    absolute = tarfile.TarInfo("/tmp/robopt-absolute.txt")
    absolute.size = 3
    _tar_with(add("absolute.tar.gz", errors.UnsafeFileError, "absolute"), [(absolute, b"abc")])

    with zipfile.ZipFile(
        add("bomb.zip", errors.ResourceError, "archive bomb"), "w", zipfile.ZIP_DEFLATED
    ) as archive:
        with archive.open("model/weights.bin", "w") as member:
            chunk = b"\0" * (1024 * 1024)
            for _ in range(96):
                member.write(chunk)

    add("not_a_model.bin", errors.UnsupportedFormatError, "unrecognized").write_bytes(b"hello, robot" * 10)
    add("gzip_not_tar.tar.gz", errors.CorruptFileError, "not a readable tar").write_bytes(
        __import__("gzip").compress(b"just text, no tar header" * 40)
    )
    with zipfile.ZipFile(add("data.npz", errors.UnsupportedFormatError, "not a model"), "w") as archive:
        archive.writestr("x.npy", b"\x93NUMPY")
    write_bad_pickles(marker, add)
    write_bad_formats(add)
    return cases
