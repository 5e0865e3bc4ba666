"""Where a result came from: the commit of the code that produced it, stamped the same way
on a study's and a sweep's results (moe_core.study, moe_core.sweep) and on the
benchmarks' (benchmarks.harness). Torch-free.

The form is the short hash, with `+dirty` when a tracked file differs from it:
- the short hash is what `git log --oneline` shows and what the docs and READMEs quote
  (`2709f91`), so a stamp is found by a search; git lengthens it where seven digits
  would be ambiguous;
- `+` reads as "that commit plus changes" (PEP 440's local version, semver's build
  metadata) and cannot occur in a hash, so `stamp.split("+")[0]` is the commit; the
  benchmarks' stamps committed so far have this form already;
- dirty means any tracked file of the checkout: the benchmarks time the API, the store
  and the worker as well as the engine, so no narrower set of folders is the code that
  ran. Untracked files are not: results being written, data, virtualenvs.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                          timeout=10, check=True).stdout.strip()  # fmt: skip


def source_commit(root: Path = ROOT) -> str | None:
    """The commit of the checkout at `root` (default: the one this code runs from), as
    `<short hash>` or `<short hash>+dirty`; None where `root` is not the top of a git
    checkout (an installed copy, even one inside some other repository) or git is
    missing."""
    try:
        if Path(_git(root, "rev-parse", "--show-toplevel")).resolve() != root.resolve():
            return None
        head = _git(root, "rev-parse", "--short", "HEAD")
        changed = _git(root, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if changed else "")
