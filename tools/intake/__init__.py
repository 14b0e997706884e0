"""Model intake: detect a model's format by content, validate it, and load it without running untrusted code.

`load_model(path, options, data_dir)` is the one entry point; archives are unpacked under `<data_dir>/intake`.
"""

from __future__ import annotations

from pathlib import Path

from tools.errors import CorruptFileError, RoboptError, ValidationError
from tools.intake.archive import ArchiveLimits, unpack_archive
from tools.intake.detect import Detection, detect_format
from tools.intake.types import LoadedModel, LoadOptions, ModelFormat, Runtime
from tools.log import get_logger

__all__ = [
    "ArchiveLimits",
    "Detection",
    "LoadOptions",
    "LoadedModel",
    "ModelFormat",
    "Runtime",
    "detect_format",
    "load_model",
]

_log = get_logger("intake")


def load_model(
    path: Path,
    options: LoadOptions | None = None,
    data_dir: Path = Path("data"),
    limits: ArchiveLimits | None = None,
) -> LoadedModel:
    """Detect, validate and load the model at `path`; raise a ValidationError subclass with a one-line reason."""
    options = options or LoadOptions()
    source = Path(path)
    detection = detect_format(source)
    if detection.format == ModelFormat.ARCHIVE:
        unpacked = unpack_archive(detection.path, Path(data_dir), limits)
        detection = detect_format(unpacked)
        if detection.format == ModelFormat.ARCHIVE:
            raise ValidationError(f"{source.name} holds another archive; unpack nested archives first")
    try:
        loaded = _load_detected(detection, options, Path(data_dir))
    except RoboptError:
        raise
    except MemoryError:
        raise CorruptFileError(
            f"{source.name}: loading it ran out of memory; its headers may be forged"
        ) from None
    loaded.source = source
    if loaded.module is not None and callable(getattr(loaded.module, "policy_facts", None)):
        loaded.metadata.setdefault(
            "policy", loaded.module.policy_facts()
        )  # robopt's own torch versions of it
    _log.info(
        "loaded model",
        extra={"model_id": source.name, "model_path": str(source), "format": loaded.format.value},
    )
    return loaded


def _load_detected(detection: Detection, options: LoadOptions, data_dir: Path) -> LoadedModel:
    from tools.intake import hf_loader, lerobot_loader, onnx_loader, sampler_loader, torch_loaders

    fmt, path = detection.format, detection.path
    if fmt == ModelFormat.TORCHSCRIPT:
        return torch_loaders.load_torchscript(path, options)
    if fmt in (ModelFormat.TORCH_STATE_DICT, ModelFormat.TORCH_PICKLED_MODULE):
        return torch_loaders.load_torch_file(path, options, fmt)
    if fmt == ModelFormat.SAFETENSORS:
        return torch_loaders.load_safetensors_file(path, options)
    if fmt == ModelFormat.HF_DIRECTORY:
        return hf_loader.load_hf_directory(path, options)
    if fmt == ModelFormat.LEROBOT_POLICY:
        return lerobot_loader.load_lerobot_policy(path, options)
    if fmt == ModelFormat.LEROBOT_SAMPLER:
        return sampler_loader.load_lerobot_sampler(path, options)
    if fmt == ModelFormat.ONNX:
        return onnx_loader.load_onnx(path, options)
    if fmt in (ModelFormat.TF_SAVEDMODEL, ModelFormat.KERAS):
        return onnx_loader.load_tensorflow(path, options, fmt, data_dir)
    raise ValidationError(f"{path.name}: no loader for format {fmt.value}")
