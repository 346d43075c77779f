#!/usr/bin/env bash
# The helpers gateway.sh, internet.sh and vm.sh share; sourced by them, never run alone. The Vagrantfile uploads
# it to /tmp/p25-common.sh (each provisioning script is uploaded on its own); persist() installs both beside each
# other in /usr/local/lib/p25-lab for the boot-time unit. Expects ME (the script's name) to be set.
set -euo pipefail
log() { printf '%s: %s\n' "$ME" "$*"; }

# Writes stdin to the file $1 unless it already holds exactly that; sets CHANGED=1 when it wrote.
CHANGED=""
write_if_changed() {
    local tmp
    tmp=$(mktemp)
    cat >"$tmp"
    if [ -f "$1" ] && cmp -s "$tmp" "$1"; then
        rm -f "$tmp"
    else
        install -D -m 0644 "$tmp" "$1"
        rm -f "$tmp"
        CHANGED=1
    fi
}

# The interface holding the IPv4 address $1 (Vagrant configured it); at boot, waits for it up to a minute.
dev_with() {
    local i dev
    for ((i = 0; i < 60; i++)); do
        dev=$(ip -o -4 addr show | awk -v a="$1" '{ split($4, p, "/"); if (p[1] == a) { print $2; exit } }')
        if [ -n "$dev" ]; then
            printf '%s\n' "$dev"
            return 0
        fi
        sleep 1
    done
    echo "$ME: no interface holds $1 (a Vagrant private network); try: vagrant reload $P25_NAME" >&2
    return 1
}

# P25_LINKS: one word per interface, "IPV4/LEN,ADDRESS/LEN,...": the address Vagrant configured, which
# finds the interface, then the addresses to add to it. LINK_DEV: the first interface.
LINK_DEV=""
add_addresses() {
    local link dev address
    local -a addresses
    for link in $P25_LINKS; do
        IFS=, read -r -a addresses <<<"$link"
        dev=$(dev_with "${addresses[0]%/*}")
        LINK_DEV=${LINK_DEV:-$dev}
        for address in "${addresses[@]:1}"; do
            if [[ $address == *:* ]]; then
                ip -6 addr replace "$address" dev "$dev" nodad
            else
                ip -4 addr replace "$address" dev "$dev"
            fi
        done
        log "$dev: ${addresses[*]}"
    done
}

# The lab's ranges (P25_ROUTES4, P25_ROUTES6) through the gateway's address on this machine's network
# (P25_VIA4, P25_VIA6: empty when this machine has no IPv6 address). The default route stays Vagrant's.
add_routes() {
    local route
    # shellcheck disable=SC2153  # P25_VIA4 comes from the Vagrantfile, through the calling script's environment
    for route in $P25_ROUTES4; do
        ip -4 route replace "$route" via "$P25_VIA4" dev "$LINK_DEV"
    done
    if [ -n "$P25_VIA6" ]; then
        for route in $P25_ROUTES6; do
            ip -6 route replace "$route" via "$P25_VIA6" dev "$LINK_DEV"
        done
    fi
    log "routes: $P25_ROUTES4 via $P25_VIA4${P25_VIA6:+; $P25_ROUTES6 via $P25_VIA6}"
}

# Vagrant runs the network part at every `vagrant up` (its own network setup drops what it did not
# configure); this installs the script and its facts, and a unit that runs it after a reboot from inside.
persist() {
    local var
    install -D -m 0755 "$0" "/usr/local/lib/p25-lab/$ME"
    install -D -m 0644 "$COMMON" /usr/local/lib/p25-lab/common.sh
    for var in "${!P25_@}"; do
        printf '%s="%s"\n' "$var" "${!var}"
    done | write_if_changed /etc/default/p25-lab-network
    CHANGED=""
    write_if_changed /etc/systemd/system/p25-lab-network.service <<UNIT
[Unit]
Description=port25-enforcer lab: this machine's lab addresses and routes
After=network-online.target
Wants=network-online.target

[Service]
Type=oneshot
RemainAfterExit=yes
EnvironmentFile=/etc/default/p25-lab-network
Environment=P25_AT_BOOT=1
ExecStart=/usr/local/lib/p25-lab/$ME network

[Install]
WantedBy=multi-user.target
UNIT
    if [ -n "$CHANGED" ]; then
        systemctl daemon-reload
    fi
    systemctl enable --quiet p25-lab-network.service
}

# Runs the part of the calling script named by $1: its setup(), its network(), or both ("all").
run_parts() {
    case $1 in
        setup) setup ;;
        network) network ;;
        all)
            setup
            network
            ;;
        *)
            echo "usage: $ME [setup|network|all]" >&2
            exit 2
            ;;
    esac
}
