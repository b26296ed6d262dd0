"""mkdocs hook: links from a docs page to repository files outside docs/.

Pages link to the code they describe (`[hookspecs.py](../framework/hookspecs.py)`) so that the
links work where most people read them, on the repository host. The site holds only docs/, so
mkdocs would report every such link as broken and `--strict` would fail. This hook rewrites them
before mkdocs checks links: to `extra.source_url` + the path when mkdocs.yml sets it (the
repository's file browser, e.g. `https://github.com/<owner>/seqtune/blob/main`), else to the path
as plain text. A target missing from the repository is a warning, so `mkdocs build --strict`
fails on it just as mkdocs itself fails on a link to a missing page or anchor inside docs/.
"""
from __future__ import annotations

import html
import os
import posixpath
import re
import xml.etree.ElementTree as etree
from urllib.parse import unquote, urlsplit

from markdown import Extension, Markdown
from markdown.treeprocessors import Treeprocessor
from markdown.util import HTML_PLACEHOLDER_RE
from mkdocs.plugins import get_plugin_logger

log = get_plugin_logger("repo_links")

# Between Python-Markdown's inline patterns (20, which create the links) and mkdocs' own link
# check and rewrite ("relpath", 0), which must only see links it can resolve.
PRIORITY = 2


class RepoLinks(Treeprocessor):
    def __init__(self, md: Markdown, owner: RepoLinksExtension) -> None:
        super().__init__(md)
        self.owner = owner

    def run(self, root: etree.Element) -> None:
        for el in list(root.iter("a")):
            if el.get("href"):
                self.owner.rewrite(el, _plain_text(self.md, el))


class RepoLinksExtension(Extension):
    """Rewrites links that leave docs/; mkdocs renders pages one at a time, so `on_page_markdown`
    tells it which page (and so which folder) the next render's relative links start from."""

    def __init__(self, docs_dir: str, source_url: str | None) -> None:
        super().__init__()
        self.docs_dir = docs_dir
        self.repo_root = os.path.dirname(docs_dir)  # the repository root holds docs/
        self.source_url = source_url.rstrip("/") if source_url else None
        self.page = ""  # the src_uri of the page being rendered, relative to docs/

    def extendMarkdown(self, md: Markdown) -> None:
        md.treeprocessors.register(RepoLinks(md, self), "seqtune_repo_links", PRIORITY)

    def rewrite(self, el: etree.Element, text: str) -> None:
        """Point `el`, a link whose text is `text`, at the repository host, or unlink it."""
        href = el.get("href", "")
        scheme, netloc, path, _, fragment = urlsplit(href)
        if scheme or netloc or not path or href.startswith(("/", "\\")):
            return  # external, absolute, or a same-page anchor: mkdocs' business
        target = posixpath.normpath(posixpath.join(posixpath.dirname(self.page), unquote(path)))
        if target != ".." and not target.startswith("../"):
            return  # inside docs/: mkdocs checks the page and anchor
        # normpath, not realpath: a symlinked checkout (or test copy) must still count as inside
        full = os.path.normpath(os.path.join(self.docs_dir, target))
        repo_path = os.path.relpath(full, self.repo_root).replace(os.sep, "/")
        problem = _problem(full, repo_path)
        if problem:  # a warning fails --strict; the link is shown as text so mkdocs adds no second one
            log.warning(f"Doc file '{self.page}' links to '{href}', {problem}.")
        if self.source_url and not problem:
            el.set("href", f"{self.source_url}/{repo_path}" + (f"#{fragment}" if fragment else ""))
        else:
            _as_text(el, text, repo_path)


def _problem(full: str, repo_path: str) -> str | None:
    if repo_path.startswith("../"):
        return "which is outside the repository"
    return None if os.path.exists(full) else f"but the repository has no '{repo_path}'"


def _plain_text(md: Markdown, el: etree.Element) -> str:
    """A link's visible text. Some extensions (pymdownx.inlinehilite) stash code spans as
    placeholders until the end, so those are looked up and their tags dropped."""
    def stashed(m: re.Match) -> str:
        return re.sub(r"<[^>]*>", "", str(md.htmlStash.rawHtmlBlocks[int(m[1])]))

    return html.unescape(HTML_PLACEHOLDER_RE.sub(stashed, "".join(el.itertext()))).strip()


def _as_text(el: etree.Element, text: str, repo_path: str) -> None:
    """The link's text without the link; the path follows in code unless the text is the path."""
    el.tag = "span"
    el.attrib.clear()
    el.set("title", f"{repo_path} in the seqtune repository")
    if text.rstrip("/") == repo_path.rstrip("/"):
        return
    code = etree.Element("code")
    code.text, code.tail = repo_path, ")"
    if len(el):
        el[-1].tail = (el[-1].tail or "") + " ("
    else:
        el.text = (el.text or "") + " ("
    el.append(code)


_extension: RepoLinksExtension | None = None


def on_config(config, **kwargs):
    global _extension
    _extension = RepoLinksExtension(config.docs_dir, config.extra.get("source_url"))
    config.markdown_extensions.append(_extension)
    return config


def on_page_markdown(markdown, page, **kwargs):
    if _extension is not None:
        _extension.page = page.file.src_uri
    return markdown
