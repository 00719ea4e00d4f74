"""One structlog chain for the daemon, its workers and the libraries they use.

Formats: ``journal`` (key=value lines with sd-daemon ``<N>`` priority prefixes,
so ``journalctl -p warning`` works), ``console`` (readable, coloured on a TTY,
``NO_COLOR`` honoured), ``logfmt`` (timestamped key=value) and ``json``.
Logs go to stderr; stdout carries nothing but a command's own output.
Ordinary ``logging`` records (PaddleX, watchdog) pass through the same chain.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

#: syslog priorities for sd-daemon(3) prefixes
_PRIORITY = {"critical": 2, "error": 3, "warning": 4, "info": 6, "debug": 7}
_NOISY_LIBRARIES = ("watchdog", "paddlex", "paddle", "PIL", "urllib3", "filelock", "modelscope", "fontTools")


def printable(value: str) -> str:
    """``value`` with every non-printable character written the way ``repr`` does (``\\n``, ``\\x1b``).

    File names come from the inbox: control characters, ANSI escapes and bidi
    overrides must not forge log lines or reach an operator's terminal.
    """
    return value if value.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in value)


_escape = printable  # the name older tests import

#: values rendered as they are; anything else is rendered through ``str()`` by logfmt
#: (a ``Path`` holding an ESC byte would reach the terminal raw), so it is escaped here
_PLAIN = (int, float, bool, type(None))


def escape_control_chars(_: WrappedLogger, __: str, ed: EventDict) -> EventDict:
    for k, v in ed.items():
        if isinstance(v, str):
            ed[k] = printable(v)
        elif not isinstance(v, _PLAIN) and not (text := str(v)).isprintable():
            ed[k] = printable(text)
    return ed


class JournalRenderer:
    """``<6>event=started key=value``: journald reads the prefix as the priority."""

    def __init__(self) -> None:
        self._logfmt = structlog.processors.LogfmtRenderer(key_order=["event"], drop_missing=True)

    def __call__(self, logger: WrappedLogger, name: str, ed: EventDict) -> str:
        prio = _PRIORITY.get(str(ed.get("level", "info")), 6)
        return f"<{prio}>{self._logfmt(logger, name, ed)}"


def journal_attached(stream: TextIO) -> bool:
    """True when ``stream`` is the journal stream systemd connected ($JOURNAL_STREAM)."""
    want = os.environ.get("JOURNAL_STREAM", "")
    if not want:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return want == f"{st.st_dev}:{st.st_ino}"


def resolve_format(fmt: str, stream: TextIO) -> str:
    if fmt != "auto":
        return fmt
    if journal_attached(stream):
        return "journal"
    return "console" if stream.isatty() else "logfmt"


def _renderer(fmt: str, stream: TextIO) -> Processor:
    if fmt == "journal":
        return JournalRenderer()
    if fmt == "json":
        return structlog.processors.JSONRenderer(ensure_ascii=False)
    if fmt == "console":
        colors = stream.isatty() and "NO_COLOR" not in os.environ
        return structlog.dev.ConsoleRenderer(colors=colors)
    return structlog.processors.LogfmtRenderer(key_order=["timestamp", "level", "event"], drop_missing=True)


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None, **context: Any) -> str:
    """Set up logging for this process; returns the format chosen."""
    stream = stream or sys.stderr
    fmt = resolve_format(fmt, stream)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.ExtraAdder(),
    ]
    if fmt != "journal":  # journald stamps every line itself
        shared.append(structlog.processors.TimeStamper(fmt="iso", utc=False))
    shared += [structlog.processors.format_exc_info, escape_control_chars]

    structlog.configure(
        processors=[structlog.stdlib.filter_by_level, *shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, _renderer(fmt, stream)],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    for name in _NOISY_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    structlog.contextvars.clear_contextvars()
    if context:
        structlog.contextvars.bind_contextvars(**context)
    logging.captureWarnings(True)
    return fmt
