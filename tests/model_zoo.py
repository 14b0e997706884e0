"""Small hand-built models and their files in every intake format, for fast tests (references are slower)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from tools.inputs import InputSpec


class TinyMLP(torch.nn.Module):
    """A two-layer MLP with robopt's `input_specs` convention; importable as tests.model_zoo:TinyMLP."""

    def __init__(self, in_features: int = 8, hidden: int = 16, out_features: int = 4) -> None:
        super().__init__()
        self.in_features = in_features
        self.encoder = torch.nn.Linear(in_features, hidden)
        self.action_head = torch.nn.Linear(hidden, out_features)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.action_head(torch.relu(self.encoder(state)))

    @classmethod
    def input_specs(cls, config: dict[str, Any] | None = None) -> list[InputSpec]:
        return [InputSpec(name="state", shape=(1, int((config or {}).get("in_features", 8))))]


def write_all_formats(directory: Path, seed: int = 0) -> dict[str, Path]:
    """Write TinyMLP (in=8) in every torch/ONNX format; return format name -> path."""
    torch.manual_seed(seed)
    model = TinyMLP().eval()
    directory.mkdir(parents=True, exist_ok=True)
    example = torch.randn(1, 8)
    paths: dict[str, Path] = {}
    sidecar = json.dumps({"input_specs": [s.model_dump() for s in TinyMLP.input_specs()]})
    paths["torchscript"] = directory / "tiny.ts.pt"
    torch.jit.save(
        torch.jit.trace(model, example), str(paths["torchscript"]), _extra_files={"robopt.json": sidecar}
    )
    paths["state_dict"] = directory / "tiny_state.pt"
    torch.save(model.state_dict(), paths["state_dict"])
    paths["state_dict_legacy"] = directory / "tiny_legacy.pth"
    torch.save(model.state_dict(), paths["state_dict_legacy"], _use_new_zipfile_serialization=False)
    paths["config"] = directory / "tiny_config.json"
    paths["config"].write_text(json.dumps({"in_features": 8, "hidden": 16, "out_features": 4}))
    paths["safetensors"] = directory / "tiny.safetensors"
    save_file(model.state_dict(), str(paths["safetensors"]))
    paths["pickled_module"] = directory / "tiny_module.pt"
    torch.save(model, paths["pickled_module"])
    paths["onnx"] = directory / "tiny.onnx"
    torch.onnx.export(
        model, (example,), str(paths["onnx"]), input_names=["state"], output_names=["action"], dynamo=False
    )
    return paths


def reference_output(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The TinyMLP of `seed` and its output on the first synthetic input of its spec."""
    from tools.inputs import synthesize_inputs

    torch.manual_seed(seed)
    model = TinyMLP().eval()
    inputs = synthesize_inputs(TinyMLP.input_specs())
    with torch.no_grad():
        return inputs["state"], model(**inputs)


def write_tiny_llava(directory: Path, seed: int = 0) -> Path:
    """Save the reference tiny Llava (SigLIP vision + Llama text) as a Hugging Face directory, without caching."""
    from tools.reference.hf_vla import save_hf_reference

    return save_hf_reference("hf_llava_siglip", directory, seed=seed)
