"""MkDocs hook: links from the docs to the repository's own files outside docs/.

The pages quote figures from committed JSON that lives beside the code that wrote it
(`benchmarks/results/*.json`), and link it the way GitHub resolves a relative link:
`[64.8 s](../benchmarks/results/recovery.json)`. MkDocs knows only docs/, so it would call
every such link broken and `mkdocs build --strict` would fail. This hook adds each
repository file that a page links to, and that exists, to the site's files under `repo/`
(`site/repo/benchmarks/results/recovery.json`), so MkDocs resolves and rewrites the link
and the built site serves the file. A link to a file that does not exist is left alone, so
MkDocs reports it as it reports any broken link, and --strict fails the build.

Only data and source files are added this way: a Markdown file outside docs/ would become
a page of the site, so a page links it by name instead.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files, InclusionLevel
from mkdocs.utils import is_markdown_file

# [text](target) and [text](target "title"); the target up to a space, ')' or '#'
INLINE_LINK = re.compile(r"\]\(<?([^)\s>#]+)")
# where the added files land in the site
SITE_FOLDER = "repo"


def linked_repository_files(page_uri: str, markdown: str) -> set[str]:
    """The targets of a page's relative links that leave docs/, as paths from docs/
    (`../benchmarks/results/latest.json`)."""
    targets = set()
    for target in INLINE_LINK.findall(markdown):
        if "://" in target or target.startswith(("/", "mailto:")):
            continue
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(page_uri), target))
        if resolved.startswith("../") and not is_markdown_file(resolved):
            targets.add(resolved)
    return targets


def on_files(files: Files, config: MkDocsConfig) -> Files:
    docs = Path(config.docs_dir).resolve()
    repository = docs.parent
    wanted: set[str] = set()
    for file in files.documentation_pages():
        wanted |= linked_repository_files(file.src_uri, file.content_string)
    for uri in sorted(wanted):
        path = (docs / uri).resolve()
        # only what is inside the repository and there: a missing target stays broken
        if not path.is_file() or not path.is_relative_to(repository):
            continue
        in_repository = path.relative_to(repository).as_posix()
        files.append(
            File(
                uri,
                src_dir=str(docs),
                dest_dir=config.site_dir,
                use_directory_urls=config.use_directory_urls,
                dest_uri=f"{SITE_FOLDER}/{in_repository}",
                # said outright: MkDocs' default exclusion of dot paths (`.*`) would
                # otherwise match the `..` of the path
                inclusion=InclusionLevel.INCLUDED,
            )
        )
    return files
