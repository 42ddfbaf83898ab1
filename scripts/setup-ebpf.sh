#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# Prepares this machine for the ebpf receiver and its tests (root only; Debian 12 or later).
# Idempotent; returns in well under a second when everything is already in place.
#
#   1. installs python3-bpfcc (bcc's Python bindings: not on PyPI), bpfcc-tools, bpftool
#      (the Debian package of that name ships /usr/sbin/bpftool on bookworm) and
#      linux-headers-amd64 (bcc compiles the BPF program against kernel headers);
#   2. mounts tracefs (/sys/kernel/tracing) and debugfs (/sys/kernel/debug) where they are
#      not mounted: bcc reads tracepoint formats from there;
#   3. where /lib/modules/$(uname -r)/build is missing (a VM booted from a kernel that was
#      not installed from a package, such as a Firecracker guest), links it and .../source
#      to the newest installed Debian headers. Those may be older than the running kernel:
#      the receiver's BPF program only uses helpers and tracepoint fields whose layout bcc
#      reads from tracefs at run time, never kernel structs, so older headers suffice.
#      A kernel's own headers (a build link that exists) are never replaced.
#
# Environment: OTEL_KEPLER_EBPF_HEADERS=<dir> links that header tree instead of the newest.
set -euo pipefail

log() { printf 'setup-ebpf: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

PACKAGES=(python3-bpfcc bpfcc-tools bpftool linux-headers-amd64)

# shellcheck source=scripts/apt-install.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt-install.sh"

# mounted FSTYPE DIR: whether DIR is a mount point of that file system type.
mounted() {
    awk -v t="$1" -v d="$2" '{ split($0, s, " - "); split(s[2], f, " ");
        split(s[1], m, " "); if (f[1] == t && m[5] == d) found = 1 } END { exit !found }' \
        /proc/self/mountinfo
}

mount_tracing() {
    if ! mounted debugfs /sys/kernel/debug; then
        log "mount debugfs on /sys/kernel/debug"
        mount -t debugfs debugfs /sys/kernel/debug
    fi
    if ! mounted tracefs /sys/kernel/tracing; then
        log "mount tracefs on /sys/kernel/tracing"
        mount -t tracefs tracefs /sys/kernel/tracing
    fi
    [[ -r /sys/kernel/tracing/events/sched/sched_switch/format ]] \
        || die "no sched:sched_switch tracepoint under /sys/kernel/tracing (CONFIG_TRACEPOINTS?)"
}

newest_headers() {
    local dir
    dir="$(find /usr/src -maxdepth 1 -type d -name 'linux-headers-*-amd64' | sort -V | tail -n 1)"
    [[ -n "$dir" ]] || die "linux-headers-amd64 is installed but no /usr/src/linux-headers-*-amd64"
    printf '%s\n' "$dir"
}

link_headers() {
    local modules build source
    modules="/lib/modules/$(uname -r)"
    if [[ -e "$modules/build" && ! -L "$modules/build" ]]; then
        return 0  # a real tree: leave it alone
    fi
    if [[ -L "$modules/build" && -e "$modules/build/Makefile" \
          && -z "${OTEL_KEPLER_EBPF_HEADERS:-}" ]]; then
        return 0  # linked before (by this script or by the kernel's package)
    fi
    build="${OTEL_KEPLER_EBPF_HEADERS:-$(newest_headers)}"
    [[ -f "$build/Makefile" ]] || die "$build is not a kernel header tree (no Makefile)"
    source="${build%-amd64}-common"
    [[ -d "$source" ]] || source="$build"
    mkdir -p "$modules"
    ln -sfn "$build" "$modules/build"
    ln -sfn "$source" "$modules/source"
    log "linked $modules/build -> $build and $modules/source -> $source"
}

check_bcc() {
    /usr/bin/python3 -c 'import bcc' 2>/dev/null \
        || die "python3-bpfcc is installed but 'import bcc' fails under /usr/bin/python3"
    command -v bpftool >/dev/null || [[ -x /usr/sbin/bpftool ]] || die "bpftool not found"
}

main() {
    [[ $(id -u) == 0 ]] || die "needs root (installs packages, mounts tracefs, writes /lib/modules)"
    [[ $(uname -s) == Linux ]] || die "needs Linux"
    apt_install_system "${PACKAGES[@]}"
    mount_tracing
    link_headers
    check_bcc
}

main "$@"
