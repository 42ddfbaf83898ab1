#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# Installs the real peers that the tests start themselves on 127.0.0.1 (see
# DESIGN.md "Real parts, in tests too"). Run by `make test`; idempotent, and it
# returns in well under a second when everything is already there.
#
# Debian 12 (bookworm) or later (tested on amd64). Network: the machine's own Debian mirror.
#
# How (and why not `apt-get install`):
#   Both Prometheus and VictoriaMetrics are Debian packages that are *downloaded* with
#   `apt-get download` and unpacked with `dpkg-deb -x` into the ignored folder
#   .cache/peers/<peer>/ ; only their binaries are kept. Nothing is installed into the
#   system and no service is ever started:
#   - `apt-get install prometheus` would create a system user, enable and start
#     prometheus.service on :9090 (all interfaces), pull ten libjs-* packages and, through
#     Recommends, prometheus-node-exporter, a second running service. A policy-rc.d file
#     only works where invoke-rc.d is used and leaves the units enabled for the next boot.
#   - bookworm's victoria-metrics is 1.79; OTLP ingestion needs >= 1.92, so it comes from
#     the next Debian release, which must never be added to the system's apt sources.
#   The apt runs use a private copy of the machine's own Debian sources (suite rewritten
#   when needed) with private lists/cache directories under a temporary folder, so the
#   system's apt configuration and state are neither read for lists nor changed, and
#   no mirror host name is written here. It works as root and as a normal user.
#
# Adding a peer for a later issue: write `install_<peer>` below and append it to PEERS.
# Packages that must really be installed (e.g. ipmitool, openipmi, python3-bpfcc) go
# through `apt_install_system` (root only).
#
# Environment:
#   OTEL_KEPLER_PEERS_DIR   where to unpack (default: <repo>/.cache/peers)
#   OTEL_KEPLER_PEERS_FORCE=1   re-download even when the binaries are present
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEERS_DIR="${OTEL_KEPLER_PEERS_DIR:-$REPO_ROOT/.cache/peers}"
FORCE="${OTEL_KEPLER_PEERS_FORCE:-0}"

# Oldest VictoriaMetrics with OTLP ingestion and -opentelemetry.usePrometheusNaming.
VM_MIN_VERSION="1.92"
# Debian codenames in release order; the suites after the host's are tried in turn.
DEBIAN_CODENAMES=(buster bullseye bookworm trixie forky duke)

PEERS=(install_victoria_metrics install_prometheus install_openssl install_openipmi install_qemu)

log() { printf 'install-test-deps: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

host_codename() {
    local codename=""
    if [[ -r /etc/os-release ]]; then
        # shellcheck source=/dev/null
        codename="$(. /etc/os-release && printf '%s' "${VERSION_CODENAME:-}")"
    fi
    [[ -n "$codename" ]] || die "cannot read VERSION_CODENAME from /etc/os-release (Debian 12+ needed)"
    printf '%s\n' "$codename"
}

# The suites to try for a package newer than the host's, in order: each later codename,
# then sid.
later_suites() {
    local host="$1" seen=0 c
    for c in "${DEBIAN_CODENAMES[@]}"; do
        if [[ $seen == 1 ]]; then printf '%s\n' "$c"; fi
        if [[ $c == "$host" ]]; then seen=1; fi
    done
    printf 'sid\n'
}

# Write to stdout the machine's own Debian sources with the host codename replaced by
# the suite wanted, in the suite fields only (deb822 `Suites:` lines, one-line `deb`
# entries; `\b` also turns bookworm-updates into trixie-updates). deb-src is dropped.
rewrite_sources_deb822() {
    local file="$1" host="$2" suite="$3"
    sed -E \
        -e "/^[Ss]uites:/ s/\\b${host}\\b/${suite}/g" \
        -e 's/^([Tt]ypes:).*/\1 deb/' \
        "$file"
}

rewrite_sources_oneline() {
    local file="$1" host="$2" suite="$3"
    sed -E -n -e "/^[[:space:]]*deb[[:space:]]/ { s/\\b${host}\\b/${suite}/g; p }" "$file"
}

# make_apt_root DIR SUITE: a private apt configuration in DIR that sees the machine's
# Debian mirrors with SUITE instead of the host's codename.
make_apt_root() {
    local root="$1" suite="$2" host found=0 f
    host="$(host_codename)"
    mkdir -p "$root/sources.list.d" "$root/preferences.d" "$root/lists/partial" \
        "$root/cache/archives/partial"
    : >"$root/sources.list"
    if [[ -r /etc/apt/sources.list ]]; then
        rewrite_sources_oneline /etc/apt/sources.list "$host" "$suite" >"$root/sources.list"
        if [[ -s "$root/sources.list" ]]; then found=1; fi
    fi
    for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list; do
        [[ -r "$f" ]] || continue
        # Only Debian's own archives: third-party repositories may not carry the suite.
        grep -Eq '(debian-archive-keyring|/debian(-security)?/?([[:space:]]|$))' "$f" || continue
        case "$f" in
            *.sources) rewrite_sources_deb822 "$f" "$host" "$suite" \
                >"$root/sources.list.d/$(basename "$f")" ;;
            *.list) rewrite_sources_oneline "$f" "$host" "$suite" \
                >"$root/sources.list.d/$(basename "$f")" ;;
        esac
        found=1
    done
    [[ $found == 1 ]] || die "no Debian apt sources found in /etc/apt/sources.list{,.d/}"
    chmod -R a+rX "$root"
}

# apt_opts DIR: the apt-get/apt-cache options that use the private configuration in DIR.
# APT::Sandbox::User: the private folders are not writable by _apt (and apt cannot switch
# users at all when not run as root).
apt_opts() {
    local root="$1"
    APT_OPTS=(
        -q
        -o "Dir::Etc::SourceList=$root/sources.list"
        -o "Dir::Etc::SourceParts=$root/sources.list.d"
        -o "Dir::Etc::Preferences=$root/preferences"
        -o "Dir::Etc::PreferencesParts=$root/preferences.d"
        -o "Dir::State::Lists=$root/lists"
        -o "Dir::Cache=$root/cache"
        -o "Acquire::Languages=none"
        -o "APT::Sandbox::User=$(id -un)"
    )
}

# Private apt roots already updated in this run, by suite (one `update` per suite).
declare -A APT_ROOTS=()

# fetch_deb PACKAGE SUITE: download PACKAGE from SUITE of the machine's mirrors into
# $WORK_DIR/debs and set FETCHED_DEB to its path; returns 1 when the suite lacks it.
fetch_deb() {
    local pkg="$1" suite="$2" root out="$WORK_DIR/debs"
    FETCHED_DEB=""
    root="${APT_ROOTS[$suite]:-}"
    if [[ -z "$root" ]]; then
        root="$WORK_DIR/apt-$suite"
        make_apt_root "$root" "$suite"
        apt_opts "$root"
        log "apt-get update for $suite (private lists, system apt state untouched)"
        if ! apt-get "${APT_OPTS[@]}" update >"$root/update.log" 2>&1; then
            log "apt-get update for $suite failed:"
            tail -n 5 "$root/update.log" >&2
            return 1
        fi
        APT_ROOTS[$suite]="$root"
    fi
    apt_opts "$root"
    if ! apt-cache "${APT_OPTS[@]}" show "$pkg" >/dev/null 2>&1; then
        log "$suite has no package $pkg"
        return 1
    fi
    rm -rf "$out" && mkdir -p "$out"
    if ! (cd "$out" && apt-get "${APT_OPTS[@]}" download "$pkg" >"$root/download.log" 2>&1)
    then
        log "apt-get download $pkg ($suite) failed:"
        tail -n 5 "$root/download.log" >&2
        return 1
    fi
    local debs=("$out/${pkg}"_*.deb)
    [[ -f "${debs[0]}" ]] || { log "apt-get download $pkg ($suite) left no .deb"; return 1; }
    FETCHED_DEB="${debs[0]}"
}

# unpack_binaries DEB DEST BINARY...: dpkg-deb -x the package into a staging folder and
# keep only usr/bin/BINARY... in DEST/bin, plus DEST/VERSION. Atomic replace of DEST.
unpack_binaries() {
    local deb="$1" dest="$2"; shift 2
    local stage new="$dest.new" b
    stage="$WORK_DIR/stage-$(basename "$dest")"
    rm -rf "$stage" "$new"
    dpkg-deb -x "$deb" "$stage"
    mkdir -p "$new/bin"
    for b in "$@"; do
        [[ -x "$stage/usr/bin/$b" ]] || die "$(basename "$deb") has no usr/bin/$b"
        cp -p "$stage/usr/bin/$b" "$new/bin/$b"
    done
    printf '%s %s\n' "$(dpkg-deb -f "$deb" Package)" "$(dpkg-deb -f "$deb" Version)" \
        >"$new/VERSION"
    rm -rf "$dest" "$stage"
    mv "$new" "$dest"
}

# check_runs BINARY ARGS...: the binary's shared libraries all resolve on this machine
# (LD_BIND_NOW makes a missing symbol fail now, not at its first call) and it runs.
check_runs() {
    local bin="$1"; shift
    if ldd "$bin" 2>/dev/null | grep -q 'not found'; then
        ldd "$bin" >&2 || true
        return 1
    fi
    LD_BIND_NOW=1 "$bin" "$@" >/dev/null 2>&1
}

# ---------------------------------------------------------------- peers

# verify_victoria_metrics BINARY: runs here and has the OTLP naming flag.
verify_victoria_metrics() {
    local bin="$1" help
    check_runs "$bin" -help || return 1
    help="$("$bin" -help 2>&1)" || return 1
    [[ $help == *-opentelemetry.usePrometheusNaming* ]]
}

install_victoria_metrics() {
    local dest="$PEERS_DIR/victoria-metrics" bin
    bin="$dest/bin/victoria-metrics"
    if [[ $FORCE != 1 && -r "$dest/VERSION" ]] && verify_victoria_metrics "$bin"; then
        log "victoria-metrics: present ($(cat "$dest/VERSION"))"
        return 0
    fi
    local host suite deb version
    host="$(host_codename)"
    for suite in "$host" $(later_suites "$host"); do
        fetch_deb victoria-metrics "$suite" || continue
        deb="$FETCHED_DEB"
        version="$(dpkg-deb -f "$deb" Version)"
        if dpkg --compare-versions "$version" lt "$VM_MIN_VERSION"; then
            log "victoria-metrics $version in $suite is older than $VM_MIN_VERSION (no OTLP)"
            continue
        fi
        unpack_binaries "$deb" "$dest" victoria-metrics
        verify_victoria_metrics "$bin" || die "victoria-metrics $version from $suite does" \
            "not run here or lacks -opentelemetry.usePrometheusNaming"
        log "victoria-metrics: unpacked $version from $suite into $dest"
        return 0
    done
    die "no Debian suite from $host on has victoria-metrics >= $VM_MIN_VERSION"
}

install_prometheus() {
    local dest="$PEERS_DIR/prometheus" bin
    bin="$dest/bin/prometheus"
    if [[ $FORCE != 1 && -r "$dest/VERSION" ]] && check_runs "$bin" --version; then
        log "prometheus: present ($(cat "$dest/VERSION"))"
        return 0
    fi
    local host deb
    host="$(host_codename)"
    fetch_deb prometheus "$host" || die "cannot download prometheus from $host"
    deb="$FETCHED_DEB"
    unpack_binaries "$deb" "$dest" prometheus promtool
    check_runs "$bin" --version || die "prometheus from $host does not run here"
    log "prometheus: unpacked $(dpkg-deb -f "$deb" Version) from $host into $dest"
}

# The openssl command makes the self-signed certificates of the TLS tests. Present on
# most Debian installs; minimal images (e.g. the debian:12 container) lack it.
install_openssl() {
    if command -v openssl >/dev/null; then
        log "openssl: present ($(openssl version))"
        return 0
    fi
    apt_install_system openssl
}

# OpenIPMI's BMC simulator ipmi_sim (package openipmi) and ipmitool, the second IPMI client
# of the ipmi receiver's tests. Installed into the system (root only): both need shared
# libraries of their own (libopenipmi0, libfreeipmi17, libsnmp40...). The tests start
# ipmi_sim themselves with their own lan.conf on 127.0.0.1 and a free port; no package
# runs ipmi_sim as a service. Side effects to know: ipmitool's ipmievd is installed
# disabled; openipmi registers its SysV script, which loads the in-band IPMI kernel
# modules at the next boot (a no-op without a BMC).
install_openipmi() {
    if command -v ipmi_sim >/dev/null && command -v ipmitool >/dev/null; then
        log "openipmi, ipmitool: present ($(ipmitool -V 2>&1 | head -n 1))"
        return 0
    fi
    apt_install_system openipmi ipmitool
}

# QEMU (qemu-system-x86, with its SeaBIOS firmware): tests/test_vm.py starts a real guest
# under TCG (no /dev/kvm needed) and checks that the vm level recognises it.
install_qemu() {
    if command -v qemu-system-x86_64 >/dev/null; then
        log "qemu-system-x86: present ($(qemu-system-x86_64 --version | head -n 1))"
        return 0
    fi
    apt_install_system qemu-system-x86
}

# Packages installed into the system (root only): apt_install_system, shared with
# scripts/setup-ebpf.sh.
# shellcheck source=scripts/apt-install.sh
source "$REPO_ROOT/scripts/apt-install.sh"

# ---------------------------------------------------------------- main

main() {
    local tool
    for tool in apt-get apt-cache dpkg dpkg-deb flock ldd; do
        command -v "$tool" >/dev/null || die "needs $tool (Debian 12 or later)"
    done
    mkdir -p "$PEERS_DIR"
    # One run at a time per peers folder (two `make test` in the same tree).
    exec 9>"$PEERS_DIR/.lock"
    flock 9
    WORK_DIR="$(mktemp -d "$PEERS_DIR/.work.XXXXXX")"
    trap 'rm -rf "$WORK_DIR"' EXIT
    local step
    for step in "${PEERS[@]}"; do
        "$step"
    done
    log "versions:"
    printf '  %s\n' "$(cat "$PEERS_DIR/victoria-metrics/VERSION")" \
        "$(cat "$PEERS_DIR/prometheus/VERSION") ($("$PEERS_DIR/prometheus/bin/prometheus" \
            --version 2>&1 | head -n 1))" >&2
}

main "$@"
