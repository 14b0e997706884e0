"""Load PyTorch formats: TorchScript archives, state dicts, SafeTensors files, and (trusted) pickled modules.

By default nothing is unpickled beyond `torch.load(weights_only=True)`; a file that needs more is refused with
the globals it would import and how to opt in.
"""

from __future__ import annotations

import importlib
import json
import pickle
from pathlib import Path
from typing import Any

import torch

from tools.errors import InputSpecError, UnsafeFileError, ValidationError, first_line
from tools.inputs import InputSpec
from tools.intake.pickle_scan import (
    allowlist_pickle_module,
    classify_torch_pickle,
    is_dangerous_global,
    split_trusted_globals,
    torch_pickle_globals,
)
from tools.intake.types import LoadedModel, LoadOptions, ModelFormat

SIDECAR_NAME = "robopt.json"  # TorchScript extra file: {"input_specs": [...], "config": {...}}
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")


def load_torchscript(path: Path, options: LoadOptions) -> LoadedModel:
    """Load a TorchScript archive; inputs come from its `robopt.json` extra file or from the given specs."""
    extra = {SIDECAR_NAME: ""}
    try:
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as exc:  # noqa: BLE001 - the TorchScript loader raises RuntimeError with C++ text
        raise ValidationError(
            f"{path.name}: TorchScript archive cannot be loaded: {first_line(exc)}"
        ) from None
    module.eval()
    sidecar = json.loads(extra[SIDECAR_NAME]) if extra[SIDECAR_NAME] else {}
    specs = list(options.input_specs) or [InputSpec(**spec) for spec in sidecar.get("input_specs", [])]
    if not specs:
        arguments = [arg.name for arg in module.forward.schema.arguments if arg.name != "self"]
        raise InputSpecError(
            f"{path.name}: a TorchScript archive does not record input shapes (forward takes {', '.join(arguments)})",
            hint="pass --input-shape NAME:DIMS:DTYPE for each, e.g. "
            + f"{arguments[0] if arguments else 'x'}:1x3x224x224:float32",
        )
    return LoadedModel(
        source=path,
        path=path,
        format=ModelFormat.TORCHSCRIPT,
        options=options,
        input_specs=specs,
        module=module,
        config=sidecar.get("config", {}),
    )


def load_torch_file(path: Path, options: LoadOptions, detected: ModelFormat) -> LoadedModel:
    """Load a `.pt`/`.pth` file: a state dict (with an architecture) or, only when trusted, a pickled module."""
    if detected == ModelFormat.TORCH_PICKLED_MODULE:
        return _load_pickled_module(path, options)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except Exception as exc:  # noqa: BLE001 - weights-only unpickler raises UnpicklingError/RuntimeError
        raise UnsafeFileError(
            f"{path.name} cannot be loaded weights-only: {first_line(exc)}",
            hint="if you trust its source and it is a whole pickled module, pass --trust-pickle",
        ) from None
    return build_from_state_dict(
        path, _extract_state_dict(path, state), options, ModelFormat.TORCH_STATE_DICT
    )


def load_safetensors_file(path: Path, options: LoadOptions) -> LoadedModel:
    """Load a SafeTensors file into the architecture named by the options."""
    from safetensors.torch import load_file

    return build_from_state_dict(path, load_file(str(path)), options, ModelFormat.SAFETENSORS)


def _load_pickled_module(path: Path, options: LoadOptions) -> LoadedModel:
    _, unsafe = classify_torch_pickle(path)
    dangerous = [name for name in unsafe if is_dangerous_global(name)]
    if dangerous:
        raise UnsafeFileError(
            f"{path.name} would call {', '.join(dangerous[:3])} when unpickled: it runs code, refused",
            hint="this is never needed to store a model; do not load this file",
        )
    if not options.trust_pickle:
        raise UnsafeFileError(
            f"{path.name} is a whole pickled object that imports {', '.join(unsafe[:3])}; unpickling it can run code",
            hint="pass --trust-pickle only if you trust its source, or save model.state_dict() and pass --arch",
        )
    if any(name.startswith("lerobot.") for name in unsafe):  # a robopt version of a LeRobot policy
        from tools.lerobot.imports import install_shims

        install_shims()
    names = torch_pickle_globals(path)
    admitted, refused = split_trusted_globals(names, options.trusted_packages, options.trusted_globals)
    if refused:
        raise UnsafeFileError(
            f"{path.name} would import {', '.join(refused[:3])}, which a trusted load does not admit (only model "
            "classes of torch, transformers, LeRobot, torchao, bitsandbytes and the packages you name)",
            hint="if these are your own package's classes, name the package: --trust-package "
            + refused[0].split(".", 1)[0],
        )
    try:
        module = torch.load(
            path, map_location="cpu", weights_only=False, pickle_module=allowlist_pickle_module(admitted)
        )
    except pickle.UnpicklingError as exc:  # a global the scan did not see: refused by the allowlist unpickler
        text = str(exc)
        reason = next(
            (line.strip() for line in text.splitlines() if "GLOBAL" in line or "global" in line), ""
        )
        raise UnsafeFileError(
            f"{path.name}: the unpickler met a global outside the allowlist: {(reason or first_line(exc))[:300]}",
            hint="a model file does not build its globals on the stack; do not load this file",
        ) from None
    except Exception as exc:  # noqa: BLE001 - arbitrary errors from user classes while unpickling
        raise ValidationError(
            f"{path.name}: trusted unpickling failed: {first_line(exc)}",
            hint="the classes it was saved with must be importable",
        ) from None
    if not isinstance(module, torch.nn.Module):
        raise ValidationError(f"{path.name} holds a {type(module).__name__}, not a torch.nn.Module")
    module.eval()
    specs = list(options.input_specs) or _class_input_specs(type(module), {})
    return LoadedModel(
        source=path,
        path=path,
        format=ModelFormat.TORCH_PICKLED_MODULE,
        options=options,
        input_specs=_require_specs(path, specs),
        module=module,
    )


def _extract_state_dict(path: Path, state: Any) -> dict[str, torch.Tensor]:
    if isinstance(state, dict):
        for key in _STATE_DICT_KEYS:
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not state:
        raise ValidationError(f"{path.name} holds a {type(state).__name__}, not a state dict of tensors")
    tensors = {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValidationError(f"{path.name} holds a dict without tensors")
    return tensors


def build_from_state_dict(
    path: Path, state: dict[str, torch.Tensor], options: LoadOptions, fmt: ModelFormat
) -> LoadedModel:
    """Instantiate the architecture from `--arch module:Class` or a Hugging Face config and load the weights."""
    config = _read_json(options.config_path) if options.config_path else {}
    if options.architecture:
        cls = resolve_class(options.architecture)
        try:
            module = cls(**config) if config else cls()
        except Exception as exc:  # noqa: BLE001 - the user's constructor: any error, said plainly
            raise ValidationError(
                f"cannot build {options.architecture} from the given config: {type(exc).__name__}: "
                f"{first_line(exc)}",
                hint="pass --config with a JSON object of the class's constructor arguments",
            ) from None
        specs = list(options.input_specs) or _class_input_specs(cls, config)
    elif config.get("model_type"):
        from tools.intake.hf_loader import model_from_config

        module = model_from_config(config, options)
        from tools.intake.hf_inputs import infer_hf_input_specs, with_encoder_inputs

        specs = list(options.input_specs) or with_encoder_inputs(infer_hf_input_specs(config), module, config)
    else:
        raise ValidationError(
            f"{path.name} holds only weights ({len(state)} tensors); robopt needs the architecture to run them",
            hint="pass --arch package.module:Class (with --config kwargs.json) or --config a Hugging Face config.json",
        )
    _load_weights(path, module, state)
    module.eval()
    return LoadedModel(
        source=path,
        path=path,
        format=fmt,
        options=options,
        input_specs=_require_specs(path, specs),
        module=module,
        config=config,
    )


def _load_weights(path: Path, module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    expected = module.state_dict()
    mismatched = [
        f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    if mismatched:
        raise ValidationError(
            f"{path.name} does not match the architecture: {len(mismatched)} tensors differ in shape "
            f"({'; '.join(mismatched[:2])})",
            hint="check --arch/--config: they must describe the network these weights came from",
        )
    result = module.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    tied = {name for name, _ in module.named_parameters(remove_duplicate=False)} - {
        name for name, _ in module.named_parameters()
    }
    missing = [k for k in missing if k not in tied]
    if missing or result.unexpected_keys:
        raise ValidationError(
            f"{path.name} does not match the architecture: {len(missing)} missing "
            f"({', '.join(missing[:3])}), {len(result.unexpected_keys)} unexpected "
            f"({', '.join(result.unexpected_keys[:3])})",
            hint="check --arch/--config: they must describe the network these weights came from",
        )


def resolve_class(spec: str) -> type[torch.nn.Module]:
    """Import `package.module:Class`, which the user named explicitly, and check it is an nn.Module subclass."""
    module_name, _, class_name = spec.partition(":")
    if not module_name or not class_name:
        raise ValidationError(f"--arch {spec!r} is not of the form package.module:Class")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValidationError(
            f"--arch {spec!r} cannot be imported: {exc}",
            hint="make the module importable (installed or on PYTHONPATH)",
        ) from None
    except Exception as exc:  # noqa: BLE001 - the user's module ran and failed: any error, said plainly
        raise ValidationError(
            f"--arch {spec!r}: importing {module_name} failed with {type(exc).__name__}: {first_line(exc)}",
            hint="the module (or a package it imports) is broken in this environment; fix that import, or "
            "save the model as TorchScript or ONNX and pass that file instead of weights plus --arch",
        ) from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ValidationError(
            f"--arch {spec!r} cannot be imported: module {module_name} has no attribute {class_name!r}",
            hint="check the class name after the colon",
        )
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise ValidationError(f"--arch {spec!r} is not a torch.nn.Module subclass")
    return cls


def _class_input_specs(cls: type, config: dict[str, Any]) -> list[InputSpec]:
    """Ask the class for its inputs (`input_specs(config)` classmethod, a convention of robopt's references)."""
    method = getattr(cls, "input_specs", None)
    if callable(method):
        return [spec if isinstance(spec, InputSpec) else InputSpec(**spec) for spec in method(config or None)]
    return []


def _require_specs(path: Path, specs: list[InputSpec]) -> list[InputSpec]:
    if not specs:
        raise InputSpecError(
            f"{path.name}: the model's input shapes are unknown",
            hint="pass --input-shape NAME:DIMS:DTYPE for each forward() argument",
        )
    return specs


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValidationError(f"config file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValidationError(f"config file {Path(path).name} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValidationError(f"config file {Path(path).name} must hold a JSON object")
    return data
