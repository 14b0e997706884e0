"""Build or retrain reference models from the command line.

`python -m tools.reference --build NAME CACHE_DIR SEED` builds one reference (the trained ones from their
shipped weights). `--train NAME [--seed S]` retrains one from its recipe on pinned kernels and compares it with
the shipped weights by behaviour (exit 0 within the bands, 1 outside them; nothing shipped changes).
`--record [NAME ...]` retrains (all trained references by default) and writes the new weights and their
sha256 into `tools/reference/weights/` and `reference_weights.json`, after a deliberate change to a recipe.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from tools.reference import build_reference
from tools.reference.reproducible import TRAINED_REFERENCES, build_in_child


def main(argv: list[str] | None = None) -> int:
    """Build one reference, retrain and compare one, or retrain and record the shipped weights."""
    parser = argparse.ArgumentParser(prog="python -m tools.reference", description=__doc__)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--build", nargs=3, metavar=("NAME", "CACHE_DIR", "SEED"))
    group.add_argument("--train", metavar="NAME", choices=TRAINED_REFERENCES, help="retrain and compare")
    group.add_argument(
        "--record", nargs="*", metavar="NAME", help="retrain and ship (default: every trained reference)"
    )
    parser.add_argument("--seed", type=int, default=0, help="with --train: the recipe's seed")
    parser.add_argument("--cache-dir", type=Path, help="with --train/--record: keep the builds there")
    args = parser.parse_args(argv)
    if args.build:
        name, cache_dir, seed = args.build
        print(build_reference(name, Path(cache_dir), int(seed)))
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        cache_dir = Path(args.cache_dir or scratch)
        if args.train:
            return _train(args.train, cache_dir, args.seed)
        return _record(args.record or list(TRAINED_REFERENCES), cache_dir, parser)


def _train(name: str, cache_dir: Path, seed: int) -> int:
    from tools.reference.retrain import retrain_and_compare
    from tools.reference.shipped import shipped_entry

    if shipped_entry(name, seed) is None:
        print(build_in_child(name, cache_dir, seed))  # nothing ships for that seed: the build trains it
        return 0
    directory, comparison = retrain_and_compare(name, cache_dir, seed)
    print(directory)
    print(json.dumps({key: value for key, value in comparison.as_dict().items()}, indent=2))
    print(comparison.summary())
    return 0 if comparison.accepted else 1


def _record(names: list[str], cache_dir: Path, parser: argparse.ArgumentParser) -> int:
    from tools.reference.build import load_reference_module, read_reference_metadata
    from tools.reference.retrain import probe_behaviour, retrain
    from tools.reference.shipped import ship_weights

    unknown = sorted(set(names) - set(TRAINED_REFERENCES))
    if unknown:
        parser.error(
            f"not trained references: {', '.join(unknown)}; trained: {', '.join(TRAINED_REFERENCES)}"
        )
    for name in names:
        directory = retrain(name, cache_dir, 0)
        metadata = read_reference_metadata(directory)
        model = load_reference_module(directory)
        behaviour = probe_behaviour(name, model)
        shipped = ship_weights(
            name,
            0,
            model,
            {"training": metadata["training"], "trained_on": metadata["weights"]["trained_on"]},
            {
                "closed_loop_success": behaviour.success_rate,
                "episodes": behaviour.episodes,
                "expert_action_mse": behaviour.action_mse,
            },
        )
        print(name, directory, "->", shipped)
    return 0


if __name__ == "__main__":
    sys.exit(main())
