"""What a user can do about each failure reason, for ``ocr-inbox status`` and the one-shot report.

The reasons are the short codes the ledger, the journal (``reason=``) and the JSON
reports carry; the advice is a sentence a person acts on. A failed image is tried
again when its file changes, or by ``ocr-inbox retry`` (the last resort named in
the advice where nothing about the file is wrong).
"""

from __future__ import annotations

import enum

_RETRY = "then `ocr-inbox retry --reason {reason}`"


class Reason(enum.StrEnum):
    """Why an image failed or was refused. The one list: the producers (``ocr/images.py``,
    ``support/beneath.py``, ``inbox/scan.py``, the workers, dispatch) raise these, and the
    ledger, the journal and ``retry --reason`` carry their values."""

    empty_file = "empty_file"
    truncated = "truncated"
    corrupt = "corrupt"
    not_an_image = "not_an_image"
    unsupported_format = "unsupported_format"
    file_too_large = "file_too_large"
    too_many_pixels = "too_many_pixels"
    too_many_pages = "too_many_pages"
    pdf_encrypted = "pdf_encrypted"
    pdf_broken = "pdf_broken"
    pdf_javascript = "pdf_javascript"
    too_much_memory = "too_much_memory"
    unreadable = "unreadable"
    changed_while_reading = "changed_while_reading"
    vanished = "vanished"
    name_too_long = "name_too_long"
    name_not_utf8 = "name_not_utf8"
    not_a_regular_file = "not_a_regular_file"
    symlink_outside_inbox = "symlink_outside_inbox"
    outside_inbox = "outside_inbox"
    symlink_loop = "symlink_loop"
    broken_symlink = "broken_symlink"
    directory_symlink = "directory_symlink"
    too_deep = "too_deep"
    worker_crashed = "worker_crashed"
    worker_stuck = "worker_stuck"
    engine_error = "engine_error"
    output_name = "output_name"


#: keyed by the members (a plain code looks its advice up as well: a StrEnum is its value)
ADVICE: dict[str, str] = {
    # the file itself
    Reason.empty_file: "the file is empty: copy it again (a failed transfer?)",
    Reason.truncated: "the file ends early: copy it again once it is complete",
    Reason.corrupt: "the image data is damaged: re-scan or re-export it",
    Reason.not_an_image: "not an image (only its name looks like one): remove it or rename it",
    Reason.unsupported_format: "convert it to PNG, JPEG, TIFF, BMP or WebP",
    Reason.file_too_large: "bigger than [ocr] max_file_mb: split it or raise the limit, " + _RETRY,
    Reason.too_many_pixels: "bigger than [ocr] max_image_pixels: downscale it or raise the limit, " + _RETRY,
    Reason.too_many_pages: "more pages than [ocr] max_pages / max_total_pixels allow: split it or raise the limit, " + _RETRY,
    Reason.pdf_encrypted: "the PDF needs a password to be opened: save it without one (or print it to PDF)",
    Reason.pdf_broken: "the PDF is damaged or truncated (detail): copy it again, or re-save it from a viewer",
    Reason.pdf_javascript: "the PDF carries JavaScript, which is never run or taken: print it to a new PDF "
    "(or scan it again) and drop that",
    Reason.too_much_memory: "decoding it passed [pool] worker_memory_mb: downscale it or raise the limit, " + _RETRY,
    Reason.unreadable: "the service user may not read it (detail; the fix is in `status`' unreadable list and "
    "the journal's file_refused): give its group read (chgrp, chmod g+r; folders above g+x), check with "
    "`ocr-inbox doctor --user ocr-inbox`; it is taken as soon as it is readable, no retry needed",
    Reason.changed_while_reading: "it kept changing while being read: it is retried once it settles",
    Reason.vanished: "it was deleted or moved before it was read: nothing to do",
    # names and links
    Reason.name_too_long: "its name is too long for its .json beside it: shorten the name",
    "name_not_utf8": "its name is not UTF-8: rename it",
    Reason.not_a_regular_file: "a FIFO, socket or device, not a file: remove it",
    Reason.symlink_outside_inbox: "a link pointing outside the inbox is never followed: copy the file in instead",
    Reason.outside_inbox: "it resolved outside the inbox (a link swapped in): copy the file in instead",
    Reason.symlink_loop: "a link loop: remove the link",
    Reason.broken_symlink: "the link points nowhere: remove it or fix its target",
    Reason.directory_symlink: "links to folders are not followed: move or copy the folder into the inbox",
    Reason.too_deep: "deeper than [watch] max_depth folders: move it up, or raise the limit and restart",
    # the workers
    Reason.worker_crashed: "an OCR worker died on it twice (see `journalctl -u ocr-inbox` for worker_lost): "
    "check the image, " + _RETRY,
    Reason.worker_stuck: "OCR hung on it past [pool] image_timeout_s (its stack dump is in the journal): "
    "raise the limit for huge pages, " + _RETRY,
    Reason.engine_error: "the OCR engine raised an error (detail): report it with the image, " + _RETRY,
    # the outbox
    Reason.output_name: "something in the outbox is in the way of its JSON (detail): move it away, " + _RETRY,
}


def advice(reason: str) -> str:
    """What to do about ``reason``; a generic hint for a reason this table does not know."""
    text = ADVICE.get(reason, "see the detail and `journalctl -u ocr-inbox`; " + _RETRY)
    return text.replace("{reason}", reason)
