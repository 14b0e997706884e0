"""Run robopt's main job on embedded defaults: `python3 run_robopt.py` (extra arguments go to the `robopt` CLI).

Installs robopt into `.venv` first if needed. With no arguments it runs `robopt analyze` on the bundled reference
VLA (built and cached on first use).
"""

from __future__ import annotations

import os
import sys

from _bootstrap import ROOT, ensure_venv

if __name__ == "__main__":
    python = ensure_venv()
    arguments = sys.argv[1:] or ["analyze"]
    os.chdir(ROOT)
    os.execv(str(python), [str(python), "-m", "server.cli", *arguments])
