"""Split a model into top-level components and detect each one's role (vision tower, language backbone, ...).

Works on a name tree, so torch modules and ONNX initializer names (which keep torch's dotted paths) share
one set of rules. Wrappers without a role of their own (Hugging Face's `model` in `model.vision_tower`) are
opened when a child has a recognizable role, so components land where a VLA's parts are.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable

from tools.profiling.schema import ComponentRole

ROOT = "(root)"
_MAX_DEPTH = 4

_ACTION = {"action", "actions", "actor", "unet", "denoiser", "diffusion", "noise"}
_PROJECTOR = {"projector", "connector", "resampler", "adapter", "mmproj", "merger"}
_MODALITY = {"vision", "visual", "image", "img", "mm", "multi", "modal", "text"}
_VISION = {"vision", "visual", "image", "images", "img", "pixel", "vit", "siglip", "clip", "dino", "dinov2",
           "patch", "camera", "rgb", "resnet", "convnext", "efficientnet", "mobilenet", "cnn"}  # fmt: skip
_LANGUAGE = {"language", "text", "llm", "lm", "instruction", "instructions", "instr", "lang", "vocab", "word",
             "words", "token", "tokens", "tok", "llama", "gemma", "mistral", "qwen", "phi", "gpt", "opt",
             "bloom", "falcon", "smollm", "t5", "mixtral", "olmo", "causal"}  # fmt: skip
# Embedding tables that are not a token vocabulary: positions, CLS tokens, learned queries (ACT's VAE CLS).
_NOT_VOCABULARY = {
    "pos",
    "position",
    "positional",
    "cls",
    "query",
    "queries",
    "latent",
    "register",
    "registers",
}
_GENERIC_STACK = {"blocks", "block", "layers", "layer", "transformer", "decoder", "encoder", "h", "trunk"}
_CONV_TYPES = {
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "Conv",
    "ConvTranspose",
    "ConvTranspose2d",
    "QLinearConv",
    "ConvInteger",
}
_TOKEN_RE = re.compile(r"[A-Z]+(?![a-z])\d*|[A-Z]?[a-z]+\d*|\d+")


@dataclass
class TreeNode:
    """One module (or name prefix) with its class name, children and the layer types found beneath it."""

    path: str
    type_name: str | None = None
    children: dict[str, TreeNode] = field(default_factory=dict)
    layer_types: set[str] = field(default_factory=set)

    @property
    def name(self) -> str:
        """Last segment of the dotted path."""
        return self.path.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class ComponentSpec:
    """A component: its path (`(root)` for the top module's own weights), role and class name."""

    path: str
    role: ComponentRole
    type_name: str | None


def tokens(text: str) -> set[str]:
    """Split a name into lower-case words, with and without trailing digits: 'norm1' -> norm1, norm."""
    words = {t.lower() for t in _TOKEN_RE.findall(text)}
    return words | {w.rstrip("0123456789") for w in words if not w.isdigit()}


def child_path(parent: str, name: str) -> str:
    """Join a dotted path."""
    return f"{parent}.{name}" if parent else name


def tree_from_paths(paths: Iterable[tuple[str, str | None, set[str]]]) -> TreeNode:
    """Build a tree from (dotted path, class name or None, layer types) triples, creating parents."""
    root = TreeNode("")
    for path, type_name, layer_types in paths:
        node = root
        root.layer_types |= layer_types
        if path:
            parts = path.split(".")
            for depth, part in enumerate(parts):
                sub = ".".join(parts[: depth + 1])
                node = node.children.setdefault(part, TreeNode(sub))
                node.layer_types |= layer_types
        if type_name is not None:
            node.type_name = type_name
    return root


def role_from_words(words: set[str]) -> ComponentRole | None:
    """Return the role that a set of words names, or None; action first, then projector, vision, language."""
    if words & _ACTION or {"policy", "head"} <= words:
        return "action_head"
    if words & _PROJECTOR or (words & {"proj", "projection"} and words & _MODALITY):
        return "projector"
    if words & _VISION:
        return "vision_tower"
    if words & _LANGUAGE:
        return "language_backbone"
    return None


def specific_role(node: TreeNode) -> ComponentRole | None:
    """Return the role a node's own name or class name gives it, or None."""
    return role_from_words(tokens(node.name)) or (
        role_from_words(tokens(node.type_name)) if node.type_name else None
    )


def _has_specific_descendant(node: TreeNode, depth: int) -> bool:
    """Say whether a child (or grandchild, to `depth`) has a role of its own."""
    for child in node.children.values():
        if specific_role(child) is not None:
            return True
        if depth > 1 and _has_specific_descendant(child, depth - 1):
            return True
    return False


def _is_wrapper(node: TreeNode) -> bool:
    """Say whether a node only bundles components: no role of its own, or children of several roles.

    PaliGemmaModel's class name says 'gemma', yet it holds the vision tower, projector and language model.
    """
    if not node.children:
        return False
    if specific_role(node) is None and (len(node.children) == 1 or _has_specific_descendant(node, 2)):
        return True
    return len({specific_role(c) for c in node.children.values()} - {None}) >= 2


def split_components(root: TreeNode) -> tuple[list[ComponentSpec], list[str]]:
    """Return the components and the paths of opened wrappers (whose own weights form extra components)."""
    leaves: list[TreeNode] = []
    opened: list[str] = [""]

    def visit(node: TreeNode, depth: int) -> None:
        for child in node.children.values():
            if _is_wrapper(child) and depth < _MAX_DEPTH:
                opened.append(child.path)
                visit(child, depth + 1)
            else:
                leaves.append(child)

    visit(root, 1)
    language = any(specific_role(leaf) == "language_backbone" for leaf in leaves)
    specs = [ComponentSpec(leaf.path, _role(leaf, language), leaf.type_name) for leaf in leaves]
    return specs, opened


def _role(node: TreeNode, language_present: bool) -> ComponentRole:
    """Give a component its role: name or class first, then generic trunk names, then content."""
    role = specific_role(node)
    if role is not None:
        return role
    words = tokens(node.name)
    if words and words <= _GENERIC_STACK and language_present:
        return "language_backbone"  # the shared trunk of a VLA that embeds instructions (TinyVLA's `blocks`)
    if node.name.isdigit():
        return "other"
    if node.layer_types & _CONV_TYPES and "Embedding" not in node.layer_types:
        return "vision_tower"  # a convolutional image encoder (a policy's `backbone`)
    if node.type_name == "Embedding" and not words & _NOT_VOCABULARY:
        return "language_backbone"
    return "other"


class ComponentIndex:
    """Maps a dotted tensor name (`a.b.weight`) to the component that holds it (longest matching prefix)."""

    def __init__(self, specs: list[ComponentSpec], opened: list[str]) -> None:
        self.specs = {spec.path: spec for spec in specs}
        self.opened = set(opened)

    def component_of(self, name: str) -> str:
        """Return the component path of `name`, an opened wrapper's path for its own weights, or '(root)'."""
        parts = name.split(".")
        for end in range(len(parts), 0, -1):
            prefix = ".".join(parts[:end])
            if prefix in self.specs:
                return prefix
        for end in range(len(parts) - 1, 0, -1):
            prefix = ".".join(parts[:end])
            if prefix in self.opened:
                return prefix
        return ROOT

    def role_of(self, component: str) -> ComponentRole:
        """Return the role of a component path; wrappers' own weights and the root are 'other'."""
        spec = self.specs.get(component)
        return spec.role if spec else "other"

    def type_of(self, component: str) -> str | None:
        """Return the class name of a component, when known."""
        spec = self.specs.get(component)
        return spec.type_name if spec else None
