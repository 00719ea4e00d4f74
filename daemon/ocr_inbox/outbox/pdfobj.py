"""Low-level PDF object helpers shared by the page builder (``pdf.py``) and the font (``font.py``)."""

from __future__ import annotations

from collections.abc import Sequence

import pymupdf


def new_stream(doc: pymupdf.Document, obj: str, data: bytes, filters: Sequence[tuple[str, str]] = ()) -> int:
    """A new stream object; without ``filters`` MuPDF Flate-compresses ``data``, with them
    ``data`` is stored as it is, already encoded as they say."""
    xref: int = doc.get_new_xref()
    doc.update_object(xref, obj)
    doc.update_stream(xref, data, compress=not filters)
    # Storing encoded data makes MuPDF drop /Filter and /DecodeParms: set them after.
    for key, value in filters:
        doc.xref_set_key(xref, key, value)
    return xref
