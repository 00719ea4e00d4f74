"""One structlog chain for the daemon, its workers and the libraries they use.

Formats: ``journal`` (key=value lines with sd-daemon ``<N>`` priority prefixes,
so ``journalctl -p warning`` works), ``console`` (readable, coloured on a TTY,
``NO_COLOR`` honoured), ``logfmt`` (timestamped key=value) and ``json``.
Logs go to stderr; stdout carries nothing but a command's own output.

Every line is one record, whoever wrote it: ordinary ``logging`` records
(PaddleX, watchdog, PyMuPDF) become ``library_log`` records, Python warnings
``python_warning`` records, an exception nobody caught one ``uncaught_exception``
record (its traceback in one value), a library's ``print`` one ``library_output``
record per line (:class:`LineLogger`). Nested values (dicts, lists) are rendered
as compact JSON, never as Python reprs.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import re
import sys
import threading
import warnings
from collections.abc import Callable
from types import TracebackType
from typing import Any, ParamSpec, TextIO, TypeVar

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

#: syslog priorities for sd-daemon(3) prefixes
_PRIORITY = {"critical": 2, "error": 3, "warning": 4, "info": 6, "debug": 7}
_NOISY_LIBRARIES = ("watchdog", "paddlex", "paddle", "PIL", "urllib3", "filelock", "modelscope", "fontTools")
#: colour and cursor sequences (PaddleX colours its messages): dropped from library text
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")


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
_NESTED = (dict, list, tuple, set, frozenset)


def _clean(value: Any) -> Any:
    """A nested value with every string in it printable, and only JSON's types (sets sorted)."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, dict):
        return {printable(str(k)): _clean(v) for k, v in value.items()}
    if isinstance(value, set | frozenset):
        return sorted((_clean(v) for v in value), key=str)
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return printable(str(value))


def strip_ansi(text: str) -> str:
    """``text`` without colour and cursor sequences (a library's decoration, not its message)."""
    return _ANSI.sub("", text)


def compact_json(value: Any) -> str:
    """``{"det":"PP-OCRv6_tiny_det"}``: what a nested value looks like in a key=value line."""
    return json.dumps(_clean(value), ensure_ascii=False, separators=(",", ":"))


class PlainValues:
    """Every value printable (no control character, ANSI escape or bidi override from a file
    name reaches a terminal or forges a line), and a nested one as compact JSON in the
    key=value formats (``nested_as_json``) or as real JSON structure in the ``json`` format."""

    def __init__(self, nested_as_json: bool) -> None:
        self._nested = compact_json if nested_as_json else _clean

    def __call__(self, _: WrappedLogger, __: str, ed: EventDict) -> EventDict:
        for k, v in ed.items():
            if isinstance(v, str):
                ed[k] = printable(v)
            elif isinstance(v, _NESTED):
                ed[k] = self._nested(v)
            elif not isinstance(v, _PLAIN) and not (text := str(v)).isprintable():
                ed[k] = printable(text)
        return ed


def library_record(_: WrappedLogger, __: str, ed: EventDict) -> EventDict:
    """A ``logging`` record from a library: a constant event name, the text as ``message``
    (without colours), the logger that wrote it."""
    record: logging.LogRecord | None = ed.get("_record")
    name = record.name if record is not None else ""
    text = strip_ansi(str(ed.pop("event", "")))
    if name == "py.warnings":  # someone else's logging.captureWarnings: "file:line: Category: text\n  code"
        ed["event"] = "python_warning"
        ed["message"] = text.strip()
    else:
        ed["event"] = "library_log"
        ed["logger"] = name
        ed["message"] = text
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
        return structlog.processors.JSONRenderer(ensure_ascii=False, default=str)
    if fmt == "console":
        colors = stream.isatty() and "NO_COLOR" not in os.environ
        return structlog.dev.ConsoleRenderer(colors=colors)
    return structlog.processors.LogfmtRenderer(key_order=["timestamp", "level", "event"], drop_missing=True)


def _show_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, file: TextIO | None = None, line: str | None = None
) -> None:
    """``warnings.showwarning``: a warning is one ``python_warning`` record at warning priority."""
    if file is not None:  # asked for on a given file (warnings.showwarning(..., file=f)): as Python does
        file.write(warnings.formatwarning(message, category, filename, lineno, line))
        return
    structlog.get_logger("py.warnings").warning(
        "python_warning", category=category.__name__, message=str(message), where=f"{filename}:{lineno}"
    )


def _uncaught(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None, thread: str = "") -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        return
    extra = {"thread": thread} if thread else {}
    structlog.get_logger("ocr_inbox").critical("uncaught_exception", exc_info=(exc_type, exc, tb), **extra)


def _excepthook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    _uncaught(exc_type, exc, tb)


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None:  # SystemExit(None)-like: nothing to report
        return
    _uncaught(args.exc_type, args.exc_value, args.exc_traceback, thread=args.thread.name if args.thread else "")


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
    # a traceback is one value of one record (its newlines escaped like any other)
    shared += [structlog.processors.format_exc_info, PlainValues(nested_as_json=fmt != "json")]

    structlog.configure(
        processors=[structlog.stdlib.filter_by_level, *shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[library_record, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, _renderer(fmt, stream)],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    for name in _NOISY_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    # A library logger that stops propagating and has no handler of its own (PaddleX's, while
    # it imports) ends in logging's last resort: make that ours too, not a raw line on stderr.
    last_resort = logging.StreamHandler(stream)
    last_resort.setFormatter(formatter)
    last_resort.setLevel(logging.WARNING)
    logging.lastResort = last_resort
    structlog.contextvars.clear_contextvars()
    if context:
        structlog.contextvars.bind_contextvars(**context)
    warnings.showwarning = _show_warning
    sys.excepthook = _excepthook
    threading.excepthook = _thread_excepthook
    _route_pymupdf()
    return fmt


def adopt(name: str) -> None:
    """A library logger that writes to stderr with a handler of its own (PaddleX's colours,
    Ray's tab-separated lines): its records go through ours instead."""
    lg = logging.getLogger(name)
    for h in list(lg.handlers):
        lg.removeHandler(h)
    lg.propagate = True


def _route_pymupdf() -> None:
    """PyMuPDF prints MuPDF's messages on stdout unless told to use ``logging``: its
    variable reaches every process started from here, its setter this one if already imported."""
    os.environ.setdefault("PYMUPDF_MESSAGE", f"logging:name=pymupdf,level={logging.WARNING}")
    mod = sys.modules.get("pymupdf")
    if mod is not None and hasattr(mod, "set_messages"):
        mod.set_messages(pylogging=True, pylogging_name="pymupdf", pylogging_level=logging.WARNING)


class LineLogger(io.TextIOBase):
    """A text stream that logs each line written to it as one ``library_output`` record:
    what a library prints (on ``sys.stdout`` in a worker) reaches the journal as ours."""

    def __init__(self, source: str, level: int = logging.INFO) -> None:
        super().__init__()
        self._source = source
        self._level = level
        self._buf = ""
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        with self._lock:
            self._buf += s
            *lines, self._buf = self._buf.split("\n")
        for line in lines:
            self._emit(line)
        return len(s)

    def flush(self) -> None:
        with self._lock:
            rest, self._buf = self._buf, ""
        self._emit(rest)

    def _emit(self, line: str) -> None:
        text = strip_ansi(line).strip()
        if text:
            structlog.get_logger(self._source).log(self._level, "library_output", message=text)


P = ParamSpec("P")
R = TypeVar("R")


def crash_logged(entry: Callable[P, R]) -> Callable[P, R]:
    """A child process's entry point whose uncaught exception is one ``uncaught_exception``
    record and exit status 1, instead of multiprocessing's raw traceback on stderr."""

    @functools.wraps(entry)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return entry(*args, **kwargs)
        except Exception:
            _uncaught(*sys.exc_info())
            logging.shutdown()
            os._exit(1)

    return run
