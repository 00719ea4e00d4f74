"""The glyphless font behind the invisible text layer.

The approach Tesseract and OCRmyPDF proved: a Type0 font with Identity-H
encoding whose CIDs are UTF-16 code units; every CID draws the same empty
glyph (CIDToGIDMap), so the text is never visible and any script works, and a
ToUnicode CMap maps each CID back to the same code point, so extraction and
search yield real Unicode (Chinese, Japanese, Korean, Latin alike).

Characters outside the BMP would need surrogate-pair CIDs, which a per-code
ToUnicode CMap cannot map back; :func:`encode_text` replaces them with U+FFFD
so extraction shows a visible placeholder instead of garbage.

The TrueType program is generated with fontTools once per process and cached;
the PDF objects are created once per document (:func:`add_font`) and shared by
all of its pages.
"""

from __future__ import annotations

import functools
import io

import pymupdf
from fontTools.fontBuilder import FontBuilder
from fontTools.pens.ttGlyphPen import TTGlyphPen

from ocr_inbox.outbox.pdfobj import new_stream

FONT_NAME = "GlyphLessFont"
UNITS_PER_EM = 1000
#: advance of every glyph, in 1/1000 em: the text layer scales words with Tz
GLYPH_ADVANCE = 500
ASCENT = 800
DESCENT = -200

_REPLACEMENT = "\ufffd"


@functools.lru_cache(maxsize=1)
def ttf_bytes() -> bytes:
    """A tiny valid TrueType font: ``.notdef`` plus one empty glyph, both blank."""
    glyphs = [".notdef", "blank"]
    fb = FontBuilder(UNITS_PER_EM, isTTF=True)
    fb.setupGlyphOrder(glyphs)
    fb.setupCharacterMap({0x20: "blank"})
    empty = TTGlyphPen(None).glyph()
    fb.setupGlyf({name: empty for name in glyphs})
    fb.setupHorizontalMetrics({name: (GLYPH_ADVANCE, 0) for name in glyphs})
    fb.setupHorizontalHeader(ascent=ASCENT, descent=DESCENT)
    fb.setupNameTable({"familyName": FONT_NAME, "styleName": "Regular"})
    fb.setupOS2(
        sTypoAscender=ASCENT,
        sTypoDescender=DESCENT,
        usWinAscent=ASCENT,
        usWinDescent=-DESCENT,
        sxHeight=500,
        sCapHeight=ASCENT,
    )
    fb.setupPost()
    buf = io.BytesIO()
    fb.save(buf)
    return buf.getvalue()


@functools.lru_cache(maxsize=1)
def cid_to_gid_map() -> bytes:
    """Every one of the 65,536 CIDs draws glyph 1 (big-endian uint16 per CID)."""
    return b"\x00\x01" * 65536


@functools.lru_cache(maxsize=1)
def to_unicode_cmap() -> bytes:
    """CID (a UTF-16 code unit) -> the same code point, surrogates left unmapped.

    bfrange entries may only vary in their last byte, hence one range per high
    byte, and at most 100 entries per block.
    """
    ranges = [f"<{hi:02X}00> <{hi:02X}FF> <{hi:02X}00>" for hi in range(256) if not 0xD8 <= hi <= 0xDF]
    blocks = []
    for i in range(0, len(ranges), 100):
        part = ranges[i : i + 100]
        blocks.append(f"{len(part)} beginbfrange\n" + "\n".join(part) + "\nendbfrange")
    text = "\n".join(
        [
            "/CIDInit /ProcSet findresource begin",
            "12 dict begin",
            "begincmap",
            "/CIDSystemInfo << /Registry (Adobe) /Ordering (UCS) /Supplement 0 >> def",
            "/CMapName /Adobe-Identity-UCS def",
            "/CMapType 2 def",
            "1 begincodespacerange",
            "<0000> <FFFF>",
            "endcodespacerange",
            *blocks,
            "endcmap",
            "CMapName currentdict /CMap defineresource pop",
            "end",
            "end",
        ]
    )
    return text.encode("ascii")


def encode_text(text: str) -> str:
    """``text`` as the hex digits of a PDF string for this font (UTF-16BE).

    Non-BMP characters become U+FFFD (see the module docstring), so one
    character is always one CID and one glyph advance.
    """
    bmp = "".join(ch if ord(ch) <= 0xFFFF else _REPLACEMENT for ch in text)
    return bmp.encode("utf-16-be").hex().upper()


def glyph_count(text: str) -> int:
    """How many glyphs :func:`encode_text` draws for ``text``."""
    return len(text)


def add_font(doc: pymupdf.Document) -> int:
    """Create the font objects in ``doc``; returns the xref of the Type0 font."""
    ttf = ttf_bytes()
    font_file = new_stream(doc, "<<>>", ttf)
    doc.xref_set_key(font_file, "Length1", str(len(ttf)))
    gid_map = new_stream(doc, "<<>>", cid_to_gid_map())
    cmap = new_stream(doc, "<<>>", to_unicode_cmap())

    descriptor = doc.get_new_xref()
    doc.update_object(
        descriptor,
        f"<</Type/FontDescriptor/FontName/{FONT_NAME}/Flags 5"
        f"/FontBBox[0 {DESCENT} {GLYPH_ADVANCE} {ASCENT}]/ItalicAngle 0"
        f"/Ascent {ASCENT}/Descent {DESCENT}/CapHeight {ASCENT}/StemV 80"
        f"/FontFile2 {font_file} 0 R>>",
    )
    cid_font = doc.get_new_xref()
    doc.update_object(
        cid_font,
        f"<</Type/Font/Subtype/CIDFontType2/BaseFont/{FONT_NAME}"
        "/CIDSystemInfo<</Registry(Adobe)/Ordering(Identity)/Supplement 0>>"
        f"/FontDescriptor {descriptor} 0 R/DW {GLYPH_ADVANCE}/CIDToGIDMap {gid_map} 0 R>>",
    )
    type0: int = doc.get_new_xref()
    doc.update_object(
        type0,
        f"<</Type/Font/Subtype/Type0/BaseFont/{FONT_NAME}/Encoding/Identity-H"
        f"/DescendantFonts[{cid_font} 0 R]/ToUnicode {cmap} 0 R>>",
    )
    return type0
