#!/usr/bin/env bash
# A resource machine of the lab (a VM, a scale set instance, an appliance...). Run as root by the Vagrantfile
# at every `vagrant up` (Vagrant's own network setup drops what it did not configure); idempotent.
#   vm.sh [all|network]  add this machine's IPv6 (and further) addresses, and route the lab's ranges
#                        through the gateway's address on its VNet; Vagrant's management default route stays
# Facts from the Vagrantfile, in the environment:
#   P25_NAME, P25_LINKS          this machine, and its interface with its addresses (see add_addresses below)
#   P25_VIA4, P25_VIA6           the gateway's addresses on this machine's VNet (P25_VIA6 empty: no IPv6)
#   P25_ROUTES4, P25_ROUTES6     the lab's ranges: 198.18.0.0/15 198.19.0.0/16, 2001:db8::/32 (and any other)
#   P25_GATEWAY, P25_INTERNET, P25_VNET_PREFIXES  the gateway's addresses, the internet host's, the VNets'
set -euo pipefail

ME=vm.sh
: "${P25_NAME:?set by the Vagrantfile}" "${P25_LINKS:?set by the Vagrantfile}"
: "${P25_VIA4:?set by the Vagrantfile}" "${P25_VIA6=}"
: "${P25_ROUTES4:?set by the Vagrantfile}" "${P25_ROUTES6=}"
: "${P25_GATEWAY:=}" "${P25_INTERNET:=}" "${P25_VNET_PREFIXES:=}"

# The helpers the three scripts share: beside this script, or where the Vagrantfile uploaded them.
COMMON="$(dirname "$0")/common.sh"
[ -r "$COMMON" ] || COMMON=/tmp/p25-common.sh
# shellcheck source=vagrant/provision/common.sh
. "$COMMON"

case ${1:-all} in
    all | network) ;;
    *)
        echo "usage: $ME [all|network]" >&2
        exit 2
        ;;
esac
add_addresses
add_routes
if [ -z "${P25_AT_BOOT:-}" ]; then
    persist
    # the lab's DNS on the internet host (provision/internet.sh), as the namespace lab's resolv.conf says it
    read -ra internet <<<"$P25_INTERNET"
    if [ -L /etc/resolv.conf ]; then
        rm -f /etc/resolv.conf # a resolver's link (systemd-resolved's): this file replaces it
    fi
    { echo "# the lab's DNS on its internet host (provision/vm.sh)"; printf 'nameserver %s\n' "${internet[@]}"; } |
        write_if_changed /etc/resolv.conf
    # scapy, for `python3 -m enforcer.lab.probe` from the synced folder
    if ! dpkg-query -W -f='${Status}' python3-scapy 2>/dev/null | grep -q "install ok installed"; then
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-scapy >/dev/null; } \
            || log "could not install python3-scapy (no package mirror?); enforcer.lab.probe will not run here"
    fi
    log "ready: $P25_NAME; the SMTP server: $P25_INTERNET (ports 25, 465, 587)"
fi
