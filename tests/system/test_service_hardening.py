"""The state directory and the sandbox under a real systemd (issue 21), after
test_service.py on the same booted machine (file order): root's commands as the
operator types them, the unit's sandbox in force, and the unit with the metrics and
Ray drop-ins installed as docs/OPERATIONS.md and docs/SCALE-OUT.md say.
"""

from __future__ import annotations

import re
import stat

import pytest
from conftest import PAGES

from .conftest import CONFIG, Service
from .nspawn import wait_for

pytestmark = [pytest.mark.system, pytest.mark.slow, pytest.mark.corpus, pytest.mark.timeout(900)]

INBOX, STATE = "/srv/ocr-inbox/inbox", "/var/lib/ocr-inbox"
OCR = "/opt/ocr-inbox/venv/bin/ocr-inbox"
DROPINS = "/etc/systemd/system/ocr-inbox.service.d"


def _main_pid(svc: Service) -> int:
    pid = int(svc.m.sh("systemctl show -p MainPID --value ocr-inbox").stdout)
    assert pid > 0
    return pid


def test_roots_retry_reaches_the_running_unit_and_leaves_the_state_dir_the_services(service: Service) -> None:
    m, journal = service.m, service.journal
    mark = journal.mark()
    # a page whose copy broke off half-way fails for good ...
    m.sh(f"mkdir -p {INBOX}/broken && head -c 6000 /corpus/{PAGES[2]} > {INBOX}/broken/half.png", user="alice")
    failed = wait_for("half.png failed", lambda: journal.events("image_failed", mark, path="broken/half.png"), 120)
    reason = failed[0]["reason"]
    # ... and root asks for it again, as an admin types it (no runuser: root's retry acts as the owner)
    mark = journal.mark()
    out = m.sh(f"{OCR} retry --config {CONFIG} --reason {reason}").stdout
    assert "the running daemon queued 1 failed image(s) again" in out, out
    wait_for("retried and failed again", lambda: journal.events("image_failed", mark, path="broken/half.png"), 120)
    # nothing in the state dir is root's; the daemon's own modes
    assert m.sh(f"find {STATE} ! -user ocr-inbox").stdout == ""
    modes = {p: stat.S_IMODE(m.path(p).stat().st_mode) for p in (STATE, f"{STATE}/ocr-inbox.lock", f"{STATE}/requests")}
    assert modes == {STATE: 0o700, f"{STATE}/ocr-inbox.lock": 0o600, f"{STATE}/requests": 0o700}, modes
    assert sorted(p.name for p in m.path(f"{STATE}/requests").iterdir()) == []  # applied and removed
    # an unknown reason is refused with the real ones
    res = m.sh(f"{OCR} retry --config {CONFIG} --reason no_such_reason", check=False)
    assert res.returncode == 2 and "truncated" in res.stdout + res.stderr, res


def test_the_units_sandbox_is_in_force(service: Service) -> None:
    m = service.m
    pid = _main_pid(service)
    for ns in ("net", "ipc", "mnt"):  # PrivateNetwork=, PrivateIPC=, the file-system sandbox
        assert m.sh(f"readlink /proc/{pid}/ns/{ns}").stdout != m.sh(f"readlink /proc/1/ns/{ns}").stdout, ns
    inside = m.sh(f"nsenter -t {pid} -m -n sh -c 'ls -A /home; findmnt -n -o FSTYPE /dev/shm; cat /proc/net/dev'").stdout
    lines = inside.split()
    assert "alice" not in lines, inside  # ProtectHome=tmpfs: writers' homes are not there
    assert "tmpfs" in lines, inside  # its own /dev/shm
    # the whole unit, as systemd rates it: no worse than before (1.2)
    res = m.sh("systemd-analyze security --no-pager ocr-inbox.service", check=False)
    level = re.search(r"Overall exposure level for ocr-inbox\.service: ([\d.]+)", res.stdout)
    assert level and float(level.group(1)) <= 1.2, res.stdout[-500:]


def test_the_unit_starts_with_the_metrics_and_ray_drop_ins(service: Service) -> None:
    m = service.m
    before = m.path(CONFIG).read_text()
    try:
        # docs/OPERATIONS.md "Metrics", docs/SCALE-OUT.md (the token the Ray drop-in names)
        m.sh(f"install -D -m 0644 /src/systemd/ocr-inbox-metrics.conf {DROPINS}/metrics.conf && "
             f"install -D -m 0644 /src/systemd/ocr-inbox-ray.conf {DROPINS}/ray.conf && "
             "python3 -c 'import secrets; print(secrets.token_hex(32))' > /etc/ocr-inbox/ray-token && "
             "chown ocr-inbox: /etc/ocr-inbox/ray-token && chmod 0400 /etc/ocr-inbox/ray-token && "
             f"sed -i 's/^listen = \"\"/listen = \"127.0.0.1:9464\"/' {CONFIG} && "
             "systemctl daemon-reload")
        m.sh("systemctl restart ocr-inbox")  # Type=notify: returns once ready, or fails
        assert m.sh("systemctl is-active ocr-inbox").stdout.strip() == "active"
        scrape = m.sh("/opt/ocr-inbox/venv/bin/python -c \"import urllib.request as u; "
                      "print(u.urlopen('http://127.0.0.1:9464/metrics', timeout=10).read().decode())\"").stdout
        assert re.search(r"^ocr_inbox_images_done_total \d", scrape, re.M), scrape[:2000]
    finally:
        m.path(CONFIG).write_text(before)
        m.sh(f"rm -f {DROPINS}/metrics.conf {DROPINS}/ray.conf && systemctl daemon-reload && systemctl restart ocr-inbox")
    assert m.sh("systemctl is-active ocr-inbox").stdout.strip() == "active"
