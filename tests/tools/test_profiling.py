"""Tests of the model profile: counts, FLOPs, roles and architecture against hand-computed truth."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

from tools.inputs import InputSpec
from tools.intake import load_model
from tools.intake.types import LoadedModel, LoadOptions, ModelFormat
from tools.profiling import ModelProfile, analyze_model, format_profile_table, profile_model
from tools.reference.vla import TinyVLA


def _loaded(
    module: nn.Module,
    specs: list[InputSpec],
    *,
    fmt: ModelFormat = ModelFormat.TORCH_PICKLED_MODULE,
    path: Path = Path("in-memory"),
    config: dict | None = None,
) -> LoadedModel:
    return LoadedModel(path, path, fmt, LoadOptions(), specs, module=module, config=config or {})


def _onnx_loaded(path: Path, specs: list[InputSpec]) -> LoadedModel:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return LoadedModel(path, path, ModelFormat.ONNX, LoadOptions(), specs, session=session)


def _export(module: nn.Module, inputs: dict[str, torch.Tensor], path: Path, dynamo: bool = False) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            tuple(inputs.values()),
            str(path),
            input_names=list(inputs),
            dynamo=dynamo,
            opset_version=18,
        )
    return path


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class VisionTower(nn.Module):
    """Patch embedding and two transformer blocks."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, 8, 8)
        self.blocks = nn.ModuleList([Block(dim, 2) for _ in range(2)])

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixels).flatten(2).transpose(1, 2)
        for block in self.blocks:
            x = block(x)
        return x


class HandVLA(nn.Module):
    """Mirrors the reference TinyVLA naming: vision tower, instruction embedding, blocks, action head."""

    def __init__(self, dim: int = 64) -> None:
        super().__init__()
        self.vision_tower = VisionTower(32)
        self.projector = nn.Linear(32, dim)
        self.instruction_embedding = nn.Embedding(100, dim)
        self.blocks = nn.ModuleList([Block(dim, 4) for _ in range(4)])
        self.action_head = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 7))

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        x = torch.cat(
            [self.projector(self.vision_tower(pixel_values)), self.instruction_embedding(input_ids)], 1
        )
        for block in self.blocks:
            x = block(x)
        return self.action_head(x[:, -1])


VLA_SPECS = [
    InputSpec(name="pixel_values", shape=(1, 3, 32, 32)),
    InputSpec(name="input_ids", shape=(1, 8), dtype="int64", low=0, high=100),
]


class ConvPolicy(nn.Module):
    """Conv backbone + MLP action head."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.action_head = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 6))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.action_head(self.backbone(image))


def _perturb(module: nn.Module) -> nn.Module:
    """Make every weight distinct, as in a trained model: exporters merge identical initializers."""
    with torch.no_grad():
        for param in module.parameters():
            param.add_(0.01 * torch.randn_like(param))
    return module


# --- parameters ---------------------------------------------------------------------------------------------


def test_parameter_totals_equal_numel_sums_in_every_breakdown() -> None:
    torch.manual_seed(0)
    model = ConvPolicy().eval()
    profile = profile_model(_loaded(model, [InputSpec(name="image", shape=(1, 3, 64, 64))]))
    expected = sum(p.numel() for p in model.parameters())
    assert profile.parameters == expected
    assert profile.parameter_bytes == 4 * expected
    assert sum(c.parameters for c in profile.components) == expected
    assert sum(t.parameters for t in profile.layer_types) == expected
    assert sum(d.parameters for d in profile.dtypes) == expected
    by_type = {t.layer_type: t for t in profile.layer_types}
    assert by_type["Conv2d"].modules == 3
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert by_type["Conv2d"].parameters == sum(p.numel() for conv in convs for p in conv.parameters())
    assert profile.buffer_bytes == sum(b.numel() * b.element_size() for b in model.buffers())


def test_tied_weights_are_counted_once() -> None:
    class TiedLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed_tokens = nn.Embedding(50, 16)
            self.body = nn.Linear(16, 16)
            self.lm_head = nn.Linear(16, 50, bias=False)
            self.lm_head.weight = self.embed_tokens.weight

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.lm_head(self.body(self.embed_tokens(input_ids)))

    model = TiedLM()
    profile = profile_model(
        _loaded(model, [InputSpec(name="input_ids", shape=(1, 4), dtype="int64", low=0, high=50)])
    )
    with_duplicates = sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
    assert profile.parameters == sum(p.numel() for p in model.parameters()) == 50 * 16 + 16 * 16 + 16
    assert profile.parameters == with_duplicates - 50 * 16
    assert profile.tied_parameters == ["lm_head.weight"]


def test_precision_mix_is_reported_by_dtype() -> None:
    model = nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 4))
    model[1].half()
    records = {d.dtype: d for d in profile_model(_loaded(model, [])).dtypes}
    assert records["float32"].parameters == 8 * 16 + 16
    assert records["float16"].parameters == 16 * 4 + 4
    assert records["float16"].parameter_bytes == 2 * (16 * 4 + 4)


# --- FLOPs ------------------------------------------------------------------------------------------------


def test_linear_flops_are_two_times_in_times_out_at_batch_one() -> None:
    profile = profile_model(_loaded(nn.Linear(64, 128), [InputSpec(name="input", shape=(1, 64))]))
    assert profile.flops == 2 * 64 * 128
    assert [(o.op, o.flops) for o in profile.flops_by_op] == [("aten.addmm", 2 * 64 * 128)]
    assert profile.outputs[0].shape == [1, 128]


def test_conv_policy_flops_match_the_convolution_formula() -> None:
    profile = profile_model(_loaded(ConvPolicy().eval(), [InputSpec(name="image", shape=(1, 3, 64, 64))]))
    conv = 2 * (16 * 32 * 32 * 3 * 9 + 32 * 16 * 16 * 16 * 9 + 64 * 8 * 8 * 32 * 9)
    linear = 2 * (64 * 64 + 64 * 6)
    assert profile.flops == conv + linear
    by_component = {c.name: c.flops for c in profile.components}
    assert by_component == {"backbone": conv, "action_head": linear}


def test_attention_flops_are_counted_on_cpu_kernels() -> None:
    model = HandVLA().eval()
    profile = profile_model(_loaded(model, VLA_SPECS))
    ops = {o.op: o.flops for o in profile.flops_by_op}
    # QK^T and AV each cost 2 * S * S * width (summed over heads);
    # language: 4 blocks over 16 patches + 8 words, vision: 2 blocks over 16 patches of width 32
    expected = 4 * 2 * (2 * 24 * 24 * 64) + 2 * 2 * (2 * 16 * 16 * 32)
    assert sum(f for op, f in ops.items() if "attention" in op) == expected
    assert profile.flops_uncounted == []
    assert sum(c.flops or 0 for c in profile.components) == profile.flops


@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=pytest.mark.integration)])
def test_onnx_export_of_an_mlp_has_the_torch_flops_and_parameters(tmp_path: Path, dynamo: bool) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32)).eval()
    specs = [InputSpec(name="x", shape=(1, 64))]
    torch_profile = profile_model(_loaded(model, specs))
    path = _export(model, {"x": torch.randn(1, 64)}, tmp_path / "mlp.onnx", dynamo=dynamo)
    onnx_profile = profile_model(_onnx_loaded(path, specs))
    assert onnx_profile.flops == torch_profile.flops == 2 * (64 * 128 + 128 * 32)
    assert onnx_profile.parameters == torch_profile.parameters == 64 * 128 + 128 + 128 * 32 + 32
    assert {t.layer_type: t.parameters for t in onnx_profile.layer_types} == {
        "Gemm": torch_profile.parameters
    }
    assert [(o.shape, o.dtype) for o in onnx_profile.outputs] == [([1, 32], "float32")]
    assert onnx_profile.file_size_bytes == sum(
        f.stat().st_size for f in tmp_path.iterdir()
    )  # with external data


@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=pytest.mark.integration)])
def test_onnx_export_of_a_vla_keeps_flops_components_and_stacks(tmp_path: Path, dynamo: bool) -> None:
    torch.manual_seed(0)
    model = _perturb(HandVLA()).eval()
    loaded = _loaded(model, VLA_SPECS)
    torch_profile = profile_model(loaded)
    path = _export(model, loaded.example_inputs(), tmp_path / "vla.onnx", dynamo=dynamo)
    onnx_profile = profile_model(_onnx_loaded(path, VLA_SPECS))
    assert onnx_profile.flops == torch_profile.flops
    assert onnx_profile.parameters == torch_profile.parameters
    roles = {c.name: (c.role, c.parameters, c.flops) for c in onnx_profile.components}
    assert roles == {c.name: (c.role, c.parameters, c.flops) for c in torch_profile.components}
    stacks = {
        s.path: (s.blocks, s.hidden_size, s.mlp_width) for s in onnx_profile.architecture.transformer_stacks
    }
    assert stacks == {"vision_tower.blocks": (2, 32, 128), "blocks": (4, 64, 256)}
    assert onnx_profile.architecture.is_vla


def test_onnx_file_size_includes_external_data(tmp_path: Path) -> None:
    model = nn.Linear(256, 256)
    path = _export(model, {"x": torch.randn(1, 256)}, tmp_path / "linear.onnx")
    proto = onnx.load(str(path))
    onnx.save_model(
        proto, str(tmp_path / "ext.onnx"), save_as_external_data=True, location="ext.data", size_threshold=0
    )
    profile = profile_model(_onnx_loaded(tmp_path / "ext.onnx", [InputSpec(name="x", shape=(1, 256))]))
    data = (tmp_path / "ext.data").stat().st_size
    assert data >= 256 * 256 * 4
    assert profile.file_size_bytes == (tmp_path / "ext.onnx").stat().st_size + data
    assert profile.flops == 2 * 256 * 256


# --- roles and architecture -------------------------------------------------------------------------------


def test_vla_naming_gets_roles_stacks_and_summary() -> None:
    profile = profile_model(_loaded(HandVLA().eval(), VLA_SPECS))
    roles = {c.name: c.role for c in profile.components}
    assert roles == {
        "vision_tower": "vision_tower",
        "projector": "projector",
        "instruction_embedding": "language_backbone",
        "blocks": "language_backbone",
        "action_head": "action_head",
    }
    stacks = {s.path: s for s in profile.architecture.transformer_stacks}
    assert (stacks["blocks"].blocks, stacks["blocks"].hidden_size, stacks["blocks"].attention_heads) == (
        4,
        64,
        4,
    )
    assert stacks["blocks"].mlp_width == 256
    assert stacks["vision_tower.blocks"].role == "vision_tower"
    assert profile.architecture.is_vla and profile.architecture.action_output == "head"
    assert profile.architecture.summary == (
        "VLA: vision tower (ViT, 2 blocks) + projector (linear) + language backbone (4 blocks, 4 heads) "
        "+ action head (MLP)"
    )
    assert profile.architecture.conv_backbones == []  # a patch embedding is not a conv backbone


def test_conv_policy_is_a_visual_policy_with_stages() -> None:
    profile = profile_model(_loaded(ConvPolicy().eval(), [InputSpec(name="image", shape=(1, 3, 64, 64))]))
    arch = profile.architecture
    assert arch.kind == "visual_policy"
    assert [(b.component, b.channels, b.downsampling_layers, b.stages) for b in arch.conv_backbones] == [
        ("backbone", [16, 32, 64], 3, 4)
    ]
    assert arch.normalization == ["BatchNorm2d"]
    assert arch.summary == "Visual policy: vision tower (CNN, 4 stages) + action head (MLP)"


@pytest.fixture(scope="module")
def tiny_llava() -> tuple[nn.Module, dict]:
    import transformers

    vision = transformers.SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    text = transformers.LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=256, max_position_embeddings=64,
    )  # fmt: skip
    config = transformers.LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=255, vision_feature_select_strategy="full",
        vision_feature_layer=-1,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.LlavaForConditionalGeneration(config).eval(), config.to_dict()


LLAVA_SPECS = [
    InputSpec(name="pixel_values", shape=(1, 3, 32, 32)),
    InputSpec(
        name="input_ids", shape=(1, 16), dtype="int64", low=255, high=256
    ),  # 16 image tokens, 16 patches
]


def test_hf_llava_components_roles_and_stacks(tiny_llava: tuple[nn.Module, dict]) -> None:
    model, config = tiny_llava
    profile = profile_model(_loaded(model, LLAVA_SPECS, fmt=ModelFormat.HF_DIRECTORY, config=config))
    roles = {c.name: c.role for c in profile.components}
    assert roles == {
        "model.vision_tower": "vision_tower",
        "model.multi_modal_projector": "projector",
        "model.language_model": "language_backbone",
        "lm_head": "language_backbone",
    }
    assert profile.parameters == sum(p.numel() for p in model.parameters())
    stacks = {s.role: s for s in profile.architecture.transformer_stacks}
    vision, language = stacks["vision_tower"], stacks["language_backbone"]
    assert (vision.blocks, vision.hidden_size, vision.attention_heads, vision.mlp_width) == (2, 32, 2, 64)
    assert (language.blocks, language.hidden_size, language.attention_heads) == (4, 64, 4)
    assert (language.kv_heads, language.mlp_width) == (2, 128)
    assert profile.architecture.kind == "vlm" and not profile.architecture.is_vla
    outputs = {o.name: o.shape for o in profile.outputs}
    assert outputs["logits"] == [1, 16, 256]
    assert sum(c.flops or 0 for c in profile.components) == profile.flops
    lm_head = next(c for c in profile.components if c.name == "lm_head")
    assert lm_head.flops == 2 * 16 * 64 * 256


def test_hf_vlm_with_action_config_is_a_token_vla(tiny_llava: tuple[nn.Module, dict]) -> None:
    model, config = tiny_llava
    loaded = _loaded(
        model, LLAVA_SPECS, fmt=ModelFormat.HF_DIRECTORY, config={**config, "n_action_bins": 256}
    )
    arch = profile_model(loaded).architecture
    assert arch.is_vla and arch.action_output == "tokens"
    assert arch.summary.startswith("VLA: vision tower (ViT, 2 blocks) + projector (MLP) + language backbone")


def _tiny_idefics3(transformers: object) -> nn.Module:
    config = transformers.Idefics3Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        text_config=dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=256),
        scale_factor=2,
    )  # fmt: skip
    return transformers.Idefics3ForConditionalGeneration(config)


def _tiny_paligemma(transformers: object) -> nn.Module:
    config = transformers.PaliGemmaConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8, projection_dim=64),
        text_config=dict(model_type="gemma", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=1, head_dim=16, vocab_size=256),
        projection_dim=64,
    )  # fmt: skip
    return transformers.PaliGemmaForConditionalGeneration(config)


@pytest.mark.parametrize(
    ("build", "parts"),
    [
        (_tiny_idefics3, ("model.vision_model", "model.connector", "model.text_model")),
        (_tiny_paligemma, ("model.vision_tower", "model.multi_modal_projector", "model.language_model")),
    ],
)
def test_hf_vlm_wrappers_are_opened_into_their_parts(build: object, parts: tuple[str, str, str]) -> None:
    import transformers

    profile = profile_model(_loaded(build(transformers), [], fmt=ModelFormat.HF_DIRECTORY))
    roles = {c.name: c.role for c in profile.components}
    assert [roles.get(p) for p in parts] == ["vision_tower", "projector", "language_backbone"]
    assert [s.role for s in profile.architecture.transformer_stacks] == ["vision_tower", "language_backbone"]
    assert profile.flops is None and "no input specification" in profile.warnings[0]


def test_reference_tiny_vla_roles() -> None:
    model = TinyVLA().eval()
    profile = profile_model(_loaded(model, TinyVLA.input_specs()))
    roles = {c.name: c.role for c in profile.components}
    assert roles["vision_tower"] == "vision_tower"
    assert roles["language_backbone"] == roles["blocks"] == "language_backbone"
    assert roles["action_head"] == "action_head"
    assert profile.architecture.is_vla
    assert profile.parameters == sum(p.numel() for p in model.parameters())


# --- outputs, files, side effects -------------------------------------------------------------------------


def test_torchscript_tuple_outputs_are_named_and_file_size_is_on_disk(tmp_path: Path) -> None:
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.trunk = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h = self.trunk(x)
            return h, h.sum(-1, keepdim=True)

    path = tmp_path / "two.pt"
    torch.jit.save(torch.jit.trace(TwoHeads(), (torch.randn(1, 8),)), str(path))
    loaded = _loaded(
        torch.jit.load(str(path)), [InputSpec(name="x", shape=(1, 8))], fmt=ModelFormat.TORCHSCRIPT, path=path
    )
    profile = profile_model(loaded)
    assert [(o.name, o.shape) for o in profile.outputs] == [("output_0", [1, 8]), ("output_1", [1, 1])]
    assert profile.file_size_bytes == path.stat().st_size
    assert profile.flops == 2 * 8 * 8
    assert profile.parameters == 8 * 8 + 8


def test_directory_artifact_size_is_the_sum_of_its_files(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "a.bin").write_bytes(b"x" * 1000)
    (tmp_path / "model" / "sub").mkdir()
    (tmp_path / "model" / "sub" / "b.json").write_bytes(b"y" * 24)
    profile = profile_model(
        _loaded(nn.Linear(2, 2), [], fmt=ModelFormat.HF_DIRECTORY, path=tmp_path / "model")
    )
    assert profile.file_size_bytes == 1024


def test_profiling_leaves_training_mode_and_statistics_untouched() -> None:
    model = ConvPolicy().train()
    before = model.backbone[1].running_mean.clone()
    profile_model(_loaded(model, [InputSpec(name="image", shape=(1, 3, 16, 16))]))
    assert model.training
    assert torch.equal(model.backbone[1].running_mean, before)


def test_dynamically_quantized_layers_count_packed_weights_and_flag_uncounted_flops() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = torch.ao.quantization.quantize_dynamic(
            nn.Sequential(nn.Linear(32, 64), nn.ReLU()), {nn.Linear}
        )
        profile = profile_model(_loaded(model, [InputSpec(name="input", shape=(1, 32))]))
    dtypes = {d.dtype: d.parameters for d in profile.dtypes}
    assert dtypes["qint8"] == 32 * 64
    assert profile.flops_uncounted == ["quantized.linear_dynamic"]


def test_profile_round_trips_through_json_and_renders_aligned_tables() -> None:
    profile = analyze_model(_loaded(HandVLA().eval(), VLA_SPECS), latency=False)
    assert profile.latency is None
    data = json.loads(profile.model_dump_json())
    assert data["latency_p50_ms"] is None and data["peak_memory_mb"] is None
    assert ModelProfile.model_validate_json(profile.model_dump_json()) == profile
    table = format_profile_table(profile)
    lines = table.splitlines()
    header = next(i for i, line in enumerate(lines) if line == "Components") + 1
    rows = lines[header : header + 2 + len(profile.components)]
    role_column = rows[0].index("role")
    assert all(row[role_column - 2 : role_column] == "  " for row in rows)
    assert {row.split()[0] for row in rows[2:]} == {c.name for c in profile.components}
    assert "VLA: vision tower (ViT, 2 blocks)" in table


@pytest.mark.integration
def test_analyze_model_adds_measured_latency_through_intake(tmp_path: Path) -> None:
    path = tmp_path / "mlp.pt"
    torch.jit.save(torch.jit.trace(nn.Linear(64, 64).eval(), (torch.randn(1, 64),)), str(path))
    options = LoadOptions(input_specs=(InputSpec(name="input", shape=(1, 64)),))
    loaded = load_model(path, options, tmp_path / "data")
    profile = analyze_model(loaded, threads=1, warmup=2, iterations=10, data_dir=tmp_path / "data")
    assert profile.latency is not None and profile.latency.loader == "intake"
    assert profile.latency_p50_ms == profile.latency.p50_ms > 0


class _LazyHeadsAttention(nn.Module):
    """Attention whose head count is known only after its first forward (as in lazily configured code)."""

    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(8, 8)

    @property
    def num_heads(self) -> int:
        raise RuntimeError("heads are set at the first forward")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.q_proj(x)


class _LazyPolicy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([nn.Sequential(_LazyHeadsAttention()) for _ in range(2)])
        self.head = nn.Linear(8, 2)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            state = block(state)
        return self.head(state)


def test_a_profile_that_fails_falls_back_to_sizes_with_the_reason(tmp_path: Path) -> None:
    from tools.profiling import profile_model_or_sizes

    module = _LazyPolicy().eval()
    torch.save(module.state_dict(), tmp_path / "m.pt")
    model = _loaded(module, [InputSpec(name="state", shape=(1, 8))], path=tmp_path / "m.pt")
    with pytest.raises(RuntimeError, match="first forward"):
        profile_model(model)  # the architecture walk reads num_heads
    profile, note = profile_model_or_sizes(model)
    assert profile.parameters == sum(p.numel() for p in module.parameters())
    assert profile.parameter_bytes == 4 * profile.parameters and profile.flops is None
    assert note is not None and "skipped" in note and "first forward" in note
    assert profile.warnings and "sizes only" in profile.warnings[0]
    healthy, nothing = profile_model_or_sizes(
        _loaded(nn.Linear(8, 2), [InputSpec(name="x", shape=(1, 8))], path=tmp_path / "m.pt")
    )
    assert nothing is None and healthy.flops and healthy.flops > 0
