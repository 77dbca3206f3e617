"""Provenance facts recorded with every trained model."""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _git(*args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True, timeout=10
    )
    return done.stdout.strip()


def code_version() -> str:
    """The git commit of the project checkout (with ``-dirty`` when it has uncommitted changes)."""
    try:
        commit = _git("rev-parse", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def pinned_requirements(packages: tuple[str, ...]) -> list[str]:
    """``name==version`` for installed packages, for a logged model's environment."""
    pins = []
    for package in packages:
        try:
            pins.append(f"{package}=={metadata.version(package)}")
        except metadata.PackageNotFoundError:
            continue
    return pins
