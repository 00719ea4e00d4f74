"""Intake: turn what the file system shows into ledger observations.

Three sources, one path: the full scan (start-up and every
``watch.rescan_interval_s``), the watcher's events, and files dispatch hands
back because they moved under a worker. Each candidate is followed by the
stability tracker until it stops changing, then observed in the ledger (new,
changed, returned); refused paths get a quarantine record with their reason;
files that left the inbox are marked gone. A queued file whose JSON in the
outbox already describes exactly this version is adopted as done instead of
being OCR'd again (a new ledger over an old outbox, a tree OCR'd before).

A file's version is ``SourceVersion`` (size, mtime, and what a writer cannot set:
ctime and inode). A done file whose size and mtime are as recorded but whose
ctime or inode are not (a rewrite with its mtime put back, or a mere ``chmod``,
hard link or ``mv``) is *suspect*: its SHA-256 is compared with the one its JSON
records, and only a different one costs an OCR. The hashing is done here, in
the main loop, a bounded number of bytes per step (``CONFIRM_BYTES_PER_STEP``,
resumed on the next step for a large file): a worker would read the file too,
but only after the image went back to the queue (its PDF and search text
withdrawn) and through every executor's protocol; here a suspect file stays
done while it is checked, and the loop never stalls for longer than one budget
(a ``chmod -R`` of a big tree costs many short steps, not one long one).

What is not taken is said once: a file of a type we do not take is reported
(``file_skipped``, info) and counted; a folder or file the service user may not
read is reported (``folder_unreadable`` / ``file_refused``, warning, with what is
missing and the fix) and looked at again when its permissions change and on a
backoff (``unreadable.Blocked``), and taken the moment it may be read.

The outbox heals: the full scan also compares every output the ledger recorded
as written (an image's JSON and a PDF source's searchable copy, a folder's PDF)
with a ``stat`` of it (no file is read), and what is missing or not as written
is made again: the image is OCR'd again, the folder's PDF (which writes the
copies) is re-armed (``output_repaired``). With ``[outbox] mode = "mirror"``
the outputs of images that left the inbox are removed, if still as written.
A file the daemon did not write is never touched (docs/RELIABILITY.md).
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import os
import socket
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from ocr_inbox.config import WatchSettings
from ocr_inbox.inbox import scan
from ocr_inbox.inbox.stability import StabilityTracker
from ocr_inbox.inbox.unreadable import Blocked, Problem, diagnose
from ocr_inbox.inbox.watcher import InboxWatcher
from ocr_inbox.ledger import ImageStatus, Known, Ledger, Observation, PdfState
from ocr_inbox.outbox import document, names
from ocr_inbox.support import paths
from ocr_inbox.support.beneath import open_beneath
from ocr_inbox.support.errors import BadImage
from ocr_inbox.support.reasons import Reason
from ocr_inbox.support.recorder import Recorder
from ocr_inbox.support.version import Change, SourceVersion

log = structlog.get_logger(__name__)

#: settling files examined per step (keeps the loop responsive after a big scan)
SETTLE_BATCH = 5000
#: a missing inbox (unmounted, removed) is looked for again this often
INBOX_RETRY_S = 15.0
#: a folder still unreadable this long is reported (``cp -a``, ``rsync -a`` open theirs up
#: when the copy is done: no warning for those)
REPORT_UNREADABLE_AFTER_S = 10.0
#: skipped files and unreadable paths named in ``report`` (status); the counts are whole
REPORT_LIMIT = 100
#: bytes hashed per step to confirm suspected changes (``_confirm``; about 20 ms of SHA-256)
CONFIRM_BYTES_PER_STEP = 32 << 20
#: suspect files taken up per step (each costs a ledger read, its JSON read and an open:
#: a ``chmod -R`` of 100,000 small files must not fit in one step by bytes alone)
CONFIRM_FILES_PER_STEP = 256
#: one read while hashing
_HASH_READ = 1 << 20


@dataclass
class _Hashing:
    """A suspect file being hashed, a budget per step."""

    rel: str
    version: SourceVersion
    expected: str
    fd: int
    sha: Any = field(default_factory=hashlib.sha256)


class Intake:
    def __init__(
        self, inbox: Path, outbox: Path, ledger: Ledger, settings: WatchSettings, *, watch: bool,
        recorder: Recorder = Recorder(), mode: str = "archive",
    ) -> None:
        self.inbox = inbox
        #: ``[outbox] mode``: "mirror" removes the outputs of images that left the inbox
        self.mode = mode
        #: an image left since the last look: its outputs may have to be removed (mirror)
        self._left = False
        self.root = os.path.realpath(inbox)
        self.outbox = outbox
        self._outbox_s = str(outbox)
        self.ledger = ledger
        self.settings = settings
        #: the metrics: refusals and adopted JSON (the base records nothing)
        self.recorder = recorder
        self.tracker = StabilityTracker()
        self.watcher = InboxWatcher(inbox, settings) if watch else None
        self.next_rescan = 0.0
        #: folders and files the service user may not read yet, looked at again
        self.blocked = Blocked(settings.unreadable_retry_s)
        #: files of a type we do not take (rel -> suffix), each reported once, and their count by type
        self.skipped: dict[str, str] = {}
        self._skipped_by_type: collections.Counter[str] = collections.Counter()
        #: skipped files below each folder: a file deleted (no entry) costs no walk of ``skipped``
        self._skipped_under: collections.Counter[str] = collections.Counter()
        #: done files whose content hash decides whether they changed (``_confirm``), in order
        self._suspects: dict[str, SourceVersion] = {}
        self._hashing: _Hashing | None = None
        #: paths looked at on request (``track``): if done and unchanged by their version, their
        #: hash is checked all the same (a PDF build found bytes its JSON does not describe)
        self._verify: set[str] = set()

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        """Start watching (before the first scan, so nothing that arrives during it is missed), then scan."""
        if self.watcher is not None:
            self.watcher.start()
        self.full_scan()

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        self._stop_hashing()

    def apply(self, settings: WatchSettings) -> None:
        """New watch settings (a reload): a new watcher, the next rescan on the new interval."""
        self.settings = settings
        self.blocked.cap_s = settings.unreadable_retry_s
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = InboxWatcher(self.inbox, settings)
            self.watcher.start()
        self._schedule_rescan()

    @property
    def waitables(self) -> list[socket.socket]:
        return [self.watcher.waitable] if self.watcher is not None else []

    @property
    def settling(self) -> int:
        """Files followed until they stop changing, or whose content hash is being checked."""
        return len(self.tracker) + len(self._suspects) + (self._hashing is not None)

    @property
    def watcher_kind(self) -> str:
        return self.watcher.kind if self.watcher is not None else "none"

    # -- the three sources ------------------------------------------------------

    def full_scan(self) -> None:
        """Reconcile the ledger with the inbox: new, changed, gone and refused files."""
        t0 = time.monotonic()
        now = time.time()
        if not self.inbox.is_dir():
            # unmounted or removed: keep everything as it is and look again soon
            log.error("inbox_missing", inbox=str(self.inbox), retry_in_s=INBOX_RETRY_S)
            self.next_rescan = time.monotonic() + INBOX_RETRY_S
            return
        if self.watcher is not None and not self.watcher.healthy:
            log.info("watch_restart", inbox=str(self.inbox))
            self.watcher.restart()
        known = {row.rel: row for row in self.ledger.known_paths()}
        seen: set[str] = set()
        skipped: set[str] = set()
        unlistable: list[str] = []
        still_blocked: set[str] = set()
        new = refused = repaired = 0
        fill: list[tuple[str, SourceVersion]] = []
        #: folders whose PDF must be built again for a searchable copy missing or changed
        rebuild: set[str] = set()
        for item in scan.walk(self.inbox, self.settings.ignore_patterns(), max_depth=self.settings.max_depth):
            if isinstance(item, scan.Skipped):
                skipped.add(item.rel)
                self._skip(item)
                continue
            if isinstance(item, scan.Unlistable):
                unlistable.append(item.rel)
                still_blocked.add(item.rel)
                self._unlistable(item)
                continue
            seen.add(item.rel)
            if isinstance(item, scan.Refused):
                refused += self._refuse(item)
                if item.rel in self.blocked:
                    still_blocked.add(item.rel)
                continue
            self._readable(item.rel)
            row = known.get(item.rel)
            if row is not None and row.status != ImageStatus.gone:
                if (row.size, row.mtime_ns, row.ctime_ns, row.ino) == (item.size, item.mtime_ns, item.ctime_ns, item.ino):
                    change = Change.same  # the common case, without building versions (100,000 files a rescan)
                else:
                    change = item.version.against(row.version)
                if change is Change.fill:
                    fill.append((item.rel, item.version))  # a row of an older ledger: no OCR
                if change in (Change.same, Change.fill):
                    if row.status is ImageStatus.done:
                        repaired += self._check_outputs(row, now, rebuild)
                    continue
            self._seen(item)
            new += 1
        if fill:
            self.ledger.fill_versions(fill)
        for rel in [r for r in self.skipped if r not in skipped]:
            self._unskip(rel)
        for rel in self.blocked.at_or_under(""):
            if rel not in still_blocked:
                self._readable(rel)  # a folder listed this time, or a file that left
        # nothing is known of what an unreadable folder holds: its images are not gone
        hidden = tuple(r + "/" for r in unlistable if r) if "" not in unlistable else ("",)
        gone = 0
        for rel, row in known.items():
            # the ledger's rule (``Known.leaves``): the same that ``gone`` applies to a watched delete
            if rel not in seen and not rel.startswith(hidden) and row.leaves:
                self.ledger.gone(rel, now)
                gone += 1
        repaired += self._check_pdfs(rebuild)
        self._mirror_left()
        self._schedule_rescan()
        log.info("scan_done", files=len(seen), new_or_changed=new, refused=refused, gone=gone, repaired=repaired,
                 skipped=len(self.skipped), unreadable=len(self.blocked), seconds=round(time.monotonic() - t0, 2))

    def track(self, rel: str, *, verify: bool = False) -> None:
        """Look at one path again (a watcher event, or a file that moved under a worker or a PDF
        build). ``verify``: its bytes were found to differ from its JSON's hash (the PDF build), so
        once settled it is hashed even if its version looks unchanged. A watcher event needs no
        hash: a rewrite changes the ctime, which makes the file suspect by itself."""
        item = scan.classify(self.root, rel, self.settings.ignore_patterns(), self.settings.max_depth)
        if item is None:
            if not os.path.lexists(os.path.join(self.root, rel)):
                # a file or a whole folder moved away / deleted (the ledger knows names by their printable form)
                name = paths.printable_rel(rel)
                self.tracker.forget(rel)
                self._verify.discard(rel)
                if self.ledger.gone(name, time.time()):
                    log.info("image_gone", path=name)
                    self._left = True
                if n := self.ledger.gone_tree(name, time.time()):
                    log.info("images_gone", folder=name, images=n)
                    self._left = True
                self.blocked.forget_under(name)
                self._forget_skipped(name)
            return
        if isinstance(item, scan.Refused):
            self.tracker.forget(rel)  # the refusal may name a folder or link above it
        elif isinstance(item, scan.Candidate) and verify:
            self._verify.add(item.rel)
        self._take(item)

    def step(self) -> None:
        """One pass: the watcher's events, then the files whose settle time ran out; a due rescan."""
        if self.watcher is not None:
            for rel in self.watcher.take_touched():
                path = os.path.join(self.root, rel)
                if os.path.isdir(path) and not os.path.islink(path):
                    self._walk(rel)
                else:
                    self.track(rel)
            # permissions changed: what could not be read at or below there may be readable now
            for rel in self.watcher.take_attrib():
                self._look_again(self.blocked.at_or_under(rel))
        self._look_again(self.blocked.due(time.monotonic()))
        self._report_blocked()
        self._settle()
        self._confirm()
        if time.monotonic() >= self.next_rescan:
            self.full_scan()
        elif self._left:
            self._mirror_left()

    # -- inside -----------------------------------------------------------------

    def _schedule_rescan(self) -> None:
        every = self.settings.rescan_interval_s
        self.next_rescan = time.monotonic() + every if every else float("inf")

    def _walk(self, rel: str) -> None:
        """Take what the folder ``rel`` holds (a folder created, moved in, or readable now)."""
        # walk refuses a folder reached through a symlinked one, or too deep, as the scan does
        s = self.settings
        for item in scan.walk(self.inbox, s.ignore_patterns(), subdir=rel, max_depth=s.max_depth):
            self._take(item)

    def _refuse(self, item: scan.Refused) -> int:
        fix = ""
        if item.reason == Reason.unreadable:
            # what the service user lacks, and how to give it: looked at again until readable
            problem = diagnose(self.root, item.rel, folder=False) or Problem(item.detail, "")
            item = scan.Refused(item.rel, item.reason, problem.missing)
            fix = problem.fix
            self.blocked.add(item.rel, "file", problem, time.monotonic(), time.time())
            entry = self.blocked.get(item.rel)
            if entry is not None:
                entry.reported = True  # file_refused below says it, once (the ledger knows)
        if self.ledger.refuse(item.rel, item.reason, item.detail, time.time()):
            extra = {"fix": fix} if fix else {}
            log.warning("file_refused", path=item.rel, reason=item.reason, detail=item.detail, **extra)
            self.recorder.image_failed(item.reason)
            return 1
        return 0

    def _unlistable(self, item: scan.Unlistable) -> None:
        """A folder the service user may not list: looked at again until it may; reported
        once if it stays so (``_report_blocked``)."""
        problem = diagnose(self.root, item.rel, folder=True) or Problem(item.detail, "")
        self.blocked.add(item.rel, "folder", problem, time.monotonic(), time.time())

    def _report_blocked(self) -> None:
        for e in self.blocked.unreported(time.monotonic(), REPORT_UNREADABLE_AFTER_S):
            e.reported = True
            log.warning("folder_unreadable", path=e.rel or ".", missing=e.problem.missing, fix=e.problem.fix)

    def _readable(self, rel: str) -> None:
        """``rel`` was blocked and is not any more (readable, or gone): its entry goes."""
        entry = self.blocked.remove(rel)
        if entry is not None and os.path.lexists(os.path.join(self.root, rel)):
            log.info("path_readable", path=rel or ".", kind=entry.kind,
                     waited_s=round(time.monotonic() - entry.since, 1))

    def _look_again(self, rels: list[str]) -> None:
        """Look again at blocked paths (their permissions changed, or their backoff ran out)."""
        now_m = time.monotonic()
        for rel in rels:
            entry = self.blocked.get(rel)
            if entry is None:
                continue  # taken meanwhile (a folder above was walked)
            if not os.path.lexists(os.path.join(self.root, rel)):
                self.blocked.remove(rel)
                self.track(rel)
            elif entry.kind == "folder":
                if diagnose(self.root, rel, folder=True) is None:
                    self._readable(rel)
                    if self.watcher is not None:
                        self.watcher.watch_again(rel)  # (done already if an event brought us here)
                    self._walk(rel)
                else:
                    self.blocked.tried(rel, now_m)
            else:
                self.track(rel)
                self.blocked.tried(rel, now_m)

    def _skip(self, item: scan.Skipped) -> None:
        """A file of a type we do not take: said once (info), counted for status."""
        if item.rel in self.skipped:
            return
        self.skipped[item.rel] = item.suffix
        self._skipped_by_type[item.suffix or "(none)"] += 1
        self._skipped_under.update(_folders_above(item.rel))
        log.info("file_skipped", path=item.rel, type=item.suffix or "(none)", accepted=paths.accepted_types())

    def _unskip(self, rel: str) -> None:
        suffix = self.skipped.pop(rel, None)
        if suffix is None:
            return
        self._skipped_by_type.subtract([suffix or "(none)"])
        self._skipped_under.subtract(_folders_above(rel))
        # (Counter.subtract keeps zeros: drop them, the maps stay as small as what is skipped)
        for counter, keys in ((self._skipped_by_type, [suffix or "(none)"]), (self._skipped_under, _folders_above(rel))):
            for k in keys:
                if counter[k] <= 0:
                    del counter[k]

    def _forget_skipped(self, rel: str) -> None:
        """``rel`` left the inbox: a skipped file, or a folder holding some."""
        self._unskip(rel)
        if self._skipped_under.get(rel):
            prefix = rel + "/"
            for r in [r for r in self.skipped if r.startswith(prefix)]:
                self._unskip(r)

    def _take(self, item: scan.Candidate | scan.Refused | scan.Skipped | scan.Unlistable) -> None:
        """A path the scanner classified: refuse it, report it, or follow it until it settles."""
        if isinstance(item, scan.Skipped):
            self._skip(item)
            return
        if isinstance(item, scan.Unlistable):
            self._unlistable(item)
            return
        if isinstance(item, scan.Refused):
            self.tracker.forget(item.rel)
            self._refuse(item)
            return
        self._readable(item.rel)
        if self.blocked:
            # a file found below a folder held as closed: it was opened up (seen by a
            # poller's listing, or a walk from above)
            parts = item.rel.split("/")[:-1]
            for i in range(len(parts) + 1):
                if "/".join(parts[:i]) in self.blocked:
                    self._readable("/".join(parts[:i]))
        self._seen(item)

    def _seen(self, item: scan.Candidate) -> None:
        self.tracker.seen(item.rel, item.size, item.mtime_ns, time.monotonic(), ctime_ns=item.ctime_ns)

    def report(self) -> dict[str, object]:
        """What is not taken, for ``status``: the paths waiting for read access and the
        skipped files by type (a few named)."""
        return {
            "unreadable": self.blocked.view(REPORT_LIMIT),
            "unreadable_count": len(self.blocked),
            "skipped": {
                "count": len(self.skipped),
                "by_type": dict(sorted(self._skipped_by_type.items())),
                "examples": list(itertools.islice(self.skipped, REPORT_LIMIT)),
                "accepted": paths.accepted_types(),
            },
        }

    # -- the outbox heals --------------------------------------------------------------

    def _check_outputs(self, row: Known, now: float, rebuild: set[str]) -> int:
        """A done image seen unchanged: its JSON missing or not as written is OCR'd again; its
        searchable copy so makes its folder's PDF due (the build writes the copies). One
        ``stat`` each, nothing read. Returns 1 when the JSON is to be written again."""
        json_file = names.json_file_for(self._outbox_s, row.rel)
        why = _not_as_written(json_file, row.json_stat)
        if why:
            if self.ledger.output_lost(row.rel, now):
                log.info("output_repaired", what="json", path=row.rel, file=json_file, reason=why,
                         action="ocr_again")
                return 1
            return 0
        if row.copy_stat is not None:
            copy = names.searchable_copy_path(Path(json_file))
            why = _not_as_written(copy, row.copy_stat)
            if why:
                log.info("output_repaired", what="searchable_copy", path=row.rel, file=str(copy), reason=why,
                         action="pdf_again")
                rebuild.add(paths.folder_of(row.rel))
        return 0

    def _check_pdfs(self, rebuild: set[str]) -> int:
        """Every published folder PDF missing or not as written is built again once its folder
        is quiet; one whose images all left (kept as the last PDF) has nothing to be built
        from: the ledger forgets it, ``status`` stops showing it. Returns PDFs re-armed."""
        n = 0
        for p in self.ledger.published_pdfs():
            out = names.pdf_path_for(self.outbox, self.inbox, p.folder)
            why = _not_as_written(out, p.written)
            if why:
                state = self.ledger.pdf_lost(p.folder)
                if state is PdfState.needed:
                    log.info("output_repaired", what="pdf", folder=p.folder or ".", file=str(out), reason=why,
                             action="pdf_again")
                    n += 1
                elif state is PdfState.none:
                    log.warning("pdf_lost", folder=p.folder or ".", file=str(out), reason=why,
                                detail="its images left the inbox: nothing is left to build it from")
            elif p.folder in rebuild and self.ledger.pdf_rebuild(p.folder):
                n += 1
        return n

    def _mirror_left(self) -> None:
        """``[outbox] mode = "mirror"``: remove the JSON and searchable copy of images that left
        the inbox, each only if still as the daemon wrote it (a file changed since is not ours
        to remove: kept, said once). Archive mode keeps them."""
        self._left = False
        if self.mode != "mirror":
            return
        for row in self.ledger.left_outputs():
            json_file = names.json_path_for(self.outbox, row.rel)
            for what, path, written in (("json", json_file, row.json_stat),
                                        ("searchable_copy", names.searchable_copy_path(json_file), row.copy_stat)):
                if written is None:
                    continue
                why = _not_as_written(path, written)
                if why == "missing":
                    continue
                if why:
                    log.info("output_kept", what=what, path=row.rel, file=str(path), reason=why,
                             detail="changed since the daemon wrote it: left as it is")
                    continue
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    log.warning("output_not_removed", what=what, path=row.rel, file=str(path),
                                error=exc.strerror or str(exc))
                    continue
                log.info("output_removed", what=what, path=row.rel, file=str(path), reason="source_left")
            self.ledger.outputs_removed(row.rel)

    def _settle(self) -> None:
        """Re-examine files being written; record the ones that stopped changing.

        Only files whose settle time has run out are looked at (a look sooner
        decides nothing), at most ``SETTLE_BATCH`` a step so a start-up scan of
        100,000 new files does not stall dispatching, and the settled ones are
        recorded in one ledger transaction.
        """
        now_m = time.monotonic()
        settle_s = self.settings.settle_seconds
        for rel in self.tracker.due(now_m, settle_s)[:SETTLE_BATCH]:
            try:
                st = os.stat(os.path.join(self.root, rel))
            except OSError:
                self.tracker.forget(rel)
                self._verify.discard(rel)
                self._left |= self.ledger.gone(paths.printable_rel(rel), time.time())
                continue
            self.tracker.seen(rel, st.st_size, st.st_mtime_ns, now_m, ctime_ns=st.st_ctime_ns)
        ready: list[tuple[str, SourceVersion]] = []
        for rel in self.tracker.settled(now_m, settle_s):
            item = scan.classify(self.root, rel, self.settings.ignore_patterns(), self.settings.max_depth)
            if isinstance(item, scan.Candidate):
                ready.append((rel, item.version))
                continue
            self._verify.discard(rel)
            if isinstance(item, scan.Refused):
                self._refuse(item)
            elif isinstance(item, scan.Skipped):
                self._skip(item)
        if not ready:
            return
        now = time.time()
        observed = self.ledger.observe_many(ready, now)
        adopted = 0
        for (rel, v), what in zip(ready, observed, strict=True):
            verify = rel in self._verify
            self._verify.discard(rel)
            if what is Observation.suspect or (verify and what is Observation.unchanged):
                self._suspects[rel] = v  # done: its content hash decides (``_confirm``)
                continue
            if not what.queued:
                continue
            dest = names.json_path_for(self.outbox, rel)
            doc = document.read_current(dest, v.size, v.mtime_ns)
            if doc is not None and self.ledger.adopt(
                rel, v.size, v.mtime_ns, str(dest), now, pages=doc.pages, written=names.written(dest)
            ):
                adopted += 1
                self.recorder.image_adopted()
        log.debug("files_settled", count=len(ready), adopted=adopted, suspect=len(self._suspects))

    # -- suspected changes: confirmed by content hash ----------------------------------

    def _confirm(self) -> None:
        """Hash suspect files, at most ``CONFIRM_BYTES_PER_STEP`` bytes (and
        ``CONFIRM_FILES_PER_STEP`` files) this step, and let
        each one's SHA-256 against its JSON's decide: the same records the new version with
        no OCR; another (or no JSON to compare with) queues it for OCR."""
        budget, files = CONFIRM_BYTES_PER_STEP, CONFIRM_FILES_PER_STEP
        while budget > 0:
            if self._hashing is None:
                if not self._suspects or files <= 0:
                    return
                files -= 1
                rel = next(iter(self._suspects))
                self._hashing = self._start_hashing(rel, self._suspects.pop(rel))
                continue
            h = self._hashing
            try:
                chunk = os.read(h.fd, min(budget, _HASH_READ))
            except OSError as exc:
                log.debug("confirm_unreadable", path=h.rel, detail=exc.strerror or str(exc))
                self._stop_hashing()  # the next look (event, rescan) suspects it again
                continue
            budget -= len(chunk)
            if chunk:
                h.sha.update(chunk)
                continue
            try:
                after = SourceVersion.of(os.fstat(h.fd))
            finally:
                self._stop_hashing()
            if after != h.version:
                self.track(h.rel)  # written meanwhile: followed again until it settles
                continue
            self._decide(h.rel, h.version, h.sha.hexdigest() == h.expected)

    def _start_hashing(self, rel: str, v: SourceVersion) -> _Hashing | None:
        row = self.ledger.get(rel)
        if row is None or row.status != ImageStatus.done or not v.same_bytes_claimed(row.version):
            return None  # changed or left meanwhile: that path took it
        doc = document.read_current(names.json_path_for(self.outbox, rel), v.size, v.mtime_ns)
        if doc is None:
            self._decide(rel, v, False)  # nothing says what the bytes were: OCR them
            return None
        try:
            fd = open_beneath(self.root, rel)
        except BadImage:
            return None  # unreadable or gone now: the next look (event, rescan) takes it up
        try:
            opened = SourceVersion.of(os.fstat(fd))
        except OSError:
            opened = None
        if opened != v:
            os.close(fd)
            self.track(rel)
            return None
        return _Hashing(rel, v, doc.source.sha256, fd)

    def _stop_hashing(self) -> None:
        if self._hashing is not None:
            os.close(self._hashing.fd)
            self._hashing = None

    def _decide(self, rel: str, v: SourceVersion, same: bool) -> None:
        what = self.ledger.confirmed(rel, v, same, time.time())
        if what is Observation.changed:
            log.info("image_rewritten", path=rel, detail="same size and mtime, other content: OCR'd again")
        elif same:
            log.debug("image_confirmed", path=rel, detail="same content: no OCR")


def _not_as_written(path: str | Path, written: tuple[int, int] | None) -> str:
    """Why the output at ``path`` is not the one written ("" when it is, or cannot be told):
    missing, truncated (smaller), or changed (size or mtime). ``written`` None (an output
    recorded before the ledger kept its size): only a missing one is found. Something
    that is not a regular file in its place (a link, a FIFO, a folder) was put there by
    a person: not ours to replace or remove ("")."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return "missing"
    except OSError:
        return ""  # not ours to judge (no access): left alone
    if written is None or not stat.S_ISREG(st.st_mode):
        return ""
    size, mtime_ns = written
    if st.st_size < size:
        return "truncated"
    return "" if (st.st_size, st.st_mtime_ns) == (size, mtime_ns) else "changed"


def _folders_above(rel: str) -> list[str]:
    """The folders ``rel`` is in, below the inbox: "a/b/c.txt" -> ["a", "a/b"]."""
    parts = rel.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]
