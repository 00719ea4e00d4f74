"""Every output path, in one place (PLACEHOLDER until merged with the images branch)."""

from __future__ import annotations

from pathlib import Path

from ocr_inbox import atomic

JSON_SUFFIX = ".json"
NAME_MAX = 255


def json_path_for(outbox: Path, rel_image: str) -> Path:
    return outbox / (rel_image + JSON_SUFFIX)


def pdf_path_for(outbox: Path, inbox: Path, folder: str) -> Path:
    name = folder.rsplit("/", 1)[-1] if folder else inbox.resolve().name
    return outbox / folder / f"{atomic.fit_name(name, NAME_MAX - len('.pdf'))}.pdf"


#: the one-shot run's report: OUTBOX/.ocr-inbox/failures.json (hidden: never mistaken for output)
REPORT_DIR = ".ocr-inbox"


def report_path(outbox: Path) -> Path:
    return outbox / REPORT_DIR / "failures.json"
