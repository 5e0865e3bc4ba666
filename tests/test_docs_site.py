"""The docs: the site under docs/ builds with `mkdocs build --strict` (a broken link or
anchor, or a page missing from the nav, fails it), serves nothing from another host, and
the README stays a front door a newcomer finishes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_MAX_LINES = 250
# [text](target): the target up to a space, ')' or '#'
LINK = re.compile(r"\]\(<?([^)\s>#]+)")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        # Material 9.7+ prints a banner about its successor on every build
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert build.returncode == 0, build.stdout + build.stderr
    return out


def test_the_site_builds_strictly_with_every_page(site):
    pages = {
        path.relative_to(ROOT / "docs").with_suffix(".html").as_posix()
        for path in (ROOT / "docs").rglob("*.md")
    }
    built = {path.relative_to(site).as_posix() for path in site.rglob("*.html")}
    assert pages <= built, sorted(pages - built)


def test_the_committed_json_the_pages_quote_is_served_with_the_site(site):
    # docs/hooks/repo_files.py copies the repository files that pages link to
    for name in ("latest.json", "service.json", "recovery.json"):
        served = site / "repo" / "benchmarks" / "results" / name
        assert served.read_bytes() == (ROOT / "benchmarks" / "results" / name).read_bytes()


class _Assets(HTMLParser):
    """Every URL a page makes the browser fetch by itself: scripts, styles, images, fonts."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag in ("script", "img", "iframe") and found.get("src"):
            self.urls.append(found["src"])
        if tag == "link" and found.get("href") and found.get("rel") != "canonical":
            self.urls.append(found["href"])


def test_no_page_loads_anything_from_another_host(site):
    # theme.font: false keeps Google Fonts out; everything else Material needs is bundled
    for page in site.rglob("*.html"):
        parser = _Assets()
        parser.feed(page.read_text())
        remote = [url for url in parser.urls if re.match(r"(https?:)?//", url)]
        assert remote == [], (page.relative_to(site), remote)


def _nav_pages(entries: list) -> set[str]:
    pages: set[str] = set()
    for entry in entries:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages |= _nav_pages(value) if isinstance(value, list) else {value}
    return pages


def test_every_docs_page_is_in_the_nav():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    pages = {path.relative_to(ROOT / "docs").as_posix() for path in (ROOT / "docs").rglob("*.md")}
    assert _nav_pages(config["nav"]) == pages


def test_the_readme_is_a_short_front_door():
    text = README.read_text()
    lines = text.splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"
    # CI's contract (.ci/run runs ./run test): the first commands a reader meets
    first_block = text.split("```")[1]
    assert [line.split()[:2] for line in first_block.splitlines()[1:3]] == [
        ["./run", "demo"],
        ["./run", "test"],
    ]
    # the first run of the service ends on the dashboard
    first_run = text.split("\n## First run of the service\n")[1].split("\n## ")[0]
    assert first_run.strip().endswith("open http://127.0.0.1:8000/ui")


def test_the_readmes_links_resolve():
    # mkdocs checks the pages' links; the README is not one of its pages
    targets = [t for t in LINK.findall(README.read_text()) if not re.match(r"[a-z]+:", t)]
    assert targets
    missing = [target for target in targets if not (ROOT / target).exists()]
    assert missing == []


def test_the_engine_page_lists_every_module_of_moe_core():
    # docs/engine.md's first table: one row per module, so a module added is a row to write
    page = (ROOT / "docs" / "engine.md").read_text()
    table = page.split("| module | what |")[1].split("\n\n")[0]
    listed = re.findall(r"^\| `([^`]+)` \|", table, flags=re.MULTILINE)
    modules = sorted(
        path.relative_to(ROOT / "moe_core").as_posix() for path in (ROOT / "moe_core").rglob("*.py")
    )
    assert sorted(listed) == modules
    assert len(listed) == len(set(listed))
