"""What a command line is expected to do without a server: --version and shell completion
(typer's own; the ids it completes from an API: tests/moe_lab/test_reads.py)."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from typer.testing import CliRunner

from moe_core.presets import BASE_PRESETS, EXPERIMENT_PRESETS
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


def bash_words(words: str, **env: str) -> list[str]:
    """What bash's completion function gets for `words`, in-process (typer's
    _MOE_LAB_COMPLETE), with no API unless the test gives one."""
    cword = len(words.split()) - (0 if words.endswith(" ") else 1)
    result = CliRunner().invoke(app, [], prog_name="moe-lab", env={
        "_MOE_LAB_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(cword),
        "MOE_API_URL": "http://127.0.0.1:9", **env})  # fmt: skip
    assert result.exit_code == 0 and result.stderr == "", result.output
    return [word for word in result.stdout.splitlines() if word]


def test_completion_completes_preset_names_without_an_api():
    assert bash_words("moe-lab submit x --preset t") == ["top2", "throughput_opt"]
    assert bash_words("moe-lab submit x -p ") == list(EXPERIMENT_PRESETS)
    assert bash_words("moe-lab ls --preset dr") == ["dropless"]
    for words in ("moe-lab submit x --base-preset ", "moe-lab study submit s -b "):
        assert bash_words(words) == list(BASE_PRESETS)
    # -e takes a comma-separated list: the last name is completed, those given are not offered
    assert bash_words("moe-lab study submit s -e top2,ba") == ["top2,baseline"]
    assert "top2,top2" not in bash_words("moe-lab study submit s -e top2,")


def test_completion_of_ids_is_silent_and_quick_when_no_api_answers():
    # in a real process, as the shell runs it: no traceback, no word, exit 0, no waiting
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "moe_lab"], capture_output=True, text=True,
        env={"_MOE_LAB_COMPLETE": "complete_bash", "COMP_WORDS": "moe-lab show ",
             "COMP_CWORD": "2", "MOE_API_URL": "http://127.0.0.1:9", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert (result.returncode, result.stdout.strip(), result.stderr) == (0, "", "")
    assert time.monotonic() - started < 10
    for words in ("moe-lab study show ", "moe-lab sweep cancel ", "moe-lab compare 1 "):
        assert bash_words(words) == []
    # an unreadable login file is no completion either, not an error
    assert bash_words("moe-lab show ", MOE_API_URL="", XDG_CONFIG_HOME="/dev/null") == []
