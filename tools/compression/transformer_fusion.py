"""ONNX Runtime's transformer graph fusion: attention, layer norm and GELU subgraphs become single fused ops.

This is what Olive's standard CPU workflow does before quantizing a Hugging Face transformer: export with the
TorchScript exporter and eager attention (the pattern ONNX Runtime's fusions recognize; the dynamo exporter's
graph of scaled-dot-product attention is not fused), then `onnxruntime.transformers.optimizer.optimize_model`
with the model's head count and hidden size. The fused graph is lossless (checked against the source) and
dynamic INT8 then quantizes the fused `Attention` too (`QAttention`).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from tools.compression.onnx_axes import sequence_inputs
from tools.compression.onnx_checks import (
    TensorOutputs,
    check_onnx_parity,
    export_error,
    parity_batches,
    quiet_exporter,
    require_parity,
    robopt_metadata,
    set_robopt_metadata,
)
from tools.compression.onnx_export import (
    describe_export,
    drop_bulky_node_metadata,
    graph_opset,
    onnx_source_path,
)
from tools.compression.onnx_sessions import cpu_session, run_session
from tools.errors import OptimizationError
from tools.log import get_logger
from tools.techniques.artifacts import ONNX_OR_TORCH_INPUTS, output_agreement, save_onnx_model
from tools.techniques.base import (
    Family,
    Needs,
    TechniqueConfig,
    TechniqueContext,
    TechniqueProduct,
    TechniqueSpec,
)
from tools.techniques.registry import register

log = get_logger("compression")

FusionModelType = Literal["auto", "bert", "vit", "clip", "gpt2", "bart", "t5"]
_VIT_LIKE = {"vit", "deit", "dinov2", "beit", "siglip_vision_model", "clip_vision_model", "swin", "yolos"}
_BERT_LIKE = {"bert", "roberta", "distilbert", "xlm-roberta", "electra", "albert", "camembert", "deberta"}
_TORCHSCRIPT_OPSET = 17
_FUSED_OPS = (
    "Attention",
    "MultiHeadAttention",
    "SkipLayerNormalization",
    "EmbedLayerNormalization",
    "BiasGelu",
    "FastGelu",
    "Gelu",
    "LayerNormalization",
    "SkipSimplifiedLayerNormalization",
)


class TransformerFusionConfig(TechniqueConfig):
    """Fuse a transformer's attention, layer-norm and GELU subgraphs with ONNX Runtime's optimizer."""

    type: Literal["ort_transformer_fusion"] = "ort_transformer_fusion"
    model_type: FusionModelType = Field(
        default="auto",
        description="ONNX Runtime optimizer model type; auto takes it from the Hugging Face config "
        "(encoders as bert, vision transformers as vit).",
    )
    num_heads: int = Field(
        default=0, ge=0, le=1024, description="Attention heads; 0 takes them from the model's config."
    )
    hidden_size: int = Field(
        default=0, ge=0, le=65_536, description="Hidden size; 0 takes it from the model's config."
    )
    max_abs_error: float = Field(
        default=1e-3,
        gt=0,
        le=1.0,
        description="Largest absolute output difference allowed against the source.",
    )
    min_cosine: float = Field(
        default=0.9999, ge=0.0, le=1.0, description="Smallest output cosine allowed against the source."
    )


def _hf_config(ctx: TechniqueContext) -> dict[str, Any]:
    """The Hugging Face config of the source (from the module, else the stored metadata), or {}."""
    module_config = getattr(ctx.source.module, "config", None)
    if module_config is not None and hasattr(module_config, "to_dict"):
        return dict(module_config.to_dict())
    config = ctx.source.config or robopt_metadata_config(ctx)
    return dict(config) if isinstance(config, dict) else {}


def robopt_metadata_config(ctx: TechniqueContext) -> dict[str, Any] | None:
    """The HF config recorded in an ONNX version's robopt metadata (exports made by robopt carry it)."""
    config = ctx.source.metadata.get("config")
    return config if isinstance(config, dict) else None


def fusion_settings(config: TransformerFusionConfig, hf: dict[str, Any]) -> tuple[str, int, int]:
    """(model type, heads, hidden size) for the optimizer: the config's values, else the model's, else 0 (the
    optimizer then reads them from the graph)."""
    kind = str(hf.get("model_type", ""))
    vision = hf.get("vision_config") if isinstance(hf.get("vision_config"), dict) else None
    source = hf if hf.get("num_attention_heads") else (vision or hf)
    model_type = config.model_type
    if model_type == "auto":
        model_type = "vit" if kind in _VIT_LIKE or source is vision else "bert"
        if kind == "gpt2":
            model_type = "gpt2"
    heads = config.num_heads or int(source.get("num_attention_heads") or 0)
    hidden = config.hidden_size or int(source.get("hidden_size") or 0)
    return model_type, heads, hidden


def _eager_attention(module: torch.nn.Module) -> None:
    """Switch a Hugging Face model to the eager attention the fusions recognize (sdpa is not fused)."""
    setter = getattr(module, "set_attn_implementation", None)
    if callable(setter):
        try:
            setter("eager")
            return
        except (ValueError, TypeError, AttributeError):
            pass
    for sub in module.modules():
        config = getattr(sub, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            config._attn_implementation = "eager"


def export_for_fusion(ctx: TechniqueContext, path: Path) -> dict[str, Any]:
    """Export the source (a Hugging Face transformer) with the TorchScript exporter and eager attention, batch
    and token sequence axes dynamic; return the export facts with parity against the module."""
    module = ctx.require_module("ort_transformer_fusion")
    if not hasattr(module, "config"):
        raise OptimizationError(
            f"ort_transformer_fusion needs a Hugging Face transformer; {type(module).__name__} has no config",
            hint="export other models with onnx_export; this fusion recognizes transformer attention only",
        )
    _eager_attention(module)
    specs = ctx.source.input_specs
    names = [spec.name for spec in specs]
    wrapper = TensorOutputs(module.eval(), names).eval()
    example = ctx.source.example_inputs()
    args = tuple(example[name] for name in names)
    with torch.no_grad():
        outputs = [name for name, _ in wrapper.named_outputs(*args)]
    output_names = [name if not outputs[:i].count(name) else f"{name}_{i}" for i, name in enumerate(outputs)]
    tokens = set(sequence_inputs(specs))
    axes = {name: ({0: "batch", 1: "sequence"} if name in tokens else {0: "batch"}) for name in names}
    axes.update({name: {0: "batch"} for name in output_names})
    try:
        with quiet_exporter(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper,
                args,
                str(path),
                input_names=names,
                output_names=output_names,
                opset_version=_TORCHSCRIPT_OPSET,
                dynamic_axes=axes,
                dynamo=False,
            )
    except Exception as exc:  # noqa: BLE001 - the exporter raises many error types
        raise export_error(exc, type(module).__name__) from exc
    batches, source = parity_batches(ctx, 2)
    parity = check_onnx_parity(module, specs, cpu_session(path, "basic"), batches)
    require_parity(parity, 1e-3, 0.9999, "the TorchScript export made for transformer fusion")
    return {"exported_from_torch": True, "exporter": "torchscript", "export_parity": parity, "inputs": source}


def _session_parity(before: Any, after: Any, batches: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """Worst max-abs error and cosine between two ONNX Runtime sessions' outputs on `batches`."""
    worst = {"max_abs_error": 0.0, "min_cosine": 1.0}
    for batch in batches:
        for agreement in output_agreement(run_session(before, batch), run_session(after, batch)):
            worst["max_abs_error"] = max(worst["max_abs_error"], agreement.max_abs_error)
            worst["min_cosine"] = min(worst["min_cosine"], agreement.cosine)
    return {**worst, "batches": len(batches)}


@register(
    TransformerFusionConfig,
    TechniqueSpec(
        name="ort_transformer_fusion",
        family=Family.EXPORT,
        summary="Fuse a transformer's attention, layer norm and GELU into ONNX Runtime's fused ops (Olive's CPU "
        "workflow: TorchScript export with eager attention, then onnxruntime.transformers.optimizer); lossless.",
        needs=Needs(packages=("onnx", "onnxruntime"), install_hint="pip install onnx onnxruntime"),
        input_formats=ONNX_OR_TORCH_INPUTS,
        output_format="onnx",
        runtimes=("onnxruntime-cpu", "onnxruntime-cuda"),
        precision="fp32",
        expected_effect="fewer, fused nodes (Attention, SkipLayerNormalization, BiasGelu) for Hugging Face "
        "transformers, outputs within 1e-3; dynamic INT8 afterwards quantizes the fused attention too",
    ),
)
def _apply_fusion(ctx: TechniqueContext, config: TransformerFusionConfig) -> TechniqueProduct:
    """Export (or take the ONNX source), fuse, check the fused graph against the source, store it."""
    import onnx
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    ctx.progress(10, "ort_transformer_fusion: getting the ONNX graph")
    if ctx.source.session is not None:
        source, facts = onnx_source_path(ctx, config.type)
        metadata = robopt_metadata(onnx.load(str(source), load_external_data=False))
    else:
        source = ctx.work_dir / "torchscript_export.onnx"
        facts = export_for_fusion(ctx, source)
        metadata = describe_export(ctx, config.type, exporter="torchscript", opset=_TORCHSCRIPT_OPSET)
    model_type, heads, hidden = fusion_settings(config, _hf_config(ctx))
    ctx.progress(40, f"ort_transformer_fusion: fusing as {model_type} ({heads} heads, hidden {hidden})")
    before = onnx.load(str(source))
    options = FusionOptions(model_type)
    options.use_raw_attention_mask(True)  # keep the 2-D mask: any padding pattern, not only right padding
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimized = optimize_model(
            str(source),
            model_type=model_type,
            num_heads=heads,
            hidden_size=hidden,
            optimization_options=options,
            opt_level=0,
            use_gpu=False,
        )
    fused = {op: count for op, count in optimized.get_fused_operator_statistics().items() if count}
    proto = optimized.model
    domains = {node.domain for node in proto.graph.node if node.domain not in ("", "ai.onnx")}
    imported = {entry.domain for entry in proto.opset_import}
    for domain in sorted(domains - imported):  # fused ops live in com.microsoft, which the graph must import
        proto.opset_import.append(onnx.helper.make_opsetid(domain, 1))
    drop_bulky_node_metadata(proto)
    set_robopt_metadata(proto, {**metadata, "technique": config.type, "source_version": ctx.source_version})
    output = ctx.work_dir / "fused.onnx"
    onnx.save(proto, str(output))
    ctx.progress(70, "ort_transformer_fusion: checking the fused graph against the source")
    batches, _ = parity_batches(ctx, 2)
    parity = _session_parity(cpu_session(source, "basic"), cpu_session(output, "basic"), batches)
    if parity["max_abs_error"] > config.max_abs_error or parity["min_cosine"] < config.min_cosine:
        raise OptimizationError(
            f"the fused graph does not match its source: max abs error {parity['max_abs_error']:.3g} "
            f"(limit {config.max_abs_error:g}), cosine {parity['min_cosine']:.6f} (limit {config.min_cosine:g})",
            hint="give num_heads and hidden_size explicitly, or set model_type to the model's family",
        )
    if not any(op in fused for op in _FUSED_OPS[:2]):
        log.info("no attention fused", extra={"model_type": model_type, "fused": fused})
    facts.update(
        {
            "model_type": model_type,
            "num_heads": heads,
            "hidden_size": hidden,
            "fused_operators": fused,
            "attention_fused": sum(fused.get(op, 0) for op in ("Attention", "MultiHeadAttention")),
            "nodes_before": len(before.graph.node),
            "nodes_after": len(proto.graph.node),
            "fusion_parity": parity,
            "opset": graph_opset(proto),
        }
    )
    path, fmt, options = save_onnx_model(output, ctx.work_dir, ctx.source.input_specs)
    return TechniqueProduct(path, fmt, options, facts)
