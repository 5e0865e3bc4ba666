"""moe_core.provenance: one commit stamp for studies, sweeps and benchmarks, `<short
hash>` or `<short hash>+dirty`, and none where the code is not its own checkout."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from moe_core import provenance
from moe_core.provenance import source_commit

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True,
                          text=True).stdout.strip()  # fmt: skip


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A git checkout of one commit: a package file and a README."""
    root = tmp_path / "checkout"
    (root / "moe_core").mkdir(parents=True)
    (root / "moe_core" / "model.py").write_text("LAYERS = 2\n")
    (root / "README.md").write_text("notes\n")
    _git(root, "init", "-q")
    _git(root, "add", ".")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    return root


def test_a_clean_checkout_is_stamped_with_its_short_hash(checkout):
    stamp = source_commit(checkout)
    assert stamp == _git(checkout, "rev-parse", "--short", "HEAD")
    assert _git(checkout, "rev-parse", "HEAD").startswith(stamp)  # the commit, abbreviated


@pytest.mark.parametrize("changed", ["moe_core/model.py", "README.md"])
def test_a_changed_tracked_file_anywhere_makes_it_dirty(checkout, changed):
    """The code that ran is the whole checkout's (benchmarks time the API and the worker,
    not only the engine), so a change in any tracked file says so."""
    head = _git(checkout, "rev-parse", "--short", "HEAD")
    (checkout / changed).write_text("changed\n")
    assert source_commit(checkout) == f"{head}+dirty"


def test_an_untracked_file_is_not_a_change(checkout):
    """Results being written and data beside the code are not the code."""
    (checkout / "results.json").write_text("{}\n")
    assert source_commit(checkout) == _git(checkout, "rev-parse", "--short", "HEAD")


def test_no_stamp_outside_a_checkout_or_inside_another_one(tmp_path, checkout):
    assert source_commit(tmp_path / "elsewhere") is None  # no such folder
    (tmp_path / "plain").mkdir()
    assert source_commit(tmp_path / "plain") is None  # not under git at all
    # An installed copy in a virtualenv inside some checkout: that checkout's commit is
    # not this code's.
    site = checkout / ".venv" / "lib" / "site-packages"
    site.mkdir(parents=True)
    assert source_commit(site) is None


def test_no_stamp_without_git(checkout, monkeypatch):
    monkeypatch.setenv("PATH", "")
    assert source_commit(checkout) is None


def test_this_code_is_stamped_from_its_own_checkout():
    """The default root is the checkout this code runs from (where one is)."""
    stamp = source_commit()
    if stamp is None:  # an installed copy, or a tree that is not a checkout
        pytest.skip("not run from a git checkout")
    assert re.fullmatch(r"[0-9a-f]{7,40}(\+dirty)?", stamp)
    assert _git(provenance.ROOT, "rev-parse", "HEAD").startswith(stamp.split("+")[0])


def test_provenance_imports_no_torch():
    """The study and sweep stamp with it, and so may what runs without torch."""
    code = "import sys, moe_core.provenance; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=provenance.ROOT, check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    assert out.strip() == "False"
