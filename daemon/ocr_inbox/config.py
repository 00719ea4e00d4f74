"""Typed settings: load a TOML file, validate, and report errors as file/key/reason.

Every key has a default, so an empty file (or none) is a valid configuration.
``configs/ocr-inbox.toml`` documents every key.

Every command resolves its settings the same way (``resolve``), each layer over
the one below it:

1. command-line flags (``--state-dir``, ``--models-dir``, ...);
2. environment variables: ``OCR_INBOX_STATE_DIR``, ``OCR_INBOX_MODELS_DIR``;
3. the configuration file: ``--config FILE``, else ``$OCR_INBOX_CONFIG``, else
   the installation's own ``<venv>/etc/ocr-inbox/ocr-inbox.toml`` if it exists
   (``make`` writes that one, so the venv's ``ocr-inbox`` finds what it set up);
4. defaults (state dir: ``$STATE_DIRECTORY`` from systemd, else the XDG state home).

An empty variable counts as unset, as systemd's ``Environment=NAME=`` means.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ocr_inbox.support.errors import ConfigError

DEFAULT_IGNORE = (
    ".*",  # hidden files and dirs: .DS_Store, ._AppleDouble, .Trash, .partial writes
    "*~",
    "*.part",
    "*.partial",
    "*.crdownload",
    "*.download",
    "*.tmp",
    "*.temp",
    "*.swp",
    "Thumbs.db",
    "desktop.ini",
    "@eaDir",
    "#recycle",
    "#snapshot",
    "__MACOSX",
    "$RECYCLE.BIN",
    "System Volume Information",
    "lost+found",
)


ENV_CONFIG = "OCR_INBOX_CONFIG"
ENV_STATE_DIR = "OCR_INBOX_STATE_DIR"
ENV_MODELS_DIR = "OCR_INBOX_MODELS_DIR"
#: [paths] key -> the environment variable that sets it (between the flag and the file)
ENV_PATHS = {"state_dir": ENV_STATE_DIR, "models_dir": ENV_MODELS_DIR}


def env_path(name: str, environ: Mapping[str, str] | None = None) -> Path | None:
    """The path in the environment variable ``name``; None when unset or empty."""
    value = (os.environ if environ is None else environ).get(name, "")
    return Path(value) if value else None


def installation_config() -> Path:
    """The installation's own configuration file: ``<sys.prefix>/etc/ocr-inbox/ocr-inbox.toml``
    (pip and Jupyter also read configuration from their venv)."""
    return Path(sys.prefix) / "etc" / "ocr-inbox" / "ocr-inbox.toml"


def find_config(flag: Path | None, environ: Mapping[str, str] | None = None) -> tuple[Path | None, str]:
    """The configuration file every command reads and how it was chosen: ``--config``,
    ``$OCR_INBOX_CONFIG``, the installation's file if present; (None, "none") otherwise."""
    if flag is not None:
        return flag, "--config"
    from_env = env_path(ENV_CONFIG, environ)
    if from_env is not None:
        return from_env, f"${ENV_CONFIG}"
    site = installation_config()
    if site.is_file():
        return site, "the installation's file"
    return None, "none"


def default_state_dir() -> Path:
    """systemd's $STATE_DIRECTORY, else the XDG state home."""
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    xdg = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(xdg) / "ocr-inbox"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class PathSettings(_Section):
    inbox: Path = Path("inbox")
    outbox: Path = Path("outbox")
    #: ledger, PaddleX cache, logs of failures; systemd's StateDirectory sets $STATE_DIRECTORY
    state_dir: Path = Field(default_factory=lambda: default_state_dir())
    #: prepared model directories; empty = <state_dir>/models
    models_dir: Path | None = None
    #: PaddleX's cache and temp files; empty = $CACHE_DIRECTORY (systemd) or <state_dir>/cache
    cache_dir: Path | None = None

    def resolved_models_dir(self) -> Path:
        return self.models_dir if self.models_dir else self.state_dir / "models"

    def resolved_cache_dir(self) -> Path:
        if self.cache_dir:
            return self.cache_dir
        if os.environ.get("CACHE_DIRECTORY"):
            return Path(os.environ["CACHE_DIRECTORY"].split(":")[0])
        return self.state_dir / "cache"


class OcrSettings(_Section):
    #: model profile: see `ocr-inbox models list`
    profile: str = "ppocrv6-tiny"
    #: e.g. ["cpu"], ["gpu:0"], ["gpu:0", "gpu:1"]
    devices: list[str] = ["cpu"]
    #: worker processes per device; 0 = tuned default (2 on CPU, 3 per GPU)
    workers_per_device: int = Field(default=0, ge=0, le=64)
    #: CPU threads per worker; 0 = tuned default (cores / workers, at least 1)
    threads_per_worker: int = Field(default=0, ge=0, le=256)
    #: recognition batch size; 0 = measured default (CPU: 1 on ONNX Runtime, 2 on Paddle; GPU: 8)
    rec_batch_size: int = Field(default=0, ge=0, le=256)
    #: keep word-level boxes (PDF highlights cover words, not whole lines)
    word_boxes: bool = True
    #: lines recognised with a lower score are dropped
    min_score: float = Field(default=0.0, ge=0.0, le=1.0)
    #: images with more pixels are refused before decoding (decompression bombs)
    max_image_pixels: int = Field(default=200_000_000, ge=1)
    #: files larger than this are refused before reading
    max_file_mb: int = Field(default=512, ge=1)
    #: pages of a multi-page TIFF or a PDF beyond this are refused
    max_pages: int = Field(default=2000, ge=1)
    #: pixels of all pages of one file together (from the headers, before decoding): a small
    #: multi-page TIFF whose pages are each under max_image_pixels can still be a bomb
    max_total_pixels: int = Field(default=1_000_000_000, ge=1)
    #: a Python "module:callable" returning an engine, instead of PaddleX (testing, plug-ins)
    engine_plugin: str = ""
    #: the confidence cascade: lines recognised with a score below this are read again by
    #: refine_profile's recognizer (same worker, same detection), whose text replaces the
    #: first; 0 = off. 0.93: ~8 % of tiny's lines, ~1.25x its time, ~+40 MiB per worker at
    #: the peak; the measured curve: docs/BENCHMARKS.md ("Accuracy at tiny's speed", "Worker memory")
    refine_below: float = Field(default=0.93, ge=0.0, le=1.0)
    #: the profile whose recognizer reads the unsure lines again (only its rec model is
    #: loaded); the same as profile = off
    refine_profile: str = "ppocrv6-small"
    #: word lists (pyspellchecker's: "en", "de", "fr", "es", "it", "nl", "pt" …): a Latin word
    #: that is in none of them, and becomes a listed word when unsure letters take the
    #: recognizer's own second choices, is respelled; [] = off. docs/BENCHMARKS.md
    lexicon: list[str] = ["en"]
    #: classify each page 0/90/180/270 degrees and read it upright (pages fed sideways or
    #: upside down); ~1 % of an upright page's time (docs/BENCHMARKS.md, "Page orientation")
    orientation: bool = True
    #: classify each text line 0/180 degrees and turn upside-down ones before recognition
    #: (single lines the page classifier cannot class); off: ~36 % more time on upright
    #: pages, ~11 % of their lines turned wrongly (docs/BENCHMARKS.md, "Text-line orientation")
    textline_orientation: bool = False

    @field_validator("lexicon")
    @classmethod
    def _lexicon(cls, v: list[str]) -> list[str]:
        from ocr_inbox.ocr.lexicon import languages

        known = languages()
        for lang in v:
            if lang not in known:
                raise ValueError(f"no word list {lang!r}; known: {', '.join(known)}")
        return v

    @field_validator("refine_profile")
    @classmethod
    def _refine_profile(cls, v: str) -> str:
        from ocr_inbox.ocr.profiles import PROFILES

        if v not in PROFILES:
            raise ValueError(f"unknown model profile; known profiles: {', '.join(sorted(PROFILES))}")
        return v

    def refine_in_use(self) -> str | None:
        """The cascade's profile when the cascade is on, else None."""
        if self.refine_below <= 0 or self.refine_profile == self.profile or self.engine_plugin:
            return None
        return self.refine_profile

    def models_needed(self) -> list[tuple[str, tuple[str, ...]]]:
        """(profile, its models the workers load): the profile's detector and recognizer,
        the page- and text-line orientation classifiers when they are on, and the cascade's
        recognizer when it is on."""
        refine = self.refine_in_use()
        main: tuple[str, ...] = (
            ("det", "rec")
            + (("orient",) if self.orientation else ())
            + (("lineori",) if self.textline_orientation else ())
        )
        return [(self.profile, main)] + ([(refine, ("rec",))] if refine else [])

    @field_validator("devices")
    @classmethod
    def _devices(cls, v: list[str]) -> list[str]:
        from ocr_inbox.ocr.devices import parse_device

        if not v:
            raise ValueError("at least one device is needed")
        for d in v:
            parse_device(d)
        return v


class PoolSettings(_Section):
    #: images sent to a worker at once
    batch_size: int = Field(default=4, ge=1, le=1000)
    #: recycle a worker after this many images (0 = never): PaddleOCR leaks on long runs
    max_images_per_worker: int = Field(default=2000, ge=0)
    #: recycle a worker whose resident memory exceeds this (0 = never)
    max_worker_rss_mb: int = Field(default=6000, ge=0)
    #: a worker that reports no progress (a page OCR'd) for this long: stacks dumped, then killed
    image_timeout_s: float = Field(default=600.0, gt=0)
    #: a worker that has not loaded its models after this long is killed
    boot_timeout_s: float = Field(default=300.0, gt=0)
    #: how often a failing image is tried before it is recorded as failed
    max_attempts: int = Field(default=2, ge=1, le=10)
    #: after a full disk or an unwritable outbox/state dir, wait this long before trying again
    output_retry_s: float = Field(default=15.0, gt=0)
    #: a worker's data memory ceiling (RLIMIT_DATA, MiB; 0 = none): an image that still blows
    #: up fails alone as too_much_memory. A CPU worker with the default OCR settings measured
    #: ~0.5 GiB of it after the corpus (VmData, bench/bench_cascade.py); a page at
    #: max_image_pixels needs ~2.5 GiB more while it is decoded. RLIMIT_AS would count the
    #: big address-space reservations of ONNX Runtime, Paddle and CUDA, RLIMIT_DATA only
    #: private writable memory. CPU workers only (GPU workers: the unit's MemoryMax= bounds them)
    worker_memory_mb: int = Field(default=8192, ge=0)
    #: this many different images crashing workers in a row, with no success between, is a
    #: crash storm (the machine's fault: memory, GPU): dispatch pauses instead of
    #: quarantining them (0 = never)
    crash_breaker: int = Field(default=5, ge=0)
    #: the first pause of a crash storm; it doubles while the storm goes on (up to 16x)
    crash_pause_s: float = Field(default=60.0, gt=0)


class WatchSettings(_Section):
    #: "auto" (native inotify, falls back to polling), "native" or "polling"
    observer: Literal["auto", "native", "polling"] = "auto"
    #: polling interval when the polling observer is used
    poll_interval_s: float = Field(default=5.0, gt=0)
    #: a file is taken once its size and mtime were unchanged this long
    settle_seconds: float = Field(default=3.0, ge=0)
    #: full rescan of the inbox so no file is missed (0 = only at start-up)
    rescan_interval_s: float = Field(default=300.0, ge=0)
    #: a folder or file the service user may not read yet is looked at again when its
    #: permissions change (inotify) and on a backoff from 1 s up to this, for file systems
    #: where inotify does not see the change (NFS); 0 = only on those events and rescans
    unreadable_retry_s: float = Field(default=60.0, ge=0)
    #: glob patterns matched against each path component, added to the defaults
    ignore: list[str] = []
    #: replace the default ignore patterns instead of extending them
    replace_default_ignore: bool = False
    #: folder levels below the inbox that are walked and watched; a deeper folder is
    #: refused (reason ``too_deep``). At most 256: watchdog's polling snapshot
    #: recurses once per level, and Python stops recursing near 1,000.
    max_depth: int = Field(default=64, ge=1, le=256)

    def ignore_patterns(self) -> tuple[str, ...]:
        base = () if self.replace_default_ignore else DEFAULT_IGNORE
        return base + tuple(self.ignore)


class PdfSettings(_Section):
    enabled: bool = True
    #: a folder is quiet when nothing changed for this long and all its images are done
    quiet_seconds: float = Field(default=60.0, ge=0)
    #: pages per chunk; memory stays flat whatever the folder size
    chunk_pages: int = Field(default=50, ge=1, le=10000)
    #: file-name prefixes that go first, in this order (covers, front matter ...)
    first_prefixes: list[str] = []
    #: deprecated and ignored: PDFs read images under [ocr]'s limits (one image module)
    max_image_pixels: int = Field(default=200_000_000, ge=1)
    #: a folder with more pages than this gets no PDF (failed, with the reason); 0 = no limit
    max_pages: int = Field(default=5000, ge=0)
    #: a build running longer is cancelled and the folder's PDF failed (reason timeout); 0 = no limit
    build_timeout_s: float = Field(default=3600.0, ge=0)
    #: a PDF in the inbox: OCR its pages that have text of their own too (else they keep their text)
    ocr_pages_with_text: bool = False


class CacheSettings(_Section):
    #: purge PaddleX temp files this often (seconds)
    purge_interval_s: float = Field(default=600.0, gt=0)
    #: only files older than this are purged
    purge_older_than_s: float = Field(default=300.0, ge=0)


class LogSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    #: "auto": journal when $JOURNAL_STREAM matches stderr, console on a TTY, else key=value
    format: Literal["auto", "journal", "console", "logfmt", "json"] = "auto"


class InboxSettings(_Section):
    #: delete a source once its folder's PDF (or, without PDFs, its JSON) is written, if unchanged
    delete_processed: bool = False


class OutboxSettings(_Section):
    #: what becomes of an image's JSON (and a PDF's searchable copy) once its source left the
    #: inbox (moved away, renamed, deleted by a person; not ``delete_processed``, whose page
    #: lives on in the folder's PDF): "archive" keeps them, "mirror" removes them if they are
    #: still as the daemon wrote them. Either way the scans write again what is missing or
    #: changed of the images still in the inbox, and never touch a file the daemon did not write.
    mode: Literal["archive", "mirror"] = "archive"


class LedgerSettings(_Section):
    #: images gone from the inbox are forgotten this many days after they left (a file that
    #: comes back later is queued as new; a JSON of the same version in the outbox is adopted)
    gone_retention_days: float = Field(default=30.0, ge=0)
    #: and at most this many gone images are remembered (the oldest are forgotten first)
    max_gone_images: int = Field(default=20_000, ge=0)


class ExecutorSettings(_Section):
    #: "local": worker processes on this machine ([ocr] devices); "ray": Ray actors on a cluster
    kind: Literal["local", "ray"] = "local"
    #: the Ray cluster's GCS, "host:port" (explicit: ocr-inbox never starts a private cluster)
    address: str = ""
    #: a file holding the cluster's token (RAY_AUTH_MODE=token), readable only by the service user
    token_file: str = ""
    #: OCR actors per GPU on every node (fractional num_gpus when > 1); 0 = CPU actors by cpus_per_worker
    workers_per_gpu: int = Field(default=3, ge=0, le=64)
    #: CPUs reserved per actor (on CPU-only placement: actors per node = node CPUs / this)
    cpus_per_worker: float = Field(default=1.0, gt=0, le=256)
    #: the Ray resource that stands for a GPU ("GPU"; another name, e.g. for tests: CPU inference)
    gpu_resource: str = "GPU"
    #: "bytes": the daemon reads each image and ships it through Ray's object store;
    #: "paths": every node mounts the inbox at the same path and reads it itself
    transport: Literal["bytes", "paths"] = "bytes"
    #: how long the daemon waits for the cluster at start before giving up; a one-shot `ocr`
    #: run also gives up on a cluster lost mid-run after this long (the daemon waits for it)
    connect_timeout_s: float = Field(default=60.0, gt=0)

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        if v and ("://" in v or v.strip() in ("auto", "local")):
            raise ValueError('"host:port" of the cluster\'s head (not "auto", "local" or a URL)')
        return v

    @model_validator(mode="after")
    def _ray_needs_address(self) -> ExecutorSettings:
        if self.kind == "ray" and not self.address:
            raise ValueError('executor.address: kind = "ray" needs the address of the cluster\'s head ("host:port")')
        return self


def parse_listen(value: str) -> tuple[str, int]:
    """``"host:port"`` -> (host, port); an IPv6 host in brackets (``"[::1]:9464"``). Raises ValueError."""
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError("an IPv6 address goes in brackets, then the port: \"[::1]:9464\"")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} in brackets is not an IPv6 address") from None
        port = rest[1:]
    else:
        host, sep, port = value.rpartition(":")
        if not sep or not host:
            raise ValueError('"host:port", e.g. "127.0.0.1:9464" (the host is needed: "0.0.0.0" for every address)')
        if ":" in host:
            raise ValueError('an IPv6 address goes in brackets: "[::1]:9464"')
        if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", host):
            raise ValueError(f"{host!r} is not a host name or IPv4 address")
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"the port {port!r} is not a number from 0 to 65535")
    return host, int(port)


class MetricsSettings(_Section):
    #: where Prometheus scrapes the daemon's metrics: "host:port" ("127.0.0.1:9464",
    #: "[::1]:9464"); "" = no metrics server. Port 0 takes a free port (logged: tests)
    listen: str = ""

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        if v:
            parse_listen(v)
        return v


class Settings(_Section):
    paths: PathSettings = PathSettings()
    ocr: OcrSettings = OcrSettings()
    pool: PoolSettings = PoolSettings()
    watch: WatchSettings = WatchSettings()
    pdf: PdfSettings = PdfSettings()
    cache: CacheSettings = CacheSettings()
    log: LogSettings = LogSettings()
    inbox: InboxSettings = InboxSettings()
    outbox: OutboxSettings = OutboxSettings()
    ledger: LedgerSettings = LedgerSettings()
    executor: ExecutorSettings = ExecutorSettings()
    metrics: MetricsSettings = MetricsSettings()



def _first_error(file: str, exc: ValidationError) -> ConfigError:
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    reason = err["msg"]
    if err["type"] == "extra_forbidden":
        reason = "unknown key"
    elif "input" in err and not isinstance(err["input"], dict):
        reason = f"{reason} (got {err['input']!r})"
    return ConfigError(file, key, reason)


def from_mapping(data: dict[str, Any], file: str = "<settings>") -> Settings:
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise _first_error(file, exc) from None


def load(path: Path | None, overrides: dict[str, dict[str, Any]] | None = None) -> Settings:
    """Read ``path`` (None: defaults only), apply ``overrides`` (section -> key -> value)."""
    data: dict[str, Any] = {}
    file = str(path) if path else "<defaults>"
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(file, "(file)", "no such file") from None
        except PermissionError:
            raise ConfigError(file, "(file)", "permission denied") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(file, "(syntax)", str(exc)) from None
    for section, values in (overrides or {}).items():
        sect = data.setdefault(section, {})
        if not isinstance(sect, dict):
            raise ConfigError(file, section, "must be a table")
        sect.update({k: v for k, v in values.items() if v is not None})
    return from_mapping(data, file)


def resolve(
    flag_config: Path | None,
    flags: Mapping[str, Mapping[str, Any]] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """The settings of a command: ``flags`` (section -> key -> value; None = not given)
    over the ``OCR_INBOX_*`` variables over the configuration file over the defaults."""
    path, _ = find_config(flag_config, environ)
    layers: dict[str, dict[str, Any]] = {"paths": {}}
    for key, var in ENV_PATHS.items():
        layers["paths"][key] = env_path(var, environ)
    for section, values in (flags or {}).items():
        layers.setdefault(section, {}).update({k: v for k, v in values.items() if v is not None})
    return load(path, layers)


def path_sources(
    flag_config: Path | None,
    flags: Mapping[str, Mapping[str, Any]] | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Where ``resolve`` took each [paths] key from (for ``ocr-inbox doctor``): config file
    and state_dir/models_dir as "--state-dir", "$OCR_INBOX_STATE_DIR", "config file", "default"."""
    path, how = find_config(flag_config, environ)
    in_file: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                section = tomllib.load(fh).get("paths", {})
            in_file = section if isinstance(section, dict) else {}
        except (OSError, tomllib.TOMLDecodeError):
            pass  # resolve() reports it, as file, key and reason
    paths_flags = (flags or {}).get("paths", {})
    out = {"config": f"{path} ({how})" if path is not None else "none (defaults)"}
    for key, var in ENV_PATHS.items():
        if paths_flags.get(key) is not None:
            out[key] = "--" + key.replace("_", "-")
        elif env_path(var, environ) is not None:
            out[key] = f"${var}"
        elif in_file.get(key):
            out[key] = "config file"
        elif key == "state_dir":
            # as default_state_dir() reads it
            out[key] = "$STATE_DIRECTORY" if os.environ.get("STATE_DIRECTORY") else "default: the XDG state home"
        else:
            out[key] = "default: <state_dir>/models"
    return out


def diff(old: Settings, new: Settings) -> dict[str, tuple[Any, Any]]:
    """Changed keys as ``section.key -> (old, new)`` (for logging a reload)."""
    changed: dict[str, tuple[Any, Any]] = {}
    a, b = old.model_dump(), new.model_dump()
    for section in a:
        for key in a[section]:
            if a[section][key] != b[section][key]:
                changed[f"{section}.{key}"] = (a[section][key], b[section][key])
    return changed
