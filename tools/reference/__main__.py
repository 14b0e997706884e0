"""Build reference models from the command line, on the pinned kernels of `tools.reference.reproducible`.

`python -m tools.reference --build NAME CACHE_DIR SEED` builds one reference (the child process that
`cached_build` starts for trained references); `python -m tools.reference --record` retrains every trained
reference from scratch and records the sha256 of its weights in `tools/reference/reference_weights.json`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from tools.reference import build_reference
from tools.reference.reproducible import (
    DIGESTS_FILE,
    RECORD_FLAG,
    TRAINED_REFERENCES,
    build_in_child,
    in_reproducible_process,
)


def main(argv: list[str] | None = None) -> int:
    """Build one reference in this (pinned) process, or rebuild every trained one and record their digests."""
    parser = argparse.ArgumentParser(prog="python -m tools.reference", description=__doc__)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--build", nargs=3, metavar=("NAME", "CACHE_DIR", "SEED"))
    group.add_argument("--record", action="store_true", help="rebuild the trained references, record sha256")
    parser.add_argument(
        "--cache-dir", type=Path, help="with --record: keep the builds there (default: discard)"
    )
    args = parser.parse_args(argv)
    if args.build:
        name, cache_dir, seed = args.build
        if not in_reproducible_process():  # pin the kernels first: they are chosen when torch starts
            print(build_in_child(name, Path(cache_dir), int(seed)))
            return 0
        print(build_reference(name, Path(cache_dir), int(seed)))
        return 0
    os.environ[RECORD_FLAG] = "1"
    with tempfile.TemporaryDirectory() as scratch:
        cache_dir = Path(args.cache_dir or scratch)
        cached = [path.name for name in TRAINED_REFERENCES for path in cache_dir.glob(f"{name}-seed0-*")]
        if cached:  # a cached entry would be found instead of trained, and nothing would be recorded
            parser.error(f"--cache-dir {cache_dir} already holds {', '.join(cached)}; give an empty one")
        for name in TRAINED_REFERENCES:
            print(name, build_in_child(name, cache_dir, 0))
    print(DIGESTS_FILE.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
