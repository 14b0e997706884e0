"""Recognize a model's format by content (magic bytes, archive structure, headers), never by extension alone."""

from __future__ import annotations

import json
import struct
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tools.errors import CorruptFileError, UnsupportedFormatError
from tools.intake.budget import check_within_budget
from tools.intake.pickle_scan import classify_torch_pickle
from tools.intake.types import ModelFormat

_ZIP_MAGIC = b"PK\x03\x04"
_GZIP_MAGIC = b"\x1f\x8b"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024  # the reference implementation's own limit
_SAFETENSORS_DTYPES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "U16": 2,
    "U32": 4,
    "U64": 8,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}
_HF_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_CONFIG_READ_LIMIT = 4 * 1024 * 1024  # a policy's config.json is a few KB; never parse a huge one
KNOWN_FORMATS = (
    "TorchScript (.pt), PyTorch state dict (.pt/.pth), SafeTensors, Hugging Face directory, LeRobot policy "
    "directory, ONNX, "
    "TensorFlow SavedModel / Keras, .zip / .tar.gz of a model directory"
)


@dataclass(frozen=True)
class Detection:
    """What a path holds: its format, the file or directory to load, and facts found on the way."""

    format: ModelFormat
    path: Path
    facts: dict[str, object] = field(default_factory=dict)


def detect_format(path: Path) -> Detection:
    """Identify the model format of `path` (a file or a directory) from its content."""
    path = Path(path)
    if not path.exists():
        raise UnsupportedFormatError(f"no such file or directory: {path}")
    if path.is_dir():
        return _detect_directory(path)
    size = path.stat().st_size
    if size == 0:
        raise CorruptFileError(
            f"{path.name} is empty (0 bytes)", hint="check that the upload or copy completed"
        )
    with path.open("rb") as handle:
        head = handle.read(16)
    if head.startswith(_ZIP_MAGIC):
        return _detect_zip(path)
    if head.startswith(_GZIP_MAGIC) or _is_plain_tar(path):
        if not _is_tar(path):
            raise CorruptFileError(f"{path.name} is gzip-compressed but not a readable tar archive")
        return Detection(ModelFormat.ARCHIVE, path, {"archive": "tar"})
    if head.startswith(_HDF5_MAGIC):
        return Detection(ModelFormat.KERAS, path, {"container": "hdf5"})
    if _looks_like_safetensors(head, size):
        validate_safetensors_header(path)
        return Detection(ModelFormat.SAFETENSORS, path)
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return _detect_torch_pickle(path)
    if path.name == "saved_model.pb":
        return Detection(ModelFormat.TF_SAVEDMODEL, path.parent)
    if _looks_like_onnx(head):
        return Detection(ModelFormat.ONNX, path)
    if path.suffix.lower() == ".onnx":
        raise CorruptFileError(f"{path.name} is named .onnx but is not an ONNX protobuf (no model header)")
    raise UnsupportedFormatError(
        f"{path.name}: unrecognized model format (first bytes {head[:8].hex()})",
        hint=f"robopt reads {KNOWN_FORMATS}",
    )


def _detect_directory(path: Path) -> Detection:
    names = {child.name for child in path.iterdir()}
    if "saved_model.pb" in names or "saved_model.pbtxt" in names:
        return Detection(ModelFormat.TF_SAVEDMODEL, path)
    if {"sampler.json", "encoder.onnx", "denoiser.onnx"} <= names:
        return Detection(ModelFormat.LEROBOT_SAMPLER, path, {"policy_type": "diffusion"})
    if "config.json" in names:
        policy_type = lerobot_policy_type(path / "config.json")
        if policy_type is not None:
            if "model.safetensors" not in names:
                raise UnsupportedFormatError(
                    f"{path.name}/ is a LeRobot {policy_type} policy directory without model.safetensors",
                    hint="save the policy with policy.save_pretrained(dir), which writes config.json and "
                    "model.safetensors",
                )
            return Detection(ModelFormat.LEROBOT_POLICY, path, {"policy_type": policy_type})
    if "config.json" in names and any(name in names for name in _HF_WEIGHT_FILES):
        return Detection(ModelFormat.HF_DIRECTORY, path)
    if "config.json" in names and any(name.endswith(".safetensors") for name in names):
        return Detection(ModelFormat.HF_DIRECTORY, path)
    candidates = sorted(
        child for child in path.iterdir() if child.is_file() and not child.name.startswith(".")
    )
    models = [c for c in candidates if c.suffix.lower() in {".onnx", ".pt", ".pth", ".ts", ".keras", ".h5"}]
    if len(models) == 1:
        return detect_format(models[0])
    if "config.json" in names:
        raise UnsupportedFormatError(
            f"{path.name}/ has config.json but no weights",
            hint="a Hugging Face directory needs model.safetensors (or pytorch_model.bin) beside config.json",
        )
    raise UnsupportedFormatError(
        f"{path.name}/ holds no recognizable model ({len(candidates)} files, {len(models)} model files)",
        hint=f"point at one model file or a Hugging Face directory; robopt reads {KNOWN_FORMATS}",
    )


def diffusion_scheduler(directory: Path) -> str | None:
    """The noise scheduler ("DDPM", "DDIM") of a LeRobot Diffusion Policy directory, else None."""
    config = _diffusion_config(directory)
    kind = config.get("noise_scheduler_type", "DDPM") if config is not None else None
    return str(kind) if kind else None


def diffusion_inference_steps(directory: Path) -> int | None:
    """The denoising steps a LeRobot Diffusion Policy directory samples with (`num_inference_steps`, else its
    `num_train_timesteps`, as LeRobot does), or the steps an exported sampler runner takes now (its
    `sampler.json`); None when it is neither or does not say."""
    runner = Path(directory) / "sampler.json"
    if runner.is_file():
        try:
            value = json.loads(runner.read_text()).get("num_inference_steps")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            return None
        return value if isinstance(value, int) and value > 0 else None
    config = _diffusion_config(directory)
    steps = (
        (config.get("num_inference_steps") or config.get("num_train_timesteps"))
        if config is not None
        else None
    )
    return steps if isinstance(steps, int) and steps > 0 else None


def _diffusion_config(directory: Path) -> dict[str, Any] | None:
    """The config.json of a LeRobot Diffusion Policy directory, read once; None for anything else."""
    config = _lerobot_config(Path(directory) / "config.json")
    return config if config is not None and config.get("type") == "diffusion" else None


def lerobot_policy_type(config_path: Path) -> str | None:
    """The policy `type` of a LeRobot config.json (it carries `type` and input/output features), else None."""
    config = _lerobot_config(config_path)
    return str(config["type"]) if config is not None else None


def _lerobot_config(config_path: Path) -> dict[str, Any] | None:
    """A LeRobot policy config.json (a non-empty string `type` and input/output features, no Hugging Face
    `model_type`), parsed; None when the file is missing, too large, unreadable or something else."""
    try:
        if not config_path.is_file() or config_path.stat().st_size > _CONFIG_READ_LIMIT:
            return None
        config = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(config, dict) or "model_type" in config:
        return None
    policy_type = config.get("type")
    has_features = isinstance(config.get("input_features"), dict) or isinstance(
        config.get("output_features"), dict
    )
    return config if isinstance(policy_type, str) and policy_type and has_features else None


def _detect_zip(path: Path) -> Detection:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise CorruptFileError(f"{path.name} starts like a zip archive but cannot be read: {exc}") from None
    if not names:
        raise CorruptFileError(f"{path.name} is an empty zip archive")
    data_pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if data_pickles:
        prefix = data_pickles[0].split("/")[0]
        if any(n.startswith(f"{prefix}/code/") for n in names) or f"{prefix}/constants.pkl" in names:
            return Detection(ModelFormat.TORCHSCRIPT, path)
        return _detect_torch_pickle(path)
    if "model.weights.h5" in names and "config.json" in names:
        return Detection(ModelFormat.KERAS, path, {"container": "keras_v3"})
    if all(n.endswith(".npy") for n in names):
        raise UnsupportedFormatError(
            f"{path.name} is a NumPy .npz data file, not a model", hint="pass it as --data"
        )
    return Detection(ModelFormat.ARCHIVE, path, {"archive": "zip"})


def _detect_torch_pickle(path: Path) -> Detection:
    weights_only, unsafe = classify_torch_pickle(path)
    if weights_only:
        return Detection(ModelFormat.TORCH_STATE_DICT, path)
    return Detection(ModelFormat.TORCH_PICKLED_MODULE, path, {"globals": unsafe})


def _is_plain_tar(path: Path) -> bool:
    with path.open("rb") as handle:
        handle.seek(257)
        return handle.read(5) == b"ustar"


def _is_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except (OSError, EOFError):
        return False


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    return head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] > 1


def validate_safetensors_header(path: Path) -> dict[str, dict]:
    """Check a SafeTensors header against the file: size, JSON, dtypes, and offsets inside the data, contiguous."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        (header_len,) = struct.unpack("<Q", handle.read(8))
        if header_len > size - 8:
            raise CorruptFileError(
                f"{path.name}: SafeTensors header claims {header_len} bytes but the file has {size}",
                hint="the file is truncated or forged; re-export it",
            )
        if header_len > _SAFETENSORS_MAX_HEADER:
            raise CorruptFileError(
                f"{path.name}: SafeTensors header of {header_len} bytes exceeds the 100 MB limit"
            )
        try:
            header = json.loads(handle.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CorruptFileError(f"{path.name}: SafeTensors header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise CorruptFileError(f"{path.name}: SafeTensors header is not a JSON object")
    data_len = size - 8 - header_len
    end = 0
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    for name, info in tensors.items():
        if not isinstance(info, dict):
            raise CorruptFileError(f"{path.name}: tensor {name!r} is described by a {type(info).__name__}")
    for name, info in sorted(tensors.items(), key=lambda item: _offsets(path, item)[0]):
        begin, stop = _offsets(path, (name, info))
        dtype = info.get("dtype")
        if dtype not in _SAFETENSORS_DTYPES:
            raise CorruptFileError(f"{path.name}: tensor {name!r} has unknown dtype {dtype!r}")
        declared = _element_count(path, name, info.get("shape")) * _SAFETENSORS_DTYPES[dtype]
        if declared > data_len:
            raise CorruptFileError(
                f"{path.name}: the header describes tensor {name!r} of shape {info['shape']} as {declared:,} "
                f"bytes but the file holds {data_len:,} bytes of data",
                hint="the header is forged or the file truncated; re-export it",
            )
        if begin != end or stop - begin != declared:
            raise CorruptFileError(f"{path.name}: tensor {name!r} offsets [{begin}, {stop}) are inconsistent")
        end = stop
    if end != data_len:
        raise CorruptFileError(
            f"{path.name}: SafeTensors data holds {data_len} bytes but the header describes {end}",
            hint="the file is truncated; re-export or re-download it",
        )
    check_within_budget(path.name, "SafeTensors weights", data_len)
    return tensors


def _element_count(path: Path, name: str, shape: object) -> int:
    """Elements of a SafeTensors shape: a list of non-negative integers, each a valid 64-bit size."""
    if not isinstance(shape, list):
        raise CorruptFileError(f"{path.name}: tensor {name!r} has shape {shape!r}, not a list of sizes")
    count = 1
    for dim in shape:
        if type(dim) is not int or not 0 <= dim < 2**63:
            raise CorruptFileError(
                f"{path.name}: tensor {name!r} has shape {shape!r}; dimension {dim!r} is not a size "
                "(a non-negative 64-bit integer)"
            )
        count *= dim
    return count


def _offsets(path: Path, item: tuple[str, object]) -> tuple[int, int]:
    name, info = item
    try:
        begin, stop = info["data_offsets"]  # type: ignore[index]
    except (TypeError, KeyError, ValueError):
        begin = stop = None
    if type(begin) is int and type(stop) is int and 0 <= begin <= stop:
        return begin, stop
    raise CorruptFileError(f"{path.name}: tensor {name!r} has no valid data_offsets")


def _looks_like_onnx(head: bytes) -> bool:
    # A ModelProto starts with field 1 (ir_version, varint: tag 0x08) and a small version number.
    return len(head) >= 2 and head[0] == 0x08 and 0 < head[1] < 32
