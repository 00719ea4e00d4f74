"""Exit codes and the exceptions that carry them.

Exceptions become exit codes in exactly one place: ``cli.main``.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """The documented exit statuses of every ``ocr-inbox`` command (see README and ``MEANINGS``)."""

    ok = 0
    some_failed = 1
    bad_args = 2
    bad_config = 3
    engine_unavailable = 4
    output_error = 5
    state_error = 6
    worker_boot = 7
    internal_error = 70
    interrupted = 130


#: what each status means, for ``ocr-inbox --help`` (the README's table says the same)
MEANINGS: dict[ExitCode, str] = {
    ExitCode.ok: "success",
    ExitCode.some_failed: "finished, but some images failed (doctor: a check failed)",
    ExitCode.bad_args: "bad command line or input paths (missing dir, outbox inside inbox, ...)",
    ExitCode.bad_config: "invalid configuration (the log names file, key and reason)",
    ExitCode.engine_unavailable: "a model profile, model file or device is unavailable",
    ExitCode.output_error: "the output could not be written (permissions, disk full)",
    ExitCode.state_error: "the state directory / ledger is unusable (locked, corrupt)",
    ExitCode.worker_boot: "the workers could not start (they crash while loading)",
    ExitCode.internal_error: "internal error (a bug: the log has the traceback as one record)",
    ExitCode.interrupted: "interrupted by a signal before finishing (SIGINT)",
}


class OcrInboxError(Exception):
    """Base class: every expected failure carries its exit code."""

    exit_code: ExitCode = ExitCode.bad_args


class BadArguments(OcrInboxError):
    exit_code = ExitCode.bad_args


class ConfigError(OcrInboxError):
    """An invalid configuration: names the file, the key and the reason."""

    exit_code = ExitCode.bad_config

    def __init__(self, file: str, key: str, reason: str) -> None:
        self.file, self.key, self.reason = file, key, reason
        super().__init__(f"{file}: {key}: {reason}")


class EngineUnavailable(OcrInboxError):
    exit_code = ExitCode.engine_unavailable


class OutputError(OcrInboxError):
    exit_code = ExitCode.output_error


class StateError(OcrInboxError):
    exit_code = ExitCode.state_error


class WorkerBootError(OcrInboxError):
    exit_code = ExitCode.worker_boot


class BadImage(Exception):
    """An input image that cannot be OCR'd; ``reason`` is a short stable code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}" if detail else reason)
