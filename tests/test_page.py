"""Report figures draw class names in any script the machine has a font for (tlx.page.figure_png), with real font
files: one built here whose glyphs are filled squares, found in matplotlib's font list or installed after it."""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

import pytest
from fontTools.fontBuilder import FontBuilder
from fontTools.pens.ttGlyphPen import TTGlyphPen
from matplotlib import font_manager
from matplotlib.figure import Figure

from tlx import page

HAN = "東京"  # a class name in Japanese: DejaVu Sans, matplotlib's font, has neither character


def _square_font(path: Path, family: str, chars: str) -> Path:
    """A TrueType font that draws each of ``chars`` as a filled square."""

    def glyph(filled: bool):
        pen = TTGlyphPen(None)
        if filled:
            pen.moveTo((50, 0))
            pen.lineTo((50, 800))
            pen.lineTo((950, 800))
            pen.lineTo((950, 0))
            pen.closePath()
        return pen.glyph()

    names = {c: f"uni{ord(c):04X}" for c in chars}
    fb = FontBuilder(1000, isTTF=True)
    fb.setupGlyphOrder([".notdef", *names.values()])
    fb.setupCharacterMap({ord(c): n for c, n in names.items()})
    fb.setupGlyf({".notdef": glyph(False), **{n: glyph(True) for n in names.values()}})
    fb.setupHorizontalMetrics({n: (1000, 50) for n in [".notdef", *names.values()]})
    fb.setupHorizontalHeader(ascent=880, descent=-120)
    fb.setupNameTable({"familyName": family, "styleName": "Regular"})
    fb.setupOS2(sTypoAscender=880, sTypoDescender=-120, usWinAscent=880, usWinDescent=120)
    fb.setupPost()
    fb.save(str(path))
    return path


def _figure() -> Figure:
    fig = Figure(figsize=(2.0, 1.0), layout="constrained")
    ax = fig.add_subplot()
    ax.set_yticks([0], labels=[HAN], fontsize=20)
    ax.set_xticks([])
    ax.tick_params(length=0)
    ax.spines[:].set_visible(False)  # nothing dark but the label
    return fig


def _drawn_in(family: str | None = None) -> bytes:
    """The figure as matplotlib draws it alone (a box for each character), or with ``family`` for what its font
    lacks."""
    fig, buf = _figure(), io.BytesIO()
    if family:
        for label in fig.axes[0].get_yticklabels():
            label.set_fontfamily([*label.get_fontfamily(), family])  # as a fallback
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def _boxes() -> bytes:
    return _drawn_in(None)


@pytest.fixture
def fonts(monkeypatch) -> list[str]:
    """matplotlib's font list cut to DejaVu Sans (so no font on this machine draws HAN) and the system's font files
    (a list the test fills) as the font search sees them; both as they were afterwards."""
    dejavu = [e for e in font_manager.fontManager.ttflist if e.name == "DejaVu Sans"]
    monkeypatch.setattr(font_manager.fontManager, "ttflist", dejavu)
    installed: list[str] = []
    monkeypatch.setattr(font_manager, "findSystemFonts", lambda *a, **k: list(installed))
    monkeypatch.setattr(page, "_said_missing", set())
    page._fonts_drawing.cache_clear()
    yield installed
    page._fonts_drawing.cache_clear()


def _png_and_warnings() -> tuple[bytes, list]:
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        png = page.figure_png(_figure())
    return png, shown


@pytest.mark.parametrize("where", ["in matplotlib's list", "installed after it"])
def test_class_names_matplotlib_cannot_draw_are_drawn_with_an_installed_font(fonts, where, tmp_path, caplog):
    """matplotlib drew 東京 as two boxes, with a warning per character on the console, even where an installed font
    had them: it knows DejaVu Sans only, and its list of fonts is not updated when a font is installed later."""
    font = _square_font(tmp_path / "squares.ttf", "TlxSquares", HAN)
    if where == "in matplotlib's list":
        font_manager.fontManager.addfont(str(font))
    else:
        fonts.append(str(font))
    with caplog.at_level(logging.WARNING, logger="tlx.page"):
        png, shown = _png_and_warnings()
    assert shown == [] and caplog.records == []
    assert "TlxSquares" in {e.name for e in font_manager.fontManager.ttflist}
    assert png == _drawn_in("TlxSquares") != _boxes()


def test_what_no_installed_font_draws_is_said_once(fonts, caplog):
    with caplog.at_level(logging.WARNING, logger="tlx.page"):
        png, shown = _png_and_warnings()
        again, shown_again = _png_and_warnings()
    assert shown == shown_again == []  # not matplotlib's warning per glyph and figure
    assert [r.getMessage() for r in caplog.records] == [
        "no installed font that matplotlib can draw with has 京 東, so the report's plots show boxes for them; a "
        "font with outlines (not bitmaps, as colour emoji fonts have) that has them (e.g. Noto Sans CJK) is used once "
        "installed"
    ]
    assert png == again == _boxes()


def test_a_bitmap_font_that_has_the_characters_is_left_out(fonts, tmp_path, caplog):
    """A colour emoji font (Noto Color Emoji) has bitmaps only, which matplotlib cannot draw: adding it as a fallback
    raised NotImplementedError ("Non-scalable fonts are not supported") and the report was not written. Here a BDF
    bitmap font that has both characters."""
    bitmap = tmp_path / "squares.bdf"
    glyphs = "".join(
        f"STARTCHAR c{ord(c)}\nENCODING {ord(c)}\nSWIDTH 500 0\nDWIDTH 8 0\nBBX 8 8 0 0\nBITMAP\n"
        + "FF\n" * 8
        + "ENDCHAR\n"
        for c in HAN
    )
    bitmap.write_text(
        "STARTFONT 2.1\nFONT -tlx-squares-medium-r-normal--8-80-75-75-c-80-iso10646-1\nSIZE 8 75 75\n"
        "FONTBOUNDINGBOX 8 8 0 0\nSTARTPROPERTIES 2\nFONT_ASCENT 8\nFONT_DESCENT 0\nENDPROPERTIES\n"
        f"CHARS {len(HAN)}\n{glyphs}ENDFONT\n"
    )
    fonts.append(str(bitmap))
    with caplog.at_level(logging.WARNING, logger="tlx.page"):
        png, shown = _png_and_warnings()
    assert shown == [] and png == _boxes()
    assert [r.getMessage().split(",")[0] for r in caplog.records] == [
        "no installed font that matplotlib can draw with has 京 東"
    ]
