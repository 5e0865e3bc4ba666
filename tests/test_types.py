"""The type check: mypy over the project with pyproject.toml's configuration (strict on
moe_core and store, the defaults elsewhere), a proof that the configuration bites, and the
rule that every `# type: ignore` names its error code and says why.

mypy runs in a subprocess of this interpreter (the venv's mypy, none of its state in the
test process) with its incremental cache under the system's temp directory, one per
checkout, so that a rerun rechecks only what changed."""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import subprocess
import sys
import tempfile
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "pyproject.toml"
# A cold run over the whole project takes about a minute on two cores; far past that, a
# hung mypy (not a slow one) is what the limit catches.
TIMEOUT = 600


def _cache_dir(name: str) -> Path:
    """A cache of mypy's under the temp directory, apart for each checkout and Python."""
    key = hashlib.sha256(f"{ROOT}|{sys.version}".encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "moe-lab-mypy" / key / name


def _mypy(*args: str, cwd: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(cache), "--no-color-output", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def test_the_project_type_checks() -> None:
    """mypy finds nothing in the files pyproject.toml names ([tool.mypy] files)."""
    done = _mypy("--config-file", str(CONFIG), cwd=ROOT, cache=_cache_dir("project"))
    assert done.returncode == 0, f"mypy found errors:\n{done.stdout}{done.stderr}"
    assert "Success: no issues found" in done.stdout, done.stdout + done.stderr


# A function without annotations: an error only where the configuration is strict.
UNTYPED = "def double(x):\n    return x * 2\n"
# A plain type error: an error at mypy's defaults too.
WRONG = 'count: int = "three"\n'


def test_the_configuration_is_strict_on_the_engine_and_the_store_only(tmp_path: Path) -> None:
    """The same two mistakes in a module of moe_core, of store and of api, checked with the
    project's configuration: all three report the type error (so mypy does report, and the
    test above can fail); only the first two the untyped function."""
    shutil.copy(CONFIG, tmp_path / "pyproject.toml")  # mypy_path: the snippets' root
    for package in ("moe_core", "store", "api"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
        (tmp_path / package / "snippet.py").write_text(UNTYPED + WRONG)
    files = [f"{package}/snippet.py" for package in ("moe_core", "store", "api")]
    done = _mypy(
        "--config-file", "pyproject.toml", *files, cwd=tmp_path, cache=_cache_dir("snippet")
    )
    out = done.stdout
    assert done.returncode == 1, out + done.stderr
    for package in ("moe_core", "store", "api"):
        assert re.search(rf"^{package}/snippet\.py:3: error: .*\[assignment\]$", out, re.M), out
    for package in ("moe_core", "store"):
        assert re.search(rf"^{package}/snippet\.py:1: error: .*\[no-untyped-def\]$", out, re.M), out
    assert "api/snippet.py:1:" not in out, out


# `# type: ignore[code, ...]` followed by `# why`; pragmas for other tools do not count. Only
# a comment that starts so is an ignore (Python's tokenizer and mypy read no other).
IGNORE = re.compile(r"#\s*type:\s*ignore(?P<codes>\[[^\]]*\])?(?P<rest>.*)$")
CODES = re.compile(r"\[\s*[a-z][a-z0-9-]*(\s*,\s*[a-z][a-z0-9-]*)*\s*\]")
PRAGMA = re.compile(r"#\s*(fmt:\s*(skip|off|on)|noqa\b[^#]*|pragma:[^#]*)")
# Not ours: a virtual environment, caches, the documentation site's build.
SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "site", "build", "__pycache__"}


def ignore_problems(source: str) -> list[tuple[int, str]]:
    """(line, comment) of each `# type: ignore` in `source` that lacks an error code or a
    reason after it."""
    problems = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type != tokenize.COMMENT:
            continue
        found = IGNORE.match(token.string)
        if found is None:
            continue
        reason = PRAGMA.sub("", found["rest"]).strip().lstrip("#").strip()
        if not (found["codes"] and CODES.fullmatch(found["codes"])) or not reason:
            problems.append((token.start[0], token.string))
    return problems


def _python_files() -> list[Path]:
    return sorted(
        path
        for path in ROOT.rglob("*.py")
        if not SKIP_DIRS.intersection(path.relative_to(ROOT).parts[:-1])
    )


def test_every_type_ignore_has_a_code_and_a_reason() -> None:
    bad = [
        f"{path.relative_to(ROOT)}:{line}: {comment}"
        for path in _python_files()
        for line, comment in ignore_problems(path.read_text(encoding="utf-8"))
    ]
    assert not bad, "each `# type: ignore[code]  # why`:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    "line, ok",
    [
        ("x = f()  # type: ignore[arg-type]  # torch stubs lack it", True),
        ("x = f()  # type: ignore[arg-type, no-any-return]  # both, one reason", True),
        ("x = (f(),  # type: ignore[misc]  # a reason  # fmt: skip\n     1)", True),
        ("x = f()  # type: ignore", False),
        ("x = f()  # type: ignore  # a reason but no code", False),
        ("x = f()  # type: ignore[arg-type]", False),
        ("x = f()  # type: ignore[arg-type]  # fmt: skip", False),
        ("x = f()  # type: ignore[arg-type]  # noqa: E501", False),
        ("x = f()  # type:ignore[]  # empty code", False),
        ('x = "# type: ignore"  # a string, not a comment', True),
        ("x = 1  # says `# type: ignore` in passing: not an ignore", True),
    ],
)
def test_the_ignore_rule(line: str, ok: bool) -> None:
    """The rule itself, on lines that keep it and lines that do not."""
    assert (ignore_problems(line + "\n") == []) is ok
