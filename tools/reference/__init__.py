"""Reference models for tests, demos and evals, built in-process with no downloads: `build_reference(name, dir)`.

`vla` and `conv_policy` (trained on the procedural reaching task, `tools.reference.reaching`) and `reacher` load
the weights that ship with the repository (`tools.reference.shipped`) and are exported to every torch/ONNX format; the `hf_*` entries are tiny random-weight Hugging Face directories of VLA
families; `hf_archives` packs one of them as `.zip` and `.tar.gz`. Every built directory holds a
`reference.json` describing it (architecture, config, input specs, formats, measured metrics).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Literal

from tools.errors import NotFoundError
from tools.intake.types import LoadOptions
from tools.reference.build import (
    build_hf_archives,
    build_hf_reference,
    build_reference_conv_policy,
    build_reference_vla,
    export_reference,
    load_reference_module,
    read_reference_metadata,
)
from tools.reference.reacher import build_reference_reacher


@dataclass(frozen=True)
class ReferenceModel:
    """A named reference: what it is, what its directory holds, the function that builds (or finds) it, and the
    simulator (`tools.evaluation.simulators` name) whose task it was trained on, to judge it closed-loop."""

    name: str
    kind: Literal["torch_policy", "hf_directory", "archives"]
    description: str
    build: Callable[[Path, int], Path]
    simulator: str | None = None


def _hf(name: str, description: str) -> ReferenceModel:
    return ReferenceModel(name, "hf_directory", description, partial(build_hf_reference, name))


REFERENCE_MODELS: dict[str, ReferenceModel] = {
    model.name: model
    for model in (
        ReferenceModel(
            "vla",
            "torch_policy",
            "TinyVLA (6M) trained on the reaching task",
            build_reference_vla,
            simulator="reaching",
        ),
        ReferenceModel(
            "conv_policy",
            "torch_policy",
            "ConvPolicy trained on single-target reaching",
            build_reference_conv_policy,
            simulator="reaching:single_target",
        ),
        ReferenceModel(
            "reacher",
            "torch_policy",
            "MLP policy (5k) behaviour-cloned from a scripted expert on MuJoCo Reacher-v5",
            build_reference_reacher,
            simulator="gym:Reacher-v5",
        ),
        _hf("hf_llava_siglip", "LLaVA: SigLIP vision + Llama text (the OpenVLA shape)"),
        _hf("hf_smolvlm", "SmolVLM (SmolVLA's backbone)"),
        _hf("hf_paligemma", "PaliGemma (pi0's backbone)"),
        _hf("hf_llama", "plain LlamaForCausalLM"),
        _hf("hf_siglip_vision", "plain SiglipVisionModel"),
        ReferenceModel(
            "hf_archives", "archives", ".zip and .tar.gz of the hf_llava_siglip directory", build_hf_archives
        ),
    )
}


REFERENCE_FORMATS: dict[str, str] = {
    "torch_policy": "torch_state_dict",
    "hf_directory": "hf_directory",
    "archives": "zip",
}
"""What `reference_model_file` hands a job for each kind: a state dict (with its recorded architecture), the
Hugging Face directory, or the .zip."""


def reference_entry(name: str) -> ReferenceModel:
    """The registered reference `name`; an unknown name is refused with the known ones as the hint."""
    if name not in REFERENCE_MODELS:
        raise NotFoundError(f"unknown reference model {name!r}", hint=f"known: {', '.join(REFERENCE_MODELS)}")
    return REFERENCE_MODELS[name]


def build_reference(name: str, cache_dir: Path, seed: int = 0) -> Path:
    """Build the reference model `name` into `cache_dir` (or find it cached) and return its directory."""
    if name not in REFERENCE_MODELS:
        raise NotFoundError(
            f"unknown reference model {name!r}; known: {', '.join(REFERENCE_MODELS)}",
            hint="pick one of the names in tools.reference.REFERENCE_MODELS",
        )
    return REFERENCE_MODELS[name].build(Path(cache_dir), seed)


def reference_model_file(name: str, cache_dir: Path, seed: int = 0) -> tuple[Path, LoadOptions]:
    """Build (or find) reference `name` and return the file to analyze and the load options it needs.

    Torch policies are given as their state dict with the architecture and config recorded at build time, the
    way a user would bring weights plus code; Hugging Face references as their directory; archives as the zip.
    """
    directory = build_reference(name, cache_dir, seed)
    kind = REFERENCE_MODELS[name].kind
    if kind == "torch_policy":
        metadata = read_reference_metadata(directory)
        options = LoadOptions(
            architecture=metadata["architecture"], config_path=directory / metadata["config_file"]
        )
        return directory / metadata["formats"]["torch_state_dict"], options
    if kind == "archives":
        return next(iter(sorted(directory.glob("*.zip")))), LoadOptions()
    return directory, LoadOptions()


def build_all_references(cache_dir: Path, seed: int = 0) -> dict[str, Path]:
    """Build every reference model (trained ones from their shipped weights) and return name -> dir."""
    return {name: build_reference(name, cache_dir, seed) for name in REFERENCE_MODELS}


__all__ = [
    "REFERENCE_FORMATS",
    "REFERENCE_MODELS",
    "ReferenceModel",
    "build_all_references",
    "build_reference",
    "export_reference",
    "load_reference_module",
    "read_reference_metadata",
    "reference_entry",
    "reference_model_file",
]
