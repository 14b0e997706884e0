"""ONNX Runtime sessions for robopt's ONNX techniques: fixed-thread CPU sessions, offline graph optimization,
running a session on named tensors, and model metadata that survives ONNX Runtime's rewrites.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Mapping

import numpy as np
import torch

OptimizationLevel = Literal["disabled", "basic", "extended", "all"]


def set_metadata_props(holder: Any, pairs: list[tuple[str, str]]) -> None:
    """Replace the metadata_props of a model or node with `pairs`."""
    del holder.metadata_props[:]
    for key, value in pairs:
        entry = holder.metadata_props.add()
        entry.key, entry.value = key, value


_LEVELS = {"disabled": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED"}


def session_options(level: OptimizationLevel, threads: int = 1) -> Any:
    """ONNX Runtime session options at `level` with fixed thread counts (reproducible numerics)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(
        ort.GraphOptimizationLevel, _LEVELS.get(level, "ORT_ENABLE_ALL")
    )
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return options


def cpu_session(path: Path, level: OptimizationLevel = "extended", threads: int = 1) -> Any:
    """An ONNX Runtime CPU session on `path`."""
    import onnxruntime as ort

    return ort.InferenceSession(
        str(path), session_options(level, threads), providers=["CPUExecutionProvider"]
    )


def optimize_onnx_offline(src: Path, dst: Path, level: OptimizationLevel = "extended") -> Path:
    """Let ONNX Runtime optimize `src` at `level` and write the optimized graph to `dst` (CPU provider)."""
    import onnx
    import onnxruntime as ort

    options = session_options(level)
    options.optimized_model_filepath = str(dst)
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
    source = onnx.load(str(src), load_external_data=False)
    optimized = onnx.load(str(dst))  # ONNX Runtime drops the model's metadata when it saves: put it back
    set_metadata_props(optimized, [(p.key, p.value) for p in source.metadata_props])
    onnx.save(optimized, str(dst))
    return Path(dst)


def run_session(session: Any, inputs: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
    """Run an ONNX Runtime session on the inputs it declares; return its outputs as float32 tensors."""
    names = [item.name for item in session.get_inputs()]
    feeds = {name: inputs[name].detach().cpu().numpy() for name in names}
    return [torch.from_numpy(np.asarray(out, dtype=np.float32)) for out in session.run(None, feeds)]
