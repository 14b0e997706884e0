"""ONNX Runtime's transformer fusion (issue 15, item 5): a Hugging Face encoder is exported the way the fusions
recognize and comes out with fused attention, layer norms and GELU, computing the same outputs; dynamic INT8
then quantizes the fused attention; a model that is not a transformer is refused with a reason."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from tests.technique_support import load
from tools.compression.transformer_fusion import TransformerFusionConfig, fusion_settings
from tools.errors import OptimizationError
from tools.quantization.ort_int8 import OrtInt8DynamicConfig
from tools.techniques import apply, save_torch_module, store_original
from tools.versions import VersionStore

pytestmark = pytest.mark.integration

LAYERS, HEADS, HIDDEN = 2, 4, 64


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small random-weight BERT encoder built from a config (no download), saved as a HF directory."""
    import transformers

    config = transformers.BertConfig(
        vocab_size=200,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=4 * HIDDEN,
        max_position_embeddings=64,
        architectures=["BertModel"],
    )
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("bert") / "bert"
    transformers.BertModel(config).eval().save_pretrained(directory)
    return directory


def _ops(path: Path) -> Counter[str]:
    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def test_a_bert_encoder_is_fused_and_still_computes_the_same_outputs(bert_dir: Path, tmp_path: Path) -> None:
    store, data_dir = VersionStore(tmp_path / "versions"), tmp_path / "data"
    source = store_original(store, "bert", bert_dir, data_dir=data_dir)
    original = load(store, source, data_dir)
    fused = apply(store, "bert", source.id, TransformerFusionConfig(), data_dir=data_dir)
    facts = fused.facts
    assert facts["model_type"] == "bert" and (facts["num_heads"], facts["hidden_size"]) == (HEADS, HIDDEN)
    assert facts["exporter"] == "torchscript"
    assert facts["attention_fused"] == LAYERS, facts["fused_operators"]
    ops = _ops(store.artifact_path("bert", fused.version.id))
    assert ops["Attention"] == LAYERS and ops["SkipLayerNormalization"] >= LAYERS and ops["Softmax"] == 0
    assert facts["nodes_after"] < facts["nodes_before"]
    assert facts["fusion_parity"]["max_abs_error"] < 1e-3

    # a padded batch at a sequence length never measured: the fused graph follows the mask as the model does
    model = load(store, fused.version, data_dir)
    generator = torch.Generator().manual_seed(5)
    ids = torch.randint(4, 200, (3, 11), generator=generator)
    mask = torch.ones(3, 11, dtype=torch.int64)
    mask[1, 7:] = 0
    kinds = torch.zeros(3, 11, dtype=torch.int64)
    with torch.no_grad():
        expected = original.module(input_ids=ids, attention_mask=mask, token_type_ids=kinds)
    feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": kinds.numpy()}
    got = model.session.run(None, feed)[0]
    assert np.abs(got - expected.last_hidden_state.numpy()).max() < 1e-3

    # dynamic INT8 after fusion (its default MatMul/Gemm) quantizes the fused attention's projections too
    int8 = apply(store, "bert", fused.version.id, OrtInt8DynamicConfig(), data_dir=data_dir)
    assert (
        int8.facts["fused_attention_quantized"] == LAYERS and "Attention" in int8.facts["op_types_quantized"]
    )
    quantized_ops = _ops(store.artifact_path("bert", int8.version.id))
    assert quantized_ops["QAttention"] == LAYERS and quantized_ops["Attention"] == 0
    fused_bytes = store.artifact_path("bert", fused.version.id).stat().st_size
    assert store.artifact_path("bert", int8.version.id).stat().st_size < 0.5 * fused_bytes


def test_a_user_onnx_export_is_fused_in_place(bert_dir: Path, tmp_path: Path) -> None:
    """An ONNX graph a user exported with the TorchScript exporter is fused without going back to PyTorch."""
    import transformers

    from tools.compression.onnx_checks import TensorOutputs

    store, data_dir = VersionStore(tmp_path / "versions"), tmp_path / "data"
    user_file = tmp_path / "user.onnx"
    model = transformers.BertModel.from_pretrained(bert_dir, attn_implementation="eager").eval()
    names = ["input_ids", "attention_mask", "token_type_ids"]
    example = tuple(torch.ones(1, 16, dtype=torch.int64) for _ in names)
    torch.onnx.export(
        TensorOutputs(model, names).eval(),
        example,
        str(user_file),
        input_names=names,
        output_names=["last_hidden_state", "pooler_output"],
        dynamic_axes={name: {0: "batch", 1: "sequence"} for name in names},
        opset_version=17,
        dynamo=False,
    )
    assert _ops(user_file)["Attention"] == 0
    user = store_original(store, "user", user_file, data_dir=data_dir)
    result = apply(
        store,
        "user",
        user.id,
        TransformerFusionConfig(num_heads=HEADS, hidden_size=HIDDEN),
        data_dir=data_dir,
    )
    assert result.facts["exported_from_torch"] is False
    assert result.facts["attention_fused"] == LAYERS
    assert result.facts["fusion_parity"]["min_cosine"] > 0.9999


class _Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def test_a_model_that_is_not_a_transformer_is_refused_with_a_reason(tmp_path: Path) -> None:
    from tools.inputs import InputSpec

    store, data_dir = VersionStore(tmp_path / "versions"), tmp_path / "data"
    (tmp_path / "mlp").mkdir()
    path, fmt, options = save_torch_module(_Mlp(), tmp_path / "mlp", [InputSpec(name="x", shape=(1, 8))])
    source = store.save(
        "mlp", path, technique="original", format=fmt, load_options=options.model_dump(mode="json")
    )
    with pytest.raises(OptimizationError, match="needs a Hugging Face transformer") as caught:
        apply(store, "mlp", source.id, TransformerFusionConfig(), data_dir=data_dir)
    assert "onnx_export" in (caught.value.hint or "")
    assert [v.id for v in store.list("mlp")] == [source.id], "a refused technique stores no version"


def test_fusion_settings_come_from_the_config_unless_given() -> None:
    bert = {"model_type": "bert", "num_attention_heads": 12, "hidden_size": 768}
    assert fusion_settings(TransformerFusionConfig(), bert) == ("bert", 12, 768)
    assert fusion_settings(TransformerFusionConfig(num_heads=6), bert) == ("bert", 6, 768)
    vit = {"model_type": "dinov2", "num_attention_heads": 6, "hidden_size": 384}
    assert fusion_settings(TransformerFusionConfig(), vit) == ("vit", 6, 384)
    vlm = {"model_type": "paligemma", "vision_config": {"num_attention_heads": 16, "hidden_size": 1152}}
    assert fusion_settings(TransformerFusionConfig(), vlm) == ("vit", 16, 1152)
    assert fusion_settings(TransformerFusionConfig(model_type="gpt2"), {}) == ("gpt2", 0, 0)
