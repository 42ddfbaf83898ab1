# shellcheck shell=bash
# SPDX-License-Identifier: Apache-2.0
#
# Sourced by scripts/install-test-deps.sh and scripts/setup-ebpf.sh, which define log and die.
#
# apt_install_system PKG...: install the packages not installed yet into the system (root
# only), with the system's apt lists, updated first where they do not know the packages.
apt_install_system() {
    [[ $(id -u) == 0 ]] || die "installing $* needs root"
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
            || missing+=("$p")
    done
    [[ ${#missing[@]} == 0 ]] && return 0
    if ! apt-cache show "${missing[@]}" >/dev/null 2>&1; then
        log "apt-get update (system lists)"
        apt-get update -q
    fi
    log "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}
