"""MkDocs hook: links from the docs to files elsewhere in the repository (results, tests, sources).

MkDocs only knows the files under ``docs/``; a relative link that leaves that folder (``../results/x.md``)
would be reported as not found, and in the built site it would point nowhere. This hook checks every such
link when the site is built: a target that does not exist in the repository is a warning (so ``mkdocs build
--strict`` fails on it, as on any broken link inside ``docs/``); an existing one is copied into the site
under ``_repo/`` and the link pointed there, so the built site is self-contained.
"""

from __future__ import annotations

import logging
import os
import re
import shutil

log = logging.getLogger("mkdocs.hooks.repo_files")

_SCHEME = "clicooper-repo:"
# Markdown links and images: ](target) or ](target "title"); fenced code is skipped below.
_LINK = re.compile(r"(\]\()([^)\s]+)((?:\s+\"[^\"]*\")?\))")
_FENCE = re.compile(r"^(```|~~~)")
_copied: set[str] = set()


def _roots(config) -> tuple[str, str]:
    docs = os.path.realpath(config["docs_dir"])
    return docs, os.path.dirname(docs)


def on_pre_build(config, **kwargs) -> None:
    _copied.clear()


def on_page_markdown(markdown, page, config, files, **kwargs):
    docs, repo = _roots(config)
    page_dir = os.path.dirname(os.path.join(docs, page.file.src_uri))

    def rewrite(m: re.Match) -> str:
        target = m.group(2)
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith(("#", "/")):
            return m.group(0)
        path, _, frag = target.partition("#")
        resolved = os.path.realpath(os.path.join(page_dir, path))
        if resolved == docs or resolved.startswith(docs + os.sep):
            return m.group(0)  # inside docs/: MkDocs checks it
        if not (resolved.startswith(repo + os.sep) and os.path.exists(resolved)):
            log.warning("Doc file '%s' contains a link to '%s', which is not in the repository",
                        page.file.src_uri, target)
            return m.group(0)
        rel = os.path.relpath(resolved, repo).replace(os.sep, "/")
        _copied.add(rel)
        return f"{m.group(1)}{_SCHEME}{rel}{'#' + frag if frag else ''}{m.group(3)}"

    out, fenced = [], False
    for line in markdown.split("\n"):
        if _FENCE.match(line.lstrip()):
            fenced = not fenced
        out.append(line if fenced else _LINK.sub(rewrite, line))
    return "\n".join(out)


def on_page_content(html, page, config, files, **kwargs):
    # Point each placeholder at the copy under site/_repo/, relative to where this page is written.
    page_dir = os.path.dirname(page.file.dest_uri)
    prefix = os.path.relpath("_repo", page_dir or ".").replace(os.sep, "/")
    return html.replace(_SCHEME, prefix + "/")


def on_post_build(config, **kwargs) -> None:
    _, repo = _roots(config)
    for rel in sorted(_copied):
        src, dst = os.path.join(repo, rel), os.path.join(config["site_dir"], "_repo", rel)
        if os.path.isdir(src):
            shutil.copytree(src, dst, dirs_exist_ok=True)
        else:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copy2(src, dst)
