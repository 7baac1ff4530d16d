"""Packaging: what ``pip install distillgym`` pulls in on a laptop, read from the real pyproject.toml.

``trl`` serves one kernel test only (dev extra); ``triton`` has wheels for Linux only, so its
requirement carries an environment marker and the package still installs (envs, store, CPU
training on the PyTorch kernel path) on macOS and Windows.
"""

from __future__ import annotations

import ast
import importlib.metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
PLATFORMS = {"linux": "Linux", "darwin": "Darwin", "win32": "Windows"}


def _requirements(group: list[str]) -> dict[str, Requirement]:
    return {(r := Requirement(line)).name: r for line in group}


def _installs(req: Requirement, sys_platform: str) -> bool:
    env = {"sys_platform": sys_platform, "platform_system": PLATFORMS[sys_platform]}
    return req.marker is None or req.marker.evaluate(env)


def test_triton_is_linux_only_and_trl_selenium_are_dev_tools() -> None:
    core = _requirements(PROJECT["dependencies"])
    dev = _requirements(PROJECT["optional-dependencies"]["dev"])
    assert "trl" not in core and "trl" in dev and "selenium" in dev
    assert _installs(core["triton"], "linux")
    assert not _installs(core["triton"], "darwin") and not _installs(core["triton"], "win32")
    laptop = {name for name, r in core.items() if _installs(r, "darwin")}
    assert {"torch", "transformers", "gymnasium", "sqlalchemy"} <= laptop and "triton" not in laptop


def test_no_package_module_imports_trl() -> None:
    """Only tests may import trl: the installed packages must work without it."""
    for package in ("envs", "agents", "trainers", "kernels", "data"):
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                assert not any(n == "trl" or n.startswith("trl.") for n in names), path


def test_constraints_pin_the_installed_browser_driver() -> None:
    pins = dict(line.split("==", 1) for line in (ROOT / "constraints/cpu.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert pins["selenium"] == importlib.metadata.version("selenium")
