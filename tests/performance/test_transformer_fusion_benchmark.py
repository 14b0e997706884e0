"""Benchmark (issue 15, item 5): a BERT-style encoder as a plain FP32 ONNX export, ONNX Runtime dynamic INT8 of
that export with defaults (the one-liner a user has), robopt's fused FP32 graph (`ort_transformer_fusion`) and
dynamic INT8 after fusion: p50 at batch 1 on one thread, size, and output cosine to PyTorch. Prints figures;
never fails on timing.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from tools.compression.onnx_export import OnnxExportConfig
from tools.compression.onnx_sessions import cpu_session
from tools.compression.transformer_fusion import TransformerFusionConfig
from tools.quantization.ort_int8 import OrtInt8DynamicConfig
from tools.techniques import apply, store_original
from tools.versions import VersionStore

pytestmark = [pytest.mark.performance, pytest.mark.slow]
LAYERS, HEADS, HIDDEN, SEQUENCE = 4, 4, 256, 64


def _encoder(directory: Path) -> Path:
    import transformers

    config = transformers.BertConfig(
        vocab_size=4000,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=4 * HIDDEN,
        max_position_embeddings=128,
        architectures=["BertModel"],
    )
    torch.manual_seed(0)
    transformers.BertModel(config).eval().save_pretrained(directory)
    return directory


def _p50_ms(session: Any, feed: dict[str, np.ndarray], runs: int = 200) -> float:
    session.run(None, feed)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_fused_transformer_graphs_print_their_figures(tmp_path: Path) -> None:
    import transformers

    directory = _encoder(tmp_path / "encoder")
    store, data_dir = VersionStore(tmp_path / "versions"), tmp_path / "data"
    source = store_original(store, "enc", directory, data_dir=data_dir)
    plain = apply(store, "enc", source.id, OnnxExportConfig(), data_dir=data_dir).version
    fused = apply(store, "enc", source.id, TransformerFusionConfig(), data_dir=data_dir).version
    versions = {
        "FP32 ONNX (dynamo export)": plain,
        "ORT dynamic INT8, defaults": None,
        "fused FP32 (robopt)": fused,
        "fused + dynamic INT8 (robopt)": apply(
            store, "enc", fused.id, OrtInt8DynamicConfig(), data_dir=data_dir
        ).version,
    }
    from onnxruntime.quantization import quantize_dynamic

    one_liner = tmp_path / "one_liner.onnx"
    quantize_dynamic(str(store.artifact_path("enc", plain.id)), str(one_liner))
    fused_all = tmp_path / "fused_all_ops.onnx"
    quantize_dynamic(  # a fused graph holds com.microsoft ops whose outputs shape inference cannot type
        str(store.artifact_path("enc", fused.id)),
        str(fused_all),
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    generator = torch.Generator().manual_seed(7)
    ids = torch.randint(4, 4000, (1, SEQUENCE), generator=generator)
    feed = {
        "input_ids": ids.numpy(),
        "attention_mask": np.ones((1, SEQUENCE), dtype=np.int64),
        "token_type_ids": np.zeros((1, SEQUENCE), dtype=np.int64),
    }
    model = transformers.BertModel.from_pretrained(directory).eval()
    with torch.no_grad():
        expected = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).last_hidden_state.numpy()
    print(
        f"\nBERT-style encoder ({LAYERS} layers, hidden {HIDDEN}, {HEADS} heads, random weights), batch 1, "
        f"sequence {SEQUENCE}, ONNX Runtime CPU at 1 thread, 'all' graph optimizations:"
    )
    rows = []
    paths = {
        label: one_liner if v is None else store.artifact_path("enc", v.id) for label, v in versions.items()
    }
    paths["fused + ORT dynamic INT8, defaults"] = fused_all
    for label, path in paths.items():
        session = cpu_session(path, "all", threads=1)
        cosine = _cosine(session.run(None, feed)[0], expected)
        rows.append((label, _p50_ms(session, feed), path.stat().st_size / 1e6, cosine))
    base = rows[0][1]
    for label, p50, size, cosine in rows:
        print(f"  {label:36s} p50 {p50:7.3f} ms  ({base / p50:4.2f}x)  {size:6.2f} MB  cosine {cosine:.5f}")
    assert all(np.isfinite(p50) and p50 > 0 for _, p50, _, _ in rows)
