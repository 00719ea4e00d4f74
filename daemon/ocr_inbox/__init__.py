"""ocr-inbox: OCR image folders dropped into an inbox, emit JSON and searchable PDFs.

The flow, one module per step:
inbox (scan, watch, settle) -> ledger -> batches -> pool workers (ocr engine)
-> outbox JSON (document) -> folder PDF (pdf, textlayer).
"""

__version__ = "0.1.0"
