"""``ocr-inbox doctor``: check what the service needs, and say what to fix.

Each check gives OK, WARN (it works, with a catch) or FAIL (the daemon will not
start, or will not get its work done) and a one-line fix. What it reads of the
host (``/proc``, ``/dev``, the installed unit) comes in a ``Host``, so tests check
limits and units without root. Nothing here writes anything.
"""

from __future__ import annotations

import difflib
import grp
import importlib.util
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from importlib import resources
from pathlib import Path

from ocr_inbox.config import Settings
from ocr_inbox.inbox import scan
from ocr_inbox.ocr import models, profiles
from ocr_inbox.ocr.devices import WorkerSlot, gpu_support_problem, parse_device
from ocr_inbox.service import sandbox
from ocr_inbox.service.access import Identity, R, W, X, blocked, verb
from ocr_inbox.support import jsonout, paths
from ocr_inbox.support.errors import EngineUnavailable, ExitCode

#: below this much free space a file system FAILs: a few folder PDFs more and dispatch
#: pauses on ENOSPC (``output_paused reason=disk_full``)
FAIL_FREE_BYTES = 100 << 20
#: below this it WARNs: a folder PDF holds its images, so one large folder can take a GiB
WARN_FREE_BYTES = 1 << 30
#: every image's JSON takes an inode
WARN_FREE_INODES = 10_000
#: a tree using more of fs.inotify.max_user_watches than this has little room to grow
WATCH_HEADROOM = 0.8
#: the value suggested for a limit that is too low, unless the tree needs more
SUGGESTED_WATCHES = 524_288
SUGGESTED_INSTANCES = 512
SYSCTL_FILE = "/etc/sysctl.d/90-ocr-inbox.conf"
SERVICE_NAME = "ocr-inbox.service"


class Level(StrEnum):
    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Check:
    name: str
    level: Level
    detail: str
    fix: str = ""


def shipped_unit() -> Path:
    """The unit this version ships (package data, so an installed package has it too)."""
    return Path(str(resources.files("ocr_inbox") / "units" / SERVICE_NAME))


@dataclass(frozen=True)
class Host:
    """What doctor reads of the machine besides the configured paths."""

    proc: Path = Path("/proc")
    dev: Path = Path("/dev")
    unit: Path = Path("/etc/systemd/system") / SERVICE_NAME
    shipped_unit: Path = field(default_factory=shipped_unit)


# -- permissions (ocr_inbox/access.py says who may) -------------------------------


def check_permissions(s: Settings, who: Identity) -> list[Check]:
    p = s.paths
    out: list[Check] = []
    layout = paths.check_layout(p.inbox, ("outbox", p.outbox), ("state dir", p.state_dir))
    if layout:
        out.append(Check("layout", Level.FAIL, layout, "set paths.inbox, paths.outbox and paths.state_dir apart"))
    if not p.inbox.is_dir():
        fix = f"mkdir -p {p.inbox}, or set paths.inbox"
        out.append(Check("inbox", Level.FAIL, f"the inbox {p.inbox} is not a directory", fix))
    else:
        inbox_rw = "rwX" if s.inbox.delete_processed else "rX"
        want = R | X | (W if s.inbox.delete_processed else 0)
        acl_fix = f"setfacl -R -m u:{who.name}:{inbox_rw} -m d:u:{who.name}:{inbox_rw} {{}}"
        out.append(_access_check("inbox", p.inbox, want, who, acl_fix))
    for name, path in (("outbox", p.outbox), ("state", p.state_dir)):
        out.append(_access_check(name, path, W | X, who, f"chown {who.name} {{}}  (or: setfacl -m u:{who.name}:rwx {{}})"))
    mdir = p.resolved_models_dir()
    if mdir.is_dir() and s.executor.kind == "local":
        out.append(_access_check("models dir", mdir, R | X, who, f"setfacl -R -m u:{who.name}:rX {{}}"))
    return out


def _access_check(name: str, path: Path, want: int, who: Identity, fix: str) -> Check:
    problem = blocked(path, want, who)
    if problem is None:
        creates = "" if path.exists() else " (created at start)"
        return Check(name, Level.OK, f"{who.name} can {verb(want)} {path}{creates}")
    why, folder, exists = problem
    if not exists:  # make it now, theirs (its parents as they come)
        return Check(name, Level.FAIL, why, f"install -d -o {who.name} {path}")
    return Check(name, Level.FAIL, why, fix.replace("{}", folder))


# -- models and devices -------------------------------------------------------------


def check_models(s: Settings) -> list[Check]:
    if s.executor.kind == "ray":
        return [Check("models", Level.OK, "on the Ray cluster's hosts: each actor checks them as it boots")]
    if s.ocr.engine_plugin:
        return [Check("models", Level.OK, f"engine plug-in {s.ocr.engine_plugin}: it brings its own")]
    try:
        profile = profiles.get(s.ocr.profile)
    except EngineUnavailable as exc:
        return [Check("models", Level.FAIL, str(exc), "ocr-inbox models list; set ocr.profile to one of them")]
    if profile.from_hub:
        hub = f"profile {profile.name!r}: PaddleX downloads it from its model hubs on first use"
        return [Check("models", Level.OK, hub)]
    mdir = s.paths.resolved_models_dir()
    refine = s.ocr.refine_in_use()
    for name, roles in s.ocr.models_needed():
        prof = profiles.get(name)
        missing = models.missing_files(mdir, prof, roles)
        what = " (the cascade's recognizer)" if name == refine else ""
        if missing:
            return [
                Check(
                    "models", Level.FAIL,
                    f"profile {prof.name!r}{what}: {len(missing)} model file(s) missing, e.g. {missing[0]}",
                    models.install_command(mdir, prof),
                )
            ]
    also = f", and {refine!r}'s recognizer for the cascade" if refine else ""
    return [Check("models", Level.OK, f"profile {profile.name!r} installed in {mdir}{also}")]


def check_devices(s: Settings, host: Host) -> list[Check]:
    if s.executor.kind == "ray":
        return [Check("devices", Level.OK, "on the Ray cluster: an actor that cannot use its device fails to boot")]
    try:
        profile = profiles.get(s.ocr.profile)
    except EngineUnavailable:
        return []  # the models check says it
    out: list[Check] = []
    runtime = "paddle" if profile.engine == "paddle" else "onnxruntime"
    if not s.ocr.engine_plugin and importlib.util.find_spec(runtime) is None:
        fix = "pip install onnxruntime"
        if runtime == "paddle":
            fix = "pip install 'ocr-inbox[paddle]' (CPU), or paddlepaddle-gpu (README, GPUs)"
        out.append(Check("engine", Level.FAIL, f"profile {profile.name!r} runs on {runtime}, which is not installed", fix))
        return out
    support: tuple[str, str] | None | bool = False  # not asked yet: importing Paddle takes seconds
    for text in s.ocr.devices:
        dev = parse_device(text)
        if dev.kind == "cpu":
            out.append(Check("device", Level.OK, f"{dev}: {len(os.sched_getaffinity(0))} CPUs available"))
            continue
        try:
            WorkerSlot(0, dev, 1).child_env()
        except ValueError as exc:
            fix = "list only the cards CUDA_VISIBLE_DEVICES names (gpu:0 is its first)"
            out.append(Check("device", Level.FAIL, str(exc), fix))
            continue
        if not (host.dev / "nvidiactl").exists():
            out.append(
                Check("device", Level.FAIL, f"{dev}: no {host.dev / 'nvidiactl'}, the NVIDIA driver is not loaded",
                      'install the NVIDIA driver (nvidia-smi must work), or set ocr.devices = ["cpu"]')
            )
            continue
        if s.ocr.engine_plugin:
            out.append(Check("device", Level.OK, f"{dev}: driver loaded; the engine plug-in checks the rest"))
            continue
        if support is False:
            support = gpu_support_problem(profile.engine)
        if isinstance(support, tuple):
            out.append(Check("device", Level.FAIL, f"{dev}: {support[0]}", support[1]))
        else:
            out.append(Check("device", Level.OK, f"{dev}: driver loaded, {runtime} has CUDA"))
    return out


# -- inotify --------------------------------------------------------------------------


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _others_inotify(proc: Path, uid: int) -> tuple[int, int]:
    """(instances, watches) that processes of ``uid`` other than ocr-inbox hold: the kernel
    counts them against the same per-user limits. Unreadable processes count as none."""
    instances = watches = 0
    try:
        pids = [d for d in os.listdir(proc) if d.isdigit()]
    except OSError:
        return 0, 0
    for pid in pids:
        base = proc / pid
        try:
            if os.stat(base).st_uid != uid:
                continue
            cmdline = (base / "cmdline").read_bytes()
            if b"ocr-inbox" in cmdline or b"ocr_inbox" in cmdline:
                continue  # the daemon's own watches are what the tree needs
            fds = os.listdir(base / "fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(base / "fd" / fd) != "anon_inode:inotify":
                    continue
                info = (base / "fdinfo" / fd).read_text()
            except OSError:
                continue
            instances += 1
            watches += sum(1 for line in info.splitlines() if line.startswith("inotify wd:"))
    return instances, watches


def _sysctl_fix(key: str, value: int) -> str:
    return f"sysctl -w {key}={value} && echo {key}={value} >> {SYSCTL_FILE}"


def check_inotify(s: Settings, who: Identity, host: Host) -> list[Check]:
    w = s.watch
    if w.observer == "polling":
        return [Check("inotify", Level.OK, "not used: [watch] observer = polling")]
    if not s.paths.inbox.is_dir():
        return []  # the inbox check says it
    limits = host.proc / "sys" / "fs" / "inotify"
    max_watches, max_instances = _read_int(limits / "max_user_watches"), _read_int(limits / "max_user_instances")
    if max_watches is None or max_instances is None:
        return [Check("inotify", Level.WARN, f"cannot read {limits}: limits unknown", "")]
    folders = sum(1 for _ in scan.folders(s.paths.inbox, w.max_depth))
    other_instances, other_watches = _others_inotify(host.proc, who.uid)
    short = Level.FAIL if w.observer == "native" else Level.WARN
    then = (
        "the daemon would not start ([watch] observer = native)"
        if short is Level.FAIL
        else "the daemon would poll instead (slower to see new files)"
    )
    out: list[Check] = []

    key, need = "fs.inotify.max_user_watches", folders + other_watches
    held = f" + {other_watches} held by {who.name}'s other processes" if other_watches else ""
    what = f"{folders} folders to watch (max_depth {w.max_depth}){held}"
    fix = _sysctl_fix(key, max(SUGGESTED_WATCHES, 1 << (2 * need - 1).bit_length()))
    if need > max_watches:
        out.append(Check("inotify watches", short, f"{what} > {key} = {max_watches}: {then}", fix))
    elif need > WATCH_HEADROOM * max_watches:
        out.append(Check("inotify watches", Level.WARN, f"{what}, close to {key} = {max_watches}: little room to grow", fix))
    else:
        out.append(Check("inotify watches", Level.OK, f"{what} of {key} = {max_watches}"))

    key, need = "fs.inotify.max_user_instances", other_instances + 1
    in_use = f"{who.name}'s other processes hold {other_instances} of {key} = {max_instances}"
    if need > max_instances:
        fix = _sysctl_fix(key, max(SUGGESTED_INSTANCES, 2 * need))
        out.append(Check("inotify instances", short, f"{in_use}, none left for the daemon: {then}", fix))
    else:
        out.append(Check("inotify instances", Level.OK, f"{in_use}; the daemon needs 1"))
    return out


# -- free space ----------------------------------------------------------------------


def _existing(path: Path) -> Path:
    p = Path(os.path.abspath(path))
    while not p.exists():
        p = p.parent
    return p


def check_space(s: Settings) -> list[Check]:
    out: list[Check] = []
    seen: dict[int, str] = {}
    for name, path in (("outbox", s.paths.outbox), ("state", s.paths.state_dir)):
        where = _existing(path)
        dev = os.stat(where).st_dev
        if dev in seen:
            out.append(Check(f"space: {name}", Level.OK, f"same file system as the {seen[dev]}"))
            continue
        seen[dev] = name
        vfs = os.statvfs(where)
        free = vfs.f_bavail * vfs.f_frsize
        text = f"{free / (1 << 30):.1f} GiB free on the file system of {path}"
        fix = f"free space there (df -h {where}), or move paths.{'outbox' if name == 'outbox' else 'state_dir'} elsewhere"
        if free < FAIL_FREE_BYTES:
            out.append(Check(f"space: {name}", Level.FAIL, f"{text} (< {FAIL_FREE_BYTES >> 20} MiB: writes pause as disk_full)", fix))
        elif free < WARN_FREE_BYTES:
            out.append(Check(f"space: {name}", Level.WARN, f"{text} (< {WARN_FREE_BYTES >> 30} GiB)", fix))
        elif vfs.f_files and vfs.f_favail < WARN_FREE_INODES:
            inodes = f"{vfs.f_favail} inodes free on the file system of {path} (each JSON takes one)"
            out.append(Check(f"space: {name}", Level.WARN, inodes, fix))
        else:
            out.append(Check(f"space: {name}", Level.OK, text))
    return out


# -- the systemd unit -----------------------------------------------------------------


def check_unit(host: Host) -> Check:
    if not host.unit.exists():
        return Check("unit", Level.OK, f"no {host.unit}: not installed as a service (docs/OPERATIONS.md installs it)")
    try:
        installed = host.unit.read_text().splitlines()
        shipped = host.shipped_unit.read_text().splitlines()
    except OSError as exc:
        return Check("unit", Level.WARN, f"cannot compare {host.unit} with {host.shipped_unit}: {exc.strerror or exc}")
    dropins = [p.name for p in sandbox.dropins(host.unit)]
    local = f"; drop-ins: {', '.join(dropins)}" if dropins else ""
    changed = [
        line for line in difflib.unified_diff(shipped, installed, lineterm="", n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]
    if not changed:
        return Check("unit", Level.OK, f"{host.unit} is the shipped unit{local}")
    settings = [line for line in changed if line[1:].strip() and not line[1:].lstrip().startswith("#")]
    shown = "; ".join(settings[:3]) + (" ..." if len(settings) > 3 else "") if settings else "comments only"
    return Check(
        "unit", Level.WARN,
        f"{host.unit} differs from the shipped unit in {len(changed)} line(s): {shown}{local}",
        f"keep local changes in a drop-in (systemctl edit ocr-inbox), then install -m 0644 {host.shipped_unit} "
        f"{host.unit} && systemctl daemon-reload",
    )


def check_sandbox(s: Settings, host: Host, sources: dict[str, str]) -> list[Check]:
    """What the installed unit's sandbox (``sandbox.py``) lets the service read and write,
    against the paths the settings name; nothing when the unit is not installed."""
    if not host.unit.exists():
        return []
    try:
        box = sandbox.of_unit(host.unit)
    except OSError as exc:
        return [Check("sandbox", Level.WARN, f"cannot read {host.unit}: {exc.strerror or exc}")]
    edit = "systemctl edit ocr-inbox, then under [Service]:"
    out = [
        Check("sandbox", Level.FAIL, f"{path} is listed in {host.unit.name}'s *Paths= settings but does not exist: "
              "the service will not start (status 226/NAMESPACE)", f"mkdir -p {path}, or drop it from the unit's settings")
        for path in box.missing()
    ]
    p = s.paths
    needs = [("inbox", p.inbox, sandbox.RW if s.inbox.delete_processed else sandbox.RO), ("outbox", p.outbox, sandbox.RW)]
    # a state dir left to its default is, under the unit, its StateDirectory= ($STATE_DIRECTORY)
    own_state = sources.get("state_dir", "").startswith(("default", "$STATE_DIRECTORY")) and bool(box.state)
    if not own_state:
        needs.append(("state dir", p.state_dir, sandbox.RW))
    if p.models_dir or not own_state:
        needs.append(("models dir", p.resolved_models_dir(), sandbox.RO))
    if p.cache_dir or not (box.cache or own_state):
        needs.append(("cache dir", p.resolved_cache_dir(), sandbox.RW))
    for name, path, want in needs:
        got = box.access(path)
        if got == sandbox.HIDDEN:
            out.append(Check(
                "sandbox", Level.FAIL,
                f"the service cannot see the {name} {path}: the unit's ProtectHome=, PrivateTmp=, TemporaryFileSystem= or InaccessiblePaths= hides it",
                f"move the {name} out of /home, /root and /tmp, or {edit} "
                f"{'BindPaths' if want == sandbox.RW else 'BindReadOnlyPaths'}={path}",
            ))
        elif got == sandbox.RO and want == sandbox.RW:
            out.append(Check(
                "sandbox", Level.FAIL,
                f"the unit's sandbox (ProtectSystem={box.protect_system}, ProtectHome={box.protect_home}) makes the {name} "
                f"{path} read-only for the service: it cannot write there",
                f"{edit} ReadWritePaths={path}",
            ))
    if not out:
        out.append(Check("sandbox", Level.OK, f"the unit's sandbox (ProtectSystem={box.protect_system}, "
                                               f"ProtectHome={box.protect_home}) lets the service use " + ", ".join(n for n, _, _ in needs)))
    return out


def check_ray_token(s: Settings, who: Identity) -> list[Check]:
    """With ``[executor] kind = "ray"``: the token file is the service user's own, 0600 or
    0400 (whoever reads it can join the cluster, and a node is as trusted as the service)."""
    e = s.executor
    if e.kind != "ray" or not e.token_file:
        return []
    from ocr_inbox.executors.ray.plan import token_file_problem  # no Ray import: the check is os.stat

    problem = token_file_problem(e.token_file, who.uid)
    if problem:
        return [Check("ray token", Level.FAIL, f"executor.token_file: {problem[0]}", problem[1])]
    return [Check("ray token", Level.OK, f"{e.token_file} is {who.name}'s own and readable by nobody else")]


# -- all together -------------------------------------------------------------------


def check_identity(who: Identity) -> Check:
    if who.uid == 0:
        fix = "pass --user ocr-inbox (the unit's User=)"
        return Check("user", Level.WARN, "checking as root, who may read and write anything", fix)
    groups = ",".join(sorted(_group_name(g) for g in who.gids))
    return Check("user", Level.OK, f"checking as {who.name} (uid {who.uid}, groups {groups})")


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def check_config(sources: dict[str, str], s: Settings) -> list[Check]:
    p = s.paths
    return [
        Check("config", Level.OK, sources.get("config", "none (defaults)")),
        Check(
            "paths", Level.OK,
            f"inbox {p.inbox}, outbox {p.outbox}, state_dir {p.state_dir} ({sources.get('state_dir', '?')}), "
            f"models_dir {p.resolved_models_dir()} ({sources.get('models_dir', '?')})",
        ),
    ]


def run_checks(s: Settings, who: Identity, sources: dict[str, str], host: Host | None = None) -> list[Check]:
    host = host or Host()
    return [
        check_identity(who),
        *check_config(sources, s),
        *check_models(s),
        *check_devices(s, host),
        *check_inotify(s, who, host),
        *check_permissions(s, who),
        *check_space(s),
        check_unit(host),
        *check_sandbox(s, host, sources),
        *check_ray_token(s, who),
    ]


def exit_code(checks: list[Check]) -> ExitCode:
    """``some_failed`` (1) when any check FAILs; WARNs alone leave it at 0."""
    return ExitCode.some_failed if any(c.level is Level.FAIL for c in checks) else ExitCode.ok


def _counts(checks: list[Check]) -> Iterator[str]:
    for level in Level:
        n = sum(1 for c in checks if c.level is level)
        if n:
            yield f"{n} {level}"


def render_text(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        lines.append(f"{c.level:<4}  {c.name:<{width}}  {c.detail}")
        if c.fix:
            lines.append(f"{'':<4}  {'':<{width}}  fix: {c.fix}")
    lines.append("doctor: " + ", ".join(_counts(checks)))
    return "\n".join(lines)


def render_json(checks: list[Check]) -> str:
    return jsonout.dumps({"ok": exit_code(checks) is ExitCode.ok, "checks": [asdict(c) for c in checks]})
