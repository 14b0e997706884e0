"""Load Hugging Face model directories (config.json + weights) through transformers, offline and without code."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from tools.errors import UnsafeFileError, UnsupportedFormatError, ValidationError, first_line
from tools.intake.detect import validate_safetensors_header
from tools.intake.hf_inputs import infer_hf_input_specs, with_encoder_inputs
from tools.intake.pickle_scan import classify_torch_pickle
from tools.intake.types import LoadedModel, LoadOptions, ModelFormat


def _offline() -> None:
    """Never reach a hub, and keep transformers' progress bars off the CLI's stderr."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def model_class_for(config: dict[str, Any], options: LoadOptions, source: str = "config.json") -> Any:
    """Pick the transformers class for a config: `architectures[0]` when transformers has it, else AutoModel.

    A name transformers has that is not a model class (a function, a config) is refused: `source` names the file.
    """
    import transformers

    if config.get("auto_map") and not options.trust_remote_code:
        raise UnsafeFileError(
            "this Hugging Face model ships its own Python code (auto_map in config.json); it is not run by default",
            hint="pass --trust-remote-code only if you trust its source",
        )
    architectures = config.get("architectures") or []
    if not isinstance(architectures, list):
        raise UnsupportedFormatError(
            f"{source}: architectures is {architectures!r}, not a list of model class names"
        )
    for name in architectures:
        cls = getattr(transformers, str(name), None)
        if cls is None:
            continue
        if not _is_model_class(cls):
            raise UnsupportedFormatError(
                f"{source}: architectures names {name!r}, which in transformers is "
                f"{'the class ' + cls.__name__ if isinstance(cls, type) else 'a ' + type(cls).__name__}, "
                "not a model class",
                hint="architectures must name a transformers model class such as 'BertModel'",
            )
        return cls
    return transformers.AutoModel


def _is_model_class(candidate: object) -> bool:
    """A transformers model class (PreTrainedModel subclass) or an AutoModel* factory, never a function or config."""
    from transformers import PreTrainedModel
    from transformers.models.auto.auto_factory import _BaseAutoModelClass

    return isinstance(candidate, type) and issubclass(candidate, (PreTrainedModel, _BaseAutoModelClass))


def model_from_config(config: dict[str, Any], options: LoadOptions) -> torch.nn.Module:
    """Build a randomly initialized model from a config dict (weights are loaded by the caller)."""
    import transformers

    _offline()
    cls = model_class_for(config, options)
    try:
        hf_config = transformers.AutoConfig.for_model(**config)
        if cls is transformers.AutoModel:
            return transformers.AutoModel.from_config(hf_config, trust_remote_code=options.trust_remote_code)
        return cls(hf_config)
    except (ValueError, KeyError, TypeError) as exc:
        raise ValidationError(f"cannot build a model from this config.json: {exc}") from None


def load_hf_directory(path: Path, options: LoadOptions) -> LoadedModel:
    """Validate the weight files of a Hugging Face directory, then load it with transformers, offline."""
    _offline()
    config_path = path / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValidationError(f"{path.name}/config.json is not valid JSON: {exc}") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise ValidationError(f"{path.name}/config.json has no model_type; it is not a transformers config")
    cls = model_class_for(config, options, source=f"{path.name}/config.json")
    use_safetensors = _check_weight_files(path)
    try:
        module = cls.from_pretrained(
            str(path),
            local_files_only=True,
            trust_remote_code=options.trust_remote_code,
            use_safetensors=use_safetensors,
            dtype="auto",
        )
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise ValidationError(
            f"{path.name}: transformers cannot load this directory: {first_line(exc)}"
        ) from None
    module.eval()
    specs = list(options.input_specs) or with_encoder_inputs(infer_hf_input_specs(config), module, config)
    return LoadedModel(
        source=path,
        path=path,
        format=ModelFormat.HF_DIRECTORY,
        options=options,
        input_specs=specs,
        module=module,
        config=config,
        metadata={"architecture": type(module).__name__},
    )


def _check_weight_files(path: Path) -> bool:
    """Validate every weight file before transformers opens it; return whether they are SafeTensors."""
    safetensors_files = sorted(path.glob("*.safetensors"))
    for weights in safetensors_files:
        validate_safetensors_header(weights)
    if safetensors_files:
        return True
    for weights in sorted(path.glob("pytorch_model*.bin")):
        weights_only, unsafe = classify_torch_pickle(weights)
        if not weights_only:
            raise UnsafeFileError(
                f"{weights.name} imports {', '.join(unsafe[:3])} when unpickled; refused",
                hint="convert the weights to safetensors",
            )
    return False
