"""The ONNX robopt writes for a Hugging Face encoder deploys: it keeps every input the model takes
(`input_ids`, `attention_mask`, `token_type_ids`), its batch and sequence axes are dynamic, and its parity is
checked at more than one sequence length (issue 14: only `input_ids` at the measured length 16 was kept)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.technique_support import load
from tools.compression.onnx_export import OnnxExportConfig
from tools.techniques import apply, store_original
from tools.versions import VersionStore

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight BERT encoder built from a config (no download), saved as a HF directory."""
    import transformers

    config = transformers.BertConfig(
        vocab_size=120,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        architectures=["BertModel"],
    )
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("bert") / "tiny-bert"
    transformers.BertModel(config).eval().save_pretrained(directory)
    return directory


def test_an_hf_encoder_exports_with_every_input_and_dynamic_batch_and_sequence(
    bert_dir: Path, tmp_path: Path
) -> None:
    store, data_dir = VersionStore(tmp_path / "versions"), tmp_path / "data"
    source = store_original(store, "bert", bert_dir, data_dir=data_dir)
    original = load(store, source, data_dir)
    assert [spec.name for spec in original.input_specs] == ["input_ids", "attention_mask", "token_type_ids"]
    exported = apply(store, "bert", source.id, OnnxExportConfig(parity_inputs=2), data_dir=data_dir)
    parity = exported.facts["parity"]
    assert parity["sequence_lengths"] == [16, 8, 32]
    assert all(figures["min_cosine"] > 0.9999 for figures in parity["parity_by_length"].values())
    onnx_model = load(store, exported.version, data_dir)
    inputs = {node.name: node.shape for node in onnx_model.session.get_inputs()}
    assert set(inputs) == {"input_ids", "attention_mask", "token_type_ids"}
    assert all(isinstance(shape[0], str) and isinstance(shape[1], str) for shape in inputs.values()), inputs
    # a padded batch at a length never measured: the graph follows the mask as the model does
    generator = torch.Generator().manual_seed(5)
    ids = torch.randint(4, 120, (3, 11), generator=generator)
    mask = torch.ones(3, 11, dtype=torch.int64)
    mask[1, 7:] = 0
    types_ = torch.zeros(3, 11, dtype=torch.int64)
    with torch.no_grad():
        expected = original.module(
            input_ids=ids, attention_mask=mask, token_type_ids=types_
        ).last_hidden_state
    feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": types_.numpy()}
    got = onnx_model.session.run(None, feed)[0]
    assert np.abs(got - expected.numpy()).max() < 1e-4
