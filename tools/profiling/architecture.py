"""Name the architecture from what the torch or ONNX profilers found: stacks, convs, linears, roles."""

from __future__ import annotations

from tools.profiling.schema import (
    ArchitecturePattern,
    ComponentProfile,
    ComponentRole,
    ConvBackbone,
    TransformerStack,
)

_ROLE_ORDER: tuple[ComponentRole, ...] = ("vision_tower", "projector", "language_backbone", "action_head")
_ROLE_LABEL = {
    "vision_tower": "vision tower",
    "projector": "projector",
    "language_backbone": "language backbone",
    "action_head": "action head",
}


def describe_architecture(
    components: list[ComponentProfile],
    stacks: list[TransformerStack],
    convs: list[ConvBackbone],
    linear_layers: dict[str, int],
    normalization: list[str],
    action_hint: bool,
) -> ArchitecturePattern:
    """Classify the model (VLA, VLM, visual policy, transformer, CNN, MLP) and write its one-line summary.

    `linear_layers` counts weight-bearing linear layers per component; `action_hint` says the config or class
    names speak of actions, which makes a vision-language model with only an LM head a token-output VLA.
    """
    with_stacks = {s.component for s in stacks}
    convs = [
        c for c in convs if not (c.component in with_stacks and c.conv_layers <= 2)
    ]  # ViT patch embeddings
    roles = {c.role for c in components if c.parameters > 0}
    vision, language, action = "vision_tower" in roles, "language_backbone" in roles, "action_head" in roles
    action_output = None
    if vision and language and (action or action_hint):
        kind, action_output = "vla", ("head" if action else "tokens")
    elif vision and language:
        kind = "vlm"
    elif vision and action:
        kind = "visual_policy"
    elif stacks:
        kind = "transformer"
    elif convs:
        kind = "cnn"
    elif sum(linear_layers.values()):
        kind = "mlp"
    else:
        kind = "unknown"

    if kind in {"vla", "vlm", "visual_policy"}:
        parts = [_describe_role(role, components, stacks, convs, linear_layers) for role in _ROLE_ORDER]
        body = " + ".join(p for p in parts if p)
        if action_output == "tokens":
            body += " + action tokens from the LM head"
        prefix = {"vla": "VLA", "vlm": "VLM (no action head found)", "visual_policy": "Visual policy"}[kind]
        summary = f"{prefix}: {body}"
    elif kind == "transformer":
        summary = "Transformer: " + "; ".join(_describe_stack(s, with_path=len(stacks) > 1) for s in stacks)
    elif kind == "cnn":
        summary = "CNN: " + "; ".join(_describe_conv(c) for c in convs)
    elif kind == "mlp":
        summary = f"MLP: {_plural(sum(linear_layers.values()), 'linear layer')}"
    else:
        summary = "Unknown architecture: no transformer blocks, convolutions or linear layers found"
    return ArchitecturePattern(
        kind=kind,
        is_vla=kind == "vla",
        action_output=action_output,
        transformer_stacks=stacks,
        conv_backbones=convs,
        normalization=normalization,
        summary=summary,
    )


def _describe_role(
    role: ComponentRole,
    components: list[ComponentProfile],
    stacks: list[TransformerStack],
    convs: list[ConvBackbone],
    linear_layers: dict[str, int],
) -> str:
    """Describe one role's components for the summary, e.g. 'vision tower (ViT, 2 blocks)'."""
    names = [c.name for c in components if c.role == role and c.parameters > 0]
    if not names:
        return ""
    role_stacks = [s for s in stacks if s.component in names]
    role_convs = [c for c in convs if c.component in names]
    linears = sum(linear_layers.get(n, 0) for n in names)
    details: list[str] = []
    if role_stacks:
        blocks = sum(s.blocks for s in role_stacks)
        heads = next((s.attention_heads for s in role_stacks if s.attention_heads), None)
        if role == "vision_tower":
            details.append("ViT")
        elif role in {"action_head", "projector"}:
            details.append("transformer")
        details.append(_plural(blocks, "block"))
        if heads and role != "vision_tower":
            details.append(f"{heads} heads")
    elif role_convs:
        conv = role_convs[0]
        unet = any("unet" in (c.module_type or "").lower() for c in components if c.name in names)
        details.append("CNN" if role == "vision_tower" else "UNet" if unet else "conv")
        details.append(
            _plural(conv.stages, "stage") if conv.stages > 1 else _plural(conv.conv_layers, "conv layer")
        )
    elif role in {"action_head", "projector"} and linears:
        details.append("MLP" if linears > 1 else "linear")
    label = _ROLE_LABEL[role]
    return f"{label} ({', '.join(details)})" if details else label


def _describe_stack(stack: TransformerStack, with_path: bool) -> str:
    """Describe a transformer stack: blocks, hidden size, heads, MLP width."""
    text = _plural(stack.blocks, "block")
    if stack.hidden_size:
        text += f", hidden {stack.hidden_size}"
    if stack.attention_heads:
        text += f", {stack.attention_heads} heads"
    if stack.mlp_width:
        text += f", MLP {stack.mlp_width}"
    return f"{stack.path} ({text})" if with_path else text


def _describe_conv(conv: ConvBackbone) -> str:
    """Describe a conv backbone: layers, stages, channels."""
    channels = "->".join(str(c) for c in conv.channels)
    return f"{_plural(conv.conv_layers, 'conv layer')}, {_plural(conv.stages, 'stage')}, channels {channels}"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
