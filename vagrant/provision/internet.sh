#!/usr/bin/env bash
# The lab's "internet" host: the SMTP server every resource tries to reach. Run as root by the Vagrantfile at
# every `vagrant up` (Vagrant's own network setup drops what it did not configure); idempotent.
#   internet.sh setup    install python3-aiosmtpd and run enforcer/lab/smtpsink.py from /vagrant-project as
#                        p25-smtpsink.service on ports 25, 465 and 587 (mail lands in /var/lib/p25-smtpsink);
#                        and the lab's DNS, unbound as p25-dns.service on port 53, answering as the namespace
#                        lab's does (enforcer/lab/dns.py writes its config from lab.yml)
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
LAB="$PROJECT/vagrant/lab.yml"
: "${P25_NAME:?set by the Vagrantfile}" "${P25_LINKS:?set by the Vagrantfile}"
: "${P25_VIA4:?set by the Vagrantfile}" "${P25_VIA6=}"
: "${P25_ROUTES4:?set by the Vagrantfile}" "${P25_ROUTES6=}"
: "${P25_INTERNET:=}" "${P25_GATEWAY:=}" "${P25_VNET_PREFIXES:=}"

# The helpers the three scripts share: beside this script, or where the Vagrantfile uploaded them.
COMMON="$(dirname "$0")/common.sh"
[ -r "$COMMON" ] || COMMON=/tmp/p25-common.sh
# shellcheck source=vagrant/provision/common.sh
. "$COMMON"

# (Re)starts the unit $1 (its file just written: CHANGED says whether it changed) and checks that it runs; $2 names
# it in the error.
start_unit() {
    if [ -n "$CHANGED" ]; then
        systemctl daemon-reload
    fi
    systemctl enable --quiet "$1.service"
    systemctl restart "$1.service"
    sleep 2
    if ! systemctl is-active --quiet "$1.service"; then
        journalctl -u "$1" -n 30 --no-pager >&2 || true
        echo "$ME: $2 did not start (its log is above)" >&2
        exit 1
    fi
}

setup() {
    local mta
    if [ ! -f "$PROJECT/enforcer/lab/smtpsink.py" ]; then
        echo "$ME: $PROJECT/enforcer/lab/smtpsink.py is missing; sync the project: vagrant rsync $P25_NAME" >&2
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
Description=port25-enforcer lab: the SMTP sink of the internet host (ports 25, 465, 587 and a relay port, 2525)
After=network-online.target
Wants=network-online.target

[Service]
Environment=PYTHONPATH=$PROJECT
ExecStart=/usr/bin/python3 -m enforcer.lab.smtpsink --maildir /var/lib/p25-smtpsink/mail --port 25 --port 465 --port 587 --port 2525
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
    # restarted at every run: a `vagrant rsync` may have brought a new smtpsink.py
    start_unit p25-smtpsink "the SMTP sink"
    log "SMTP sink listening on 25, 465, 587 and 2525 (mail in /var/lib/p25-smtpsink/mail)"
    dns
}

# The lab's DNS: any domain's MX and addresses lead to this host, NAME.lab names the lab's machines, the lab
# file's lab.dns.records; the config from the same code as the namespace lab's.
dns() {
    if ! command -v unbound >/dev/null && [ ! -x /usr/sbin/unbound ]; then
        export DEBIAN_FRONTEND=noninteractive
        if ! { apt-get update && apt-get install -y --no-install-recommends unbound python3-yaml; }; then
            echo "$ME: unbound is missing and could not be installed (a box of an older recipe, with no package" \
                "mirror to reach? rebuild it: vagrant/box/build.sh --force)" >&2
            exit 1
        fi
        systemctl mask --now --quiet unbound.service
    fi
    PYTHONPATH=$PROJECT python3 -P -m enforcer.lab.dns --lab "$LAB" --directory /etc/p25-dns
    CHANGED=""
    write_if_changed /etc/systemd/system/p25-dns.service <<UNIT
[Unit]
Description=port25-enforcer lab: the lab's DNS on the internet host (port 53; any domain's MX leads here)
After=network-online.target
Wants=network-online.target

[Service]
ExecStart=/usr/sbin/unbound -d -c /etc/p25-dns/unbound.conf
Restart=on-failure
RestartSec=2s

[Install]
WantedBy=multi-user.target
UNIT
    start_unit p25-dns "the lab's DNS"
    log "the lab's DNS answering on port 53 ($P25_INTERNET)"
}

network() {
    add_addresses
    add_routes
    if [ -z "${P25_AT_BOOT:-}" ]; then
        persist
    fi
}

run_parts "${1:-all}"
if [ -z "${P25_AT_BOOT:-}" ]; then
    log "ready: internet $P25_INTERNET"
fi
