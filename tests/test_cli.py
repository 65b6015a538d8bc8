"""One CLI convention: every entry point is a console script whose --help exits 0 and shows an example."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def test_the_five_commands_are_console_scripts():
    assert set(SCRIPTS) == {"jsr-train", "jsr-evaluate", "jsr-upscale", "jsr-convert", "jsr-prepare"}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_each_console_script_help_exits_0_with_an_example(name):
    script = Path(sys.executable).parent / name  # installed beside this interpreter by `pip install -e .`
    assert script.is_file(), f"{script} is missing: install the project as the README says (pip install -e .)"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "example" in result.stdout.lower() and name in result.stdout, result.stdout[-2000:]
