"""The ledger's SQLite database: one writer per state dir (an exclusive lock), WAL, migrations,
short ``BEGIN IMMEDIATE`` transactions, and the errors that name the file and the fix.

Durability: WAL with ``synchronous=NORMAL``. A committed transaction is in the
WAL file before ``commit()`` returns, so a killed *process* loses nothing (the
OS still holds the pages). Only a power loss or kernel crash can lose the last
few transactions; the database stays consistent and the worst outcome is an
image done again or a file re-found by the start-up scan. ``FULL`` would fsync
every commit (one per finished image) for no gain worth that cost.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

import structlog

from ocr_inbox.ledger import index
from ocr_inbox.ledger.schema import (
    _MIGRATIONS,
    BUSY_TIMEOUT_MS,
    DB_NAME,
    LOCK_NAME,
    LOCK_PAUSE_S,
    LOCK_TRIES,
    SCHEMA_VERSION,
    WAL_AUTOCHECKPOINT_PAGES,
    WAL_SIZE_LIMIT,
)
from ocr_inbox.support import statedir
from ocr_inbox.support.errors import StateError

log = structlog.get_logger(__name__)


class LedgerDb:
    """The ledger's connection: the state dir's lock, pragmas, migrations, transactions."""

    def __init__(self, conn: sqlite3.Connection, path: Path, lock_fd: int | None) -> None:
        self._conn = conn
        self.path = path
        self._lock_fd = lock_fd

    @classmethod
    def open(cls, state_dir: Path, *, readonly: bool = False, verify: bool = True) -> Self:
        """Open (creating if needed) the ledger in ``state_dir`` for the one daemon.

        Takes an exclusive lock on ``state_dir/ocr-inbox.lock`` first, so a second
        daemon on the same state dir fails here. ``readonly`` (for ``ocr-inbox
        status`` beside a running daemon) takes no lock and creates nothing;
        without ``verify`` it skips the integrity check, which reads every page
        (seconds for ``ocr-inbox search`` on a ledger with a large index).
        Raises StateError naming the file and the fix; never resets anything.
        """
        path = state_dir / DB_NAME
        if readonly:
            if not _check_files(state_dir):
                raise StateError(f"no ledger at {path}: has the daemon run with this state_dir?")
            conn = _connect(path, path.resolve().as_uri() + "?mode=ro")
            try:
                _check(conn, path, quick_check=verify)
            except BaseException:
                conn.close()
                raise
            return cls(conn, path, None)

        lock_fd = _lock_state_dir(state_dir)
        try:
            _check_files(state_dir)
            conn = _connect(path, str(path))
            try:
                _prepare(conn, path)
            except BaseException:
                conn.close()
                raise
        except BaseException:
            os.close(lock_fd)
            raise
        log.debug("ledger_opened", path=str(path))
        if not index.complete(conn):
            log.warning("search_index_incomplete", ledger=str(path),
                        fix="images done before this version are not searchable yet: "
                        "stop the daemon and run `ocr-inbox index rebuild`")
        return cls(conn, path, lock_fd)

    @classmethod
    def open_readonly(cls, state_dir: Path, *, verify: bool = True) -> Self:
        """``open(state_dir, readonly=True)``: for ``ocr-inbox status`` and ``search`` beside the daemon."""
        return cls.open(state_dir, readonly=True, verify=verify)

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE: take the write lock up front, so a transaction never fails half-way
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    @property
    def connection(self) -> sqlite3.Connection:
        """For the read-only queries of ``reports.py``."""
        return self._conn

    def checkpoint(self) -> bool:
        """Move the WAL into the database and cut it to nothing, if no reader's snapshot is
        in the way (then it waits for the next call). Returns whether it completed."""
        try:
            busy = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        except sqlite3.OperationalError:
            return False
        return not busy


def in_use(state_dir: Path) -> bool:
    """Whether a daemon (or ``ocr-inbox ocr``) holds the state dir's lock: the one ledger writer.

    The lock is opened like every file of the state dir (``statedir``): a link or a
    FIFO there is refused (StateError), never followed or waited on.
    """
    try:
        with statedir.directory(state_dir) as d:
            fd = statedir.open_file(d, LOCK_NAME, os.O_RDONLY, state_dir)
    except FileNotFoundError:
        return False
    except StateError:
        if not state_dir.exists():
            return False
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def _lock_state_dir(state_dir: Path) -> int:
    """Exclusive flock on the lock file: one daemon per state dir. Returns the held fd.

    The state dir is made ``0700`` and the lock ``0600``: only the owner (and root's
    commands, which act as the owner) can take even a shared lock on it, so no reader
    can hold it while a restarting daemon wants it. ``in_use`` (status) takes a shared
    lock for an instant; the few tries below outlast that.
    """
    lock = state_dir / LOCK_NAME
    try:
        state_dir.mkdir(mode=statedir.DIR_MODE, parents=True, exist_ok=True)
        with statedir.directory(state_dir) as d:
            fd = statedir.open_file(d, LOCK_NAME, os.O_RDWR | os.O_CREAT, state_dir)
    except OSError as exc:
        raise StateError(
            f"cannot use the state directory {state_dir}: {exc.strerror or exc}; "
            "make it writable by the daemon's user or set paths.state_dir"
        ) from None
    with contextlib.suppress(OSError):
        os.fchmod(fd, statedir.FILE_MODE)  # an older install's lock was group-readable
    for attempt in range(LOCK_TRIES):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES) and attempt + 1 < LOCK_TRIES:
                time.sleep(LOCK_PAUSE_S)
                continue
            holder = ""
            with contextlib.suppress(OSError, ValueError):
                holder = os.pread(fd, 32, 0).decode().strip()
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                pid = f" (pid {holder})" if holder else ""
                raise StateError(
                    f"{lock} is locked: another ocr-inbox daemon{pid} uses the state directory "
                    f"{state_dir}; stop it, or give this one its own paths.state_dir"
                ) from None
            raise StateError(f"cannot lock {lock}: {exc.strerror or exc}") from None
    # Who holds it, for the message above; purely informative.
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _check_files(state_dir: Path) -> bool:
    """The ledger and its -wal/-shm are regular files of the state dir's owner (SQLite opens
    them by name, following links: refuse one first). Returns whether the ledger exists."""
    if not state_dir.is_dir():
        return False
    for suffix in ("-wal", "-shm"):
        statedir.check_file(state_dir, DB_NAME + suffix)
    return statedir.check_file(state_dir, DB_NAME)


def _connect(path: Path, target: str) -> sqlite3.Connection:
    try:
        # autocommit mode: transactions are explicit (see Ledger._tx)
        conn = sqlite3.connect(
            target, uri=target.startswith("file:"), isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000
        )
    except sqlite3.Error as exc:
        raise _state_error(path, exc) from None
    return conn


def _state_error(path: Path, exc: sqlite3.Error) -> StateError:
    msg = str(exc)
    if "no such module: fts5" in msg:
        return StateError(
            f"the SQLite library of this Python ({sqlite3.sqlite_version}) lacks FTS5, which the search index "
            f"in {path} needs; nothing was changed. Use a Python whose sqlite3 has it (python.org, Debian, "
            "Ubuntu and conda builds do)"
        )
    if "locked" in msg or "busy" in msg:
        return StateError(
            f"the ledger {path} is locked by another process ({msg}); "
            "stop the other ocr-inbox daemon or sqlite3 session using it"
        )
    if isinstance(exc, sqlite3.OperationalError) and ("unable to open" in msg or "readonly" in msg):
        return StateError(
            f"cannot write the ledger {path} ({msg}); "
            "make the state directory writable by the daemon's user or set paths.state_dir"
        )
    return StateError(
        f"the ledger {path} is damaged ({msg}); nothing was changed. Stop the daemon, move the file "
        f"aside (mv {path} {path}.broken, and its -wal/-shm files) and start again: "
        "a new ledger is built from a full scan of the inbox"
    )


def _check(conn: sqlite3.Connection, path: Path, *, quick_check: bool = True) -> None:
    try:
        problems = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()] if quick_check else ["ok"]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.Error as exc:
        raise _state_error(path, exc) from None
    if problems != ["ok"]:
        raise _state_error(path, sqlite3.DatabaseError("quick_check: " + "; ".join(problems[:3])))
    if version > SCHEMA_VERSION:
        raise StateError(
            f"the ledger {path} has schema version {version}, newer than this ocr-inbox "
            f"understands ({SCHEMA_VERSION}); upgrade ocr-inbox or use another paths.state_dir"
        )


def _prepare(conn: sqlite3.Connection, path: Path) -> None:
    """Pragmas, integrity check, schema creation/migration, in that order."""
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StateError(
                f"the ledger {path} cannot use WAL mode (got {mode}); "
                "put paths.state_dir on a local file system"
            )
        conn.execute("PRAGMA synchronous = NORMAL")
        # A reader's long transaction makes the WAL grow (no checkpoint can pass it);
        # once it ends, the next checkpoint resets the WAL and this cuts the file back.
        conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
        conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
        conn.execute("PRAGMA foreign_keys = ON")
    except sqlite3.Error as exc:
        raise _state_error(path, exc) from None
    _check(conn, path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            while version < SCHEMA_VERSION:
                for stmt in _statements(_MIGRATIONS[version]):
                    conn.execute(stmt)
                version += 1
                conn.execute(f"PRAGMA user_version = {version}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        raise _state_error(path, exc) from None


def _statements(script: str) -> list[str]:
    # executescript() would COMMIT first; split so a migration is one transaction.
    lines = [ln for ln in script.splitlines() if not ln.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
