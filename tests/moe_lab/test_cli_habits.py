"""What a command line is expected to do without a server: --version and shell completion
(typer's own)."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

from typer.testing import CliRunner

from moe_lab import app as app_module
from moe_lab.cli import app

ROOT = Path(__file__).resolve().parents[2]
PROJECT_VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_version_prints_the_packages_version_and_exits_0():
    result = CliRunner().invoke(app, ["--version"])
    assert (result.exit_code, result.stdout) == (0, f"moe-lab {PROJECT_VERSION}\n")
    # the installed console script says the same
    script = subprocess.run(
        [sys.executable, "-m", "moe_lab", "--version"], capture_output=True, text=True, check=True
    )
    assert script.stdout == f"moe-lab {PROJECT_VERSION}\n"


def test_version_of_a_bare_checkout_is_pyprojects(monkeypatch):
    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert app_module.version() == PROJECT_VERSION


def test_completion_scripts_are_typers_own():
    for shell, marker in (("bash", "complete -o default -F _moe_lab_completion moe-lab"),
                          ("zsh", "compdef _moe_lab_completion moe-lab"),
                          ("fish", "complete --command moe-lab")):  # fmt: skip
        result = subprocess.run(
            [sys.executable, "-m", "moe_lab", "--show-completion", shell],
            capture_output=True, text=True, env={"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1",
                                                  "PATH": "/usr/bin:/bin"},
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert marker in result.stdout, (shell, result.stdout)
    help_text = CliRunner().invoke(app, ["--help"]).stdout
    assert "--install-completion" in help_text and "--show-completion" in help_text


def test_completion_completes_commands():
    # what the shell's function asks: the words so far, through typer's _MOE_LAB_COMPLETE
    result = subprocess.run(
        [sys.executable, "-m", "moe_lab"],
        capture_output=True,
        text=True,
        env={"_MOE_LAB_COMPLETE": "complete_bash", "COMP_WORDS": "moe-lab no", "COMP_CWORD": "1",
             "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.stdout.split() == ["note"]
