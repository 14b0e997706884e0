"""Run robopt's main job on embedded defaults: `python3 run_robopt.py` (extra arguments go to the `robopt` CLI).

Installs robopt into `.venv` first if needed, and builds the web page (frontend/dist) when npm is installed. With no arguments it runs `robopt demo`: it builds the bundled
reference VLA (from its shipped weights, measured and cached on first use) and optimizes it toward the default goal with the offline rule
reasoner, printing live progress, the before/after table and where the artifact and report are.
"""

from __future__ import annotations

import os
import sys

from _bootstrap import ROOT, ensure_frontend, ensure_venv

if __name__ == "__main__":
    python = ensure_venv(extras=("lerobot", "postgres", "sim"))
    ensure_frontend()  # the page `robopt serve` shows at /; skipped, with a note, where npm is missing
    arguments = sys.argv[1:] or ["demo"]
    os.chdir(ROOT)
    os.execv(str(python), [str(python), "-m", "server.cli", *arguments])
