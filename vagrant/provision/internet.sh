#!/usr/bin/env bash
# The lab's "internet" host: the SMTP server every resource tries to reach. Run as root by the Vagrantfile at
# every `vagrant up` (Vagrant's own network setup drops what it did not configure); idempotent.
#   internet.sh setup    install python3-aiosmtpd and run enforcer/smtpsink.py from /vagrant-project as
#                        p25-smtpsink.service on ports 25, 465 and 587 (mail lands in /var/lib/p25-smtpsink)
#   internet.sh network  add the IPv6 address and route the lab's ranges back through the gateway
#   internet.sh [all]    both
# Facts from the Vagrantfile, in the environment:
#   P25_NAME, P25_LINKS          this machine, and its interface with its addresses (see add_addresses below)
#   P25_VIA4, P25_VIA6           the gateway's addresses on the internet network
#   P25_ROUTES4, P25_ROUTES6     the lab's ranges
#   P25_INTERNET                 this host's addresses
set -euo pipefail

ME=internet.sh
PROJECT=/vagrant-project
: "${P25_NAME:?set by the Vagrantfile}" "${P25_LINKS:?set by the Vagrantfile}"
: "${P25_VIA4:?set by the Vagrantfile}" "${P25_VIA6=}"
: "${P25_ROUTES4:?set by the Vagrantfile}" "${P25_ROUTES6=}"
: "${P25_INTERNET:=}" "${P25_GATEWAY:=}" "${P25_VNET_PREFIXES:=}"

# ---- common: the same in gateway.sh, internet.sh and vm.sh (tests/test_vagrant.py checks it) ----
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
    install -D -m 0755 "$0" /usr/local/sbin/p25-lab-network
    for var in "${!P25_@}"; do
        printf '%s="%s"\n' "$var" "${!var}"
    done | write_if_changed /etc/default/p25-lab-network
    CHANGED=""
    write_if_changed /etc/systemd/system/p25-lab-network.service <<'UNIT'
[Unit]
Description=port25-enforcer lab: this machine's lab addresses and routes
After=network-online.target
Wants=network-online.target

[Service]
Type=oneshot
RemainAfterExit=yes
EnvironmentFile=/etc/default/p25-lab-network
Environment=P25_AT_BOOT=1
ExecStart=/usr/local/sbin/p25-lab-network network

[Install]
WantedBy=multi-user.target
UNIT
    if [ -n "$CHANGED" ]; then
        systemctl daemon-reload
    fi
    systemctl enable --quiet p25-lab-network.service
}
# ---- end of common ----

setup() {
    local mta
    if [ ! -f "$PROJECT/enforcer/smtpsink.py" ]; then
        echo "$ME: $PROJECT/enforcer/smtpsink.py is missing; sync the project: vagrant rsync $P25_NAME" >&2
        exit 1
    fi
    if ! dpkg-query -W -f='${Status}' python3-aiosmtpd 2>/dev/null | grep -q "install ok installed"; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update
        apt-get install -y --no-install-recommends python3-aiosmtpd
    fi
    # A distribution MTA would hold port 25 (Debian's exim4 listens on localhost's).
    for mta in exim4 postfix; do
        if systemctl cat "$mta.service" >/dev/null 2>&1; then
            systemctl disable --now --quiet "$mta.service"
        fi
    done
    CHANGED=""
    write_if_changed /etc/systemd/system/p25-smtpsink.service <<UNIT
[Unit]
Description=port25-enforcer lab: the SMTP sink of the internet host (ports 25, 465, 587)
After=network-online.target
Wants=network-online.target

[Service]
Environment=PYTHONPATH=$PROJECT
ExecStart=/usr/bin/python3 -m enforcer.smtpsink --maildir /var/lib/p25-smtpsink/mail --port 25 --port 465 --port 587
StateDirectory=p25-smtpsink
Restart=on-failure
RestartSec=2s
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes

[Install]
WantedBy=multi-user.target
UNIT
    if [ -n "$CHANGED" ]; then
        systemctl daemon-reload
    fi
    systemctl enable --quiet p25-smtpsink.service
    # restarted at every run: a `vagrant rsync` may have brought a new smtpsink.py
    systemctl restart p25-smtpsink.service
    sleep 2
    if ! systemctl is-active --quiet p25-smtpsink.service; then
        journalctl -u p25-smtpsink -n 30 --no-pager >&2 || true
        echo "$ME: the SMTP sink did not start (its log is above)" >&2
        exit 1
    fi
    log "SMTP sink listening on 25, 465 and 587 (mail in /var/lib/p25-smtpsink/mail)"
}

network() {
    add_addresses
    add_routes
    if [ -z "${P25_AT_BOOT:-}" ]; then
        persist
    fi
}

case ${1:-all} in
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
if [ -z "${P25_AT_BOOT:-}" ]; then
    log "ready: internet $P25_INTERNET"
fi
