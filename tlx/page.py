"""Self-contained HTML report pages, shared by the run report and the sweep report.

Figures (matplotlib, Agg canvas, no pyplot state) and thumbnails are embedded as base64 PNG data URIs: a page is one
file with no external files, fonts or scripts, so it can be mailed or opened from any folder.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import os
import re
import unicodedata
import warnings
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

from matplotlib import font_manager
from matplotlib.figure import Figure
from matplotlib.ft2font import FT2Font
from matplotlib.text import Text
from PIL import Image

log = logging.getLogger(__name__)

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328; background: #f6f8fa;
       margin: 0; }
main { width: 1160px; margin: 0 auto; padding: 24px 0 48px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 0 0 12px; }
.subtitle { color: #57606a; margin: 0 0 20px; font-size: 14px; }
section { background: #fff; border: 1px solid #d0d7de; border-radius: 8px; padding: 16px 20px; margin: 0 0 18px; }
table { border-collapse: collapse; font-size: 14px; }
th, td { border-bottom: 1px solid #eaeef2; padding: 5px 12px 5px 0; text-align: left; vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
img.figure { display: block; max-width: 100%; height: auto; }
.note { color: #57606a; font-size: 14px; margin: 6px 0; }
li { font-size: 14px; margin: 4px 0; }
code { font-size: 12px; word-break: break-all; }
.warn { color: #9a6700; }
.gallery { display: grid; grid-template-columns: repeat(6, 1fr); gap: 12px; }
.card { border: 1px solid #d0d7de; border-radius: 6px; padding: 8px; background: #fff; font-size: 12.5px; }
.card img { display: block; width: 160px; height: 160px; object-fit: contain; image-rendering: pixelated;
            background: #eaeef2; margin: 0 auto 6px; }
.card .wrong { color: #cf222e; font-weight: 600; }
.card .id { color: #57606a; word-break: break-all; font-size: 11px; }
"""


def esc(value: Any) -> str:
    """``value`` as HTML text."""
    return html.escape(str(value))


def data_uri(png: bytes) -> str:
    """A ``data:image/png;base64,...`` URI of PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def figure_png(fig: Figure, dpi: int = 110) -> bytes:
    """The figure rendered as PNG bytes.

    matplotlib draws text in DejaVu Sans alone, so class names in Chinese, Japanese, Korean, ... came out as boxes,
    with a warning per missing glyph on the console, even where installed fonts draw them. Where glyphs are missing
    the figure is drawn again with such fonts as fallbacks; what no installed font draws is said once, in one line.
    """
    png, missing = _render(fig, dpi)
    if missing:
        fallbacks = _fonts_drawing(frozenset(missing))
        if fallbacks:
            for text in fig.findobj(Text):  # all of them, tick labels included, exist once the figure has been drawn
                text.set_fontfamily([*text.get_fontfamily(), *fallbacks])
            png, missing = _render(fig, dpi)
        if missing - _said_missing:
            _said_missing.update(missing)
            them = "it" if len(missing) == 1 else "them"
            cjk = any(unicodedata.name(c, "").startswith(("CJK", "HIRAGANA", "KATAKANA", "HANGUL")) for c in missing)
            log.warning(
                "no installed font that matplotlib can draw with has %s, so the report's plots show boxes for %s; a "
                "font with outlines (not bitmaps, as colour emoji fonts have) that has %s%s is used once installed",
                " ".join(sorted(missing)),
                them,
                them,
                " (e.g. Noto Sans CJK)" if cjk else "",
            )
    return png


_GLYPH_MISSING = re.compile(r"Glyph (\d+) .*missing from font")
_said_missing: set[str] = set()  # the characters said to be missing, in this process


def _render(fig: Figure, dpi: int) -> tuple[bytes, set[str]]:
    """The figure as PNG bytes, and the characters it drew as boxes (matplotlib's warnings about them not shown)."""
    buf = io.BytesIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig.savefig(buf, format="png", dpi=dpi)
    missing = set()
    for w in caught:
        glyph = _GLYPH_MISSING.search(str(w.message))
        if glyph:
            missing.add(chr(int(glyph.group(1))))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return buf.getvalue(), missing


@cache
def _fonts_drawing(chars: frozenset[str]) -> tuple[str, ...]:
    """Families of installed fonts that together draw as many of ``chars`` as any do. matplotlib's own list of fonts
    comes first, fonts made to cover many scripts first in it; then font files installed after matplotlib made that
    list (it is kept in a cache and not updated), added to it for this process. Stops once every character has a
    font."""
    wanted = {ord(c) for c in chars}
    families: list[str] = []
    manager = font_manager.fontManager

    def draws(path: str) -> tuple[FT2Font | None, set[int]]:
        try:
            font = FT2Font(path)
            # matplotlib draws scalable fonts only (a bitmap font, e.g. Noto Color Emoji, made addfont raise)
            return font, wanted.intersection(font.get_charmap()) if font.scalable else set()
        except (OSError, RuntimeError):  # a file FreeType cannot read
            return None, set()

    known: set[str] = set()
    for entry in sorted(manager.ttflist, key=lambda e: _fallback_rank(e.name)):
        if not wanted:
            return tuple(families)
        known.add(os.path.realpath(entry.fname))
        if entry.style == "normal" and entry.name not in families and not entry.name.startswith("Last Resort"):
            drawn = draws(entry.fname)[1]  # (matplotlib's Last Resort font draws a box for every character: left out)
            if drawn:
                families.append(entry.name)
                wanted -= drawn
    for path in sorted(font_manager.findSystemFonts(), key=lambda p: _fallback_rank(Path(p).stem)):
        if not wanted:
            break
        font, drawn = draws(path) if os.path.realpath(path) not in known else (None, set())
        if drawn:
            try:
                manager.addfont(path)
            except Exception:  # (a font matplotlib cannot list: its own error, e.g. no name table)
                continue
            families.append(font_manager.ttfFontProperty(font).name)
            wanted -= drawn
    return tuple(families)


def _fallback_rank(name: str) -> int:
    name = name.lower()
    if any(k in name for k in ("cjk", "unicode", "fallback", "han sans", "gothic", "hei", "hiragino")):
        return 0
    if name.startswith(("stix", "cm", "dejavu math")):  # math fonts last
        return 2
    return 1


def image_png(img: Image.Image) -> bytes:
    """A PIL image as PNG bytes."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def img_tag(png: bytes, alt: str, element_id: str | None = None, css_class: str = "figure") -> str:
    """An ``<img>`` with the PNG embedded."""
    attr_id = f' id="{esc(element_id)}"' if element_id else ""
    return f'<img{attr_id} class="{css_class}" alt="{esc(alt)}" src="{data_uri(png)}">'


class Raw(str):
    """A table cell's own HTML (a link), put in as it is; every other cell is escaped."""


def link(href: str, text: str) -> Raw:
    """A link to a file beside the page (``href`` relative to it, quoted here)."""
    return Raw(f'<a href="{esc(quote(href))}">{esc(text)}</a>')


def table(rows: list[list[Any]], header: list[str] | None = None, numeric: set[int] | None = None) -> str:
    """An HTML table; cells are escaped (except :class:`Raw` ones), the columns in ``numeric`` right-aligned."""
    numeric = numeric or set()

    def cells(values: list[Any], tag: str) -> str:
        return "".join(
            f"<{tag}{' class=num' if i in numeric else ''}>{v if isinstance(v, Raw) else esc(v)}</{tag}>"
            for i, v in enumerate(values)
        )

    head = f"<thead><tr>{cells(header, 'th')}</tr></thead>" if header else ""
    body = "".join(f"<tr>{cells(r, 'td')}</tr>" for r in rows)
    return f"<table>{head}<tbody>{body}</tbody></table>"


def section(element_id: str, title: str, body: str) -> str:
    """A titled section of the page (the id lets tests and links find it)."""
    return f'<section id="{esc(element_id)}"><h2>{esc(title)}</h2>{body}</section>'


def page(title: str, subtitle: str, sections: list[str]) -> str:
    """A complete HTML document."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{_CSS}</style></head>\n"
        f'<body><main><h1>{esc(title)}</h1><p class="subtitle">{esc(subtitle)}</p>\n'
        + "\n".join(sections)
        + "\n</main></body></html>\n"
    )


def write_page(path: Path, document: str) -> Path:
    """Write the page atomically (temporary file, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(document, encoding="utf-8")
    os.replace(tmp, path)
    return path
