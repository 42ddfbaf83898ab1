#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# What bench/bench_agent.py runs beside the agent, installed without touching the system:
# - Debian's prometheus-node-exporter, downloaded with `apt-get download` and unpacked into
#   .cache/peers/node-exporter/ (installing the package would enable and start a service on
#   :9100); the bench starts it itself on 127.0.0.1 with the processes collector only.
# - py-spy in the virtual environment, for `bench_agent.py --only profile` (root).
# Idempotent: quick when both are there.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$REPO_ROOT/.cache/peers/node-exporter"
BIN="$DEST/usr/bin/prometheus-node-exporter"

log() { printf 'install-bench-deps: %s\n' "$*" >&2; }

if [[ ! -x "$BIN" ]]; then
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    chmod a+rwx "$work"  # apt-get download as root hands the file to the _apt user
    if ! apt-cache show prometheus-node-exporter >/dev/null 2>&1; then
        log "apt-get update (prometheus-node-exporter not in the apt lists)"
        apt-get update -q
    fi
    log "downloading prometheus-node-exporter"
    (cd "$work" && apt-get download -q prometheus-node-exporter >/dev/null)
    mkdir -p "$DEST"
    dpkg-deb -x "$work"/prometheus-node-exporter_*.deb "$DEST"
    log "unpacked $("$BIN" --version 2>&1 | head -1)"
fi

if [[ ! -x "$REPO_ROOT/.venv/bin/py-spy" ]]; then
    log "pip install py-spy"
    "$REPO_ROOT/.venv/bin/python" -m pip install --quiet --disable-pip-version-check py-spy
fi
