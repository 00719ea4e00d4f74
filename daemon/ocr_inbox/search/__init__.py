"""Full-text search over everything OCR'd: the index the ledger keeps (``index``), queries
(``query``), a rebuild from the outbox JSON (``rebuild``) and the command's output (``show``)."""
