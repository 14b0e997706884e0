"""More malformed and hostile files of every format robopt reads (SafeTensors, ONNX, archives, Hugging Face and
LeRobot directories), each refused with its own error: forged headers, external data that points outside the model,
archive members that are links or devices, a gzip bomb, a config that needs remote code."""

from __future__ import annotations

import io
import json
import struct
import tarfile
import zipfile
from pathlib import Path
from typing import Callable

from tools import errors

Add = Callable[..., Path]
"""`add(name, error, fragment[, trusted_error, trusted_fragment])` registers a case and returns its path."""


def _safetensors(path: Path, header: bytes, data: bytes = b"\0" * 64) -> None:
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)


def _onnx_with_external(directory: Path, location: str) -> None:
    """A one-initializer graph whose weight's external data is at `location` (relative to the model)."""
    from onnx import TensorProto, helper

    directory.mkdir()
    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4])
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "external",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    (directory / "model.onnx").write_bytes(model.SerializeToString())


def _tar(path: Path, member: tarfile.TarInfo, payload: bytes | None = None) -> None:
    with tarfile.open(path, "w:gz") as archive:
        if payload is not None:
            member.size = len(payload)
        archive.addfile(member, io.BytesIO(payload) if payload is not None else None)


def _config_dir(path: Path, config: dict | str) -> None:
    """A model directory: `config` as its config.json beside a small model.safetensors."""
    import torch
    from safetensors.torch import save_file

    path.mkdir()
    (path / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    save_file({"w": torch.zeros(2)}, str(path / "model.safetensors"))


def write_bad_formats(add: Add) -> None:
    """Write each file, registering it with `add(name, error, fragment)`."""
    corrupt, unsafe, unsupported = (
        errors.CorruptFileError,
        errors.UnsafeFileError,
        errors.UnsupportedFormatError,
    )
    _safetensors(add("header_not_json.safetensors", unsupported, "unrecognized"), b"not json at all!")
    _safetensors(add("header_list.safetensors", unsupported, "unrecognized"), b"[1, 2, 3]")
    tensor = {"dtype": "F99", "shape": [16], "data_offsets": [0, 64]}
    _safetensors(add("unknown_dtype.safetensors", corrupt, "dtype"), json.dumps({"w": tensor}).encode())
    tensor = {"dtype": "F32", "shape": [16], "data_offsets": [64, 0]}
    _safetensors(add("offsets_reversed.safetensors", corrupt, "offsets"), json.dumps({"w": tensor}).encode())
    tensor = {"dtype": "F32", "shape": [2**20], "data_offsets": [0, 2**22]}
    _safetensors(
        add("offsets_past_end.safetensors", corrupt, "header describes"), json.dumps({"w": tensor}).encode()
    )
    add("eight_bytes.safetensors", unsupported, "unrecognized").write_bytes(struct.pack("<Q", 16))

    beside = "not a file beside the model"
    _onnx_with_external(add("external_escape", corrupt, beside), "../../../../etc/passwd")
    _onnx_with_external(add("external_absolute", corrupt, beside), "/etc/passwd")
    from onnx import ModelProto

    add("no_graph.onnx", corrupt, "graph").write_bytes(ModelProto(ir_version=8).SerializeToString())

    with zipfile.ZipFile(add("symlink.zip", unsafe, "link"), "w") as archive:
        link = zipfile.ZipInfo("model/link")
        link.external_attr = (0o120777 << 16) | 0x20
        archive.writestr(link, "/etc/passwd")
    with zipfile.ZipFile(add("absolute.zip", unsafe, "absolute"), "w") as archive:
        archive.writestr("/tmp/robopt-zip-absolute.txt", "abc")
    hard = tarfile.TarInfo("model/hard")
    hard.type, hard.linkname = tarfile.LNKTYPE, "/etc/passwd"
    _tar(add("hardlink.tar.gz", unsafe, "link"), hard)
    device = tarfile.TarInfo("model/device")
    device.type, device.devmajor, device.devminor = tarfile.CHRTYPE, 1, 3
    _tar(add("device.tar.gz", unsafe, "device"), device)
    with tarfile.open(add("bomb.tar.gz", errors.ResourceError, "bomb"), "w:gz", compresslevel=9) as archive:
        member = tarfile.TarInfo("model/weights.bin")
        member.size = 96 * 1024 * 1024
        archive.addfile(member, io.BytesIO(bytes(member.size)))

    _config_dir(add("hf_config_not_json", errors.ValidationError, "not valid JSON"), '{"model_type": "bert",')
    remote = {
        "model_type": "custom",
        "architectures": ["Custom"],
        "auto_map": {"AutoModel": "modeling.Custom"},
    }
    # trusted, transformers looks for the code it names (there is none) and the directory is refused as unloadable
    _config_dir(
        add("hf_remote_code", unsafe, "ships its own Python code", errors.ValidationError, "cannot load"),
        remote,
    )
    policy = {"type": "no_such_policy", "input_features": {}, "output_features": {}}
    _config_dir(add("lerobot_unknown_type", unsupported, "no_such_policy"), policy)
