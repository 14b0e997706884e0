"""Write a reference model in every format robopt ingests, each with what a loader needs beside the weights.

Every torch export carries the same `robopt.json` description (architecture, config, input specs, outputs):
inside TorchScript as an extra file, in the SafeTensors header, in the ONNX metadata, and next to the state
dict as `model_config.json` (the kwargs that rebuild the module) plus `reference.json`.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tarfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from tools.errors import OptimizationError
from tools.inputs import InputSpec, synthesize_inputs
from tools.log import get_logger

logger = get_logger("reference")

ROBOPT_JSON = "robopt.json"
FILE_NAMES: dict[str, str] = {
    "torchscript": "model_torchscript.pt",
    "torch_state_dict": "model_state_dict.pt",
    "safetensors": "model.safetensors",
    "torch_pickled_module": "model_pickled.pt",
    "onnx": "model.onnx",
}
CONFIG_FILE = "model_config.json"


@dataclass(frozen=True)
class ExportedModel:
    """Paths of one model written in every format, keyed like `tools.intake.types.ModelFormat` values."""

    directory: Path
    formats: dict[str, Path]
    config_path: Path
    architecture: str
    input_specs: list[InputSpec] = field(default_factory=list)
    output_names: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Path]:
        """Return format name -> path, with the kwargs file under `config`."""
        return {**self.formats, "config": self.config_path}


def describe_model(
    architecture: str, config: dict[str, Any], input_specs: list[InputSpec], output_names: list[str]
) -> dict[str, Any]:
    """Return the JSON description a loader needs: how to rebuild the module and what it takes and returns."""
    return {
        "architecture": architecture,
        "config": config,
        "input_specs": [spec.model_dump(mode="json") for spec in input_specs],
        "input_flags": [spec.to_flag() for spec in input_specs],
        "output_names": list(output_names),
    }


def export_model(
    model: nn.Module,
    target_dir: Path,
    architecture: str,
    config: dict[str, Any],
    input_specs: list[InputSpec],
    output_names: list[str],
) -> ExportedModel:
    """Write `model` as TorchScript, state dict, SafeTensors, pickled module and ONNX into `target_dir`.

    `architecture` is the `module:Class` that `Class(**config)` rebuilds the network from.
    """
    from safetensors.torch import save_file

    target_dir = Path(target_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    description = describe_model(architecture, config, input_specs, output_names)
    description_text = json.dumps(description, indent=2, sort_keys=True)
    paths = {name: target_dir / file_name for name, file_name in FILE_NAMES.items()}
    config_path = target_dir / CONFIG_FILE
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))

    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    torch.save(state, paths["torch_state_dict"])
    save_file(state, str(paths["safetensors"]), metadata={"format": "pt", ROBOPT_JSON: description_text})
    torch.save(model, paths["torch_pickled_module"])
    _export_torchscript(model, paths["torchscript"], input_specs, description_text)
    _export_onnx(model, paths["onnx"], input_specs, output_names, description_text)
    logger.info("exported %s to %s", architecture, target_dir, extra={"formats": ",".join(paths)})
    return ExportedModel(
        directory=target_dir,
        formats=paths,
        config_path=config_path,
        architecture=architecture,
        input_specs=list(input_specs),
        output_names=list(output_names),
    )


def _export_torchscript(model: nn.Module, path: Path, input_specs: list[InputSpec], description: str) -> None:
    """Script the module (keeps input names and dynamic shapes); fall back to tracing if it is not scriptable."""
    with warnings.catch_warnings():
        # TorchScript is deprecated, yet users still bring it.
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            compiled = torch.jit.script(model)
        except Exception as exc:  # noqa: BLE001 - TorchScript raises many frontend error types
            logger.info("torch.jit.script failed (%s); tracing instead", type(exc).__name__)
            example = synthesize_inputs(input_specs, seed=0)
            compiled = torch.jit.trace(model, example_kwarg_inputs=example)
        torch.jit.save(compiled, str(path), _extra_files={ROBOPT_JSON: description})


def _export_onnx(
    model: nn.Module, path: Path, input_specs: list[InputSpec], output_names: list[str], description: str
) -> None:
    """Export with the dynamo exporter (named inputs, dynamic batch axis) and embed the description."""
    import onnx

    example = synthesize_inputs(input_specs, seed=0)
    batch = torch.export.Dim("batch", min=1, max=1024)
    dynamic_shapes = {spec.name: {0: batch} for spec in input_specs}
    quiet = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), _quiet_torch_onnx_logs():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model,
                (),
                kwargs=example,
                input_names=[spec.name for spec in input_specs],
                output_names=output_names,
                dynamic_shapes=dynamic_shapes,
                dynamo=True,
                verbose=False,
            )
    except Exception as exc:  # noqa: BLE001 - the exporter raises many error types
        raise OptimizationError(f"ONNX export failed: {type(exc).__name__}: {str(exc)[:300]}") from exc
    if program is None:
        raise OptimizationError("ONNX export returned no program")
    program.save(str(path))
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = ROBOPT_JSON, description
    onnx.save(proto, str(path))


@contextlib.contextmanager
def _quiet_torch_onnx_logs() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo")]
    levels = [item.level for item in loggers]
    for item in loggers:
        item.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for item, level in zip(loggers, levels):
            item.setLevel(level)


def archive_directory(directory: Path, target_dir: Path, stem: str | None = None) -> dict[str, Path]:
    """Pack `directory` as `<stem>.zip` and `<stem>.tar.gz`, each holding one top folder named `<stem>`."""
    directory, target_dir = Path(directory), Path(target_dir)
    stem = stem or directory.name
    target_dir.mkdir(parents=True, exist_ok=True)
    files = sorted(path for path in directory.rglob("*") if path.is_file())
    zip_path = target_dir / f"{stem}.zip"
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in files:
            archive.write(path, f"{stem}/{path.relative_to(directory).as_posix()}")
    tar_path = target_dir / f"{stem}.tar.gz"
    with tarfile.open(tar_path, "w:gz") as archive:
        for path in files:
            archive.add(path, arcname=f"{stem}/{path.relative_to(directory).as_posix()}", recursive=False)
    return {"archive_zip": zip_path, "archive_tar_gz": tar_path}
