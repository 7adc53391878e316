"""``index.html``: one self-contained page laying out the overlays and the top-k crops."""

from __future__ import annotations

import dataclasses
from html import escape
from pathlib import Path

from hipt.io import atomic_write_text

#: No icon: a browser would otherwise ask the server for /favicon.ico (a 404 in its console).
HEAD_ICON = '<link rel="icon" href="data:,">'
STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table.info td { padding: 2px 12px 2px 0; vertical-align: top; }
.grid { display: flex; flex-wrap: wrap; gap: 14px; }
figure { margin: 0; max-width: 100%; }
figure img { max-width: 100%; border: 1px solid #ccc; }
figcaption { font-size: 0.85em; margin-top: 3px; }
.main figure img { max-height: 85vh; }
.thumbs figure { width: 420px; }
"""


@dataclasses.dataclass
class Figure:
    """One image on the page.

    Attributes:
        src: path relative to the page.
        caption: text under it.
    """

    src: str
    caption: str


@dataclasses.dataclass
class Page:
    """Everything the page shows.

    Attributes:
        title: page heading.
        info: ``(label, value)`` rows of the run summary.
        main: the headline figures (factorized and slide maps), shown large.
        overlays: every other level map.
        regions: top-k region crops.
        patches: top-k patch crops.
        links: ``(href, label)`` to the other outputs (summary.json, ...).
    """

    title: str
    info: list[tuple[str, str]]
    main: list[Figure]
    overlays: list[Figure]
    regions: list[Figure]
    patches: list[Figure]
    links: list[tuple[str, str]]


def _figures(figs: list[Figure], css: str) -> str:
    items = "\n".join(
        f'<figure><a href="{escape(f.src)}"><img src="{escape(f.src)}" '
        f'alt="{escape(f.caption)}" loading="lazy"></a>'
        f"<figcaption>{escape(f.caption)}</figcaption></figure>"
        for f in figs
    )
    return f'<div class="grid {css}">\n{items}\n</div>'


def render_page(page: Page) -> str:
    """The HTML text of ``page`` (every value escaped; images are linked, not embedded)."""
    rows = "\n".join(
        f"<tr><td><b>{escape(k)}</b></td><td>{escape(v)}</td></tr>" for k, v in page.info
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        HEAD_ICON,
        f"<title>{escape(page.title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{escape(page.title)}</h1>",
        f'<table class="info">{rows}</table>',
        "<h2>Factorized and slide-level attention</h2>",
        _figures(page.main, "main"),
    ]
    if page.overlays:
        parts += ["<h2>Attention per level and head</h2>", _figures(page.overlays, "thumbs")]
    if page.regions:
        parts += ["<h2>Top regions</h2>", _figures(page.regions, "")]
    if page.patches:
        parts += ["<h2>Top patches</h2>", _figures(page.patches, "")]
    if page.links:
        links = " · ".join(f'<a href="{escape(h)}">{escape(t)}</a>' for h, t in page.links)
        parts.append(f"<h2>Files</h2><p>{links}</p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_index(page: Page, out_dir: str | Path) -> Path:
    """Write ``<out_dir>/index.html`` atomically and return its path."""
    path = Path(out_dir) / "index.html"
    atomic_write_text(path, render_page(page))
    return path
