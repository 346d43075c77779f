#!/usr/bin/env bash
# The lab's gateway. Run as root by the Vagrantfile; idempotent, safe to run again.
#   gateway.sh setup     install the project from /vagrant-project: offline from the wheels that
#                        vagrant/host/prepare.sh built (vagrant/.wheels), else with scripts/install.sh (needs the
#                        internet); turn on IPv4 and IPv6 forwarding for good (/etc/sysctl.d), install the enforcer
#                        service, apply lab.yml's inventory, bind each VNet to its interface here, and start the
#                        service; install lifecycle.sh (the Vagrantfile's VM lifecycle triggers run it)
#   gateway.sh network   add the addresses Vagrant does not configure (IPv6, further prefixes) and masquerade
#                        the VNets toward the internet network (Vagrant runs this at every `vagrant up`;
#                        p25-lab-network.service after a reboot)
#   gateway.sh [all]     both
# Facts from the Vagrantfile, in the environment:
#   P25_NAME, P25_LINKS  this machine, and its interfaces with their addresses (see add_addresses below)
#   P25_NAT_OUT          the IPv4 address of the interface facing the internet network
#   P25_VNET_PREFIXES    the VNets' prefixes, masqueraded toward the internet network
#   P25_GATEWAY, P25_INTERNET  this gateway's addresses and the internet host's
set -euo pipefail

ME=gateway.sh
PROJECT=/vagrant-project
LAB="$PROJECT/vagrant/lab.yml"
WHEELS="$PROJECT/vagrant/.wheels"
VENV=/opt/port25-enforcer
ENFORCER=/usr/local/bin/enforcer
NAT_CHAIN=P25-LAB-NAT
: "${P25_NAME:?set by the Vagrantfile}" "${P25_LINKS:?set by the Vagrantfile}"
: "${P25_NAT_OUT:?set by the Vagrantfile}" "${P25_VNET_PREFIXES:?set by the Vagrantfile}"
: "${P25_GATEWAY:=}" "${P25_INTERNET:=}" "${P25_VNET_LINKS:=}"
# The gateway routes nothing itself: it has an interface on every network.
: "${P25_VIA4=}" "${P25_VIA6=}" "${P25_ROUTES4=}" "${P25_ROUTES6=}"

# The helpers the three scripts share: beside this script, or where the Vagrantfile uploaded them.
COMMON="$(dirname "$0")/common.sh"
[ -r "$COMMON" ] || COMMON=/tmp/p25-common.sh
# shellcheck source=vagrant/provision/common.sh
. "$COMMON"

# Masquerades the VNets toward the internet network, from a chain of our own rebuilt whole (so a renamed
# interface or a removed VNet leaves nothing behind).
masquerade() {
    local out cmd prefix
    out=$(dev_with "$P25_NAT_OUT")
    for cmd in iptables ip6tables; do
        "$cmd" -w -t nat -n -L "$NAT_CHAIN" >/dev/null 2>&1 || "$cmd" -w -t nat -N "$NAT_CHAIN"
        "$cmd" -w -t nat -F "$NAT_CHAIN"
        "$cmd" -w -t nat -C POSTROUTING -j "$NAT_CHAIN" 2>/dev/null || "$cmd" -w -t nat -A POSTROUTING -j "$NAT_CHAIN"
    done
    for prefix in $P25_VNET_PREFIXES; do
        if [[ $prefix == *:* ]]; then cmd=ip6tables; else cmd=iptables; fi
        "$cmd" -w -t nat -A "$NAT_CHAIN" -s "$prefix" -o "$out" -j MASQUERADE
    done
    log "masquerading $P25_VNET_PREFIXES toward $out"
}

network() {
    if ! command -v iptables >/dev/null; then
        echo "$ME: iptables is missing; run first: $ME setup" >&2
        exit 1
    fi
    add_addresses
    masquerade
    if [ -z "${P25_AT_BOOT:-}" ]; then
        persist
    fi
}

# The project into $VENV, linked as $ENFORCER: from the host's wheels with no index (the lab has no internet),
# else as scripts/install.sh installs it (a public box on a host with the internet).
install_project() {
    local wheel
    wheel=$(find "$WHEELS" -maxdepth 1 -name 'port25_enforcer-*.whl' 2>/dev/null | head -n 1)
    if [ -n "$wheel" ]; then
        [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
        "$VENV/bin/python" -m pip install --quiet --no-index --find-links "$WHEELS" "$wheel"
        # the same version number with new code: replace the project itself, not its dependencies
        "$VENV/bin/python" -m pip install --quiet --no-index --no-deps --force-reinstall "$wheel"
        ln -sf "$VENV/bin/enforcer" "$ENFORCER"
        log "installed $(basename "$wheel") into $VENV (offline, from $WHEELS)"
    elif [ -x "$PROJECT/scripts/install.sh" ]; then
        "$PROJECT/scripts/install.sh"
        ln -sf "$PROJECT/.venv/bin/enforcer" "$ENFORCER"
    else
        echo "$ME: neither $WHEELS nor $PROJECT/scripts/install.sh; sync the project: vagrant rsync gateway" >&2
        exit 1
    fi
}

# Each VNet's resources are accepted only from the gateway's interface on that VNet (the one holding the
# VNet's gateway address), and with their registered MACs. P25_VNET_LINKS: "VNET=ADDRESS ...".
bind_vnets() {
    local pair
    for pair in $P25_VNET_LINKS; do
        "$ENFORCER" vnet bind "${pair%%=*}" --interface "$(dev_with "${pair#*=}")"
    done
}

setup() {
    local -a start
    install_project
    install -D -m 0755 "$PROJECT/vagrant/provision/lifecycle.sh" /usr/local/lib/p25-lab/lifecycle.sh

    write_if_changed /etc/sysctl.d/60-p25-lab-forwarding.conf <<'CONF'
# port25-enforcer lab: the gateway routes the VNets to the internet network
net.ipv4.ip_forward = 1
net.ipv6.conf.all.forwarding = 1
CONF
    sysctl --quiet --load=/etc/sysctl.d/60-p25-lab-forwarding.conf
    # The queue and the NFQUEUE target, loaded here and at boot (the service itself may not load modules).
    printf 'nfnetlink_queue\nxt_NFQUEUE\n' | write_if_changed /etc/modules-load.d/p25-enforcer.conf
    modprobe -a nfnetlink_queue xt_NFQUEUE

    # --force replaces the unit when the project's template changed; /etc/enforcer/enforcer.toml is never
    # overwritten.
    "$ENFORCER" service install --force
    "$ENFORCER" apply "$LAB"
    bind_vnets

    if systemctl is-active --quiet enforcer; then
        systemctl enable --quiet enforcer
        start=(systemctl restart enforcer) # this run may have brought new code or a new unit
    else
        start=(systemctl enable --now enforcer)
    fi
    # Type=notify: this waits for the daemon's READY=1 (its rules are in place) or its failure
    if ! "${start[@]}" || ! systemctl is-active --quiet enforcer; then
        journalctl -u enforcer -n 30 --no-pager >&2 || true
        echo "$ME: the enforcer service did not start (its log is above)" >&2
        exit 1
    fi
    "$ENFORCER" status || true
}

run_parts "${1:-all}"
if [ -z "${P25_AT_BOOT:-}" ]; then
    log "ready: gateway $P25_GATEWAY; internet $P25_INTERNET"
fi
