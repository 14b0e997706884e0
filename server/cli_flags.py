"""Flags shared by the commands that load a user's model (`analyze`, `optimize`) and their reading."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """The flags that say how to load a model: input specs, architecture, config, trust."""
    parser.add_argument(
        "--input-shape",
        action="append",
        default=[],
        metavar="NAME:DIMS:DTYPE",
        help="input spec, repeatable, e.g. pixel_values:1x3x224x224:float32",
    )
    parser.add_argument(
        "--arch", metavar="MODULE:CLASS", help="architecture for a state dict / safetensors file"
    )
    parser.add_argument("--config", type=Path, help="Hugging Face config.json, or JSON kwargs for --arch")
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow unpickling a whole pickled module (model classes of torch, transformers, LeRobot, torchao, "
        "bitsandbytes only; name your own package with --trust-package)",
    )
    parser.add_argument(
        "--trust-package",
        action="append",
        default=[],
        metavar="PACKAGE",
        help="a top-level package whose classes a trusted pickle may construct (repeatable; implies "
        "--trust-pickle)",
    )
    parser.add_argument("--trust-remote-code", action="store_true", help="allow Hugging Face custom code")


def load_options(args: argparse.Namespace) -> Any:
    """`tools.intake.LoadOptions` from the model flags."""
    from tools.inputs import parse_input_spec
    from tools.intake import LoadOptions

    return LoadOptions(
        architecture=args.arch,
        config_path=args.config,
        trust_pickle=args.trust_pickle or bool(args.trust_package),
        trusted_packages=tuple(args.trust_package),
        trust_remote_code=args.trust_remote_code,
        input_specs=tuple(parse_input_spec(text) for text in args.input_shape),
    )
